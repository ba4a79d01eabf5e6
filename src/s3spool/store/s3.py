"""The S3 store: one aiobotocore client per process, bodies through one sender.

This module and ``sender.py`` are the boundary with botocore: every botocore/aiohttp error
is translated (``s3errors.translate``) into ``errors.py``'s classes there.  botocore's
``standard`` retry mode retries single requests, a failed part is retried alone
(``multipart.py``), and the pipeline retries whole files on top of that.  What the store
answers is checked against the file by ``verify.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from s3spool.config.settings import Settings, check_ca_bundle, tls_verify
from s3spool.errors import ConfigError, FileChanged, PermanentError, StoreUnavailable, UploadError
from s3spool.spool.spool import Source
from s3spool.store import multipart
from s3spool.store.bandwidth import RouteLimit
from s3spool.store.base import INLINE_READ_MAX, ByteBudget, Delivery, Encoded, guess_type
from s3spool.store.bodies import FileRange, digest_range, held_bytes, read_exact
from s3spool.store.digests import BodyDigest, Checksummer
from s3spool.store.objectopts import object_options
from s3spool.store.s3errors import SLOWDOWN_CODES, is_unsupported, translate
from s3spool.store.sender import Body, Sender
from s3spool.store.verify import StoreFacts, Verifier, delivery_of

log = logging.getLogger("s3spool.store")


class S3Store:
    """Uploads to S3 or an S3-compatible store through one aiobotocore client."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_slowdown: Callable[[], None] | None = None,
        budget: ByteBudget | None = None,
        limiter: RouteLimit | None = None,
    ) -> None:
        self.bucket, self.prefix = settings.bucket, settings.prefix
        self._limiter = limiter  # the route's bandwidth limit (None: never limited)
        self.s = settings
        self.ck = Checksummer(settings.checksum)
        self.budget = budget or ByteBudget(settings.buffer_limit)
        #: monotonic time of the last answer from the store (any status): idle probes skip
        #: a store that answered recently
        self.last_answer = 0.0
        self._on_slowdown = on_slowdown
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._sender: Sender | None = None
        self._instance = settings.resolved_instance_id
        self.options = object_options(settings)  # METADATA, TAGS, CACHE_CONTROL, ...
        self.verifier = Verifier(
            self.ck,
            send_checksum=bool(self.ck.param) and not settings.checksum_compat,
            etag_opaque=settings.sse == "aws:kms",  # SSE-KMS ETags are not MD5s
        )

    async def __aenter__(self) -> S3Store:
        from s3spool.store.sender import make_sender

        s = self.s
        from botocore.exceptions import ProfileNotFound

        try:
            self._client = await self._stack.enter_async_context(client_for(s))
        except ProfileNotFound:
            raise ConfigError(
                f"S3SPOOL_PROFILE (--profile): no profile {s.profile!r} in the shared AWS "
                "config files (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)"
            ) from None
        self._client.meta.events.register("response-received.s3.*", self._observe)
        self._sender = await make_sender(
            self._client,
            self.bucket,
            direct=s.direct_put,
            on_slowdown=self._on_answer_slowdown,
            limiter=self._limiter,
        )
        facts = self.verifier.facts
        facts.endpoint = self._client.meta.endpoint_url
        base = getattr(self._sender, "base_url", "")
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
        # Every attempt passes here, including the ones botocore retries by itself,
        # so throttling is seen even when the retry hides it from the caller.
        self.last_answer = time.monotonic()
        if not parsed_response or not self._on_slowdown:
            return
        code = (parsed_response.get("Error") or {}).get("Code")
        status = (parsed_response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in SLOWDOWN_CODES or status == 503:
            self._on_slowdown()

    @property
    def facts(self) -> StoreFacts:
        return self.verifier.facts

    @property
    def client(self) -> Any:
        return self._client

    @property
    def sender(self) -> Sender:
        assert self._sender is not None, "use S3Store as an async context manager"
        return self._sender

    def answered(self) -> None:
        """The store answered a body: idle probes can wait."""
        self.last_answer = time.monotonic()

    # --- request helpers --------------------------------------------------------------------
    def object_params(self, key: str, src: Source) -> dict[str, Any]:
        s = self.s
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Metadata": {
                "s3spool-mtime": f"{src.mtime_ns / 1e9:.6f}",
                "s3spool-instance": self._instance,
            },
        }
        ctype = s.content_type or guess_type(src.name)
        if isinstance(src, Encoded):  # a compressed copy (compress.py) says what it holds
            ctype = src.describe(params)
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

    async def body(
        self, fd: int, offset: int, length: int, content_md5: bool
    ) -> tuple[Body, BodyDigest, str | None]:
        return await body_of(self.sender, self.ck, fd, offset, length, content_md5)

    # --- Store protocol ---------------------------------------------------------------------
    async def upload(self, src: Source) -> Delivery:
        if src.upload_id is not None or src.size >= self.s.multipart_threshold:
            return await multipart.upload(self, src)
        return await self._put(src)

    async def _put(self, src: Source) -> Delivery:
        assert self._sender is not None
        async with self.budget.hold(held_bytes(self._sender.streams, src.size)):
            body, digest, payload = await self.body(src.fd, 0, src.size, self.ck.enabled)
            return await self.send_put(src, body, digest, payload)

    async def send_put(
        self, src: Source, body: Body, digest: BodyDigest, payload: str | None
    ) -> Delivery:
        assert self._sender is not None
        params = self.object_params(src.key, src)
        params.update(self.digest_params(digest))
        if digest.checksum is not None:
            params["Metadata"]["s3spool-checksum"] = self.ck.label(digest.checksum_b64) or ""
        if self.s.overwrite == "never":
            params["IfNoneMatch"] = "*"
        try:
            resp = await self._sender.send("PutObject", params, body, payload)
        except UploadError as exc:
            raise self.precondition_or(exc, src, "PutObject") from None
        self.answered()
        self.verifier.body("PutObject", resp, digest)
        return delivery_of(src, resp, self.ck.label(digest.checksum_b64))

    def precondition_or(self, err: UploadError, src: Source, what: str) -> UploadError:
        if err.reason == "precondition_failed":
            # OVERWRITE=never and the key exists; the caller decides whether it is ours.
            return PermanentError(
                f"{what}: an object already exists at {src.key!r} (OVERWRITE=never)",
                reason="exists",
            )
        return err

    async def abort_quietly(self, key: str, upload_id: str) -> None:
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
                self.verifier.tell_once(
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
        self.verifier.tell_once(
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
        return self.verifier.describe()

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
            head = await self.head(src.key)
        except UploadError as err:
            if err.reason in ("404", "NoSuchKey", "http_404", "NotFound"):
                return False
            raise
        return await self.verifier.matches_stored(src, head, self.s.part_size)

    async def head(self, key: str) -> dict[str, Any]:
        """HeadObject with checksum mode."""
        try:
            head: dict[str, Any] = await self.client.head_object(
                Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
        except Exception as exc:
            raise translate(exc, "HeadObject") from None
        return head

    async def test_write(self) -> str:
        """Write (and delete) test objects: what only a write shows (``s3spool check``)."""
        from s3spool.store.probe import test_write

        return await test_write(self)


def client_for(s: Settings) -> Any:
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
        # We compute and send checksums ourselves (one pass over the bytes);
        # letting botocore add its own CRC32 would hash everything twice.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    # PROFILE picks a profile of the shared config files (a route's own credentials);
    # None keeps botocore's chain, AWS_PROFILE included.
    session = AioSession(profile=s.profile)
    verify: bool | str | None
    if plain_http(s.endpoint_url):
        # no certificate to check; botocore would still load a CA bundle before the first
        # request (~35 ms of every run here, bench/RESULTS.md)
        verify = False
    else:
        verify = tls_verify(s)
        bundle = session.get_config_variable("ca_bundle") if verify is None else None
        if bundle:  # botocore's chain names a file: a bad one is a setting to fix
            try:
                check_ca_bundle(bundle, "AWS_CA_BUNDLE (or the profile's ca_bundle)")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    return session.create_client("s3", endpoint_url=s.endpoint_url, config=config, verify=verify)


def plain_http(endpoint_url: str | None) -> bool:
    """Does the client reach its endpoint without TLS: an http:// endpoint, directly or
    through a plain-HTTP proxy?  The proxy is the one botocore picks (``HTTP_PROXY``,
    ``NO_PROXY``); an https:// proxy is a TLS connection whose certificate is checked."""
    if not endpoint_url or not endpoint_url.lower().startswith("http://"):
        return False
    from botocore.utils import get_environ_proxies

    proxy = get_environ_proxies(endpoint_url).get("http")
    return proxy is None or not proxy.strip().lower().startswith("https://")


async def body_of(
    sender: Sender, ck: Checksummer, fd: int, offset: int, length: int, content_md5: bool
) -> tuple[Body, BodyDigest, str | None]:
    """The body to send, its digests and (when signing needs it) its SHA-256.

    Streamed from the file when the sender can (memory: a chunk or two), else read
    into memory; the caller holds the byte budget for in-memory bodies.
    """
    sha = sender.needs_payload_hash(content_md5)
    if sender.streams and length > INLINE_READ_MAX:
        digest, payload = await asyncio.to_thread(digest_range, fd, offset, length, ck, sha)
        return FileRange(fd, offset, length), digest, payload

    if length <= INLINE_READ_MAX:
        data = read_exact(fd, offset, length)
    else:
        data = await asyncio.to_thread(read_exact, fd, offset, length)
    if len(data) != length:
        raise FileChanged(
            f"file shrank while reading ({len(data)} of {length} bytes)", reason="changed"
        )
    digest = ck.body(data) if length <= INLINE_READ_MAX else await asyncio.to_thread(ck.body, data)
    return data, digest, None  # a bytes body is hashed by the signer when needed
