"""Destinations: the S3 store (aiobotocore), ``noop://`` and fault injection.

This module is the boundary with botocore: every botocore/aiohttp error is
translated into ``errors.py``'s classes here, so nothing above it imports
botocore.

One client per process, opened as an async context manager, with an aiohttp
pool sized to the configured concurrency.  botocore's ``standard`` retry mode
retries single requests; the pipeline retries whole files on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
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

from .checksums import BodyDigest, Checksummer
from .errors import (
    FileChanged,
    PermanentError,
    SlowDown,
    StoreUnavailable,
    TransientError,
    UploadError,
)
from .settings import Settings, parse_destination

log = logging.getLogger(__name__)

#: Reading a small file inline is cheaper than a thread hop; above this, use a thread.
INLINE_READ_MAX = 1024 * 1024

_GLOBAL_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "InvalidBucketName",
    }
)
_SLOWDOWN_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "BadDigest",
        "InvalidDigest",
        "XAmzContentSHA256Mismatch",
        "NoSuchUpload",
        "IncompleteBody",
        "OperationAborted",
    }
)
_PERMANENT_CODES = frozenset(
    {"EntityTooLarge", "EntityTooSmall", "KeyTooLongError", "InvalidStorageClass", "InvalidPart"}
)
#: PutObject parameters sent as plain headers by the direct path
_HEADER = {
    "ContentType": "content-type",
    "ContentMD5": "content-md5",
    "ACL": "x-amz-acl",
    "StorageClass": "x-amz-storage-class",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "IfNoneMatch": "if-none-match",
}
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
    #: set by a multipart upload as soon as the store has assigned an id
    on_upload_id: Callable[[str | None], None] | None = None


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


def _read_exact(fd: int, offset: int, length: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def classify_error(code: str, status: int, msg: str) -> UploadError:
    """The pipeline's error class for an S3 error code and HTTP status."""
    if code in _SLOWDOWN_CODES or status == 503:
        return SlowDown(msg, reason="slowdown")
    if code in _GLOBAL_CODES or (status == 403 and not code):
        return StoreUnavailable(msg, reason=code or "forbidden")
    if code in _PERMANENT_CODES:
        return PermanentError(msg, reason=code)
    if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
        return TransientError(msg, reason=code or f"http_{status}")
    if code == "PreconditionFailed" or status == 412:
        return PermanentError(msg, reason="precondition_failed")
    return PermanentError(msg, reason=code or f"http_{status}")


