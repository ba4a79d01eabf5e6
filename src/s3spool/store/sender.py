"""Senders of object bodies: one interface for PutObject and UploadPart, two implementations.

``SignedSender`` (the default) is built from the botocore client's own parts, so
it honours everything that client honours for the user:

* the connection: the client's aiobotocore HTTP session itself — its pool, CA
  bundle (``AWS_CA_BUNDLE``, the profile's ``ca_bundle``, ``CA_BUNDLE``) or
  ``VERIFY_SSL=false``, client certificate, proxies (``HTTP(S)_PROXY``,
  ``NO_PROXY``, botocore's ``proxies`` config) and timeouts;
* the signature: botocore's ``S3SigV4Auth`` with the client's credentials object,
  which botocore refreshes before they expire;
* the URL: botocore's endpoint rules and addressing style, read once from a
  presigned URL.

What it skips is botocore's generic per-request pipeline (parameter validation,
serialisation, endpoint rules per call, event hooks, response parsing): about
0.6 ms of client CPU per small file here, more than everything else s3spool does
for the file (bench/RESULTS.md).  A bucket that answers from another region
(botocore follows such redirects; a signed request cannot) sends every later body
through ``BotocoreSender`` instead, with one warning.

``BotocoreSender`` (``DIRECT_PUT=false``) sends through ``put_object`` /
``upload_part`` and so needs bodies in memory.

Both pace every body through the route's bandwidth limit when one is given
(``bandwidth.RouteLimit``): the body's first piece is waited for before the request is
signed, the rest as it is sent.  The signed sender paces where it hands the body to the
session; the botocore sender in botocore's ``before-send`` event, which every attempt
botocore makes passes.  Off (``limiter.active`` is None) costs one check per body.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from urllib.parse import quote

from botocore.auth import SIGNED_HEADERS_BLACKLIST, S3SigV4Auth, _host_from_url
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from multidict import CIMultiDict

from s3spool.store.bandwidth import RouteLimit, Turn
from s3spool.store.bodies import FileRange
from s3spool.store.s3errors import SLOWDOWN_CODES, classify_error, parse_error_body, translate

if TYPE_CHECKING:
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
    """Sends one object body (a whole object or a part) and returns the store's answer.

    ``params`` are botocore's PutObject/UploadPart parameters (Bucket, Key, ContentMD5,
    ChecksumCRC32C, Metadata, UploadId, PartNumber, ...); the answer has botocore's
    shape (ETag, Checksum*, VersionId).  Errors are ``errors.UploadError`` subclasses.
    """

    #: True: bodies may be ``FileRange`` (streamed from the file, never held in memory)
    streams: bool

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
        limit = self._limit
        # the first piece before botocore signs: a body that waits for its turn is signed
        # when it goes (_pace sends the rest)
        token = None
        if limit is not None and limit.active is not None:
            token = _TURN.set(await limit.turn(len(data)))
        try:
            resp = await call(Body=data, **params)
        except Exception as exc:
            raise translate(exc, _what(op, params)) from None
        finally:
            if token is not None:
                _TURN.reset(token)
        return cast("dict[str, Any]", resp)


class _Rewindable:
    """A paced body for botocore's request: an async iterable aiohttp streams, and a no-op
    ``seek``, which botocore calls before it retries (the retry is a new request, paced
    anew from the original bytes)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


