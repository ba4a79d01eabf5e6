"""Checksums, the byte budget, the throttle, the queue, backoff and the eligibility rule."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import zlib

import crc32c
import pytest

from s3spool.spool.cleanup import cautious_now
from s3spool.spool.scan import hold_left
from s3spool.spool.watch import Pending
from s3spool.store.aimd import QUICK_RETRY, Throttle, backoff, retry_delay
from s3spool.store.base import ByteBudget
from s3spool.store.digests import Checksummer, StreamDigest


def _crc32c(data: bytes) -> bytes:
    return crc32c.crc32c(data).to_bytes(4, "big")


@pytest.mark.parametrize("count", [1, 2, 10_000])
def test_composite_values_of_parts(count: int) -> None:
    ck = Checksummer("crc32c")
    parts = [bytes([i % 251]) * (1 + i % 7) for i in range(count)]
    digests = [ck.body(p) for p in parts]
    etag, checksum = ck.composite(digests)
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    assert etag == f"{hashlib.md5(md5s).hexdigest()}-{count}"
    joined = b"".join(_crc32c(p) for p in parts)
    assert checksum == f"{base64.b64encode(_crc32c(joined)).decode()}-{count}"


@pytest.mark.parametrize(
    ("algorithm", "checksum"),
    [
        ("crc32c", lambda d: _crc32c(d)),
        ("crc32", lambda d: zlib.crc32(d).to_bytes(4, "big")),
        ("sha256", lambda d: hashlib.sha256(d).digest()),
        ("md5", lambda d: None),
    ],
)
def test_body_and_stream_digests_agree(algorithm: str, checksum: object) -> None:
    ck = Checksummer(algorithm)
    data = bytes(range(256)) * 1000
    whole = ck.body(data)
    stream = StreamDigest(algorithm)
    for i in range(0, len(data), 4099):
        stream.update(data[i : i + 4099])
    assert whole == stream.result()
    assert whole.md5 == hashlib.md5(data).digest()
    assert whole.checksum == checksum(data)  # type: ignore[operator]


def test_no_checksum_means_no_digest_at_all() -> None:
    ck = Checksummer("none")
    assert ck.body(b"x").md5 is None
    assert ck.composite([ck.body(b"x")]) == (None, None)


async def test_byte_budget_waits_in_order_and_bounds_memory() -> None:
    budget = ByteBudget(100)
    order: list[str] = []

    async def take(name: str, n: int, hold: float) -> None:
        async with budget.hold(n):
            order.append(name)
            assert budget.used <= budget.limit
            await asyncio.sleep(hold)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(take("a", 60, 0.05))
        await asyncio.sleep(0)
        tg.create_task(take("b", 60, 0))  # must wait for a
        await asyncio.sleep(0)
        tg.create_task(take("c", 10, 0))  # fits, but FIFO: after b
    assert order == ["a", "b", "c"]
    assert budget.used == 0


async def test_byte_budget_lets_one_oversized_body_through_alone() -> None:
    budget = ByteBudget(10)
    async with budget.hold(1000):
        assert budget.used == 10


async def test_byte_budget_cancelled_waiter_frees_nothing_it_did_not_take() -> None:
    budget = ByteBudget(10)
    async with budget.hold(10):
        waiter = asyncio.create_task(budget.hold(5).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert budget.used == 0


async def test_byte_budget_frees_a_hold_left_by_an_error_or_a_cancel() -> None:
    budget = ByteBudget(10)
    with pytest.raises(KeyError):
        async with budget.hold(4):
            raise KeyError("x")
    assert budget.used == 0

    async def hold_long() -> None:
        async with budget.hold(4):
            await asyncio.sleep(10)

    task = asyncio.create_task(hold_long())
    await asyncio.sleep(0)
    assert budget.used == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.used == 0


async def test_throttle_halves_then_grows_back() -> None:
    t = Throttle(16, cooldown=0.0)
    t.on_slowdown()
    assert t.limit == 8
    t.on_slowdown()
    t.on_slowdown()
    t.on_slowdown()
    t.on_slowdown()
    assert t.limit == 1  # never below one
    for expected in (2, 3, 4):
        for _ in range(expected - 1):  # a window of successes as large as the limit
            t.on_success()
        assert t.limit == expected
    for _ in range(1000):
        t.on_success()
    assert t.limit == 16  # never above the maximum


async def test_throttle_cuts_once_per_burst() -> None:
    t = Throttle(16, cooldown=60.0)
    for _ in range(5):
        t.on_slowdown()
    assert t.limit == 8


async def test_throttle_slots_respect_the_limit() -> None:
    t = Throttle(2, cooldown=0.0)
    peak = 0

    async def one() -> None:
        nonlocal peak
        async with t.hold(1):
            peak = max(peak, t.in_flight)
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as tg:
        for _ in range(6):
            tg.create_task(one())
    assert peak == 2
    assert t.in_flight == 0


async def test_pending_deduplicates_and_bounds() -> None:
    p = Pending(2)
    assert p.offer((0, "a"))
    assert p.offer((0, "a"))  # already queued: still "queued", not twice
    assert p.offer((0, "b"))
    assert not p.offer((0, "c"))  # full
    assert len(p) == 2
    assert await p.get() == (0, "a")
    assert p.offer((0, "c"))
    assert (0, "a") not in p
    assert (0, "c") in p


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (10, 30.0, 60.0), (100, 30.0, 60.0)],
)
def test_backoff_doubles_with_equal_jitter_up_to_the_cap(
    attempt: int, low: float, high: float
) -> None:
    delays = [backoff(attempt, 0.5, 60.0) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > (high - low) / 4  # jittered, not constant


@pytest.mark.parametrize(
    ("attempt", "slowdown", "low", "high"),
    [
        (1, False, 0.0, QUICK_RETRY),  # a 500 or a reset: once at once
        (2, False, 0.25, 0.5),  # then RETRY_BACKOFF, doubling
        (3, False, 0.5, 1.0),
        (1, True, 0.25, 0.5),  # SlowDown: never a quick retry
        (2, True, 0.5, 1.0),
        (50, False, 30.0, 60.0),
    ],
)
def test_retry_delay_retries_once_at_once_then_backs_off(
    attempt: int, slowdown: bool, low: float, high: float
) -> None:
    delays = [retry_delay(attempt, 0.5, 60.0, slowdown=slowdown) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 100  # jittered


@pytest.mark.parametrize(
    ("mtime", "hold_for", "seen_for", "left"),
    [
        (1000.0, 0.0, 0.0, 0.0),  # no hold
        (1000.0, 60.0, 0.0, 0.0),  # old enough
        (1090.0, 60.0, 0.0, 50.0),  # 10 s old of 60
        (1100.0, 60.0, 0.0, 60.0),  # just written
        (1100.5, 60.0, 0.0, 60.5),  # within the 1 s grace: still the mtime rule
        (5000.0, 60.0, 0.0, 60.0),  # in the future: from first seen
        (5000.0, 60.0, 45.0, 15.0),
        (5000.0, 60.0, 90.0, 0.0),
    ],
)
def test_hold_left(mtime: float, hold_for: float, seen_for: float, left: float) -> None:
    assert hold_left(mtime, hold_for, 1100.0, seen_for) == pytest.approx(left)


def test_cautious_now_is_the_wall_clock_when_it_was_not_stepped() -> None:
    import time

    before = time.time()
    now = cautious_now()
    assert before - 0.5 <= now <= time.time()


async def test_scan_loop_stops_when_cancelled_as_a_rescan_is_asked_for() -> None:
    """A SIGTERM right as a healed spool asks for a rescan must still stop the loop."""
    from s3spool.spool.watch import Discovery

    discovery = Discovery([], Pending(10), ignore=[], rescan_interval=600.0)
    task = asyncio.create_task(discovery.scan_loop())
    await discovery.wait_first_scan()
    await asyncio.sleep(0)  # the loop now waits for a rescan request
    discovery.request_rescan()
    task.cancel()  # in the same turn of the event loop
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)
