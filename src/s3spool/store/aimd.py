"""Retry delays, and the AIMD limit on uploads in flight: halved on SlowDown, one more per
window of successes (it relieves a throttled prefix, which botocore's rate limit does not)."""

from __future__ import annotations

import logging
import random
import time

from s3spool.store.base import ByteBudget

log = logging.getLogger("s3spool.throttle")


def backoff(attempt: int, first: float, longest: float) -> float:
    """Delay before retry ``attempt`` (1, 2, ...): doubling from ``first`` up to ``longest``, a
    random point in its upper half (so failed requests do not come back in step)."""
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


class Throttle(ByteBudget):
    """Uploads in flight (``used``), at most ``limit``, which ``on_slowdown`` halves."""

    def __init__(self, maximum: int, *, cooldown: float = 1.0) -> None:
        super().__init__(maximum)
        self.maximum = maximum
        self._cooldown = cooldown  # one cut per window: a burst of 503s is one signal
        self._last_cut = 0.0
        self._successes = 0

    @property
    def in_flight(self) -> int:
        return self.used

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
