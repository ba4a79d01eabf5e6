"""Destinations: the S3 store (aiobotocore), ``noop://`` and fault injection.

This module is the boundary with botocore: every botocore/aiohttp error is
translated (``s3errors.translate``) into ``errors.py``'s classes here or in the
sender, so nothing above it imports botocore.

One client per process, opened as an async context manager, with an aiohttp
pool sized to the configured concurrency; object bodies go through one
``sender.Sender`` built on that client.  botocore's ``standard`` retry mode
retries single requests, a failed part is retried alone with backoff, and the
pipeline retries whole files on top of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import mimetypes
import os
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from .bodies import FileRange, digest_range, read_exact, whole_file_digest
from .checksums import BodyDigest, Checksummer
from .errors import (
    FileChanged,
    PermanentError,
    Refused,
    SlowDown,
    StoreUnavailable,
    TransientError,
    UploadError,
)
from .s3errors import SLOWDOWN_CODES, is_unsupported, translate
from .sender import Body, Sender
from .settings import Settings, parse_destination
from .throttle import backoff

log = logging.getLogger(__name__)

#: Reading a small file inline is cheaper than a thread hop; above this, use a thread.
INLINE_READ_MAX = 1024 * 1024

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_MPU_ETAG = re.compile(r"^[0-9a-f]{32}-\d+$")


@dataclass(slots=True)
class Source:
    """An open, claimed file to deliver."""

    fd: int
    size: int
    mtime_ns: int
    key: str
    name: str  # for logs
    #: set by a multipart upload as soon as the store has assigned an id (id, part size)
    on_upload_id: Callable[[str | None, int], None] | None = None
    #: a recorded multipart upload to continue, and the part size it was started with
    upload_id: str | None = None
    part_size: int | None = None


@dataclass(slots=True)
class Delivery:
    key: str
    size: int
    etag: str | None = None
    checksum: str | None = None
    parts: int = 0
    already_there: bool = False


class Store(Protocol):
    """What the pipeline needs from a destination."""

    async def upload(self, src: Source) -> Delivery: ...

    async def delivered(self, src: Source) -> bool: ...

    async def probe(self) -> None: ...

    async def survey(self) -> list[tuple[str, str]]:
        """Probe at startup; what the store supports, as (topic, finding) lines."""
        ...

    @property
    def last_answer(self) -> float:
        """Monotonic time of the store's last answer (idle probes skip a busy store)."""
        ...

    async def abort_upload(self, key: str, upload_id: str) -> None: ...

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]: ...


class ByteBudget:
    """Caps the file bytes held in memory by all uploads together (invariant 5).

    FIFO waiters, and no lock on the fast path: most bodies are small and never wait.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.limit)  # a single body larger than the budget still proceeds alone
        if self._waiters or self.used + n > self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release(n)  # granted as we were cancelled: give it back
                else:
                    self._waiters.remove((n, fut))
                    self._wake()
                raise
        else:
            self.used += n
        try:
            yield
        finally:
            self._release(n)

    def _release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self.used += n
                fut.set_result(None)


def _guess_type(name: str) -> str | None:
    dot = name.rfind(".")
    return _guess_by_suffix(name[dot:].lower()) if dot > 0 else None


@functools.lru_cache(maxsize=512)
def _guess_by_suffix(suffix: str) -> str | None:
    # by suffix only, cached: guess_type on every name costs more than the rest of a header
    return mimetypes.guess_type("x" + suffix, strict=False)[0]


@dataclass(slots=True)
class StoreFacts:
    """What the store supports, as probed at startup and learned from its answers.

    ``None`` means not known yet: the service probes only what a read can tell
    (HeadBucket, ListMultipartUploads) and learns the rest from the first uploads;
    ``s3spool check`` writes test objects and so knows everything.
    """

    endpoint: str = ""
    addressing: str = ""
    tls: str = ""
    list_uploads: bool | None = None
    abort_uploads: bool | None = None
    checksum_echo: bool | None = None
    put_etag_md5: bool | None = None
    multipart_etag: str | None = None  # composite | whole-object MD5 | opaque
    conditional_writes: bool | None = None

    def verification(self, ck: Checksummer, etag_opaque: bool) -> str:
        """How an upload's result is checked against the file, in one phrase."""
        if not ck.enabled:
            return "none (CHECKSUM=none)"
        if self.checksum_echo:
            return f"checksum: the store echoes {ck.algorithm} and it is compared"
        if self.put_etag_md5 and not etag_opaque:
            return "md5: the store's ETag is the body's MD5 and it is compared"
        if self.checksum_echo is None and self.put_etag_md5 is None:
            return "not known yet (learned from the first upload)"
        return (
            "store-side only: the store checks Content-MD5 on receipt, but its answers "
            "give nothing to compare"
        )

    def lines(self, ck: Checksummer, etag_opaque: bool) -> list[tuple[str, str]]:
        def yes(v: bool | None, yes: str = "yes", no: str = "no") -> str:
            return "not known yet" if v is None else (yes if v else no)

        return [
            ("endpoint", f"{self.endpoint} ({self.addressing}-style addressing, {self.tls})"),
            ("ListMultipartUploads", yes(self.list_uploads, no="not supported")),
            ("AbortMultipartUpload", yes(self.abort_uploads, no="not supported")),
            ("checksum echo", yes(self.checksum_echo)),
            ("PutObject ETag", yes(self.put_etag_md5, "MD5 of the body", "not an MD5")),
            ("multipart ETag", self.multipart_etag or "not known yet"),
            (
                "conditional writes",
                yes(self.conditional_writes, "honoured", "ignored (OVERWRITE=never is unsafe)"),
            ),
            ("verification", self.verification(ck, etag_opaque)),
        ]


