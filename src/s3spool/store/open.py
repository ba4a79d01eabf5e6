"""The configured destination: ``s3://`` (``S3Store``) or ``noop://``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from s3spool.config.settings import Settings
from s3spool.spool.pieces import Readable, read_chunks
from s3spool.spool.spool import Source
from s3spool.store.base import INLINE_READ_MAX, ByteBudget, Delivery

if TYPE_CHECKING:
    from s3spool.store.bandwidth import RouteLimit
    from s3spool.store.s3 import S3Store

log = logging.getLogger("s3spool.store")


class NoopStore:
    """``noop://``: read the file (so read errors surface) and store nothing.  No digest: with
    no object there is nothing to check it against."""

    async def __aenter__(self) -> NoopStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def upload(self, src: Source) -> Delivery:
        if src.size <= INLINE_READ_MAX:  # a thread hop costs more than reading a small file
            _read_all(src.reader(), src.size)
        else:
            await asyncio.to_thread(_read_all, src.reader(), src.size)
        log.debug("noop: would upload %r to %r", src.name, src.key)
        return Delivery(src.key, src.size)

    async def delivered(self, src: Source) -> bool:
        return False

    async def probe(self) -> None:
        return None

    async def survey(self) -> list[tuple[str, str]]:
        return []

    def where(self) -> str:
        return "nowhere (files are read, nothing is stored)"

    @property
    def last_answer(self) -> float:
        return time.monotonic()

    @property
    def requests(self) -> int:
        return 0

    async def abort_upload(self, key: str, upload_id: str) -> None:
        return None

    async def delete(self, key: str) -> None:
        return None

    async def listed(self, keys: list[str]) -> dict[str, tuple[int, str | None]]:
        return {}

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        return []


def _read_all(fd: Readable, size: int) -> None:
    for _chunk in read_chunks(fd, 0, size):
        pass


def open_store(
    settings: Settings,
    on_slowdown: Callable[[], None] | None,
    budget: ByteBudget,
    limiter: RouteLimit | None,
) -> S3Store | NoopStore:
    """The configured destination, to be entered as an async context manager."""
    if settings.scheme == "noop":
        return NoopStore()
    from s3spool.store.s3 import S3Store  # botocore, only where a store is contacted

    return S3Store(settings, on_slowdown=on_slowdown, budget=budget, limiter=limiter)
