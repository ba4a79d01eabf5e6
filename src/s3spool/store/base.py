"""What the pipeline needs from a destination (``Store``), the records it passes
(``Source``, ``Delivery``), and the byte budget that bounds the bodies held in memory.

The destinations: ``s3store.S3Store``, ``noop://`` and fault injection in
``destinations.py``, which also opens the configured one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mimetypes
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from s3spool.spool.spool import Source

#: Reading a small file inline is cheaper than a thread hop; above this, use a thread.
INLINE_READ_MAX = 1024 * 1024


@dataclass(slots=True, eq=False, kw_only=True)
class Encoded(Source):
    """The compressed copy of ``original`` (``compress.py``), uploaded in its place: its
    ``fd`` and ``size`` are the copy's; the object's headers and metadata say what it holds."""

    original: Source
    content_type: str | None = None
    content_encoding: str | None = None
    metadata: dict[str, str]

    def describe(self, params: dict[str, Any]) -> str | None:
        """Add the copy's metadata and Content-Encoding to ``params``; its Content-Type."""
        params["Metadata"].update(self.metadata)
        if self.content_encoding:
            params["ContentEncoding"] = self.content_encoding
        return self.content_type

    def uploading(self, upload_id: str | None, part_size: int) -> None:
        # the upload id belongs to the claim: its key record keeps it for a restart
        self.upload_id, self.part_size = upload_id, part_size
        self.original.uploading(upload_id, part_size)


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


class StoreWrapper:
    """A ``Store`` around another: every call goes to ``inner`` unless a subclass changes it
    (fault injection, compression)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def upload(self, src: Source) -> Delivery:
        return await self.inner.upload(src)

    async def delivered(self, src: Source) -> bool:
        return await self.inner.delivered(src)

    async def probe(self) -> None:
        await self.inner.probe()

    async def survey(self) -> list[tuple[str, str]]:
        return await self.inner.survey()

    @property
    def last_answer(self) -> float:
        return self.inner.last_answer

    async def abort_upload(self, key: str, upload_id: str) -> None:
        await self.inner.abort_upload(key, upload_id)

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        return await self.inner.stale_uploads(older_than)


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
