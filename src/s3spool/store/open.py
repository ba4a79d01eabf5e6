"""The configured destination: ``s3://`` (``S3Store``) or ``noop://``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from s3spool.config.settings import Settings
from s3spool.spool.spool import Source
from s3spool.store.bandwidth import RouteLimit
from s3spool.store.base import ByteBudget, Delivery
from s3spool.store.digests import Checksummer, digest_file
from s3spool.store.s3 import S3Store

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


def open_store(
    settings: Settings,
    on_slowdown: Callable[[], None] | None,
    budget: ByteBudget,
    limiter: RouteLimit | None,
) -> S3Store | NoopStore:
    """The configured destination, to be entered as an async context manager."""
    if settings.scheme == "noop":
        return NoopStore(settings)
    return S3Store(settings, on_slowdown=on_slowdown, budget=budget, limiter=limiter)
