"""Direct PutObject: SigV4-signed single PUTs sent straight through aiohttp.

Why not botocore for these: a small file's upload is dominated by botocore's
generic request pipeline (parameter validation, serialisation, event hooks,
endpoint rules, response parsing), about 1 ms of CPU per request here — more
than everything else s3spool does for the file.  A PutObject is one signed
HTTP request, so this module builds and signs exactly that request (AWS
Signature V4, as specified by AWS) and reads the answer.

botocore still does everything else: it resolves the endpoint and addressing
style (we take the bucket's base URL from a presigned URL it builds), supplies
and refreshes credentials, and carries multipart uploads, HEAD, probes and
listings.  ``DIRECT_PUT=false`` sends single PUTs through botocore as well.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from .errors import FileChanged, StoreUnavailable, TransientError, UploadError

log = logging.getLogger(__name__)

_PROBE_KEY = "s3spool-endpoint-probe"
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,300})</Message>")
_REGION = re.compile(rb"<Region>([a-z0-9-]{1,40})</Region>")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Streamed bodies are read and sent in chunks of this size: memory per request in
#: flight is a chunk or two, whatever the part size.
STREAM_CHUNK = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileRange:
    """A body streamed from an open file: ``length`` bytes at ``offset``."""

    fd: int
    offset: int
    length: int

    async def chunks(self) -> AsyncIterator[bytes]:
        # Read inline, not in a thread: the digest pass has just read these bytes, so
        # they come from the page cache, and a thread hop per chunk costs more CPU.
        pos, end = self.offset, self.offset + self.length
        while pos < end:
            chunk = os.pread(self.fd, min(STREAM_CHUNK, end - pos), pos)
            if not chunk:
                raise FileChanged("file shrank while it was being sent", reason="changed")
            yield chunk
            pos += len(chunk)


class Signer:
    """AWS Signature V4 for S3 requests; the derived signing key is cached per day."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._key: tuple[str, str, bytes] | None = None  # (secret, date, key)

    def _signing_key(self, secret: str, date: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == date:
            return cached[2]
        k = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
        for part in (self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        self._key = (secret, date, k)
        return k

    def sign(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        payload_hash: str,
        access_key: str,
        secret_key: str,
        token: str | None,
        now: float | None = None,
    ) -> None:
        """Add x-amz-date, x-amz-content-sha256, the token and Authorization to ``headers``.

        ``headers`` keys must be lower-case; every one of them is signed.
        """
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        date = amz_date[:8]
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash
        if token:
            headers["x-amz-security-token"] = token
        names = sorted(headers)
        canonical = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
        signed = ";".join(names)
        request = f"{method}\n{path}\n{query}\n{canonical}\n{signed}\n{payload_hash}"
        scope = f"{date}/{self.region}/s3/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(secret_key, date), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )


def classify_status(status: int, code: str, message: str, what: str) -> UploadError:
    """The pipeline's error class for an S3 error answer (same rules as ``store.translate``)."""
    from .store import classify_error

    return classify_error(code, status, f"{what}: {code or status} {message}".strip())


class DirectPut:
    """Sends single PutObject requests for one bucket."""

    def __init__(
        self,
        base_url: str,
        region: str,
        credentials: Any,
        *,
        pool: int,
        connect_timeout: float,
        read_timeout: float,
        on_slowdown: Callable[[], None] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.base_path = parts.path.rstrip("/")
        self.host = parts.netloc
        self.secure = parts.scheme == "https"
        self.signer = Signer(region)
        self.credentials = credentials
        self._pool = pool
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._on_slowdown = on_slowdown
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def for_client(cls, client: Any, bucket: str, credentials: Any, **kw: Any) -> DirectPut:
        """Derive the bucket's base URL and signing region from a botocore client."""
        url = await client.generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
        )
        base = url.split("?", 1)[0]
        if not base.endswith("/" + _PROBE_KEY):
            raise ValueError(f"unexpected presigned URL shape: {base}")
        region = client.meta.region_name or "us-east-1"
        return cls(base[: -len(_PROBE_KEY) - 1], region, credentials, **kw)

    async def __aenter__(self) -> DirectPut:
        connector = aiohttp.TCPConnector(limit=self._pool, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def path_for(self, key: str) -> str:
        # S3 signs the path encoded once (no double encoding, '/' kept).
        return f"{self.base_path}/{quote(key, safe='/~')}"

    async def put(
        self,
        key: str,
        body: bytes | FileRange,
        headers: Mapping[str, str],
        query: Mapping[str, str] | None = None,
        what: str = "PutObject",
        payload_hash: str | None = None,
    ) -> dict[str, str]:
        """PUT ``body`` at ``key`` (``query``: e.g. an UploadPart's partNumber and uploadId).

        ``payload_hash``: the body's SHA-256 hex, when the caller already computed it
        off the event loop (needed only over plain HTTP without Content-MD5).  Returns the ETag and
        x-amz-checksum-* response headers, with lower-case names.
        """
        assert self._session is not None, "use DirectPut as an async context manager"
        creds = await self.credentials.get_frozen_credentials()
        path = self.path_for(key)
        qs = (
            "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
            )
            if query
            else ""
        )
        signed = {k.lower(): v for k, v in headers.items()}
        signed["host"] = self.host
        if self.secure or "content-md5" in signed:
            # TLS, or a signed Content-MD5 the store checks, already ties the body to
            # this signature; hashing it again with SHA-256 would only cost CPU.
            payload = "UNSIGNED-PAYLOAD"
        elif payload_hash is not None:
            payload = payload_hash
        elif isinstance(body, bytes):
            payload = hashlib.sha256(body).hexdigest()
        else:
            raise ValueError("a streamed body over plain HTTP needs its payload_hash")
        self.signer.sign(
            "PUT", path, qs, signed, payload, creds.access_key, creds.secret_key, creds.token
        )
        length = len(body) if isinstance(body, bytes) else body.length
        signed["content-length"] = str(length)  # also keeps aiohttp from chunking a stream
        data: bytes | AsyncIterator[bytes] = body if isinstance(body, bytes) else body.chunks()
        url = URL(
            self.base_url.removesuffix(self.base_path) + path + (f"?{qs}" if qs else ""),
            encoded=True,
        )
        try:
            async with self._session.put(url, data=data, headers=signed) as resp:
                if resp.status == 200:
                    await resp.release()
                    return {
                        k.lower(): v
                        for k, v in resp.headers.items()
                        if k[0] in "Ee" or k[:15].lower() == "x-amz-checksum-"
                    }
                text = await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise StoreUnavailable(f"PutObject: cannot connect: {exc}", reason="connect") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientError(
                f"PutObject: {type(exc).__name__}: {exc}", reason="connection"
            ) from None
        code_m, msg_m = _CODE.search(text), _MESSAGE.search(text)
        code = code_m.group(1).decode(errors="replace") if code_m else ""
        message = msg_m.group(1).decode(errors="replace") if msg_m else ""
        if (code == "SlowDown" or resp.status == 503) and self._on_slowdown:
            self._on_slowdown()
        region = _REGION.search(text)
        if region and code in ("AuthorizationHeaderMalformed", "PermanentRedirect"):
            # botocore would follow the bucket to its region; a signed request cannot
            message += f" (the bucket is in {region.group(1).decode()}: set S3SPOOL_REGION to it)"
        raise classify_status(resp.status, code, message, what)
