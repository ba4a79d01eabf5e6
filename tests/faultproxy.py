"""A fault-injecting reverse proxy for S3 traffic.

Runs aiohttp on its own event loop in a daemon thread (``LoopThread``), so sync tests,
async tests and a subprocess under test can all talk to it. Requests are forwarded
byte-for-byte (Host header included, since SigV4 signs it) to one upstream S3 endpoint;
faults are decided per request with a seeded RNG so failures are reproducible. Besides
random faults it can play a store with missing features or other habits (plain-MD5
multipart ETags, no checksums, 501 for some operations, a denied prefix, a bucket in
another region) and fail chosen UploadParts a set number of times.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from loopthread import LoopThread

KINDS = (
    "put_object",
    "upload_part",
    "create_mpu",
    "complete_mpu",
    "abort_mpu",
    "list_mpu",
    "list_parts",
    "head_object",
    "get_object",
    "list",
    "delete_object",
    "other",
)
# Requests that carry object data: the ones whose concurrency tests want to observe.
DATA_KINDS = frozenset({"put_object", "upload_part"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# aiohttp recomputes Content-Length from the body we pass, and handles 100-continue itself
# (neither header is part of a SigV4 signature).
REQUEST_DROP = HOP_BY_HOP | {"content-length", "expect"}
# Keep aiohttp from adding headers the real client never sent.
SKIP_AUTO = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


# S3 XML elements named Checksum<Algorithm> (ChecksumCRC32, ChecksumType, ...) with a text
# value; the <Checksum> container of GetObjectAttributes is left, emptied.
CHECKSUM_ELEMENT = re.compile(rb"<(Checksum[A-Za-z0-9]+)>[^<]*</\1>")
ETAG_ELEMENT = re.compile(rb"<ETag>[^<]*</ETag>")
PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")


def classify(method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """Name the S3 operation of a path-style request (/bucket or /bucket/key)."""
    _bucket, _, key = path.lstrip("/").partition("/")
    if not key:
        if method == "GET" and _bucket:
            return "list_mpu" if "uploads" in query else "list"
        return "other"
    if method == "PUT":
        if "x-amz-copy-source" in headers:
            return "other"
        if "uploadId" in query and "partNumber" in query:
            return "upload_part"
        return "other" if query else "put_object"  # ?tagging, ?acl, ... are not data writes
    if method == "POST":
        if "uploads" in query:
            return "create_mpu"
        return "complete_mpu" if "uploadId" in query else "other"
    if method == "DELETE":
        return "abort_mpu" if "uploadId" in query else "delete_object"
    if method == "HEAD":
        return "head_object"
    if method == "GET":
        if "uploadId" in query:
            return "list_parts"
        return "other" if query else "get_object"  # ?tagging, ?attributes etc.
    return "other"


def object_key(path: str) -> str | None:
    """The key of a path-style request's URL-decoded path, None for bucket-level requests."""
    _bucket, _, key = path.lstrip("/").partition("/")
    return key or None


def strip_checksum_elements(xml: bytes) -> bytes:
    return CHECKSUM_ELEMENT.sub(b"", xml)


def s3_error_xml(code: str, message: str, extra: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
        "<RequestId>faultproxy</RequestId></Error>"
    ).encode()


