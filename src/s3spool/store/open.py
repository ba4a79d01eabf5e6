"""The configured destination: ``s3://`` (``S3Store``), ``noop://``, and fault injection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from s3spool.config.settings import Settings
from s3spool.errors import PermanentError
from s3spool.spool.spool import Source
from s3spool.store.bandwidth import RouteLimit
from s3spool.store.base import ByteBudget, Delivery, Store, StoreWrapper
from s3spool.store.compress import CompressingStore
from s3spool.store.digests import Checksummer
from s3spool.store.s3 import S3Store
from s3spool.store.verify import digest_file

log = logging.getLogger("s3spool.store")


class NoopStore:
    """``noop://``: read the file (so read errors surface) and log; store nothing."""

    def __init__(self, settings: Settings) -> None:
        self.ck = Checksummer(settings.checksum)

    async def __aenter__(self) -> NoopStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def upload(self, src: Source) -> Delivery:
        digest = await asyncio.to_thread(digest_file, src.fd, src.size, self.ck, None)
        log.debug("noop: would upload %r to %r", src.name, src.key)
        return Delivery(src.key, src.size, etag=digest.etag, checksum=digest.checksum)

    async def delivered(self, src: Source) -> bool:
        return False

    async def probe(self) -> None:
        return None

    async def survey(self) -> list[tuple[str, str]]:
        return []

    @property
    def last_answer(self) -> float:
        return time.monotonic()

    async def abort_upload(self, key: str, upload_id: str) -> None:
        return None

    async def stale_uploads(self, older_than: float) -> list[tuple[str, str]]:
        return []

    async def test_write(self) -> str:
        return ""


class FaultyStore(StoreWrapper):
    """``FAIL_RATE``: fail a fraction of uploads on purpose, before anything is sent."""

    def __init__(self, inner: Store, rate: float, seed: int | None = None) -> None:
        super().__init__(inner)
        self.rate = rate
        self._rng = random.Random(seed)

    async def upload(self, src: Source) -> Delivery:
        if self._rng.random() < self.rate:
            raise PermanentError("injected failure (FAIL_RATE)", reason="injected")
        return await self.inner.upload(src)


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings,
    *,
    on_slowdown: Callable[[], None] | None = None,
    budget: ByteBudget | None = None,
    limiter: RouteLimit | None = None,
) -> Any:
    """The configured destination as an async context manager."""
    scheme = settings.scheme
    async with AsyncExitStack() as stack:
        inner: Store
        if scheme == "noop":
            inner = await stack.enter_async_context(NoopStore(settings))
        else:
            inner = await stack.enter_async_context(
                S3Store(settings, on_slowdown=on_slowdown, budget=budget, limiter=limiter)
            )
        # always: a claim recorded with a codec is stored compressed even if COMPRESS changed
        inner = CompressingStore(inner, settings)
        yield FaultyStore(inner, settings.fail_rate) if settings.fail_rate > 0 else inner
