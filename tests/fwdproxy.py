"""A forward HTTP proxy (what HTTP_PROXY / HTTPS_PROXY point at) for tests.

It serves absolute-URI requests (`PUT http://127.0.0.1:P1/b/k HTTP/1.1`, how clients send
plain-HTTP requests through a proxy) and `CONNECT host:port` tunnels (how they reach HTTPS).
`route` maps the authority a client asks for to the real upstream. Pointing a client at an
authority where nothing listens (`closed_port()`) and routing only that makes every request
that bypasses the proxy fail with "connection refused": proof that all traffic went through.

Bodies are streamed in bounded pieces, never buffered whole. Like faultproxy.py it runs on
its own event loop in a daemon thread, so sync tests, async tests and subprocesses can all
use it. It listens on 127.0.0.1 only and never connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from loopthread import LoopThread

HEAD_LIMIT = 64 * 1024  # largest request/response head accepted
PIECE = 1 << 20  # bodies move in pieces of at most this many bytes
LOOPBACK = "127.0.0.1"
CONNECTION_ERRORS = (ConnectionError, asyncio.IncompleteReadError, TimeoutError)


def closed_port() -> tuple[int, socket.socket]:
    """A loopback port where connecting is refused, and the socket that holds it.

    The socket is bound but never listens: connects get RST, and no other process can take
    the port while the socket stays open. Close it when the test is done.
    """
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    return int(sock.getsockname()[1]), sock


def _loopback_authority(authority: str) -> tuple[str, int]:
    host, _, port = authority.rpartition(":")
    if host != LOOPBACK or not port.isdigit():
        raise ValueError(f"upstream must be {LOOPBACK}:PORT, not {authority!r}")
    return host, int(port)


@dataclass
class _Head:
    """A parsed request or response head; header lines are kept byte-for-byte."""

    first: list[str]  # request: method, target, version; response: version, status, reason
    lines: list[bytes]  # raw header lines without CRLF
    fields: dict[str, str]  # lower-cased name -> value (last one wins; enough for framing)

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        text_lines = raw[:-4].split(b"\r\n")
        first = text_lines[0].decode("latin-1").split(" ", 2)
        if len(first) < 2:
            raise ValueError(f"bad start line {text_lines[0]!r}")
        fields: dict[str, str] = {}
        for line in text_lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ValueError(f"bad header line {line!r}")
            fields[name.strip().lower()] = value.strip()
        return cls(first, text_lines[1:], fields)

    def get(self, name: str) -> str:
        return self.fields.get(name, "")

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.get(name).split(",") if t.strip()}


async def _copy_exact(src: asyncio.StreamReader, dst: asyncio.StreamWriter, n: int) -> int:
    left = n
    while left:
        data = await src.read(min(left, PIECE))
        if not data:
            raise asyncio.IncompleteReadError(b"", left)
        dst.write(data)
        await dst.drain()  # backpressure: never more than one piece queued per direction
        left -= len(data)
    return n


async def _copy_chunked(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> int:
    """Relay a chunked body verbatim (sizes, extensions, trailers); returns the bytes sent."""
    total = 0
    while True:
        line = await src.readuntil(b"\r\n")
        dst.write(line)
        total += len(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # optional trailer fields, then the final empty line
                trailer = await src.readuntil(b"\r\n")
                dst.write(trailer)
                total += len(trailer)
                if trailer == b"\r\n":
                    await dst.drain()
                    return total
        total += await _copy_exact(src, dst, size + 2)  # data and its CRLF


async def _copy_to_eof(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> int:
    total = 0
    while data := await src.read(PIECE):
        dst.write(data)
        await dst.drain()
        total += len(data)
    return total


async def _copy_body(src: asyncio.StreamReader, dst: asyncio.StreamWriter, head: _Head) -> int:
    if "chunked" in head.tokens("transfer-encoding"):
        return await _copy_chunked(src, dst)
    length = head.get("content-length")
    return await _copy_exact(src, dst, int(length)) if length else 0


def _dropped(line: bytes) -> bool:
    name = line.split(b":", 1)[0].strip().lower()
    return name.startswith(b"proxy-") or name == b"expect"


def _reply(writer: asyncio.StreamWriter, status: str, note: str = "") -> None:
    body = note.encode()
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )


class ForwardProxy(LoopThread):
    """Forward proxy on http://127.0.0.1:PORT (`.url`).

    `route` maps a requested authority ("127.0.0.1:P1") to the upstream that serves it
    ("127.0.0.1:P2"); anything else is refused with 502. `endpoint_for(upstream_url)` makes
    such a pair with a closed P1 and returns the URL to give the client.
    Counters: `requests` (absolute-URI requests forwarded, by method), `tunnels` (CONNECTs
    opened), `refused` (targets not in route), `upstream_errors`, `bytes_up`/`bytes_down`
    (body and tunnel bytes relayed towards / from the upstream), `connections` (client
    connections accepted), `expect_continue` (100 Continue answers given).
    """

    def __init__(self, route: Mapping[str, str] | None = None) -> None:
        self.route: dict[str, str] = {}
        for asked, upstream in (route or {}).items():
            self.add_route(asked, upstream)
        self.url = ""
        self.requests: Counter[str] = Counter()
        self.tunnels = 0
        self.refused = 0
        self.upstream_errors = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.expect_continue = 0
        self._held: list[socket.socket] = []  # closed ports kept closed until stop()
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- routes (any thread) --------------------------------------------------------------

    def add_route(self, asked: str, upstream: str) -> None:
        _loopback_authority(upstream)
        self.route[asked] = upstream

    def endpoint_for(self, upstream_url: str) -> str:
        """Route a fresh closed port to `upstream_url` ("http(s)://127.0.0.1:P2"); returns
        the same URL with the closed port. The port stays closed until stop()."""
        parts = urlsplit(upstream_url)
        port, sock = closed_port()
        self._held.append(sock)
        self.add_route(f"{LOOPBACK}:{port}", parts.netloc)
        return f"{parts.scheme}://{LOOPBACK}:{port}"

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "tunnels": self.tunnels,
                "refused": self.refused,
                "upstream_errors": self.upstream_errors,
                "connections": self.connections,
                "expect_continue": self.expect_continue,
                "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down,
            }

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for sock in self._held:
                sock.close()
            self._held.clear()

    async def _astart(self) -> int:
        self._server = await asyncio.start_server(self._serve_client, LOOPBACK, 0, limit=HEAD_LIMIT)
        return int(self._server.sockets[0].getsockname()[1])

    async def _astop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Connections still open are cut, not drained: teardown stays fast.
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- connections (proxy thread) -------------------------------------------------------

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

    def _untrack(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.close()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._track(writer)
        self._add("connections")
        try:
            while await self._one(reader, writer):
                pass
        except (*CONNECTION_ERRORS, asyncio.LimitOverrunError, ValueError):
            pass  # a broken or malformed client connection just ends
        except asyncio.CancelledError:
            # Only stop() cancels; ending normally keeps asyncio's stream callback from
            # logging the cancellation as an unhandled error.
            pass
        finally:
            self._untrack(writer)
            self._tasks.discard(task)

    def _lookup(self, asked: str) -> tuple[str, int] | None:
        upstream = self.route.get(asked)
        if upstream is None:
            self._add("refused")
            return None
        return _loopback_authority(upstream)  # re-checked: only loopback, ever

    async def _open(
        self, writer: asyncio.StreamWriter, upstream: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(*upstream, limit=HEAD_LIMIT), timeout=5
            )
        except (OSError, TimeoutError) as exc:
            self._add("upstream_errors")
            _reply(writer, "502 Bad Gateway", f"upstream {upstream}: {exc!r}")
            await writer.drain()
            return None

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request (or one tunnel); True if the client connection stays open."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed between requests
        head = _Head.parse(raw)
        method, target = head.first[0], head.first[1]
        if method == "CONNECT":
            await self._tunnel(reader, writer, target)
            return False
        parts = urlsplit(target)
        if parts.scheme != "http":  # origin-form or https:// in the clear: nowhere to go
            self._add("refused")
            upstream = None
        else:
            upstream = self._lookup(parts.netloc)
        if upstream is None:
            _reply(writer, "502 Bad Gateway", f"no route for {target}")
            await writer.drain()
            return False
        return await self._forward(reader, writer, head, parts.netloc, upstream)

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> None:
        upstream = self._lookup(target)
        if upstream is None:
            _reply(writer, "502 Bad Gateway", f"no route for {target}")
            await writer.drain()
            return
        opened = await self._open(writer, upstream)
        if opened is None:
            return
        up_reader, up_writer = opened
        self._track(up_writer)
        self._add("tunnels")
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            # Splice both ways; each direction half-closes its peer when its source ends.
            await asyncio.gather(
                self._splice(reader, up_writer, "bytes_up"),
                self._splice(up_reader, writer, "bytes_down"),
            )
        finally:
            self._untrack(up_writer)

    async def _splice(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, counter: str
    ) -> None:
        try:
            while data := await src.read(PIECE):
                dst.write(data)
                await dst.drain()
                self._add(counter, len(data))
            if dst.can_write_eof():
                dst.write_eof()
        except CONNECTION_ERRORS:
            dst.transport.abort()  # one side broke: break the other too, as a tunnel would

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: _Head,
        authority: str,
        upstream: tuple[str, int],
    ) -> bool:
        method, target = head.first[0], head.first[1]
        version = head.first[2] if len(head.first) > 2 else "HTTP/1.0"
        origin = target[len("http://") + len(authority) :]
        origin = origin if origin.startswith("/") else "/" + origin
        opened = await self._open(writer, upstream)
        if opened is None:
            return False
        up_reader, up_writer = opened
        self._track(up_writer)
        try:
            with self._lock:
                self.requests[method] += 1
            # Every header goes upstream unchanged (SigV4 signs Host and others), except the
            # proxy's own ones, and Expect: 100-continue, which the proxy answers itself.
            lines = [line for line in head.lines if not _dropped(line)]
            up_writer.write(
                f"{method} {origin} {version}\r\n".encode("latin-1")
                + b"".join(line + b"\r\n" for line in lines)
                + b"\r\n"
            )
            if head.get("expect").lower() == "100-continue":
                writer.write(f"{version} 100 Continue\r\n\r\n".encode("latin-1"))
                await writer.drain()
                self._add("expect_continue")
            body_sent = True
            try:
                self._add("bytes_up", await _copy_body(reader, up_writer, head))
            except (ConnectionResetError, BrokenPipeError):
                body_sent = False  # upstream answered early and hung up: relay its answer
            keep = await self._relay_response(up_reader, writer, method)
        except CONNECTION_ERRORS:
            self._add("upstream_errors")
            return False
        finally:
            self._untrack(up_writer)
        client_close = "close" in head.tokens("connection") or version == "HTTP/1.0"
        return keep and body_sent and not client_close

    async def _relay_response(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str
    ) -> bool:
        """Copy one response to the client; True if it was framed (connection reusable)."""
        while True:
            raw = await up_reader.readuntil(b"\r\n\r\n")
            head = _Head.parse(raw)
            status = int(head.first[1])
            if not 100 <= status < 200:
                break
            # 1xx without Expect upstream is unusual; the client already got its 100.
        writer.write(raw)
        if method == "HEAD" or status in (204, 304):
            moved = 0
        elif "chunked" in head.tokens("transfer-encoding") or head.get("content-length"):
            moved = await _copy_body(up_reader, writer, head)
        else:
            # Delimited by the upstream closing: the client can only see the end if we close.
            self._add("bytes_down", await _copy_to_eof(up_reader, writer))
            return False
        await writer.drain()
        self._add("bytes_down", moved)
        return "close" not in head.tokens("connection")