class _Signed(dict[str, str]):
    """The headers to sign: single-valued, so ``get_all`` is one lookup."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class _Auth(S3SigV4Auth):  # type: ignore[misc]
    """botocore's S3 SigV4 signer, fed the payload hash our digest pass computed.

    One deviation, on plain HTTP only: botocore signs the SHA-256 of every body sent
    over plain HTTP even when a Content-MD5 is signed too.  The store checks that MD5
    against the body, which is what the SHA-256 would prove; skipping the second hash
    saves about 0.6 s of CPU per GiB here (SHA-256 runs at ~1.7 GB/s on these cores).
    An explicit ``payload_signing_enabled`` in the botocore config still wins.

    ``headers_to_sign`` picks the same headers as botocore's, into a plain dict instead
    of botocore's email.message-based ``HTTPHeaders``: that alone cost 0.19 ms of CPU
    per small file (a profile of 3,000 PUTs), a third of the whole per-file budget.
    """

    #: derived signing keys by (secret, day, region): botocore derives one with four HMACs
    #: for every request; the key only changes daily
    _keys: dict[tuple[str, str, str], bytes] = {}  # noqa: RUF012 - a shared cache on purpose

    def signature(self, string_to_sign: str, request: Any) -> str:
        day = request.context["timestamp"][0:8]
        cache_key = (self.credentials.secret_key, day, self._region_name)
        key = self._keys.get(cache_key)
        if key is None:
            key = self._sign(f"AWS4{cache_key[0]}".encode(), day)
            for part in (self._region_name, self._service_name, "aws4_request"):
                key = self._sign(key, part)
            if len(self._keys) > 16:  # rotated credentials, day changes: keep it small
                self._keys.clear()
            self._keys[cache_key] = key
        return str(self._sign(key, string_to_sign, hex=True))

    def headers_to_sign(self, request: Any) -> _Signed:
        signed = _Signed()
        for name, value in request.headers.items():
            lname = name.lower()
            if lname not in SIGNED_HEADERS_BLACKLIST:
                signed[lname] = value
        if "host" not in signed:
            signed["host"] = _host_from_url(request.url)
        return signed

    def _should_sha256_sign_payload(self, request: Any) -> bool:
        explicit = _payload_signing(request.context.get("client_config"))
        if explicit is not None:
            return explicit
        return "Content-MD5" not in request.headers

    def payload(self, request: Any) -> str:
        if self._should_sha256_sign_payload(request):
            known: str | None = request.context.get("payload_sha256")
            if known is not None:
                return known
            if not isinstance(request.body, bytes | bytearray):
                raise ValueError("a streamed body needs its SHA-256 to be signed")
        return str(super().payload(request))


def _payload_signing(config: Any) -> bool | None:
    s3 = getattr(config, "s3", None) or {}
    value = s3.get("payload_signing_enabled")
    return None if value is None else bool(value)


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
        # The client's private attributes are the point: its session carries the user's
        # TLS and proxy settings, its credentials object is the one botocore refreshes.
        # tests/test_sender.py fails if a release of aiobotocore moves them.
        self._http = client._endpoint.http_session
        self._credentials = client._request_signer._credentials
        self._config = client.meta.config
        self._region = client.meta.region_name or "us-east-1"
        self.base_url = base_url.rstrip("/")
        # botocore's own rule for the signed Host, worked out once: per request it costs
        # 60 us of URL parsing
        self._host = _host_from_url(self.base_url)
        self._on_slowdown = on_slowdown
        self._limit = limiter
        self._fallback = BotocoreSender(client, limiter)
        self._via_botocore = False

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
        return cls(client, base[: -len(_PROBE_KEY) - 1], on_slowdown=on_slowdown, limiter=limiter)

    def needs_payload_hash(self, content_md5: bool) -> bool:
        if self._via_botocore:
            return False
        explicit = _payload_signing(self._config)
        return explicit if explicit is not None else not content_md5

    def _request(
        self, op: Op, params: dict[str, Any], body: Body, payload_sha256: str | None
    ) -> Any:
        headers: dict[str, str] = {"Host": self._host}
        for name, value in params.items():
            if name in _HEADER:
                headers[_HEADER[name]] = str(value)
            elif name in _CHECKSUM_PARAMS:
                headers[f"x-amz-checksum-{name[8:].lower()}"] = value
        for name, value in (params.get("Metadata") or {}).items():
            headers[f"x-amz-meta-{name}"] = value
        headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else body.length)
        # S3 signs the path encoded once, '/' kept
        url = f"{self.base_url}/{quote(params['Key'], safe='/~')}"
        if op == "UploadPart":
            upload_id = quote(params["UploadId"], safe="-_.~")
            url += f"?partNumber={params['PartNumber']}&uploadId={upload_id}"
        request = AWSRequest(method="PUT", url=url, data=body)
        # case-insensitive like botocore's HTTPHeaders, without its email.message cost
        request.headers = CIMultiDict(headers)
        request.context["client_config"] = self._config
        request.context["has_streaming_input"] = True
        request.context["payload_sha256"] = payload_sha256
        return request

    async def send(
        self, op: Op, params: dict[str, Any], body: Body, payload_sha256: str | None = None
    ) -> dict[str, Any]:
        if self._via_botocore:
            return await self._fallback.send(op, params, body)
        what = _what(op, params)
        data: bytes | AsyncIterator[bytes] = body if isinstance(body, bytes) else body.chunks()
        limit = self._limit
        if limit is not None and limit.active is not None:
            # before signing: a body that waits for its turn is signed when it goes
            data = await limit.start(data, len(body) if isinstance(body, bytes) else body.length)
        request = self._request(op, params, body, payload_sha256)
        try:
            creds = await self._credentials.get_frozen_credentials()
            _Auth(creds, "s3", self._region).add_auth(request)
            prepared = AWSPreparedRequest(
                "PUT", request.url, request.headers, data, False, request.context
            )
            resp = await self._http.send(prepared)
            if resp.status_code == 200:
                h = resp.headers
                answer: dict[str, Any] = {"ETag": h.get("etag")}
                for name in _CHECKSUM_PARAMS:
                    value = h.get(f"x-amz-checksum-{name[8:].lower()}")
                    if value:
                        answer[name] = value
                if "x-amz-version-id" in h:
                    answer["VersionId"] = h["x-amz-version-id"]
                return answer
            text = await resp.content
        except Exception as exc:
            raise translate(exc, what) from None
        code, message, region = parse_error_body(text)
        if (code in SLOWDOWN_CODES or resp.status_code == 503) and self._on_slowdown:
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
            code, resp.status_code, f"{what}: {code or resp.status_code} {message}".strip()
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
