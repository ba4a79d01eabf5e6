"""A fault-injecting reverse proxy for S3 traffic.

Runs aiohttp on its own event loop in a daemon thread, so sync tests, async tests and a
subprocess under test can all talk to it. Requests are forwarded byte-for-byte (Host header
included, since SigV4 signs it) to one upstream S3 endpoint; faults are decided per request
with a seeded RNG so failures are reproducible.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from types import TracebackType

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

KINDS = (
    "put_object",
    "upload_part",
    "create_mpu",
    "complete_mpu",
    "abort_mpu",
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


def classify(method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """Name the S3 operation of a path-style request (/bucket or /bucket/key)."""
    _bucket, _, key = path.lstrip("/").partition("/")
    if not key:
        return "list" if method == "GET" and _bucket else "other"
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
        return "other" if query else "get_object"  # ?uploadId lists parts, ?tagging etc.
    return "other"


def s3_error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>faultproxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """Reverse proxy to `upstream` with runtime-adjustable faults.

    Fractions (0.0..1.0) of faultable requests: `slowdown` (503 SlowDown), `error500`
    (500 InternalError), `reset` (connection dropped, no response). `latency_s` delays every
    faultable request. `down` resets every request regardless of `fault_kinds`, which
    otherwise restricts faults to those request kinds (None = all kinds).
    Error replies to HEAD carry no body, so boto3 reports their code as "503"/"500".
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
        self.url = ""
        self.counts: Counter[str] = Counter()  # kinds actually forwarded upstream
        self.injected: Counter[str] = Counter()  # faults applied, by fault name
        self.upstream_errors = 0  # upstream unreachable: surfaced to the client as a reset
        self.in_flight = 0  # DATA_KINDS requests currently inside the proxy
        self.max_in_flight = 0
        self.in_flight_samples: list[tuple[float, int]] = []
        # (kind, lower-cased request headers) of the last requests, for header assertions
        self.seen_headers: deque[tuple[str, dict[str, str]]] = deque(maxlen=1000)
        self._corrupt_left = 0
        self._corrupt_kinds: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
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

    def clear_counters(self) -> None:
        with self._lock:
            self.counts.clear()
            self.injected.clear()
            self.upstream_errors = 0
            self.max_in_flight = self.in_flight
            self.in_flight_samples.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Consistent copy of the counters (iterating them live can race the proxy thread)."""
        with self._lock:
            return {"counts": dict(self.counts), "injected": dict(self.injected)}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        assert self._thread is None, "already started"
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="faultproxy", daemon=True
        )
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

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
        if self.fault_kinds is None or kind in self.fault_kinds:
            if self._roll(self.reset):
                return self._abort(request, "reset")
            if self._roll(self.slowdown):
                self._count(self.injected, "slowdown")
                return self._error(503, "SlowDown", "Please reduce your request rate.")
            if self._roll(self.error500):
                self._count(self.injected, "error500")
                return self._error(500, "InternalError", "We encountered an internal error.")
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
        body = await request.read()
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

    def _roll(self, fraction: float) -> bool:
        return fraction > 0 and self.rng.random() < fraction

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

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
    def _error(status: int, code: str, message: str) -> web.Response:
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
