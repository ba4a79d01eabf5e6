"""What the pipeline needs from a destination (``Store``: ``s3.S3Store``, ``open.NoopStore``),
what an upload returns (``Delivery``), and the byte budget that bounds the bodies in memory."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mimetypes
from collections import deque
from collections.abc import AsyncIterator
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


class Store(Protocol):
    """What the pipeline needs from a destination."""

    async def upload(self, src: Source) -> Delivery: ...

    async def delivered(self, src: Source) -> bool: ...

    async def probe(self) -> None: ...

    async def survey(self) -> list[tuple[str, str]]:
        """Probe at startup; what the store supports, as (topic, finding) lines."""
        ...

    @property
    def last_answer(self) -> float:
        """Monotonic time of the store's last answer (idle probes skip a busy store)."""
        ...

    async def abort_upload(self, key: str, upload_id: str) -> None: ...

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]: ...


class ByteBudget:
    """Caps the file bytes held in memory by all uploads together (invariant 5).

    FIFO waiters, and no lock on the fast path: most bodies are small and never wait.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.limit)  # a single body larger than the budget still proceeds alone
        if self._waiters or self.used + n > self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release(n)  # granted as we were cancelled: give it back
                else:
                    self._waiters.remove((n, fut))
                    self._wake()
                raise
        else:
            self.used += n
        try:
            yield
        finally:
            self._release(n)

    def _release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self.used += n
                fut.set_result(None)


def guess_type(name: str) -> str | None:
    dot = name.rfind(".")
    # after the last "/": a RECURSIVE claim's name is its relpath (a.d/README has no type)
    return _guess_by_suffix(name[dot:].lower()) if dot > name.rfind("/") + 1 else None


@functools.lru_cache(maxsize=512)
def _guess_by_suffix(suffix: str) -> str | None:
    # by suffix only, cached: guess_type on every name costs more than the rest of a header
    return mimetypes.guess_type("x" + suffix, strict=False)[0]
