"""Senders of object bodies (PutObject, UploadPart): ``SignedSender`` and ``BotocoreSender``.

``SignedSender`` (the default) sends with the aiohttp session of the botocore client's own
HTTP session (its TLS, timeouts, and the proxy it picks for the endpoint), its refreshed
credentials and its endpoint rules (read once from a presigned URL), signed as botocore's
``S3SigV4Auth`` signs (``sigv4.py``). It leaves out botocore's per-request pipeline (validation,
serialisation, hooks, parsing, the session's wrapper: bench/RESULTS.md) and region redirects: a
bucket in another region sends every later body through botocore.
One deviation, on plain HTTP: a body with a Content-MD5 goes with UNSIGNED-PAYLOAD.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import io
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from urllib.parse import quote, urlsplit

from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth, _host_from_url
from botocore.awsrequest import AWSRequest
from yarl import URL

from s3spool.store import clock, sigv4
from s3spool.store.bandwidth import RouteLimit, Turn
from s3spool.store.bodies import FileRange
from s3spool.store.s3errors import SLOWDOWN_CODES, classify_error, parse_error_body, translate

if TYPE_CHECKING:
    import aiohttp
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger("s3spool.sender")

Op = Literal["PutObject", "UploadPart"]
Body = bytes | FileRange

_PROBE_KEY = "s3spool-endpoint-probe"
#: PutObject/UploadPart parameters sent as plain headers
_HEADER = {
    "ContentType": "Content-Type",
    "ContentMD5": "Content-MD5",
    "ACL": "x-amz-acl",
    "StorageClass": "x-amz-storage-class",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "IfNoneMatch": "If-None-Match",
    # object options (objectopts.py); user metadata goes out with Metadata as x-amz-meta-*
    "Tagging": "x-amz-tagging",
    "CacheControl": "Cache-Control",
    "ContentDisposition": "Content-Disposition",
    "ContentEncoding": "Content-Encoding",  # COMPRESS_MODE=content-encoding (compress.py)
}
_CHECKSUM_PARAMS = ("ChecksumCRC32C", "ChecksumCRC32", "ChecksumSHA256", "ChecksumSHA1")
_REDIRECT_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed"})
#: The turn ``BotocoreSender.send`` waited for, handed to its ``before-send`` handler (the
#: same task: botocore awaits the handler inside the call)
_TURN: contextvars.ContextVar[Turn | None] = contextvars.ContextVar("s3spool_turn", default=None)


class Sender(Protocol):
    """Sends one object body (a whole object or a part): botocore's PutObject/UploadPart
    ``params`` in, botocore's answer out (ETag, Checksum*, VersionId); ``UploadError`` raised."""

    #: True: bodies may be ``FileRange`` (streamed from the file, never held in memory)
    streams: bool
    #: requests sent on its own (botocore's are counted by the store's response hook)
    sent: int

    def needs_payload_hash(self, content_md5: bool) -> bool:
        """Must a streamed body's SHA-256 be computed (in the digest pass) to sign it?"""
        ...

    async def send(
        self, op: Op, params: dict[str, Any], body: Body, payload_sha256: str | None = None
    ) -> dict[str, Any]: ...


def _what(op: Op, params: dict[str, Any]) -> str:
    return f"UploadPart {params['PartNumber']}" if op == "UploadPart" else op


