"""A TCP relay in front of the store: counts what clients send (case b), fails a share of
requests (case 6).

Run as ``python bench/relay.py HOST PORT [FAIL_SHARE SEED]``: it listens on a free port of
127.0.0.1, prints its URL and forwards every connection to HOST:PORT byte for byte,
counting what the clients send in 0.1 s bins of CLOCK_MONOTONIC (the harness's clock).
With FAIL_SHARE it reads just enough of each request (its head and Content-Length) to
answer that share of them itself with 500 InternalError, seeded, without passing them on.
When the harness closes its stdin it prints its counters as JSON and exits.

Built on asyncio protocols, not streams, and in a process of its own: the soak's 2 %
store faults used to come from the tests' aiohttp proxy, which spent almost as much CPU
as the service it measured (bench/RESULTS.md), so its pauses showed up as upload latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from typing import cast

BIN_S = 0.1
_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error.</Message></Error>"
)
_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_ERROR_BODY)
)


class Counters:
    def __init__(self, fail_share: float, seed: int) -> None:
        self.t0 = time.monotonic()
        self.bins: dict[int, int] = {}
        self.fail_share = fail_share
        self.rng = random.Random(seed)
        self.requests = 0
        self.injected = 0

    def add(self, n: int) -> None:
        index = int((time.monotonic() - self.t0) / BIN_S)
        self.bins[index] = self.bins.get(index, 0) + n


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it receives goes to ``peer``'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # for the upstream side before it connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        for data in self.pending:  # first, before anything data_received sends from now on
            self.transport.write(data)
        self.pending.clear()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # back-pressure: a peer that cannot keep up pauses this side's reading
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Side):
    """The client's end: counts its bytes and, with faults on, follows its requests.

    HTTP/1.1 clients send the next request on a connection only after the last answer,
    so an answer written here never interleaves with one from the store."""

    def __init__(self, counters: Counters, host: str, port: int) -> None:
        super().__init__()
        self.counters = counters
        self.upstream = (host, port)
        self.head = b""
        self.body_left = 0  # bytes of the current request's body still to come
        self.dropping = False  # the current request is answered here, not passed on
        self.is_head = False
        self.parsing = counters.fail_share > 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        up = _Side()
        up.peer, self.peer = self, up
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: up, *self.upstream))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        if (task.cancelled() or task.exception() is not None) and self.transport is not None:
            self.transport.close()  # the store is not there: neither is this connection

    def data_received(self, data: bytes) -> None:
        self.counters.add(len(data))
        while data:
            if not self.parsing:
                super().data_received(data)
                return
            if self.body_left:
                take = data[: self.body_left]
                self.body_left -= len(take)
                data = data[len(take) :]
                if not self.dropping:
                    super().data_received(take)
                elif not self.body_left:
                    self._answer_500()
                continue
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[: end + 4], self.head[end + 4 :]
            self.head = b""
            self._request(head)

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"content-length" not in fields and b"transfer-encoding" in fields:
            # chunked: not followed; this connection is relayed as it is from here on
            self.parsing = False
            super().data_received(head)
            return
        self.counters.requests += 1
        self.body_left = int(fields.get(b"content-length", b"0"))
        self.dropping = self.counters.rng.random() < self.counters.fail_share
        self.is_head = lines[0].startswith(b"HEAD ")
        if not self.dropping:
            super().data_received(head)
        elif b"expect" in fields or not self.body_left:
            self._answer_500()
            if self.body_left and self.transport is not None:
                self.transport.close()  # the body may or may not follow: start afresh

    def _answer_500(self) -> None:
        self.counters.injected += 1
        self.dropping = False
        if self.transport is not None and not self.transport.is_closing():
            body = b"" if self.is_head else _ERROR_BODY
            self.transport.write(_ERROR + body)


async def main(host: str, port: int, fail_share: float, seed: int) -> None:
    counters = Counters(fail_share, seed)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(counters, host, port), "127.0.0.1", 0)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    report = {
        "t0": counters.t0,
        "bin_s": BIN_S,
        "bins": counters.bins,
        "requests": counters.requests,
        "injected": {"error500": counters.injected},
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    share, seed = (float(args[2]), int(args[3])) if len(args) > 2 else (0.0, 0)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(args[0], int(args[1]), share, seed))
