"""Bandwidth limits at run time: token buckets (a route's, then the shared one) that every body
takes from piece by piece, its first piece before its request goes out, oldest body first;
their rates follow the schedules of BANDWIDTH_LIMIT and ROUTE_BANDWIDTH_LIMIT."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any

from s3spool.config.formats import MIN_RATE, parse_limit
from s3spool.spool.pieces import STREAM_CHUNK
from s3spool.store.base import Waiters

#: Bodies in the order they asked for their first piece: a bucket serves the lowest first.
_tickets = itertools.count()
#: A body's place in line (its ticket) and the bytes taken for it before it was sent.
Turn = tuple[int, int]


def piece_size(rate: int) -> int:
    """Bytes taken (and sent) at once: a chunk, less at low rates (1/8 s, at least 64 KiB)."""
    return max(MIN_RATE, min(STREAM_CHUNK, rate // 8))


class TokenBucket:
    """``rate`` bytes per second (None: off), holding at most one piece (``capacity``); a take
    of more goes once the bucket is full and leaves it owing the rest."""

    def __init__(self, rate: int | None = None, *, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.rate: int | None = None
        self.capacity = STREAM_CHUNK
        self.tokens = 0.0
        self._stamp = clock()
        self._waiters = Waiters(self._grant, self._refund, self._retime)
        self._timer: asyncio.TimerHandle | None = None
        self.set_rate(rate)

    def set_rate(self, rate: int | None) -> None:
        """A new rate, at once: waiters are re-timed (None: every waiter goes now)."""
        self._refill()
        was_off = self.rate is None
        self.rate = rate
        if rate is not None:
            self.capacity = piece_size(rate)
            # a bucket that starts (or starts again) begins full; a rate change keeps the level
            self.tokens = float(self.capacity) if was_off else min(self.tokens, self.capacity)
        self._retime()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate is not None:
            self.tokens = min(float(self.capacity), self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, n: int, ticket: int) -> None:
        """Wait until ``n`` bytes may be sent (``ticket``: the body's place in line)."""
        if self.rate is not None and (self._waiters or not self._grant(n)):
            await self._waiters.wait(n, ticket)

    def _grant(self, n: int) -> bool:
        if self.rate is not None:
            self._refill()
            if self.tokens < min(n, self.capacity):
                return False
            self.tokens -= n
        return True

    def _refund(self, n: int) -> None:
        self.tokens += n  # nothing was sent

    def _retime(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._wake()

    def _wake(self) -> None:
        self._timer = None
        need = self._waiters.serve()
        if need is not None and self.rate is not None:
            delay = (min(need, self.capacity) - self.tokens) / self.rate
            self._timer = asyncio.get_running_loop().call_later(delay, self._wake)


class Pacer:
    """The buckets a route's bodies take from while limits apply: its own, then the shared."""

    def __init__(self, buckets: tuple[TokenBucket, ...]) -> None:
        self.buckets = buckets

    @property
    def piece(self) -> int:
        return min(b.capacity for b in self.buckets)

    async def take(self, n: int, ticket: int) -> None:
        for bucket in self.buckets:
            await bucket.take(n, ticket)


class RouteLimit:
    """What a route's sender paces its bodies with; ``active`` is None while no limit applies."""

    def __init__(self, own: TokenBucket, shared: TokenBucket) -> None:
        self._buckets = (own, shared)
        self.active: Pacer | None = None
        self.refresh()

    def refresh(self) -> None:
        """The buckets' rates changed: which of them apply now."""
        on = tuple(b for b in self._buckets if b.rate is not None)
        if on != (self.active.buckets if self.active is not None else ()):
            self.active = Pacer(on) if on else None

    async def start(
        self, body: bytes | AsyncIterator[bytes], length: int
    ) -> bytes | AsyncIterator[bytes]:
        """``body`` paced: its first piece taken now, before the request goes out (``turn``)."""
        turn = await self.turn(length)
        return body if turn is None else self.rest(body, length, turn)

    async def turn(self, length: int) -> Turn | None:
        """Wait for a body's first piece; its place in line and bytes paid (None: no limit)."""
        pacer = self.active
        if pacer is None or length <= 0:
            return None
        ticket = next(_tickets)
        first = min(pacer.piece, length)
        await pacer.take(first, ticket)
        return ticket, first

    def rest(
        self, body: bytes | AsyncIterator[bytes], length: int, turn: Turn
    ) -> bytes | AsyncIterator[bytes]:
        """The body after its ``turn``, paced piece by piece."""
        if isinstance(body, bytes) and length <= turn[1]:
            return body
        return self._rest(body, *turn)

    async def _rest(
        self, body: bytes | AsyncIterable[bytes], ticket: int, paid: int
    ) -> AsyncIterator[bytes]:
        async for chunk in _chunks(body):
            pos, size = 0, len(chunk)
            while pos < size:
                pacer = self.active
                if pacer is None:  # the limit was lifted: the rest goes as it comes
                    yield chunk[pos:] if pos else chunk
                    break
                n = min(pacer.piece, size - pos)
                if paid >= n:
                    paid -= n  # the first piece, taken before the request went out
                else:
                    await pacer.take(n - paid, ticket)
                    paid = 0
                yield chunk if n == size else chunk[pos : pos + n]
                pos += n


async def _chunks(body: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        yield body
    else:
        async for chunk in body:
            yield chunk


class Scope:
    """One limit, the process's or a route's: its parsed value, its bucket and its gauge."""

    def __init__(self, name: str, text: str | None, gauge: Callable[[float], None] | None) -> None:
        self.name = name
        self.text = text
        self.limit = parse_limit(text)
        self.bucket = TokenBucket()
        self._gauge = gauge
        if gauge is not None:
            gauge(0)

    def set(self, text: str | None) -> None:
        self.text, self.limit = text, parse_limit(text)

    def apply(self, now: datetime) -> None:
        rate = self.limit.rate_at(now)
        if rate != self.bucket.rate:
            self.bucket.set_rate(rate)
            if self._gauge is not None:
                self._gauge(rate or 0)


class Bandwidth:
    """The limits of one process: ``BANDWIDTH_LIMIT`` for all uploads together and each
    route's ``ROUTE_BANDWIDTH_LIMIT``, as buckets whose rates follow the schedules."""

    def __init__(
        self,
        limit: str | None,
        routes: Mapping[str, str | None],
        *,
        gauge: Any = None,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self._now = now

        def report(scope: str, route: str) -> Callable[[float], None] | None:
            return None if gauge is None else gauge.labels(scope, route).set

        self.shared = Scope("BANDWIDTH_LIMIT", limit, report("global", ""))
        self.routes = {
            name: Scope(f"route {name!r} ROUTE_BANDWIDTH_LIMIT", text, report("route", name))
            for name, text in routes.items()
        }
        self.handles = {
            name: RouteLimit(scope.bucket, self.shared.bucket)
            for name, scope in self.routes.items()
        }
        self._changed: asyncio.Event | None = None
        self.evaluate()

    def evaluate(self) -> float:
        """Set every bucket's rate for now; seconds until a schedule may change it."""
        now = self._now()
        delay = math.inf
        for scope in (self.shared, *self.routes.values()):
            scope.apply(now)
            delay = min(delay, scope.limit.next_change(now))
        for handle in self.handles.values():
            handle.refresh()
        return delay

    def update(self, limit: str | None, routes: Mapping[str, str | None]) -> list[str]:
        """New values (a re-read configuration), applied at once; what changed, for the log.
        Routes this process does not run are left out."""
        changes = []
        wanted = [(self.shared, limit)]
        wanted += [
            (self.routes[name], text) for name, text in routes.items() if name in self.routes
        ]
        for scope, text in wanted:
            if text != scope.text:
                changes.append(f"{scope.name} {scope.text or 'off'} -> {text or 'off'}")
                scope.set(text)
        if changes:
            self.evaluate()
            if self._changed is not None:
                self._changed.set()
        return changes

    async def run(self) -> None:
        """Follow the schedules until cancelled: at each window boundary, and at least once a
        second while a schedule is set (the wall clock may be stepped); idle without one."""
        self._changed = asyncio.Event()
        while True:
            delay = self.evaluate()
            self._changed.clear()
            timeout = None if math.isinf(delay) else min(delay + 0.002, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
