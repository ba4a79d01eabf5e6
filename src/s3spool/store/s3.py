"""The S3 store: one aiobotocore client, bodies through one sender, answers checked by
``verify.py``.  botocore retries a request, a failed part is retried alone, the pipeline a file."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any, cast

from s3spool import errors
from s3spool.config.settings import MAX_PUT_SIZE, MIB, Settings, check_ca_bundle, tls_verify
from s3spool.spool.pieces import Readable
from s3spool.spool.spool import Source
from s3spool.store.aimd import retry_delay
from s3spool.store.bandwidth import RouteLimit
from s3spool.store.base import INLINE_READ_MAX, ByteBudget, Delivery, guess_type
from s3spool.store.bodies import FileRange, held_bytes, read_exact
from s3spool.store.digests import BodyDigest, Checksummer, digest_range
from s3spool.store.objectopts import object_options
from s3spool.store.s3errors import SLOWDOWN_CODES, s3_errors, store_down
from s3spool.store.sender import Body, Sender, make_sender
from s3spool.store.verify import Verifier, delivery_of

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("s3spool.store")
#: S3's multipart limits; their product is AWS's largest object ("48.8 TiB", 53.7 TB, the
#: "50 TB" of late 2025's announcement)
MAX_PARTS = 10_000
MAX_PART_SIZE = MAX_PUT_SIZE
MAX_OBJECT_SIZE = MAX_PARTS * MAX_PART_SIZE


def part_plan(size: int, part_size: int) -> tuple[int, int]:
    """(part size, part count) of a multipart upload of ``size`` bytes: ``part_size``, grown to
    the smallest whole MiB that fits 10,000 parts where it does not; ``too_large`` past S3's
    largest object, before any byte is sent."""
    if size > MAX_OBJECT_SIZE:
        raise errors.PermanentError(
            f"{size} bytes, more than S3 takes in one object ({MAX_PARTS:,} parts of 5 GiB, "
            f"{MAX_OBJECT_SIZE} bytes)",
            reason="too_large",
        )
    if size > part_size * MAX_PARTS:
        part_size = -(-size // (MAX_PARTS * MIB)) * MIB  # at most 5 GiB: size is in bounds
    return part_size, max(1, -(-size // part_size))


class S3Store:
    """Uploads to S3 or an S3-compatible store through one aiobotocore client."""

    client: S3Client  # set by __aenter__
    sender: Sender

    def __init__(
        self,
        settings: Settings,
        *,
        on_slowdown: Callable[[], None] | None = None,
        budget: ByteBudget | None = None,
        limiter: RouteLimit | None = None,
    ) -> None:
        self.bucket, self.prefix = settings.bucket, settings.prefix
        self._limiter = limiter
        self.s = settings
        self.ck = Checksummer(settings.checksum)
        self.budget = budget or ByteBudget(settings.buffer_limit)
        self.last_answer = 0.0  # monotonic, any status: idle probes skip a busy store
        self._observed = 0  # botocore's requests (each attempt), for the --once summary
        self._on_slowdown = on_slowdown
        self._stack = AsyncExitStack()
        self._instance = settings.resolved_instance_id
        self.options = object_options(settings)
        fixed = {
            "ACL": settings.acl,
            "StorageClass": settings.storage_class,
            "ServerSideEncryption": settings.sse,
            "SSEKMSKeyId": settings.sse_kms_key_id,
        }
        self._fixed = {name: value for name, value in fixed.items() if value}
        self.verifier = Verifier(
            self.ck,
            send_checksum=bool(self.ck.param) and not settings.checksum_compat,
            etag_opaque=settings.sse == "aws:kms",  # SSE-KMS ETags are not MD5s
            where=settings.destination,
        )

    async def __aenter__(self) -> S3Store:
        from botocore.exceptions import ProfileNotFound

        s = self.s
        try:
            self.client = await self._stack.enter_async_context(client_for(s))
        except ProfileNotFound:
            raise errors.ConfigError(
                f"S3SPOOL_PROFILE (--profile): no profile {s.profile!r} in the shared AWS "
                "config files (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)"
            ) from None
        self.client.meta.events.register("response-received.s3.*", self._observe)
        self.sender = await make_sender(
            self.client,
            self.bucket,
            direct=s.direct_put,
            on_slowdown=self._on_answer_slowdown,
            limiter=self._limiter,
        )
        facts = self.verifier.facts
        facts.endpoint = self.client.meta.endpoint_url
        base = getattr(self.sender, "base_url", "")
        if base:
            facts.addressing = "virtual" if f"//{self.bucket}." in base else "path"
        else:
            facts.addressing = s.addressing_style
        if not facts.endpoint.startswith("https:"):
            facts.tls = "plain HTTP"
        elif not s.verify_ssl:
            facts.tls = "TLS, certificate NOT verified (VERIFY_SSL=false)"
        else:
            facts.tls = f"TLS verified against {s.ca_bundle or 'the default CA bundle'}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _on_answer_slowdown(self) -> None:
        self.last_answer = time.monotonic()
        if self._on_slowdown:
            self._on_slowdown()

    def _observe(self, parsed_response: Any = None, **_: Any) -> None:
        # every attempt passes here: throttling shows even when botocore's retry hides it
        self.last_answer = time.monotonic()
        self._observed += 1
        if not parsed_response or not self._on_slowdown:
            return
        code = (parsed_response.get("Error") or {}).get("Code")
        status = (parsed_response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in SLOWDOWN_CODES or status == 503:
            self._on_slowdown()

    def object_params(self, src: Source) -> dict[str, Any]:
        s = self.s
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": src.key,
            "Metadata": {
                "s3spool-mtime": f"{src.mtime_ns / 1e9:.6f}",
                "s3spool-instance": self._instance,
            },
        }
        if src.metadata:  # a compressed copy says what it holds (run/compress.py)
            params["Metadata"].update(src.metadata)
        if src.content_encoding:
            params["ContentEncoding"] = src.content_encoding
        ctype = src.content_type or s.content_type or guess_type(src.name)
        if ctype:
            params["ContentType"] = ctype
        params.update(self._fixed)
        if self.options is not None:
            self.options.apply(params, src)
        return params

    def digest_params(self, d: BodyDigest) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if d.md5 is not None:
            params["ContentMD5"] = d.md5_b64
        if d.checksum is not None and self.verifier.send_checksum:
            params[f"Checksum{self.ck.param}"] = d.checksum_b64
        return params

    async def upload(self, src: Source) -> Delivery:
        if not src.unpacked and (src.upload_id is not None or src.size >= self.s.multipart_from):
            return await self._multipart(src)
        async with self.budget.hold(held_bytes(self.sender.streams, src.size)):
            body, digest, payload = await self._body(src.reader(), 0, src.size)
            return await self.send_put(src, body, digest, payload)

    async def send_put(
        self, src: Source, body: Body, digest: BodyDigest, payload: str | None
    ) -> Delivery:
        params = self.object_params(src)
        params.update(self.digest_params(digest))
        label = self.ck.label(digest.checksum_b64)
        if label:
            params["Metadata"]["s3spool-checksum"] = label
        if self.s.overwrite == "never":
            params["IfNoneMatch"] = "*"
        try:
            resp = await self.sender.send("PutObject", params, body, payload)
        except errors.PreconditionFailed:
            raise _exists(src, "PutObject") from None
        self.last_answer = time.monotonic()
        if not src.unpacked:  # an unpacked tar's answer is not its MD5 (the JuiceFS gateway)
            self.verifier.body("PutObject", resp, digest)
        return delivery_of(src, resp, label)

    async def abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            await self.abort_upload(key, upload_id)
        except errors.UploadError as exc:
            log.warning("could not abort multipart upload %s of %r: %s", upload_id, key, exc)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        facts = self.verifier.facts
        if facts.abort_uploads is False:
            return
        try:
            with s3_errors("AbortMultipartUpload"):
                await self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
            facts.abort_uploads = True
        except errors.NoSuchUpload:
            return
        except errors.Unsupported as err:
            facts.abort_uploads = False
            self.verifier.tell_once(
                "abort",
                logging.WARNING,
                "the store does not support AbortMultipartUpload (%s): unfinished uploads "
                "stay until the store expires them (set a lifecycle rule)",
                err,
            )

    async def listed(self, keys: list[str]) -> dict[str, tuple[int, str | None]]:
        """Size and ETag of those of ``keys`` (sorted, in S3's order) the store holds. Each
        ListObjectsV2 starts at the next key not yet seen: one request per 1,000 keys where
        they are close, about one per key where many other objects lie between them."""
        wanted = set(keys)
        found: dict[str, tuple[int, str | None]] = {}
        i, after = 0, ""
        while i < len(keys):
            prefix = os.path.commonprefix([keys[i], keys[-1]])  # noqa: RUF071 - keys, not paths
            start = max(after, keys[i][:-1])
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if start.startswith(prefix):  # MinIO refuses a StartAfter outside the prefix
                params["StartAfter"] = start
            with s3_errors("ListObjectsV2"):
                page = await self.client.list_objects_v2(**params)
            objects = page.get("Contents", []) or []
            for obj in objects:
                if obj["Key"] in wanted:
                    etag = str(obj.get("ETag") or "").strip('"') or None
                    found[obj["Key"]] = (int(obj["Size"]), etag)
            if not page.get("IsTruncated") or not objects:
                break
            after = objects[-1]["Key"]
            while i < len(keys) and keys[i] <= after:
                i += 1
        return found

    async def delete(self, key: str) -> None:
        """DeleteObject (a bundle given up, a test object of ``check``); ``UploadError`` if it
        fails."""
        with s3_errors("DeleteObject"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads under the prefix started before ``older_than``."""
        found: list[tuple[str, str]] = []
        if self.verifier.facts.list_uploads is False:
            return found
        try:
            with s3_errors("ListMultipartUploads"):
                paginator = self.client.get_paginator("list_multipart_uploads")
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                    for up in page.get("Uploads", []) or []:
                        initiated = up.get("Initiated")
                        if initiated is not None and initiated.timestamp() < older_than:
                            found.append((up["Key"], up["UploadId"]))
        except errors.NoSuchUpload:
            return found  # some stores answer an empty listing this way
        except errors.Unsupported as err:
            self._no_listing(err)
            return found
        self.verifier.facts.list_uploads = True
        return found

    def _no_listing(self, err: errors.UploadError) -> None:
        self.verifier.facts.list_uploads = False
        self.verifier.tell_once(
            "list-uploads",
            logging.WARNING,
            "the store does not support ListMultipartUploads (%s): the sweep of stale multipart "
            "uploads is off; uploads s3spool recorded are still resumed or aborted",
            err,
        )

    async def probe(self) -> None:
        """HeadBucket; any failure makes the store unavailable, its class and message saying
        why (``store_down``).  A clock far off the store's is corrected, then tried again."""
        for attempt in (1, 2):
            try:
                with s3_errors("HeadBucket"):
                    await self.client.head_bucket(Bucket=self.bucket)
                return
            except errors.ClockSkewed as err:
                if attempt == 2:
                    raise store_down(err, self.bucket) from None
            except errors.UploadError as err:
                raise store_down(err, self.bucket) from None

    async def survey(self) -> list[tuple[str, str]]:
        """Probe the bucket, then what a read can tell: is ListMultipartUploads there?"""
        await self.probe()
        try:
            with s3_errors("ListMultipartUploads"):
                await self.client.list_multipart_uploads(Bucket=self.bucket, MaxUploads=1)
            self.verifier.facts.list_uploads = True
        except errors.NoSuchUpload:  # some stores answer an empty listing this way
            self.verifier.facts.list_uploads = True
        except errors.Unsupported as err:
            self._no_listing(err)
        except errors.UploadError as err:
            log.info("ListMultipartUploads not usable (%s); the sweep will try again", err)
        return self.verifier.describe()

    def where(self) -> str:
        return self.verifier.endpoint()

    @property
    def requests(self) -> int:
        """Requests sent so far, botocore's and the signed sender's."""
        return self._observed + self.sender.sent

    async def delivered(self, src: Source) -> bool:
        """Is ``src.key`` already in the store with this file's bytes?  (crash recovery)"""
        try:
            head = await self.head(src.key)
        except errors.NotFound:
            return False
        return await self.verifier.matches_stored(src, head, src.part_size or self.s.part_size)

    async def head(self, key: str) -> dict[str, Any]:
        """HeadObject with checksum mode."""
        with s3_errors("HeadObject"):
            head = await self.client.head_object(
                Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
        return dict(head)

    async def _multipart(self, src: Source) -> Delivery:
        """A multipart upload of ``src``: a recorded one continues, parts go up in parallel,
        a failed part is retried alone; the completed object is verified against the file."""
        sender = self.sender
        # a recorded part size (a resumed upload) fits its file: the plan keeps it
        part_size, count = part_plan(src.size, src.part_size or self.s.part_size)
        upload_id = src.upload_id
        stored: dict[int, dict[str, Any]] = {}
        if upload_id is not None:
            found = await self._stored_parts(src.key, upload_id)
            if found is None:
                await self.abort_quietly(src.key, upload_id)
                upload_id = None
            else:
                stored = found
                msg = "resuming multipart upload of %r: the store holds %d of %d parts"
                log.info(msg, src.key, len(stored), count)
        if upload_id is None:
            params = self.object_params(src)
            params["Metadata"]["s3spool-part-size"] = str(part_size)
            if self.verifier.send_checksum:
                params["ChecksumAlgorithm"] = self.ck.param
            with s3_errors("CreateMultipartUpload"):
                created = await self.client.create_multipart_upload(**params)
            upload_id = str(created["UploadId"])
        src.uploading(upload_id, part_size)
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
            async with sem, self.budget.hold(held_bytes(sender.streams, length)):
                body, digest, payload = await self._body(src.reader(), offset, length)
                digests[index] = digest
                part: dict[str, Any] = {"PartNumber": number}
                if digest.checksum is not None and self.verifier.send_checksum:
                    part[f"Checksum{self.ck.param}"] = digest.checksum_b64
                old = stored.get(number)
                if old is not None and self.verifier.part_matches(old, length, digest):
                    part["ETag"] = old.get("ETag")
                    results[index] = part
                    reused += 1
                    return
                params = {
                    "Bucket": self.bucket,
                    "Key": src.key,
                    "UploadId": upload_id,
                    "PartNumber": number,
                    **self.digest_params(digest),
                }
                for attempt in itertools.count(1):
                    try:
                        resp = await sender.send("UploadPart", params, body, payload)
                        self.last_answer = time.monotonic()
                        self.verifier.body(what, resp, digest)
                        break
                    except errors.TransientError as exc:
                        # one part failing must not cost the parts already sent
                        if isinstance(exc, errors.FileChanged) or attempt >= self.s.retry_attempts:
                            raise
                        delay = retry_delay(
                            attempt,
                            self.s.retry_backoff,
                            self.s.retry_backoff_max,
                            slowdown=isinstance(exc, errors.SlowDown),
                        )
                        log.info(
                            "%s of %r: %s; retrying the part in %.2fs", what, src.key, exc, delay
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
                raise first_error(group) from None
            parts = [p for p in results if p is not None]
            extra: dict[str, Any] = {"IfNoneMatch": "*"} if self.s.overwrite == "never" else {}
            try:
                with s3_errors("CompleteMultipartUpload"):
                    done = await self.client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=src.key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": cast("list[CompletedPartTypeDef]", parts)},
                        **extra,
                    )
            except errors.PreconditionFailed:
                raise _exists(src, "CompleteMultipartUpload") from None
        except asyncio.CancelledError:
            raise  # shutdown: the upload id is recorded with the claim; the next start resumes
        except BaseException:
            await asyncio.shield(self.abort_quietly(src.key, upload_id))
            src.uploading(None, part_size)
            raise
        src.uploading(None, part_size)
        if reused:
            log.info(
                "multipart upload of %r resumed: %d of %d parts reused", src.key, reused, count
            )
        resp = dict(done)
        checksum = await self.verifier.whole_object(
            src, resp, [d for d in digests if d is not None], lambda: self.head(src.key)
        )
        return delivery_of(src, resp, checksum, parts=count)

    async def _stored_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
        """Parts the store holds for a recorded upload; None if it is gone or unlistable."""
        have: dict[int, dict[str, Any]] = {}
        try:
            with s3_errors("ListParts"):
                paginator = self.client.get_paginator("list_parts")
                pages = paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
                async for page in pages:
                    for part in page.get("Parts", []) or []:
                        have[int(part["PartNumber"])] = dict(part)
        except (errors.NoSuchUpload, errors.NotFound, errors.Unsupported) as err:
            log.info("cannot resume multipart upload %s of %r: %s", upload_id, key, err)
            return None
        return have

    async def _body(
        self, fd: Readable, offset: int, length: int
    ) -> tuple[Body, BodyDigest, str | None]:
        """The body to send (streamed when the sender can, else in memory; the caller holds
        the byte budget), its digests and, for a streamed body the signer needs, its SHA-256."""
        ck = self.ck
        if length <= INLINE_READ_MAX:  # a bytes body is hashed by the signer when needed
            data = read_exact(fd, offset, length)
            return data, ck.body(data), None
        if self.sender.streams:
            sha = self.sender.needs_payload_hash(ck.enabled)
            stream, payload = await asyncio.to_thread(digest_range, fd, offset, length, ck, sha)
            return FileRange(fd, offset, length), stream.result(), payload
        data = await asyncio.to_thread(read_exact, fd, offset, length)
        return data, await asyncio.to_thread(ck.body, data), None


def _exists(src: Source, what: str) -> errors.PreconditionFailed:
    # OVERWRITE=never and the key exists; the pipeline decides whether it is ours.
    return errors.PreconditionFailed(
        f"{what}: an object already exists at {src.key!r} (OVERWRITE=never)", reason="exists"
    )


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The most telling error of the failed parts (a global fault beats a transient one)."""
    for cls in (
        errors.StoreUnavailable,
        errors.Refused,
        errors.PermanentError,
        errors.SlowDown,
        errors.TransientError,
    ):
        for e in group.exceptions:  # the parts' own errors: they start no task groups
            if isinstance(e, cls):
                return e
    return group.exceptions[0]


def client_for(s: Settings) -> AbstractAsyncContextManager[S3Client]:
    """The one aiobotocore S3 client of the process (an async context manager)."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession

    pool = min(max(s.workers, 1) * max(1, s.part_concurrency) + 4, 512)
    config = AioConfig(
        region_name=s.region,
        signature_version="s3v4",
        s3={"addressing_style": s.addressing_style},
        retries={"mode": "standard", "total_max_attempts": 3},
        max_pool_connections=pool,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        # we send our own checksums: botocore's CRC32 would hash everything twice
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    session = AioSession(profile=s.profile)
    verify: bool | str | None
    if plain_http(s.endpoint_url):
        verify = False  # else botocore loads a CA bundle for nothing (bench/RESULTS.md)
    else:
        verify = tls_verify(s)
        bundle = session.get_config_variable("ca_bundle") if verify is None else None
        if bundle:  # botocore's chain names a file: a bad one is a setting to fix
            try:
                check_ca_bundle(bundle, "AWS_CA_BUNDLE (or the profile's ca_bundle)")
            except ValueError as exc:
                raise errors.ConfigError(str(exc)) from None
    client: AbstractAsyncContextManager[S3Client] = session.create_client(
        "s3", endpoint_url=s.endpoint_url, config=config, verify=verify
    )
    return client


def plain_http(endpoint_url: str | None) -> bool:
    """Does the client reach its endpoint without TLS: an http:// endpoint, directly or
    through a plain-HTTP proxy?  The proxy is the one botocore picks (``HTTP_PROXY``,
    ``NO_PROXY``); an https:// proxy is a TLS connection whose certificate is checked."""
    if not endpoint_url or not endpoint_url.lower().startswith("http://"):
        return False
    from botocore.utils import get_environ_proxies

    proxy = get_environ_proxies(endpoint_url).get("http")
    return proxy is None or not proxy.strip().lower().startswith("https://")
