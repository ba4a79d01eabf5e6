"""AIMD limit on uploads in flight: halve on SlowDown, grow by one per window of successes.

botocore's ``adaptive`` retry mode limits the request *rate* of one client and
is invisible to us; halving the number of concurrent uploads is what relieves a
throttled prefix, and it shows in logs and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator

from s3spool.store.base import Waiters

log = logging.getLogger("s3spool.throttle")


def backoff(attempt: int, first: float, longest: float) -> float:
    """Delay before retry ``attempt`` (1, 2, ...): doubling from ``first`` up to ``longest``,
    with equal jitter (a random point in the upper half), so retries never form a tight
    loop and many failed requests do not come back in step."""
    ceiling = min(longest, first * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


#: A failed request is retried once within this (a 500 or a reset connection is usually
#: gone by then); later retries back off from RETRY_BACKOFF. One quick retry is no loop.
QUICK_RETRY = 0.025


def retry_delay(attempt: int, first: float, longest: float, *, slowdown: bool = False) -> float:
    """Delay before retry ``attempt`` of a request: the first within ``QUICK_RETRY`` (unless
    the store asked us to slow down), then ``backoff`` from ``first``."""
    if slowdown:
        return backoff(attempt, first, longest)
    if attempt <= 1:
        return random.uniform(0.0, min(QUICK_RETRY, first))
    return backoff(attempt - 1, first, longest)


class Throttle:
    def __init__(self, maximum: int, *, cooldown: float = 1.0) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.in_flight = 0
        self._cooldown = cooldown  # one cut per window: a burst of 503s is one signal
        self._last_cut = 0.0
        self._successes = 0
        self._waiters = Waiters(self._grant, self._release)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._waiters or not self._grant(1):
            await self._waiters.wait(1)
        try:
            yield
        finally:
            self._release(1)

    def _grant(self, n: int) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += n
        return True

    def _release(self, n: int) -> None:
        self.in_flight -= n
        self._waiters.serve()

    def on_slowdown(self) -> None:
        now = time.monotonic()
        if now - self._last_cut < self._cooldown:
            return
        self._last_cut = now
        old = self.limit
        self.limit = max(1, self.limit // 2)
        self._successes = 0
        if self.limit != old:
            log.warning(
                "store is throttling (SlowDown): uploads in flight %d -> %d", old, self.limit
            )

    def on_success(self) -> None:
        if self.limit >= self.maximum:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            if self.limit == self.maximum:
                log.info("throttling over: uploads in flight back to %d", self.limit)
            else:
                log.debug("uploads in flight limit raised to %d", self.limit)
            self._waiters.serve()