def _etag(resp: dict[str, Any]) -> str | None:
    return str(resp.get("ETag") or "").strip('"') or None


class S3Store:
    """Uploads to S3 or an S3-compatible store through one aiobotocore client."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_slowdown: Callable[[], None] | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        _, self.bucket, self.prefix = parse_destination(settings.destination)
        self.s = settings
        self.ck = Checksummer(settings.checksum)
        self.budget = budget or ByteBudget(settings.buffer_limit)
        self.facts = StoreFacts()
        #: monotonic time of the last answer from the store (any status): idle probes skip
        #: a store that answered recently
        self.last_answer = 0.0
        self._on_slowdown = on_slowdown
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._sender: Sender | None = None
        self._instance = settings.resolved_instance_id
        self._told: set[str] = set()
        # SSE-KMS and SSE-C objects have ETags that are not MD5s
        self._etag_opaque = settings.sse == "aws:kms"
        self._send_checksum = bool(self.ck.param) and not settings.checksum_compat

    async def __aenter__(self) -> S3Store:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        from .sender import make_sender

        s = self.s
        pool = min(max(s.workers, 1) * max(1, s.part_concurrency) + 4, 512)
        config = AioConfig(
            region_name=s.region,
            signature_version="s3v4",
            s3={"addressing_style": s.addressing_style},
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=pool,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            # We compute and send checksums ourselves (one pass over the bytes);
            # letting botocore add its own CRC32 would hash everything twice.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )
        # None leaves botocore's own chain (AWS_CA_BUNDLE, the profile's ca_bundle) in charge
        verify: bool | str | None = None
        if not s.verify_ssl:
            verify = False
        elif s.ca_bundle is not None:
            verify = str(s.ca_bundle)
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=s.endpoint_url, config=config, verify=verify)
        )
        self._client.meta.events.register("response-received.s3.*", self._observe)
        self._sender = await make_sender(
            self._client, self.bucket, direct=s.direct_put, on_slowdown=self._on_answer_slowdown
        )
        self.facts.endpoint = self._client.meta.endpoint_url
        self.facts.addressing = s.addressing_style if s.addressing_style != "auto" else "auto"
        url = getattr(self._sender, "base_url", "")
        if url:
            bucket_in_host = f"//{self.bucket}." in url
            self.facts.addressing = "virtual" if bucket_in_host else "path"
        if not self.facts.endpoint.startswith("https:"):
            self.facts.tls = "plain HTTP"
        elif verify is False:
            self.facts.tls = "TLS, certificate NOT verified (VERIFY_SSL=false)"
        else:
            self.facts.tls = f"TLS verified against {s.ca_bundle or 'the default CA bundle'}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _on_answer_slowdown(self) -> None:
        self.last_answer = time.monotonic()
        if self._on_slowdown:
            self._on_slowdown()

    def _observe(self, parsed_response: Any = None, **_: Any) -> None:
        # Every attempt passes here, including the ones botocore retries by itself,
        # so throttling is seen even when the retry hides it from the caller.
        self.last_answer = time.monotonic()
        if not parsed_response or not self._on_slowdown:
            return
        code = (parsed_response.get("Error") or {}).get("Code")
        status = (parsed_response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in SLOWDOWN_CODES or status == 503:
            self._on_slowdown()

    def _tell_once(self, topic: str, level: int, msg: str, *args: Any) -> None:
        if topic not in self._told:
            self._told.add(topic)
            log.log(level, msg, *args)

    # --- request helpers --------------------------------------------------------------------
    def _object_params(self, key: str, src: Source) -> dict[str, Any]:
        s = self.s
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Metadata": {
                "s3spool-mtime": f"{src.mtime_ns / 1e9:.6f}",
                "s3spool-instance": self._instance,
            },
        }
        ctype = s.content_type or _guess_type(src.name)
        if ctype:
            params["ContentType"] = ctype
        if s.acl:
            params["ACL"] = s.acl
        if s.storage_class:
            params["StorageClass"] = s.storage_class
        if s.sse:
            params["ServerSideEncryption"] = s.sse
        if s.sse_kms_key_id:
            params["SSEKMSKeyId"] = s.sse_kms_key_id
        return params

    def _digest_params(self, d: BodyDigest) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if d.md5 is not None:
            params["ContentMD5"] = d.md5_b64
        if d.checksum is not None and self._send_checksum:
            params[f"Checksum{self.ck.param}"] = d.checksum_b64
        return params

    def _mismatch(self, what: str, field: str, got: str, want: str) -> TransientError:
        return TransientError(
            f"{what}: store reported {field} {got}, expected {want} (body corrupted?)",
            reason="verify_failed",
        )

    async def _body(
        self, fd: int, offset: int, length: int, content_md5: bool
    ) -> tuple[Body, BodyDigest, str | None]:
        """The body to send, its digests and (when signing needs it) its SHA-256.

        Streamed from the file when the sender can (memory: a chunk or two), else read
        into memory; the caller holds the byte budget for in-memory bodies.
        """
        assert self._sender is not None
        sha = self._sender.needs_payload_hash(content_md5)
        if self._sender.streams and length > INLINE_READ_MAX:
            digest, payload = await asyncio.to_thread(
                digest_range, fd, offset, length, self.ck, sha
            )
            return FileRange(fd, offset, length), digest, payload

        if length <= INLINE_READ_MAX:
            data = read_exact(fd, offset, length)
        else:
            data = await asyncio.to_thread(read_exact, fd, offset, length)
        if len(data) != length:
            raise FileChanged(
                f"file shrank while reading ({len(data)} of {length} bytes)", reason="changed"
            )
        digest = (
            self.ck.body(data)
            if length <= INLINE_READ_MAX
            else await asyncio.to_thread(self.ck.body, data)
        )
        return data, digest, None  # a bytes body is hashed by the signer when needed

    # --- verification -----------------------------------------------------------------------
    def _verify_body(self, what: str, resp: dict[str, Any], digest: BodyDigest) -> None:
        """A PutObject's or a part's answer against the body: any contradiction fails it."""
        self.last_answer = time.monotonic()
        etag = _etag(resp)
        echoed = resp.get(f"Checksum{self.ck.param}") if self._send_checksum else None
        if what == "PutObject" and self.facts.put_etag_md5 is None and self.ck.enabled:
            self.facts.put_etag_md5 = bool(etag and _MD5_HEX.match(etag))
            if self._send_checksum:
                self.facts.checksum_echo = bool(echoed)
            self._tell_once(
                "verification",
                logging.INFO
                if self.facts.checksum_echo or self.facts.put_etag_md5
                else logging.WARNING,
                "store's answers to uploads: verification %s",
                self.facts.verification(self.ck, self._etag_opaque),
            )
        if echoed and digest.checksum_b64 and echoed != digest.checksum_b64:
            raise self._mismatch(what, "checksum", echoed, digest.checksum_b64)
        md5 = digest.md5.hex() if digest.md5 else None
        if etag and md5 and not self._etag_opaque and _MD5_HEX.match(etag) and etag != md5:
            raise self._mismatch(what, "ETag", etag, md5)

    async def _verify_object(
        self, src: Source, resp: dict[str, Any], parts: list[BodyDigest]
    ) -> str | None:
        """A completed multipart object against the file; returns the checksum label.

        Accepts the composite forms (``-N``), whole-object MD5 ETags and whole-object
        checksums (computed from the file only when a store answers that way), and
        falls back to a HEAD with checksum mode when the answer has nothing to compare.
        """
        etag_want, ck_want = self.ck.composite(parts)
        whole: tuple[str, str | None] | None = None

        async def whole_file() -> tuple[str, str | None]:
            nonlocal whole
            if whole is None:
                whole = await asyncio.to_thread(whole_file_digest, src.fd, src.size, self.ck)
            return whole

        async def judge(answer: dict[str, Any], what: str) -> bool:
            """True: matched; False: nothing to compare; raises on a contradiction."""
            matched = False
            echoed = answer.get(f"Checksum{self.ck.param}") if self._send_checksum else None
            if echoed and ck_want:
                if "-" in echoed:
                    if echoed != ck_want:
                        raise self._mismatch(what, "checksum", echoed, ck_want)
                else:  # a full-object checksum
                    got = (await whole_file())[1]
                    if got and echoed != got:
                        raise self._mismatch(what, "checksum", echoed, got)
                matched = True
            etag = _etag(answer)
            if etag and etag_want and not self._etag_opaque:
                if _MPU_ETAG.match(etag):
                    if etag != etag_want:
                        raise self._mismatch(what, "ETag", etag, etag_want)
                    self.facts.multipart_etag = "composite MD5 (-N)"
                    matched = True
                elif _MD5_HEX.match(etag):
                    got_md5 = (await whole_file())[0]
                    if etag != got_md5:
                        raise self._mismatch(what, "ETag", etag, got_md5)
                    self.facts.multipart_etag = "MD5 of the whole object"
                    matched = True
                else:
                    self.facts.multipart_etag = "opaque (not an MD5)"
            return matched

        if not self.ck.enabled or await judge(resp, "CompleteMultipartUpload"):
            return self.ck.label(ck_want)
        try:
            head = await self._client.head_object(
                Bucket=self.bucket, Key=src.key, ChecksumMode="ENABLED"
            )
        except Exception as exc:
            raise translate(exc, "HeadObject") from None
        if int(head.get("ContentLength", -1)) != src.size:
            raise self._mismatch(
                "HeadObject", "size", str(head.get("ContentLength")), str(src.size)
            )
        if not await judge(head, "HeadObject"):
            self._tell_once(
                "multipart-unverified",
                logging.WARNING,
                "the store's multipart answers give nothing to compare with the file (ETag %r, "
                "no checksum): multipart uploads are verified part by part only",
                _etag(resp),
            )
        return self.ck.label(ck_want)

    # --- Store protocol ---------------------------------------------------------------------
    async def upload(self, src: Source) -> Delivery:
        if src.upload_id is not None or src.size >= self.s.multipart_threshold:
            return await self._multipart(src)
        return await self._put(src)

    async def _put(self, src: Source) -> Delivery:
        assert self._sender is not None
        streamed = self._sender.streams and src.size > INLINE_READ_MAX
        async with contextlib.AsyncExitStack() as stack:
            if not streamed:
                await stack.enter_async_context(self.budget.hold(src.size))
            body, digest, payload = await self._body(src.fd, 0, src.size, self.ck.enabled)
            return await self._send_put(src, body, digest, payload)
        raise AssertionError("unreachable")  # pragma: no cover - keeps mypy's flow simple

    async def _send_put(
        self, src: Source, body: Body, digest: BodyDigest, payload: str | None
    ) -> Delivery:
        assert self._sender is not None
        params = self._object_params(src.key, src)
        params.update(self._digest_params(digest))
        if digest.checksum is not None:
            params["Metadata"]["s3spool-checksum"] = self.ck.label(digest.checksum_b64) or ""
        if self.s.overwrite == "never":
            params["IfNoneMatch"] = "*"
        try:
            resp = await self._sender.send("PutObject", params, body, payload)
        except UploadError as exc:
            raise self._precondition_or(exc, src, "PutObject") from None
        self._verify_body("PutObject", resp, digest)
        return Delivery(
            src.key, src.size, etag=_etag(resp), checksum=self.ck.label(digest.checksum_b64)
        )

    def _precondition_or(self, err: UploadError, src: Source, what: str) -> UploadError:
        if err.reason == "precondition_failed":
            # OVERWRITE=never and the key exists; the caller decides whether it is ours.
            return PermanentError(
                f"{what}: an object already exists at {src.key!r} (OVERWRITE=never)",
                reason="exists",
            )
        return err

    async def _stored_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
        """Parts the store holds for a recorded upload; None if it is gone or unlistable."""
        have: dict[int, dict[str, Any]] = {}
        try:
            paginator = self._client.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                for part in page.get("Parts", []) or []:
                    have[int(part["PartNumber"])] = part
        except Exception as exc:
            err = translate(exc, "ListParts")
            if err.reason in ("NoSuchUpload", "not_implemented", "http_404", "404"):
                log.info("cannot resume multipart upload %s of %r: %s", upload_id, key, err)
                return None
            raise err from None
        return have

    async def _multipart(self, src: Source) -> Delivery:
        assert self._sender is not None
        sender = self._sender
        client = self._client
        part_size = src.part_size or self.s.part_size
        count = max(1, -(-src.size // part_size))
        upload_id = src.upload_id
        stored: dict[int, dict[str, Any]] = {}
        if upload_id is not None:
            found = await self._stored_parts(src.key, upload_id)
            if found is None:
                await self._abort_quietly(src.key, upload_id)
                upload_id = None
            else:
                stored = found
                log.info(
                    "resuming multipart upload of %r: the store holds %d of %d parts",
                    src.key,
                    len(stored),
                    count,
                )
        if upload_id is None:
            params = self._object_params(src.key, src)
            params["Metadata"]["s3spool-part-size"] = str(part_size)
            if self._send_checksum:
                params["ChecksumAlgorithm"] = self.ck.param
            try:
                created = await client.create_multipart_upload(**params)
            except Exception as exc:
                raise translate(exc, "CreateMultipartUpload") from None
            upload_id = str(created["UploadId"])
        if src.on_upload_id:
            src.on_upload_id(upload_id, part_size)
        digests: list[BodyDigest | None] = [None] * count
        results: list[dict[str, Any] | None] = [None] * count
        sem = asyncio.Semaphore(self.s.part_concurrency)
        reused = 0

        async def one(index: int) -> None:
            nonlocal reused
            number = index + 1
            offset = index * part_size
            length = min(part_size, src.size - offset)
            what = f"UploadPart {number}/{count}"
            async with sem, contextlib.AsyncExitStack() as stack:
                if not (sender.streams and length > INLINE_READ_MAX):
                    await stack.enter_async_context(self.budget.hold(length))
                body, digest, payload = await self._body(src.fd, offset, length, self.ck.enabled)
                digests[index] = digest
                part: dict[str, Any] = {"PartNumber": number}
                if digest.checksum is not None and self._send_checksum:
                    part[f"Checksum{self.ck.param}"] = digest.checksum_b64
                old = stored.get(number)
                if old is not None and self._reusable(old, length, digest):
                    part["ETag"] = old.get("ETag")
                    results[index] = part
                    reused += 1
                    return
                params = {
                    "Bucket": self.bucket,
                    "Key": src.key,
                    "UploadId": upload_id,
                    "PartNumber": number,
                    **self._digest_params(digest),
                }
                for attempt in itertools.count(1):
                    try:
                        resp = await sender.send("UploadPart", params, body, payload)
                        self._verify_body(what, resp, digest)
                        break
                    except TransientError as exc:
                        # one part failing must not cost the parts already sent
                        if isinstance(exc, FileChanged) or attempt >= self.s.retry_attempts:
                            raise
                        delay = backoff(attempt, self.s.retry_backoff, self.s.retry_backoff_max)
                        log.info(
                            "%s of %r: %s; retrying the part in %.1fs", what, src.key, exc, delay
                        )
                        await asyncio.sleep(delay)
                part["ETag"] = resp.get("ETag")
                results[index] = part

        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    for i in range(count):
                        tg.create_task(one(i))
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
            extra: dict[str, Any] = {}
            if self.s.overwrite == "never":
                extra["IfNoneMatch"] = "*"
            try:
                resp = await client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=src.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [p for p in results if p is not None]},
                    **extra,
                )
            except Exception as exc:
                raise self._precondition_or(
                    translate(exc, "CompleteMultipartUpload"), src, "CompleteMultipartUpload"
                ) from None
        except asyncio.CancelledError:
            # Shutdown: keep the upload; its id is recorded with the claim, so the next
            # start continues from the parts already stored.
            raise
        except BaseException:
            # Leftover parts are billed forever: abort what cannot be resumed.
            await asyncio.shield(self._abort_quietly(src.key, upload_id))
            if src.on_upload_id:
                src.on_upload_id(None, part_size)
            raise
        if src.on_upload_id:
            src.on_upload_id(None, part_size)
        if reused:
            log.info(
                "multipart upload of %r resumed: %d of %d parts reused", src.key, reused, count
            )
        checksum = await self._verify_object(src, resp, [d for d in digests if d is not None])
        return Delivery(src.key, src.size, etag=_etag(resp), checksum=checksum, parts=count)

    def _reusable(self, stored: dict[str, Any], length: int, digest: BodyDigest) -> bool:
        """Does a part the store already holds carry exactly these bytes?"""
        if int(stored.get("Size", -1)) != length:
            return False
        if self._send_checksum and digest.checksum_b64:
            echoed = stored.get(f"Checksum{self.ck.param}")
            if echoed:
                return bool(echoed == digest.checksum_b64)
        etag = _etag(stored)
        if etag and digest.md5 and not self._etag_opaque and _MD5_HEX.match(etag):
            return etag == digest.md5.hex()
        return False  # nothing to compare: send it again rather than trust it

    async def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            await self.abort_upload(key, upload_id)
        except UploadError as exc:
            log.warning("could not abort multipart upload %s of %r: %s", upload_id, key, exc)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        if self.facts.abort_uploads is False:
            return
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
            self.facts.abort_uploads = True
        except Exception as exc:
            err = translate(exc, "AbortMultipartUpload")
            if err.reason == "NoSuchUpload":
                return
            if is_unsupported(err):
                self.facts.abort_uploads = False
                self._tell_once(
                    "abort",
                    logging.WARNING,
                    "the store does not support AbortMultipartUpload (%s): unfinished uploads "
                    "stay until the store expires them (set a lifecycle rule)",
                    err,
                )
                return
            raise err from None

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads under the prefix started before ``older_than``."""
        found: list[tuple[str, str]] = []
        if self.facts.list_uploads is False:
            return found
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for up in page.get("Uploads", []) or []:
                    initiated = up.get("Initiated")
                    if initiated is not None and initiated.timestamp() < older_than:
                        found.append((up["Key"], up["UploadId"]))
        except Exception as exc:
            err = translate(exc, "ListMultipartUploads")
            if err.reason == "NoSuchUpload":
                return found  # some stores answer an empty listing this way
            if is_unsupported(err):
                self._no_listing(err)
                return found
            raise err from None
        self.facts.list_uploads = True
        return found

    def _no_listing(self, err: UploadError) -> None:
        self.facts.list_uploads = False
        self._tell_once(
            "list-uploads",
            logging.WARNING,
            "the store does not support ListMultipartUploads (%s): the sweep of stale multipart "
            "uploads is off; uploads s3spool recorded are still resumed or aborted",
            err,
        )

    async def probe(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = translate(exc, "HeadBucket")
            raise StoreUnavailable(str(err), reason=err.reason) from None

    def describe(self) -> list[tuple[str, str]]:
        """What is known of the store, as (topic, finding) lines for logs and ``check``."""
        return self.facts.lines(self.ck, self._etag_opaque)

    async def survey(self) -> list[tuple[str, str]]:
        """Probe the bucket, then what a read can tell: is ListMultipartUploads there?"""
        await self.probe()
        try:
            await self._client.list_multipart_uploads(Bucket=self.bucket, MaxUploads=1)
            self.facts.list_uploads = True
        except Exception as exc:
            err = translate(exc, "ListMultipartUploads")
            if err.reason == "NoSuchUpload":
                self.facts.list_uploads = True  # some stores answer an empty listing this way
            elif is_unsupported(err):
                self._no_listing(err)
            else:
                log.info("ListMultipartUploads not usable (%s); the sweep will try again", err)
        return self.describe()

    async def delivered(self, src: Source) -> bool:
        """Is ``src.key`` already in the store with this file's bytes?  (crash recovery)"""
        try:
            head = await self._client.head_object(
                Bucket=self.bucket, Key=src.key, ChecksumMode="ENABLED"
            )
        except Exception as exc:
            err = translate(exc, "HeadObject")
            if err.reason in ("404", "NoSuchKey", "http_404", "NotFound"):
                return False
            raise err from None
        if int(head.get("ContentLength", -1)) != src.size:
            return False
        meta = head.get("Metadata") or {}
        part_size = int(meta.get("s3spool-part-size") or self.s.part_size)
        etag = str(head.get("ETag", "")).strip('"')
        echoed = head.get(f"Checksum{self.ck.param}") if self.ck.param else None
        stored = meta.get("s3spool-checksum")
        want_parts = bool(echoed and "-" in echoed) or bool(_MPU_ETAG.match(etag))
        local = await asyncio.to_thread(
            _digest_file, src.fd, src.size, self.ck, part_size if want_parts else None
        )
        if echoed:
            return bool(echoed == local.checksum)
        if stored:
            return bool(stored == self.ck.label(local.checksum))
        if _MD5_HEX.match(etag) or _MPU_ETAG.match(etag):
            if _MD5_HEX.match(etag) and want_parts:
                local = await asyncio.to_thread(_digest_file, src.fd, src.size, self.ck, None)
            return etag == local.etag
        return False

    async def test_write(self) -> str:
        """Write test objects under the prefix (``s3spool check``); returns the PUT's key.

        The PUT carries the same headers as a real upload (checksum, SSE, ACL,
        storage class) through the same sender, so a store or policy that would refuse
        uploads refuses this too.  On the way it learns what the store's answers allow
        (``facts``): checksum echo, ETag forms, whether If-None-Match is honoured.
        A failed DELETE raises ``PermanentError`` with reason ``test_object_left``:
        uploads need no s3:DeleteObject.
        """
        import secrets

        key = f"{self.prefix}.s3spool-check-{secrets.token_hex(8)}"
        data = b"s3spool check: safe to delete\n"
        src = Source(-1, len(data), time.time_ns(), key, "check.txt")
        left: list[str] = []
        try:
            await self._send_put(src, data, self.ck.body(data), None)
            left.append(key)
            await self._learn_conditional(src, data)
            mpu_key = key + "-multipart"
            left.append(mpu_key)
            await self._learn_multipart(src, mpu_key, data)
            created = await self._client.create_multipart_upload(Bucket=self.bucket, Key=mpu_key)
            await self.abort_upload(mpu_key, created["UploadId"])
        finally:
            for name in left:
                try:
                    await self._client.delete_object(Bucket=self.bucket, Key=name)
                except Exception as exc:
                    err = translate(exc, f"DeleteObject {name!r}")
                    raise PermanentError(
                        f"the test object {name!r} was left behind ({err}); remove it by hand",
                        reason="test_object_left",
                    ) from None
        return key

    async def _learn_conditional(self, src: Source, data: bytes) -> None:
        assert self._sender is not None
        params = {"Bucket": self.bucket, "Key": src.key, "IfNoneMatch": "*"}
        params.update(self._digest_params(self.ck.body(data)))
        try:
            await self._sender.send("PutObject", params, data)
            self.facts.conditional_writes = False
        except UploadError as exc:
            if exc.reason == "not_implemented":
                self.facts.conditional_writes = False
            elif exc.reason == "precondition_failed":
                self.facts.conditional_writes = True
            else:
                raise

    async def _learn_multipart(self, src: Source, key: str, data: bytes) -> None:
        """A one-part multipart upload (a last part may be small): its ETag form."""
        s = dataclasses.replace(src, key=key, upload_id=None, on_upload_id=None)
        try:
            created = await self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                **({"ChecksumAlgorithm": self.ck.param} if self._send_checksum else {}),
            )
            upload_id = created["UploadId"]
            digest = self.ck.body(data)
            assert self._sender is not None
            resp = await self._sender.send(
                "UploadPart",
                {
                    "Bucket": self.bucket,
                    "Key": key,
                    "UploadId": upload_id,
                    "PartNumber": 1,
                    **self._digest_params(digest),
                },
                data,
            )
            part = {"PartNumber": 1, "ETag": resp.get("ETag")}
            if self._send_checksum and digest.checksum_b64:
                part[f"Checksum{self.ck.param}"] = digest.checksum_b64
            done = await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [part]}
            )
        except Exception as exc:
            raise translate(exc, "multipart test upload") from None
        fd = os.memfd_create("s3spool-check")
        try:
            os.write(fd, data)
            s.fd = fd
            await self._verify_object(s, done, [digest])
        finally:
            os.close(fd)