class BotocoreSender:
    """Every body through botocore's own ``put_object`` / ``upload_part``."""

    streams = False
    sent = 0  # botocore's requests: the store's response hook counts them

    def __init__(self, client: S3Client, limiter: RouteLimit | None = None) -> None:
        self._client = client
        self._limit = limiter
        if limiter is not None:
            for op in ("PutObject", "UploadPart"):
                client.meta.events.register(
                    f"before-send.s3.{op}", self._pace, unique_id=f"s3spool-pace-{op}"
                )

    async def _pace(self, request: Any, **_: Any) -> None:
        """botocore is about to send a signed body: pace it (its first attempt goes on the
        turn ``send`` waited for; a retry waits for a turn of its own)."""
        limit = self._limit
        if limit is None or limit.active is None:
            return
        turn = _TURN.get()
        _TURN.set(None)
        body = request.body  # botocore hands our bytes over in a BytesIO
        if isinstance(body, io.BytesIO):
            data = body.getvalue()[body.tell() :]  # the very bytes, no copy, at position 0
        elif isinstance(body, bytes | bytearray):
            data = bytes(body)
        else:
            return
        if turn is None:
            turn = await limit.turn(len(data))
        paced = data if turn is None else limit.rest(data, len(data), turn)
        if not isinstance(paced, bytes):
            request.body = _Rewindable(paced)

    def needs_payload_hash(self, content_md5: bool) -> bool:
        return False  # botocore hashes what it must itself

    async def send(
        self, op: Op, params: dict[str, Any], body: Body, payload_sha256: str | None = None
    ) -> dict[str, Any]:
        data = body if isinstance(body, bytes) else await asyncio.to_thread(body.read)
        call = self._client.put_object if op == "PutObject" else self._client.upload_part
        signed_with = clock.offset
        limit = self._limit
        # the first piece before botocore signs: a body that waits for its turn is signed
        # when it goes (_pace sends the rest)
        token = None
        if limit is not None and limit.active is not None:
            token = _TURN.set(await limit.turn(len(data)))
        try:
            resp = await call(Body=data, **params)
        except Exception as exc:
            raise translate(exc, _what(op, params), signed_with) from None
        finally:
            if token is not None:
                _TURN.reset(token)
        return cast("dict[str, Any]", resp)


