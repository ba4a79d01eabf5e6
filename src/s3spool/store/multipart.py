"""Multipart uploads: a recorded upload continues, parts go up in parallel, a failed part is
retried alone, and the completed object is verified against the file.

Written against ``Parts``, the slice of ``S3Store`` it needs, so this module never imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Protocol

from s3spool.config.settings import Settings
from s3spool.errors import (
    FileChanged,
    PermanentError,
    Refused,
    SlowDown,
    StoreUnavailable,
    TransientError,
    UploadError,
)
from s3spool.spool.spool import Source
from s3spool.store.aimd import retry_delay
from s3spool.store.base import ByteBudget, Delivery
from s3spool.store.bodies import held_bytes
from s3spool.store.digests import BodyDigest, Checksummer
from s3spool.store.s3errors import translate
from s3spool.store.sender import Body, Sender
from s3spool.store.verify import Verifier, delivery_of

log = logging.getLogger("s3spool.store")


class Parts(Protocol):
    """What a multipart upload needs from the store."""

    s: Settings
    bucket: str
    ck: Checksummer
    budget: ByteBudget
    verifier: Verifier

    @property
    def client(self) -> Any: ...

    @property
    def sender(self) -> Sender: ...

    def object_params(self, key: str, src: Source) -> dict[str, Any]: ...

    def digest_params(self, d: BodyDigest) -> dict[str, Any]: ...

    async def body(
        self, fd: int, offset: int, length: int, content_md5: bool
    ) -> tuple[Body, BodyDigest, str | None]: ...

    def answered(self) -> None: ...

    async def abort_quietly(self, key: str, upload_id: str) -> None: ...

    def precondition_or(self, err: UploadError, src: Source, what: str) -> UploadError: ...

    async def head(self, key: str) -> dict[str, Any]: ...


async def upload(s3: Parts, src: Source) -> Delivery:
    """A multipart upload of ``src``: a recorded one continues, parts in parallel, each
    retried alone; the completed object is verified against the file."""
    sender = s3.sender
    client = s3.client
    part_size = src.part_size or s3.s.part_size
    count = max(1, -(-src.size // part_size))
    upload_id = src.upload_id
    stored: dict[int, dict[str, Any]] = {}
    if upload_id is not None:
        found = await _stored_parts(s3, src.key, upload_id)
        if found is None:
            await s3.abort_quietly(src.key, upload_id)
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
        params = s3.object_params(src.key, src)
        params["Metadata"]["s3spool-part-size"] = str(part_size)
        if s3.verifier.send_checksum:
            params["ChecksumAlgorithm"] = s3.ck.param
        try:
            created = await client.create_multipart_upload(**params)
        except Exception as exc:
            raise translate(exc, "CreateMultipartUpload") from None
        upload_id = str(created["UploadId"])
    src.uploading(upload_id, part_size)
    digests: list[BodyDigest | None] = [None] * count
    results: list[dict[str, Any] | None] = [None] * count
    sem = asyncio.Semaphore(s3.s.part_concurrency)
    reused = 0

    async def one(index: int) -> None:
        nonlocal reused
        number = index + 1
        offset = index * part_size
        length = min(part_size, src.size - offset)
        what = f"UploadPart {number}/{count}"
        async with sem, s3.budget.hold(held_bytes(sender.streams, length)):
            body, digest, payload = await s3.body(src.fd, offset, length, s3.ck.enabled)
            digests[index] = digest
            part: dict[str, Any] = {"PartNumber": number}
            if digest.checksum is not None and s3.verifier.send_checksum:
                part[f"Checksum{s3.ck.param}"] = digest.checksum_b64
            old = stored.get(number)
            if old is not None and s3.verifier.part_matches(old, length, digest):
                part["ETag"] = old.get("ETag")
                results[index] = part
                reused += 1
                return
            params = {
                "Bucket": s3.bucket,
                "Key": src.key,
                "UploadId": upload_id,
                "PartNumber": number,
                **s3.digest_params(digest),
            }
            for attempt in itertools.count(1):
                try:
                    resp = await sender.send("UploadPart", params, body, payload)
                    s3.answered()
                    s3.verifier.body(what, resp, digest)
                    break
                except TransientError as exc:
                    # one part failing must not cost the parts already sent
                    if isinstance(exc, FileChanged) or attempt >= s3.s.retry_attempts:
                        raise
                    delay = retry_delay(
                        attempt,
                        s3.s.retry_backoff,
                        s3.s.retry_backoff_max,
                        slowdown=isinstance(exc, SlowDown),
                    )
                    log.info("%s of %r: %s; retrying the part in %.2fs", what, src.key, exc, delay)
                    await asyncio.sleep(delay)
            part["ETag"] = resp.get("ETag")
            results[index] = part

    try:
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(count):
                    tg.create_task(one(i))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        extra: dict[str, Any] = {}
        if s3.s.overwrite == "never":
            extra["IfNoneMatch"] = "*"
        try:
            resp = await client.complete_multipart_upload(
                Bucket=s3.bucket,
                Key=src.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [p for p in results if p is not None]},
                **extra,
            )
        except Exception as exc:
            raise s3.precondition_or(
                translate(exc, "CompleteMultipartUpload"), src, "CompleteMultipartUpload"
            ) from None
    except asyncio.CancelledError:
        # Shutdown: keep the upload; its id is recorded with the claim, so the next
        # start continues from the parts already stored.
        raise
    except BaseException:
        # Leftover parts are billed forever: abort what cannot be resumed.
        await asyncio.shield(s3.abort_quietly(src.key, upload_id))
        src.uploading(None, part_size)
        raise
    src.uploading(None, part_size)
    if reused:
        log.info("multipart upload of %r resumed: %d of %d parts reused", src.key, reused, count)
    checksum = await s3.verifier.whole_object(
        src, resp, [d for d in digests if d is not None], lambda: s3.head(src.key)
    )
    return delivery_of(src, resp, checksum, parts=count)


async def _stored_parts(s3: Parts, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
    """Parts the store holds for a recorded upload; None if it is gone or unlistable."""
    have: dict[int, dict[str, Any]] = {}
    try:
        paginator = s3.client.get_paginator("list_parts")
        async for page in paginator.paginate(Bucket=s3.bucket, Key=key, UploadId=upload_id):
            for part in page.get("Parts", []) or []:
                have[int(part["PartNumber"])] = part
    except Exception as exc:
        err = translate(exc, "ListParts")
        if err.reason in ("NoSuchUpload", "not_implemented", "http_404", "404"):
            log.info("cannot resume multipart upload %s of %r: %s", upload_id, key, err)
            return None
        raise err from None
    return have


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
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
