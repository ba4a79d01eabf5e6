"""Is what the store answered the file?  Every legitimate answer accepted, every wrong one
caught; ``StoreFacts`` keeps what was learned of the store on the way."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from s3spool.errors import TransientError
from s3spool.spool.spool import Source
from s3spool.store.base import UNKNOWN, Delivery
from s3spool.store.digests import BodyDigest, Checksummer, FileDigest, digest_file, digest_range

log = logging.getLogger("s3spool.store")

MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
MPU_ETAG = re.compile(r"^[0-9a-f]{32}-\d+$")
#: metadata of a compressed object about its original (compress.py)
_ORIGINAL = "s3spool-original-"


@dataclass(slots=True)
class StoreFacts:
    """What the store supports (None: not known yet, learned from the first uploads)."""

    endpoint: str = ""
    addressing: str = ""
    tls: str = ""
    list_uploads: bool | None = None
    abort_uploads: bool | None = None
    checksum_echo: bool | None = None
    put_etag_md5: bool | None = None
    multipart_etag: str | None = None  # composite | whole-object MD5 | opaque
    conditional_writes: bool | None = None


def etag_of(resp: dict[str, Any]) -> str | None:
    return str(resp.get("ETag") or "").strip('"') or None


def delivery_of(
    src: Source, resp: dict[str, Any], checksum: str | None, *, parts: int = 0
) -> Delivery:
    """What the store's answer to PutObject or CompleteMultipartUpload confirms."""
    return Delivery(
        src.key,
        src.size,
        etag=etag_of(resp),
        checksum=checksum,
        parts=parts,
        version_id=resp.get("VersionId"),
    )


def mismatch(what: str, field: str, got: str, want: str) -> TransientError:
    return TransientError(
        f"{what}: store reported {field} {got}, expected {want} (body corrupted?)",
        reason="verify_failed",
    )