class FaultProxy(LoopThread):
    """Reverse proxy to `upstream` with runtime-adjustable faults.

    Fractions (0.0..1.0) of faultable requests: `slowdown` (503 SlowDown), `error500`
    (500 InternalError), `reset` (connection dropped, no response). `latency_s` delays every
    faultable request. `down` resets every request regardless of `fault_kinds`, which
    otherwise restricts faults to those request kinds (None = all kinds).
    Error replies to HEAD carry no body, so boto3 reports their code as "503"/"500".

    Store habits, all off by default and settable at any time:
    `whole_md5_etag` - CompleteMultipartUpload answers ETag "<md5 of the whole object>"
    (computed from the UploadPart bodies forwarded for that upload, in the order the Complete
    request lists), and later HEAD/GET of that key carry it too; `strip_checksums` - no
    x-amz-checksum-* response headers and no <ChecksumX> elements in XML replies;
    `not_implemented` - request kinds answered 501 NotImplemented; `deny_prefix` - requests
    for keys starting with it get 403 AccessDenied; `fail_parts` - partNumber -> how many
    UploadParts with that number to answer 500 InternalError (counted down).
    Requests answered by the proxy itself (except resets) have their bodies read first;
    `bytes_in` counts request body bytes received, by kind, whether forwarded or not.
    `bucket_region` - requests not signed for that region get 400 AuthorizationHeaderMalformed
    naming it (body and x-amz-bucket-region header), as S3 answers for a bucket elsewhere.
    """

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.rng = random.Random(seed)
        self.slowdown = 0.0
        self.error500 = 0.0
        self.reset = 0.0
        self.latency_s = 0.0
        self.down = False
        self.fault_kinds: frozenset[str] | None = None
        self.whole_md5_etag = False
        self.strip_checksums = False
        self.not_implemented: set[str] = set()
        self.deny_prefix: str | None = None
        self.bucket_region: str | None = None
        self.fail_parts: dict[int, int] = {}
        self.url = ""
        self.counts: Counter[str] = Counter()  # kinds actually forwarded upstream
        self.injected: Counter[str] = Counter()  # faults applied, by fault name
        self.bytes_in: Counter[str] = Counter()  # request body bytes received, by kind
        self.upstream_errors = 0  # upstream unreachable: surfaced to the client as a reset
        self.in_flight = 0  # DATA_KINDS requests currently inside the proxy
        self.max_in_flight = 0
        self.in_flight_samples: list[tuple[float, int]] = []
        # (kind, lower-cased request headers) of the last requests, for header assertions
        self.seen_headers: deque[tuple[str, dict[str, str]]] = deque(maxlen=1000)
        self._corrupt_left = 0
        self._corrupt_kinds: frozenset[str] = frozenset()
        # whole_md5_etag: part bodies per uploadId (only while on), ETag per object path
        self._part_bodies: dict[str, dict[int, bytes]] = {}
        self._whole_etags: dict[str, str] = {}
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- control (any thread) -------------------------------------------------------------

    def corrupt_next(
        self, n: int = 1, kinds: Iterable[str] = ("put_object", "upload_part")
    ) -> None:
        """Flip one body byte of the next n matching requests, keeping all headers."""
        with self._lock:
            self._corrupt_left = n
            self._corrupt_kinds = frozenset(kinds)

    def clear_faults(self) -> None:
        self.slowdown = self.error500 = self.reset = self.latency_s = 0.0
        self.down = False
        self.fault_kinds = None
        self.corrupt_next(0)
        self.whole_md5_etag = self.strip_checksums = False
        self.not_implemented = set()
        self.deny_prefix = None
        self.bucket_region = None
        with self._lock:
            self.fail_parts = {}

    def clear_counters(self) -> None:
        with self._lock:
            self.counts.clear()
            self.injected.clear()
            self.bytes_in.clear()
            self.upstream_errors = 0
            self.max_in_flight = self.in_flight
            self.in_flight_samples.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Consistent copy of the counters (iterating them live can race the proxy thread)."""
        with self._lock:
            return {"counts": dict(self.counts), "injected": dict(self.injected)}

    # -- lifecycle ------------------------------------------------------------------------

    async def _astart(self) -> int:
        # Force-closed upstream connections: no stale keep-alive sockets after an upstream
        # restart, and no pool limit capping the concurrency tests want to observe.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        )
        app = web.Application(client_max_size=1 << 34)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Requests still in flight at stop() are abandoned, not drained: teardown stays fast.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- request path (proxy thread) ------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = classify(request.method, request.path, request.query, request.headers)
        tracked = kind in DATA_KINDS
        if tracked:
            self._track(+1)
        try:
            return await self._serve(request, kind)
        finally:
            if tracked:
                self._track(-1)

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        if self.down:
            return self._abort(request, "down")
        key = object_key(request.path)
        prefix = self.deny_prefix
        if prefix is not None and key is not None and key.startswith(prefix):
            await self._drain(request, kind)
            self._count(self.injected, "access_denied")
            return self._error(403, "AccessDenied", "Access Denied", request)
        region = self.bucket_region
        if region is not None and f"/{region}/s3/" not in request.headers.get("Authorization", ""):
            # signed for another region: answer as S3 does for a bucket that lives elsewhere
            await self._drain(request, kind)
            self._count(self.injected, "wrong_region")
            reply = self._error(400, "AuthorizationHeaderMalformed", "wrong region", request)
            if reply.body:
                reply.body = s3_error_xml(
                    "AuthorizationHeaderMalformed",
                    "wrong region",
                    extra=f"<Region>{region}</Region>",
                )
            reply.headers["x-amz-bucket-region"] = region
            return reply
        if kind in self.not_implemented:
            await self._drain(request, kind)
            self._count(self.injected, "not_implemented")
            return self._error(
                501,
                "NotImplemented",
                "A header you provided implies functionality that is not implemented",
                request,
            )
        if kind == "upload_part" and self._take_part_failure(request.query.get("partNumber")):
            await self._drain(request, kind)
            return self._error(500, "InternalError", "We encountered an internal error.")
        if self.fault_kinds is None or kind in self.fault_kinds:
            if self._roll(self.reset):
                return self._abort(request, "reset")
            if self._roll(self.slowdown):
                await self._drain(request, kind)
                self._count(self.injected, "slowdown")
                return self._error(503, "SlowDown", "Please reduce your request rate.")
            if self._roll(self.error500):
                await self._drain(request, kind)
                self._count(self.injected, "error500")
                return self._error(500, "InternalError", "We encountered an internal error.")
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
        body = await request.read()
        self._count(self.bytes_in, kind, len(body))
        if body and self._take_corrupt(kind):
            i = len(body) // 2
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in REQUEST_DROP
        )
        # raw_path keeps the client's exact percent-encoding, which SigV4 also signed.
        url = URL(self.upstream + request.raw_path, encoded=True)
        has_body = bool(body) or request.content_length is not None
        self._count(self.counts, kind)
        self.seen_headers.append((kind, {k.lower(): v for k, v in request.headers.items()}))
        assert self._session is not None
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=body if has_body else None,
                allow_redirects=False,
                skip_auto_headers=SKIP_AUTO,
            ) as upstream:
                payload = await upstream.read()
                resp_headers = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
                )
                edited = self._edit_reply(request, kind, body, upstream.status, payload)
                if edited is not None:
                    payload = edited
                    resp_headers["Content-Length"] = str(len(payload))
                self._edit_headers(request, kind, upstream.status, resp_headers)
                # Content-Length is kept so HEAD replies still report the object size.
                return web.Response(
                    status=upstream.status,
                    reason=upstream.reason,
                    body=payload,
                    headers=resp_headers,
                )
        except (aiohttp.ClientError, TimeoutError):
            with self._lock:
                self.upstream_errors += 1
            return self._abort(request, None)

    async def _drain(self, request: web.Request, kind: str) -> None:
        """Read and count a body the proxy answers itself, so the client finishes sending."""
        n = 0
        async for piece in request.content.iter_any():
            n += len(piece)
        self._count(self.bytes_in, kind, n)

    def _take_part_failure(self, part_number: str | None) -> bool:
        if not part_number or not part_number.isdigit():
            return False
        with self._lock:
            left = self.fail_parts.get(int(part_number), 0)
            if left <= 0:
                return False
            self.fail_parts[int(part_number)] = left - 1
            self.injected["fail_part"] += 1
            return True

    def _edit_reply(
        self, request: web.Request, kind: str, body: bytes, status: int, payload: bytes
    ) -> bytes | None:
        """The reply body as the emulated store would send it; None when unchanged."""
        original = payload
        ok = 200 <= status < 300
        path = request.path
        if kind == "upload_part" and ok and self.whole_md5_etag:
            upload_id, number = request.query.get("uploadId", ""), request.query["partNumber"]
            with self._lock:
                self._part_bodies.setdefault(upload_id, {})[int(number)] = body
        elif kind == "complete_mpu" and ok and ETAG_ELEMENT.search(payload):
            # A 200 without <ETag> is an error reply: keep the parts for the client's retry.
            upload_id = request.query.get("uploadId", "")
            with self._lock:
                parts = self._part_bodies.pop(upload_id, {})
                self._whole_etags.pop(path, None)
            numbers = [int(n) for n in PART_NUMBER.findall(body)]
            if self.whole_md5_etag and numbers and all(n in parts for n in numbers):
                digest = hashlib.md5()
                for n in numbers:
                    digest.update(parts[n])
                etag = f'"{digest.hexdigest()}"'
                with self._lock:
                    self._whole_etags[path] = etag
                payload = ETAG_ELEMENT.sub(
                    f"<ETag>&quot;{digest.hexdigest()}&quot;</ETag>".encode(), payload, count=1
                )
        elif kind in ("put_object", "delete_object") and ok:
            with self._lock:
                self._whole_etags.pop(path, None)  # a new object (or none) at that key
        if self.strip_checksums and payload and b"<Checksum" in payload:
            payload = strip_checksum_elements(payload)
        return None if payload is original else payload

    def _edit_headers(
        self, request: web.Request, kind: str, status: int, headers: CIMultiDict[str]
    ) -> None:
        if kind in ("complete_mpu", "head_object", "get_object") and status < 300:
            with self._lock:
                etag = self._whole_etags.get(request.path)
            if etag is not None and (kind != "complete_mpu" or "ETag" in headers):
                headers["ETag"] = etag
        if self.strip_checksums:
            for name in [k for k in headers if k.lower().startswith("x-amz-checksum-")]:
                del headers[name]

    def _roll(self, fraction: float) -> bool:
        return fraction > 0 and self.rng.random() < fraction

    def _count(self, counter: Counter[str], key: str, n: int = 1) -> None:
        with self._lock:
            counter[key] += n

    def _track(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.in_flight_samples.append((time.monotonic(), self.in_flight))

    def _take_corrupt(self, kind: str) -> bool:
        with self._lock:
            if self._corrupt_left <= 0 or kind not in self._corrupt_kinds:
                return False
            self._corrupt_left -= 1
            self.injected["corrupt"] += 1
            return True

    @staticmethod
    def _error(
        status: int, code: str, message: str, request: web.Request | None = None
    ) -> web.Response:
        if request is not None and request.method == "HEAD":
            return web.Response(status=status)  # HEAD replies have no body, as on S3
        return web.Response(
            status=status,
            body=s3_error_xml(code, message),
            headers={"Content-Type": "application/xml"},
        )

    def _abort(self, request: web.Request, fault: str | None) -> web.StreamResponse:
        if fault is not None:
            self._count(self.injected, fault)
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send RST: the client sees a reset, not a clean EOF.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # aiohttp needs a return value; nothing reaches the client as the transport is gone.
        return web.Response(status=502)
