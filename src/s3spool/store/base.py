"""The destination's interface (``Store``), what an upload returns, and the limits' waiter queue."""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from s3spool.spool.spool import Source

#: Reading a small file inline is cheaper than a thread hop; above this, use a thread.
INLINE_READ_MAX = 1024 * 1024


@dataclass(slots=True)
class Delivery:
    key: str
    size: int
    etag: str | None = None
    checksum: str | None = None
    parts: int = 0
    already_there: bool = False
    #: bytes stored when they are not the file's (COMPRESS); ``size`` stays the file's
    stored: int | None = None
    version_id: str | None = None  # when the bucket keeps versions
    #: BATCH=bundle: the bundle that holds the file, and where its bytes start in it
    bundle: str | None = None
    offset: int | None = None


#: how a survey names what the first uploads have not taught yet
UNKNOWN = "not known yet"


class Store(Protocol):
    async def upload(self, src: Source) -> Delivery: ...

    async def delivered(self, src: Source) -> bool: ...

    async def probe(self) -> None: ...

    async def survey(self) -> list[tuple[str, str]]: ...  # (topic, finding) lines

    def where(self) -> str: ...  # the endpoint and how it is reached, known before a request

    @property
    def last_answer(self) -> float: ...  # monotonic: idle probes skip a busy store

    @property
    def requests(self) -> int: ...  # sent so far (the --once summary with BATCH)

    async def abort_upload(self, key: str, upload_id: str) -> None: ...

    async def delete(self, key: str) -> None: ...  # an object of s3spool's own (a bundle)

    async def listed(self, keys: list[str]) -> dict[str, tuple[int, str | None]]: ...

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]: ...


class Waiters:
    """Callers waiting, lowest ``key`` first (by default in order of arrival), for a share that
    ``grant(n)`` takes if it is there; one cancelled just as it was granted ``refund``s it.
    Callers try ``grant`` first while nobody waits: that fast path costs no await."""

    def __init__(
        self,
        grant: Callable[[int], bool],
        refund: Callable[[int], None],
        wake: Callable[[], object] | None = None,
    ) -> None:
        self._grant = grant
        self._refund = refund
        self.wake = wake or self.serve  # the owner's, to set a timer too (TokenBucket)
        self._line: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._line)

    async def wait(self, n: int, key: int | None = None) -> None:
        seq = next(self._seq)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._line, (seq if key is None else key, seq, n, fut))
        self.wake()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._refund(n)  # granted as we were cancelled: give it back
            self.wake()  # whoever waited behind us may go now
            raise

    def serve(self) -> int | None:
        """Grant waiters in turn while ``grant`` allows; what the first one left asks for."""
        line = self._line
        while line:
            _, _, n, fut = line[0]
            if not fut.done():  # (a cancelled waiter is dropped when its turn comes)
                if not self._grant(n):
                    return n
                fut.set_result(None)
            heapq.heappop(line)
        return None


class ByteBudget:
    """At most ``limit`` held at once, callers served in turn: the file bytes in memory of all
    uploads together (invariant 5), or uploads in flight (``aimd.Throttle``)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._waiters = Waiters(self._grant, self._release)

    def hold(self, n: int) -> _Hold:
        """``async with budget.hold(n)``: ``n`` held for the block."""
        return _Hold(self, min(n, self.limit))  # a body larger than the budget proceeds alone

    def _grant(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def _release(self, n: int) -> None:
        self.used -= n
        self._waiters.serve()


class _Hold:
    """A class, not a generator context manager: the fast path is per upload and ~1 us cheaper."""

    __slots__ = ("budget", "n")

    def __init__(self, budget: ByteBudget, n: int) -> None:
        self.budget, self.n = budget, n

    async def __aenter__(self) -> None:
        budget = self.budget
        if budget._waiters or not budget._grant(self.n):
            await budget._waiters.wait(self.n)

    async def __aexit__(self, *exc: object) -> None:
        self.budget._release(self.n)


def guess_type(name: str) -> str | None:
    dot = name.rfind(".")
    # after the last "/": a RECURSIVE claim's name is its relpath (a.d/README has no type)
    return _guess_by_suffix(name[dot:].lower()) if dot > name.rfind("/") + 1 else None


@functools.lru_cache(maxsize=512)
def _guess_by_suffix(suffix: str) -> str | None:
    # by suffix only, cached: guess_type on every name costs more than the rest of a header
    return mimetypes.guess_type("x" + suffix, strict=False)[0]