class Verifier:
    """Compares the store's answers with the file; learns ``facts`` on the way."""

    def __init__(
        self, ck: Checksummer, *, send_checksum: bool, etag_opaque: bool, where: str = ""
    ) -> None:
        self.ck = ck
        self.where = f" at {where}" if where else ""  # which store a line is about
        self.send_checksum = send_checksum  # x-amz-checksum-* sent (not CHECKSUM_COMPAT)
        self.etag_opaque = etag_opaque  # SSE-KMS and SSE-C ETags are not MD5s
        self.facts = StoreFacts()
        self._told: set[str] = set()

    def tell_once(self, topic: str, level: int, msg: str, *args: Any) -> None:
        if topic not in self._told:
            self._told.add(topic)
            log.log(level, msg, *args)

    def verification(self) -> str:
        """How an upload's result is checked against the file, in one phrase."""
        facts, ck = self.facts, self.ck
        if not ck.enabled:
            return "none (CHECKSUM=none)"
        if facts.checksum_echo:
            return f"checksum: the store echoes {ck.algorithm} and it is compared"
        if facts.put_etag_md5 and not self.etag_opaque:
            return "md5: the store's ETag is the body's MD5 and it is compared"
        if facts.checksum_echo is None and facts.put_etag_md5 is None:
            return f"{UNKNOWN} (learned from the first upload)"
        return (
            "store-side only: the store checks Content-MD5 on receipt, but its answers "
            "give nothing to compare"
        )

    def endpoint(self) -> str:
        f = self.facts
        return f"{f.endpoint} ({f.addressing}-style addressing, {f.tls})"

    def describe(self) -> list[tuple[str, str]]:
        f = self.facts

        def yes(v: bool | None, yes: str = "yes", no: str = "no") -> str:
            return UNKNOWN if v is None else (yes if v else no)

        return [
            ("endpoint", self.endpoint()),
            ("ListMultipartUploads", yes(f.list_uploads, no="not supported")),
            ("AbortMultipartUpload", yes(f.abort_uploads, no="not supported")),
            ("checksum echo", yes(f.checksum_echo)),
            ("PutObject ETag", yes(f.put_etag_md5, "MD5 of the body", "not an MD5")),
            ("multipart ETag", f.multipart_etag or UNKNOWN),
            (
                "conditional writes",
                yes(f.conditional_writes, "honoured", "ignored (OVERWRITE=never is unsafe)"),
            ),
            ("verification", self.verification()),
        ]

    def body(self, what: str, resp: dict[str, Any], digest: BodyDigest) -> None:
        """A PutObject's or a part's answer against the body: any contradiction fails it."""
        etag = etag_of(resp)
        echoed = resp.get(f"Checksum{self.ck.param}") if self.send_checksum else None
        if what == "PutObject" and self.facts.put_etag_md5 is None and self.ck.enabled:
            self.facts.put_etag_md5 = bool(etag and MD5_HEX.match(etag))
            if self.send_checksum:
                self.facts.checksum_echo = bool(echoed)
            self.tell_once(
                "verification",
                logging.INFO
                if self.facts.checksum_echo or self.facts.put_etag_md5
                else logging.WARNING,
                "store's answers to uploads%s: verification %s",
                self.where,
                self.verification(),
            )
        if echoed and digest.checksum_b64 and echoed != digest.checksum_b64:
            raise mismatch(what, "checksum", echoed, digest.checksum_b64)
        md5 = digest.md5.hex() if digest.md5 else None
        if etag and md5 and not self.etag_opaque and MD5_HEX.match(etag) and etag != md5:
            raise mismatch(what, "ETag", etag, md5)

    async def whole_object(
        self,
        src: Source,
        resp: dict[str, Any],
        parts: list[BodyDigest],
        head: Callable[[], Awaitable[dict[str, Any]]],
    ) -> str | None:
        """A completed multipart object against the file (composite ``-N`` or whole-object
        values, else a HEAD with checksum mode); returns the checksum label."""
        etag_want, ck_want = self.ck.composite(parts)
        whole: FileDigest | None = None

        async def whole_file() -> FileDigest:
            nonlocal whole
            if whole is None:
                whole = await asyncio.to_thread(digest_file, src.reader(), src.size, self.ck)
            return whole

        async def judge(answer: dict[str, Any], what: str) -> bool:
            """True: matched; False: nothing to compare; raises on a contradiction."""
            matched = False
            echoed = answer.get(f"Checksum{self.ck.param}") if self.send_checksum else None
            if echoed and ck_want:
                if "-" in echoed:
                    if echoed != ck_want:
                        raise mismatch(what, "checksum", echoed, ck_want)
                else:  # a full-object checksum
                    got = (await whole_file()).checksum
                    if got and echoed != got:
                        raise mismatch(what, "checksum", echoed, got)
                matched = True
            etag = etag_of(answer)
            if etag and etag_want and not self.etag_opaque:
                if MPU_ETAG.match(etag):
                    if etag != etag_want:
                        raise mismatch(what, "ETag", etag, etag_want)
                    self.facts.multipart_etag = "composite MD5 (-N)"
                    matched = True
                elif MD5_HEX.match(etag):
                    got_md5 = (await whole_file()).etag or ""
                    if etag != got_md5:
                        raise mismatch(what, "ETag", etag, got_md5)
                    self.facts.multipart_etag = "MD5 of the whole object"
                    matched = True
                else:
                    self.facts.multipart_etag = "opaque (not an MD5)"
            return matched

        if not self.ck.enabled or await judge(resp, "CompleteMultipartUpload"):
            return self.ck.label(ck_want)
        answer = await head()  # HEAD with checksum mode
        if int(answer.get("ContentLength", -1)) != src.size:
            raise mismatch("HeadObject", "size", str(answer.get("ContentLength")), str(src.size))
        if not await judge(answer, "HeadObject"):
            self.tell_once(
                "multipart-unverified",
                logging.WARNING,
                "the store's multipart answers give nothing to compare with the file (ETag %r, "
                "no checksum): multipart uploads are verified part by part only",
                etag_of(resp),
            )
        return self.ck.label(ck_want)

    def part_matches(self, stored: dict[str, Any], length: int, digest: BodyDigest) -> bool:
        """Does a part the store already holds carry exactly these bytes?"""
        if int(stored.get("Size", -1)) != length:
            return False
        if self.send_checksum and digest.checksum_b64:
            echoed = stored.get(f"Checksum{self.ck.param}")
            if echoed:
                return bool(echoed == digest.checksum_b64)
        etag = etag_of(stored)
        if etag and digest.md5 and not self.etag_opaque and MD5_HEX.match(etag):
            return etag == digest.md5.hex()
        return False  # nothing to compare: send it again rather than trust it

    async def matches_stored(self, src: Source, head: dict[str, Any], part_size: int) -> bool:
        """Does an object's HEAD (checksum mode) show this file's bytes?  (crash recovery)"""
        meta = head.get("Metadata") or {}
        original = {k.lower(): v for k, v in meta.items() if k.lower().startswith(_ORIGINAL)}
        if original:
            # stored compressed (COMPRESS): its metadata names the original's size and checksum
            label = original.get(f"{_ORIGINAL}checksum")
            if original.get(f"{_ORIGINAL}size") != str(src.size) or not label:
                return False
            found, _ = await asyncio.to_thread(
                digest_range, src.reader(), 0, src.size, self.ck, md5=False
            )
            return bool(label == found.label())
        if int(head.get("ContentLength", -1)) != src.size:
            return False
        part_size = int(meta.get("s3spool-part-size") or part_size)
        etag = str(head.get("ETag", "")).strip('"')
        echoed = head.get(f"Checksum{self.ck.param}") if self.ck.param else None
        stored = meta.get("s3spool-checksum")
        want_parts = bool(echoed and "-" in echoed) or bool(MPU_ETAG.match(etag))
        local = await asyncio.to_thread(
            digest_file, src.reader(), src.size, self.ck, part_size if want_parts else None
        )
        if echoed:
            return bool(echoed == local.checksum)
        if stored:
            return bool(stored == self.ck.label(local.checksum))
        if MD5_HEX.match(etag) or MPU_ETAG.match(etag):
            if MD5_HEX.match(etag) and want_parts:
                local = await asyncio.to_thread(digest_file, src.reader(), src.size, self.ck, None)
            return etag == local.etag
        return False