class _Rewindable:
    """A paced body aiohttp streams, with the no-op ``seek`` botocore calls before a retry (which
    is a new request, paced anew from the original bytes)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


class _Botocore(S3SigV4Auth):  # type: ignore[misc]
    """botocore's own signer, for what ``sigv4.sign`` does not cover; it signs the payload
    hash (or UNSIGNED-PAYLOAD) the sender chose."""

    def payload(self, request: Any) -> str:
        return cast("str", request.context["s3spool_payload"])


class SignedSender:
    """Signed PUTs over the botocore client's own HTTP session (see the module docstring)."""

    streams = True

    def __init__(
        self,
        client: S3Client,
        base_url: str,
        *,
        on_slowdown: Callable[[], None] | None = None,
        limiter: RouteLimit | None = None,
    ) -> None:
        # The client's private parts are the point: its session has the user's TLS and proxy
        # settings, its credentials are refreshed (tests/test_sender.py checks they are there).
        self._http = client._endpoint.http_session
        self._credentials = client._request_signer._credentials
        value = (getattr(client.meta.config, "s3", None) or {}).get("payload_signing_enabled")
        self._sign_payload = None if value is None else bool(value)  # explicit: it wins
        self._region = client.meta.region_name or "us-east-1"
        self.base_url = base_url.rstrip("/")
        # botocore's rule for the signed Host, and the path as sent: once, not 60 us a request
        self._host = _host_from_url(self.base_url)
        self._path = urlsplit(self.base_url).path
        self._on_slowdown = on_slowdown
        self._limit = limiter
        self._fallback = BotocoreSender(client, limiter)
        self._via_botocore = False
        self.sent = 0
        # the aiohttp session and proxy botocore's session would pick for this endpoint, resolved
        # once (``open``): its per-request wrapper cost 12% of the client's CPU (RESULTS.md)
        proxies = self._http._proxy_config
        self._proxy: str | None = proxies.proxy_url_for(self.base_url)
        self._proxy_headers: dict[str, str] = proxies.proxy_headers_for(self.base_url)
        if self._proxy and os.environ.get("BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER"):
            self._proxy_headers["host"] = urlsplit(self.base_url).hostname or ""
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def for_client(
        cls,
        client: S3Client,
        bucket: str,
        *,
        on_slowdown: Callable[[], None] | None = None,
        limiter: RouteLimit | None = None,
    ) -> SignedSender | None:
        """A sender for ``bucket``, or None when the client signs nothing (no credentials)."""
        if client._request_signer._credentials is None:
            return None
        url = await client.generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
        )
        base = url.split("?", 1)[0]
        if not base.endswith("/" + _PROBE_KEY):
            raise ValueError(f"unexpected presigned URL shape: {base}")
        sender = cls(client, base[: -len(_PROBE_KEY) - 1], on_slowdown=on_slowdown, limiter=limiter)
        sender._session = await sender._http._get_session(sender._proxy)
        return sender

    def needs_payload_hash(self, content_md5: bool) -> bool:
        return not self._via_botocore and self._signs_payload(content_md5)

    def _signs_payload(self, content_md5: bool) -> bool:
        return self._sign_payload if self._sign_payload is not None else not content_md5

    def _signed(
        self, op: Op, params: dict[str, Any], body: Body, payload_sha256: str | None, creds: Any
    ) -> tuple[str, Any]:
        """The URL and the signed headers of a body's request."""
        headers: dict[str, str] = {"Host": self._host}
        for name, value in params.items():
            if name in _HEADER:
                headers[_HEADER[name]] = str(value)
            elif name in _CHECKSUM_PARAMS:
                headers[f"x-amz-checksum-{name[8:].lower()}"] = value
        for name, value in (params.get("Metadata") or {}).items():
            headers[f"x-amz-meta-{name}"] = value
        headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else body.length)
        # S3 signs the path encoded once, '/' kept; the query's pairs sorted, encoded
        key = quote(params["Key"], safe="/~")
        path = f"{self._path}/{key}"
        url = f"{self.base_url}/{key}"
        query = ""
        if op == "UploadPart":
            upload_id = quote(params["UploadId"], safe="-_.~")
            query = f"partNumber={int(params['PartNumber'])}&uploadId={upload_id}"
            url += "?" + query
        if not self._signs_payload("Content-MD5" in headers):
            payload = UNSIGNED_PAYLOAD
        elif payload_sha256 is not None:
            payload = payload_sha256
        elif isinstance(body, bytes):
            payload = hashlib.sha256(body).hexdigest()
        else:
            raise ValueError("a streamed body needs its SHA-256 to be signed")
        if sigv4.sign("PUT", path, query, headers, payload, creds, self._region):
            return url, headers
        request = AWSRequest(method="PUT", url=url, headers=headers)
        request.context["s3spool_payload"] = payload
        _Botocore(creds, "s3", self._region).add_auth(request)
        return url, dict(request.headers.items())

    async def send(
        self, op: Op, params: dict[str, Any], body: Body, payload_sha256: str | None = None
    ) -> dict[str, Any]:
        if self._via_botocore:
            return await self._fallback.send(op, params, body)
        self.sent += 1
        what = _what(op, params)
        data: bytes | AsyncIterator[bytes] = body if isinstance(body, bytes) else body.chunks()
        limit = self._limit
        if limit is not None and limit.active is not None:
            # before signing: a body that waits for its turn is signed when it goes
            data = await limit.start(data, len(body) if isinstance(body, bytes) else body.length)
        signed_with = clock.offset
        try:
            creds = await self._credentials.get_frozen_credentials()
            url, headers = self._signed(op, params, body, payload_sha256, creds)
            headers["Accept-Encoding"] = "identity"  # as botocore's session: no gzip error bodies
            assert self._session is not None, "SignedSender.for_client opens the session"
            async with self._session.request(
                "PUT",
                URL(url, encoded=True),
                headers=headers,
                data=data,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            ) as resp:
                text = await resp.read()  # all of it: the connection goes back to the pool
                status, h = resp.status, resp.headers
            if status == 200:
                answer: dict[str, Any] = {"ETag": h.get("etag")}
                for name in _CHECKSUM_PARAMS:
                    value = h.get(f"x-amz-checksum-{name[8:].lower()}")
                    if value:
                        answer[name] = value
                if "x-amz-version-id" in h:
                    answer["VersionId"] = h["x-amz-version-id"]
                return answer
        except Exception as exc:
            raise translate(exc, what, signed_with) from None
        code, message, region = parse_error_body(text)
        if (code in SLOWDOWN_CODES or status == 503) and self._on_slowdown:
            self._on_slowdown()
        if code in _REDIRECT_CODES and region and region != self._region:
            # botocore follows a bucket to its region; hand this and every later body to it
            log.warning(
                "bucket answers from region %s, not %s: sending through botocore from now on "
                "(set S3SPOOL_REGION=%s for the faster signed path)",
                region,
                self._region,
                region,
            )
            self._via_botocore = True
            return await self._fallback.send(op, params, body)
        raise classify_error(
            code, status, f"{what}: {code or status} {message}".strip(), h.get("Date"), signed_with
        )


async def make_sender(
    client: S3Client,
    bucket: str,
    *,
    direct: bool,
    on_slowdown: Callable[[], None] | None = None,
    limiter: RouteLimit | None = None,
) -> Sender:
    """The configured sender: signed over botocore's session, or botocore throughout;
    ``limiter``: the route's bandwidth limit (None: never limited)."""
    if direct:
        signed = await SignedSender.for_client(
            client, bucket, on_slowdown=on_slowdown, limiter=limiter
        )
        if signed is not None:
            return signed
    return BotocoreSender(client, limiter)