@dataclass(slots=True)
class _FileDigest:
    etag: str | None
    checksum: str | None


def _digest_file(fd: int, size: int, ck: Checksummer, part_size: int | None) -> _FileDigest:
    """Digest of a whole file, as a single PUT or (``part_size``) as multipart parts."""
    if part_size is None:
        if not ck.enabled:
            return _FileDigest(None, None)
        stream = ck.stream()
        for offset in range(0, size, 8 * 1024 * 1024):
            stream.update(read_exact(fd, offset, min(8 * 1024 * 1024, size - offset)))
        return _FileDigest(stream.md5_hex(), stream.checksum_b64())
    parts = [
        ck.body(read_exact(fd, off, min(part_size, size - off)))
        for off in range(0, max(size, 1), part_size)
    ]
    etag, checksum = ck.composite(parts)
    return _FileDigest(etag, checksum)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The most telling error of a failed part group (a global fault beats a transient one)."""
    flat: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                flat.append(e)

    walk(group)
    for cls in (StoreUnavailable, Refused, PermanentError, SlowDown, TransientError):
        for e in flat:
            if isinstance(e, cls):
                return e
    return flat[0]


class NoopStore:
    """``noop://``: read the file (so read errors surface) and log; store nothing."""

    def __init__(self, settings: Settings) -> None:
        self.ck = Checksummer(settings.checksum)

    async def __aenter__(self) -> NoopStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def upload(self, src: Source) -> Delivery:
        digest = await asyncio.to_thread(_digest_file, src.fd, src.size, self.ck, None)
        log.debug("noop: would upload %r to %r", src.name, src.key)
        return Delivery(src.key, src.size, etag=digest.etag, checksum=digest.checksum)

    async def delivered(self, src: Source) -> bool:
        return False

    async def probe(self) -> None:
        return None

    async def survey(self) -> list[tuple[str, str]]:
        return []

    @property
    def last_answer(self) -> float:
        return time.monotonic()

    async def abort_upload(self, key: str, upload_id: str) -> None:
        return None

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        return []

    async def test_write(self) -> str:
        return ""


