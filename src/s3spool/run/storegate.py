"""The store gate: intake runs while the store answers and pauses while it does not.

A store-wide fault (unreachable, TLS not trusted, a refusal that the bucket probe confirms)
closes the gate with one log line; a probe with backoff reopens it.  While no request
reaches the store, an idle probe every PROBE_INTERVAL notices an outage before files pile
up (``s3spool_store_up``, ``/readyz``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from s3spool.errors import StoreUnavailable, UploadError
from s3spool.store.base import Store

log = logging.getLogger("s3spool.service")


class StoreGate:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.event.set()
        #: set once the start-up survey ended: the sweep needs what it learned
        #: (is ListMultipartUploads there?)
        self.surveyed = asyncio.Event()

    async def survey(self, store: Store, pause: Callable[[UploadError], Awaitable[None]]) -> None:
        """The start-up survey, beside the first uploads: one ``store:`` line, or a pause."""
        try:
            found = await store.survey()
        except StoreUnavailable as exc:
            await pause(exc)
            return
        finally:
            self.surveyed.set()
        if found:
            log.info("store: %s", "; ".join(f"{topic}: {finding}" for topic, finding in found))

    def close(self, exc: UploadError) -> bool:
        """Pause intake; True if it was running (the caller starts the reopening probe)."""
        if not self.event.is_set():
            return False
        self.event.clear()
        log.error(
            "store unavailable (%s): intake paused, files stay where they are; "
            "probing until it answers",
            exc,
        )
        return True

    async def reopen_when_up(self, store: Store) -> None:
        """Probe with backoff (1 s doubling to 10 s) until the store answers; then reopen."""
        delay = 1.0
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(delay)
            try:
                await store.probe()
            except StoreUnavailable as exc:
                if time.monotonic() - last_log >= 60:
                    log.error("store still unavailable: %s (intake paused)", exc)
                    last_log = time.monotonic()
                delay = min(delay * 2, 10.0)
                continue
            log.warning("store reachable again: resuming intake")
            self.event.set()
            return

    async def watch(
        self,
        store: Store,
        interval: float,
        pause: Callable[[UploadError], Awaitable[None]],
    ) -> None:
        """While nothing else reaches the store, probe it every ``interval``."""
        while True:
            await asyncio.sleep(interval)
            if not self.event.is_set() or time.monotonic() - store.last_answer < interval:
                continue  # already paused (and probing), or the store answered recently
            try:
                await store.probe()
            except StoreUnavailable as exc:
                await pause(exc)