def translate(exc: BaseException, what: str) -> UploadError:
    """Map a botocore / aiohttp / OS error to the pipeline's classes."""
    from botocore import exceptions as bex

    if isinstance(exc, UploadError):
        return exc
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        msg = f"{what}: {code or status} {err.get('Message') or ''}".strip()
        return classify_error(code, status, msg)
    if isinstance(
        exc,
        bex.NoCredentialsError
        | bex.PartialCredentialsError
        | bex.CredentialRetrievalError
        | bex.EndpointConnectionError
        | bex.ConnectTimeoutError
        | bex.InvalidRegionError,
    ):
        return StoreUnavailable(f"{what}: {exc}", reason=type(exc).__name__)
    if isinstance(exc, bex.BotoCoreError | ConnectionError | TimeoutError | OSError):
        return TransientError(f"{what}: {type(exc).__name__}: {exc}", reason=type(exc).__name__)
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return TransientError(f"{what}: {type(exc).__name__}: {exc}", reason="connection")
    except ImportError:  # pragma: no cover
        pass
    return TransientError(f"{what}: {type(exc).__name__}: {exc}", reason=type(exc).__name__)


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
        self._on_slowdown = on_slowdown
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._direct: Any = None  # direct.DirectPut when DIRECT_PUT is on
        self._instance = settings.resolved_instance_id

    async def __aenter__(self) -> S3Store:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

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
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=s.endpoint_url, config=config)
        )
        self._client.meta.events.register("response-received.s3.*", self._observe)
        credentials = await session.get_credentials()
        if s.direct_put and credentials is not None:
            from .direct import DirectPut

            direct = await DirectPut.for_client(
                self._client,
                self.bucket,
                credentials,
                pool=pool,
                connect_timeout=s.connect_timeout,
                read_timeout=s.read_timeout,
                on_slowdown=self._on_slowdown,
            )
            self._direct = await self._stack.enter_async_context(direct)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _observe(self, parsed_response: Any = None, **_: Any) -> None:
        # Every attempt passes here, including the ones botocore retries by itself,
        # so throttling is seen even when the retry hides it from the caller.
        if not parsed_response or not self._on_slowdown:
            return
        code = (parsed_response.get("Error") or {}).get("Code")
        status = (parsed_response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in _SLOWDOWN_CODES or status == 503:
            self._on_slowdown()

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
        if d.checksum is not None and self.ck.param and not self.s.checksum_compat:
            params[f"Checksum{self.ck.param}"] = d.checksum_b64
        return params

    async def _read(
        self, fd: int, offset: int, length: int
    ) -> tuple[bytes, BodyDigest, str | None]:
        """Read and digest a body; large ones in a thread (hashlib releases the GIL)."""
        sign_body = self._needs_payload_hash()

        def work() -> tuple[bytes, BodyDigest, str | None]:
            data = _read_exact(fd, offset, length)
            payload = hashlib.sha256(data).hexdigest() if sign_body else None
            return data, self.ck.body(data), payload

        if length <= INLINE_READ_MAX:
            data, digest, payload = work()
        else:
            data, digest, payload = await asyncio.to_thread(work)
        if len(data) != length:
            raise FileChanged(
                f"file shrank while reading ({len(data)} of {length} bytes)", reason="changed"
            )
        return data, digest, payload

    def _check_etag(self, what: str, etag: str | None, expected: str | None) -> None:
        if not etag or not expected or self.s.sse == "aws:kms":
            return  # SSE-KMS ETags are not MD5s
        etag = etag.strip('"')
        if (_MD5_HEX.match(etag) or _MPU_ETAG.match(etag)) and etag != expected:
            raise TransientError(
                f"{what}: store reported ETag {etag}, expected {expected} (body corrupted?)",
                reason="verify_failed",
            )

    def _check_echo(self, what: str, resp: dict[str, Any], expected: str | None) -> None:
        if not self.ck.param or expected is None:
            return
        echoed = resp.get(f"Checksum{self.ck.param}")
        if echoed and echoed != expected:
            raise TransientError(
                f"{what}: store reported checksum {echoed}, expected {expected}",
                reason="verify_failed",
            )

    # --- Store protocol ---------------------------------------------------------------------
    async def upload(self, src: Source) -> Delivery:
        if src.size >= self.s.multipart_threshold:
            return await self._multipart(src)
        return await self._put(src)

    async def _put(self, src: Source) -> Delivery:
        if self._direct is not None and src.size > INLINE_READ_MAX:
            # hash in one chunked pass, then stream: memory stays at a chunk or two
            from .direct import FileRange

            digest, payload = await asyncio.to_thread(self._digest_range, src.fd, 0, src.size)
            return await self._send_put(src, FileRange(src.fd, 0, src.size), digest, payload)
        async with self.budget.hold(src.size):
            data, digest, payload = await self._read(src.fd, 0, src.size)
            return await self._send_put(src, data, digest, payload)

    async def _send_put(
        self, src: Source, body: Any, digest: BodyDigest, payload: str | None
    ) -> Delivery:
        params = self._object_params(src.key, src)
        params.update(self._digest_params(digest))
        if digest.checksum is not None:
            params["Metadata"]["s3spool-checksum"] = self.ck.label(digest.checksum_b64) or ""
        if self.s.overwrite == "never":
            params["IfNoneMatch"] = "*"
        try:
            if self._direct is not None:
                resp = await self._direct_put(body, params, payload)
            else:
                resp = await self._client.put_object(Body=body, **params)
        except Exception as exc:
            raise self._precondition_or(exc, src, "PutObject") from None
        etag = str(resp.get("ETag", "")).strip('"') or None
        self._check_etag("PutObject", etag, digest.md5.hex() if digest.md5 else None)
        self._check_echo("PutObject", resp, digest.checksum_b64)
        return Delivery(src.key, src.size, etag=etag, checksum=self.ck.label(digest.checksum_b64))

    def _needs_payload_hash(self) -> bool:
        """SigV4 over plain HTTP must cover the body unless a Content-MD5 header does."""
        return self._direct is not None and not self._direct.secure and not self.ck.enabled

    def _digest_range(self, fd: int, offset: int, length: int) -> tuple[BodyDigest, str | None]:
        """Digests (and the SigV4 payload hash over plain HTTP) of a file range, chunk by chunk.

        The bytes are read again when sent; a change in between makes the store reject
        the body (Content-MD5) and the after-upload stat check send it again.
        """
        from .direct import STREAM_CHUNK

        stream = self.ck.stream()
        sha = hashlib.sha256() if self._needs_payload_hash() else None
        pos, end = offset, offset + length
        while pos < end:
            chunk = os.pread(fd, min(STREAM_CHUNK, end - pos), pos)
            if not chunk:
                raise FileChanged("file shrank while it was being read", reason="changed")
            stream.update(chunk)
            if sha is not None:
                sha.update(chunk)
            pos += len(chunk)
        return stream.result(), (sha.hexdigest() if sha is not None else None)

    async def _direct_put(
        self, data: bytes | Any, params: dict[str, Any], payload: str | None
    ) -> dict[str, Any]:
        """PutObject through ``direct.DirectPut``; answers in botocore's response shape."""
        headers = {_HEADER[name]: str(value) for name, value in params.items() if name in _HEADER}
        for name, value in params["Metadata"].items():
            headers[f"x-amz-meta-{name}"] = value
        if self.ck.param:
            echo_header = f"x-amz-checksum-{self.ck.param.lower()}"
            if f"Checksum{self.ck.param}" in params:
                headers[echo_header] = params[f"Checksum{self.ck.param}"]
        got = await self._direct.put(params["Key"], data, headers, payload_hash=payload)
        return self._botocore_shape(got)

    def _botocore_shape(self, got: dict[str, str]) -> dict[str, Any]:
        resp: dict[str, Any] = {"ETag": got.get("etag")}
        if self.ck.param and got.get(f"x-amz-checksum-{self.ck.param.lower()}"):
            resp[f"Checksum{self.ck.param}"] = got[f"x-amz-checksum-{self.ck.param.lower()}"]
        return resp

    def _precondition_or(self, exc: Exception, src: Source, what: str) -> UploadError:
        err = translate(exc, what)
        if err.reason == "precondition_failed":
            # OVERWRITE=never and the key exists; the caller decides whether it is ours.
            return PermanentError(
                f"{what}: an object already exists at {src.key!r} (OVERWRITE=never)",
                reason="exists",
            )
        return err

    async def _multipart(self, src: Source) -> Delivery:
        from .direct import FileRange

        client = self._client
        params = self._object_params(src.key, src)
        params["Metadata"]["s3spool-part-size"] = str(self.s.part_size)
        if self.ck.param and not self.s.checksum_compat:
            params["ChecksumAlgorithm"] = self.ck.param
        try:
            created = await client.create_multipart_upload(**params)
        except Exception as exc:
            raise translate(exc, "CreateMultipartUpload") from None
        upload_id = created["UploadId"]
        if src.on_upload_id:
            src.on_upload_id(upload_id)
        part_size = self.s.part_size
        count = max(1, -(-src.size // part_size))
        digests: list[BodyDigest | None] = [None] * count
        results: list[dict[str, Any] | None] = [None] * count
        sem = asyncio.Semaphore(self.s.part_concurrency)

        async def one(index: int) -> None:
            offset = index * part_size
            length = min(part_size, src.size - offset)
            async with sem:
                try:
                    if self._direct is not None:
                        # streamed: no part-sized buffer, no copy in the socket's buffer
                        digest, payload = await asyncio.to_thread(
                            self._digest_range, src.fd, offset, length
                        )
                        headers = {
                            _HEADER[k]: v
                            for k, v in self._digest_params(digest).items()
                            if k in _HEADER
                        }
                        if self.ck.param and not self.s.checksum_compat and digest.checksum:
                            headers[f"x-amz-checksum-{self.ck.param.lower()}"] = (
                                digest.checksum_b64 or ""
                            )
                        got = await self._direct.put(
                            src.key,
                            FileRange(src.fd, offset, length),
                            headers,
                            query={"partNumber": str(index + 1), "uploadId": upload_id},
                            what=f"UploadPart {index + 1}/{count}",
                            payload_hash=payload,
                        )
                        resp = self._botocore_shape(got)
                    else:
                        async with self.budget.hold(length):
                            data, digest, _ = await self._read(src.fd, offset, length)
                            resp = await client.upload_part(
                                Bucket=self.bucket,
                                Key=src.key,
                                UploadId=upload_id,
                                PartNumber=index + 1,
                                Body=data,
                                **self._digest_params(digest),
                            )
                            del data
                except FileChanged:
                    raise
                except Exception as exc:
                    raise translate(exc, f"UploadPart {index + 1}/{count}") from None
            etag = str(resp.get("ETag", "")).strip('"')
            self._check_etag(
                f"UploadPart {index + 1}", etag, digest.md5.hex() if digest.md5 else None
            )
            self._check_echo(f"UploadPart {index + 1}", resp, digest.checksum_b64)
            part: dict[str, Any] = {"PartNumber": index + 1, "ETag": resp.get("ETag")}
            if self.ck.param and not self.s.checksum_compat and digest.checksum is not None:
                part[f"Checksum{self.ck.param}"] = digest.checksum_b64
            digests[index] = digest
            results[index] = part

        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    for i in range(count):
                        tg.create_task(one(i))
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
            done_parts = [p for p in results if p is not None]
            extra: dict[str, Any] = {}
            if self.s.overwrite == "never":
                extra["IfNoneMatch"] = "*"
            try:
                resp = await client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=src.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done_parts},
                    **extra,
                )
            except Exception as exc:
                raise self._precondition_or(exc, src, "CompleteMultipartUpload") from None
        except BaseException:
            # Leftover parts are billed forever: abort even when cancelled.
            await asyncio.shield(self._abort_quietly(src.key, upload_id))
            if src.on_upload_id:
                src.on_upload_id(None)
            raise
        if src.on_upload_id:
            src.on_upload_id(None)
        etag_expected, checksum_expected = self.ck.composite([d for d in digests if d])
        etag = str(resp.get("ETag", "")).strip('"') or None
        self._check_etag("CompleteMultipartUpload", etag, etag_expected)
        self._check_echo("CompleteMultipartUpload", resp, checksum_expected)
        return Delivery(
            src.key, src.size, etag=etag, checksum=self.ck.label(checksum_expected), parts=count
        )

    async def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            await self.abort_upload(key, upload_id)
        except UploadError as exc:
            log.warning("could not abort multipart upload %s of %r: %s", upload_id, key, exc)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except Exception as exc:
            err = translate(exc, "AbortMultipartUpload")
            if err.reason in ("NoSuchUpload",):
                return
            raise err from None

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads under the prefix started before ``older_than``."""
        found: list[tuple[str, str]] = []
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
            raise err from None
        return found

    async def probe(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = translate(exc, "HeadBucket")
            if isinstance(err, StoreUnavailable | TransientError):
                raise StoreUnavailable(str(err), reason=err.reason) from None
            raise StoreUnavailable(str(err), reason=err.reason) from None

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
        """Put and delete a small object under the prefix (``s3spool check``); returns its key.

        The PUT carries the same headers as a real upload (checksum, SSE, ACL,
        storage class, If-None-Match), so a store or policy that would refuse
        uploads refuses this too.  A failed DELETE raises ``PermanentError``
        with reason ``test_object_left``: uploads need no s3:DeleteObject.
        """
        import secrets

        key = f"{self.prefix}.s3spool-check-{secrets.token_hex(8)}"
        data = b"s3spool check: safe to delete\n"
        src = Source(-1, len(data), time.time_ns(), key, "check.txt")
        # the same sender as a real upload (direct signing included), so its quirks show here
        await self._send_put(src, data, self.ck.body(data), None)
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            err = translate(exc, f"DeleteObject {key!r}")
            raise PermanentError(
                f"the test object {key!r} was left behind ({err}); remove it by hand",
                reason="test_object_left",
            ) from None
        return key


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
            stream.update(_read_exact(fd, offset, min(8 * 1024 * 1024, size - offset)))
        return _FileDigest(stream.md5_hex(), stream.checksum_b64())
    parts = [
        ck.body(_read_exact(fd, off, min(part_size, size - off)))
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
    for cls in (StoreUnavailable, PermanentError, SlowDown, TransientError):
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