class FaultyStore:
    """``FAIL_RATE``: fail a fraction of uploads on purpose, before anything is sent."""

    def __init__(self, inner: Store, rate: float, seed: int | None = None) -> None:
        self.inner = inner
        self.rate = rate
        self._rng = random.Random(seed)

    async def upload(self, src: Source) -> Delivery:
        if self._rng.random() < self.rate:
            raise PermanentError("injected failure (FAIL_RATE)", reason="injected")
        return await self.inner.upload(src)

    async def delivered(self, src: Source) -> bool:
        return await self.inner.delivered(src)

    async def probe(self) -> None:
        await self.inner.probe()

    async def survey(self) -> list[tuple[str, str]]:
        return await self.inner.survey()

    @property
    def last_answer(self) -> float:
        return self.inner.last_answer

    async def abort_upload(self, key: str, upload_id: str) -> None:
        await self.inner.abort_upload(key, upload_id)

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        return await self.inner.stale_uploads(older_than)


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings,
    *,
    on_slowdown: Callable[[], None] | None = None,
) -> Any:
    """The configured destination as an async context manager."""
    scheme, _, _ = parse_destination(settings.destination)
    async with AsyncExitStack() as stack:
        inner: Store
        if scheme == "noop":
            inner = await stack.enter_async_context(NoopStore(settings))
        else:
            inner = await stack.enter_async_context(S3Store(settings, on_slowdown=on_slowdown))
        yield FaultyStore(inner, settings.fail_rate) if settings.fail_rate > 0 else inner
