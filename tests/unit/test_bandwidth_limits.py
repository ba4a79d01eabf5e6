"""Bandwidth limits: the values (rates, off, schedules), the schedules on an injected clock,
the token bucket's arithmetic on an injected clock, and what a reload calls a restart."""

from __future__ import annotations

import math
import re
from datetime import datetime

import pytest

from s3spool.config.formats import Limit, Window, parse_limit
from s3spool.config.load import Config, load_settings
from s3spool.run.reload import needs_restart
from s3spool.spool.pieces import STREAM_CHUNK
from s3spool.store.bandwidth import Bandwidth, TokenBucket, piece_size
from svc import config_of

KIB, MIB = 1024, 1024 * 1024


def at(hhmm: str, second: int = 0) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2026, 11, 30, hour, minute, second)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        (None, Limit()),
        ("", Limit()),
        ("off", Limit()),
        (" OFF ", Limit()),
        ("20MiB", Limit(20 * MIB)),
        ("20 MiB/s", Limit(20 * MIB)),
        ("500KB", Limit(500_000)),
        ("1048576", Limit(MIB)),
        (1048576, Limit(MIB)),  # a TOML number
        ("64KiB", Limit(64 * KIB)),
        (
            "08:00-18:00=10MiB,18:00-08:00=off",
            Limit(windows=(Window(480, 1080, 10 * MIB), Window(1080, 480, None))),
        ),
        (" 22:00 - 06:00 = 5MiB/s ", Limit(windows=(Window(1320, 360, 5 * MIB),))),
        ("00:00-24:00=1MiB", Limit(windows=(Window(0, 1440, MIB),))),
        ("8:30-9:00=1M", Limit(windows=(Window(510, 540, MIB),))),
        # adjacent windows touch without overlapping (the end is excluded)
        (
            "00:00-12:00=1MiB,12:00-24:00=2MiB",
            Limit(windows=(Window(0, 720, MIB), Window(720, 1440, 2 * MIB))),
        ),
    ],
)
def test_parse_limit(text: object, limit: Limit) -> None:
    assert parse_limit(text) == limit


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast", "'fast' is not a rate, off or a schedule"),
        ("08:00-18:00", "'08:00-18:00' is not a rate, off or a schedule"),
        ("0", "0 would stop every upload; write off"),
        ("1KiB", "below the smallest limit, 64KiB"),
        ("-5MiB", "is not a rate"),
        (True, "is not a rate, off or a schedule"),
        (2.5, "is not a rate, off or a schedule"),
        ("08:00-18:00=fast", "window '08:00-18:00': 'fast' is not a rate"),
        ("08:00-18:00=", "window '08:00-18:00': no rate"),
        ("08:00-18:00=1MiB,", "'' is not a window HH:MM-HH:MM=RATE"),
        ("8-18=1MiB", "'8-18=1MiB' is not a window"),
        ("25:00-01:00=1MiB", "25:00 is not a time of day"),
        ("10:60-11:00=1MiB", "10:60 is not a time of day"),
        ("24:00-01:00=1MiB", "24:00 is not a time of day"),
        ("08:00-08:00=1MiB", "window '08:00-08:00' is empty"),
        ("08:00-18:00=1MiB,17:00-19:00=2MiB", "windows 08:00-18:00 and 17:00-19:00 overlap"),
        # a window that wraps midnight overlaps one in the early morning
        ("22:00-06:00=1MiB,05:00-07:00=2MiB", "windows 22:00-06:00 and 05:00-07:00 overlap"),
        ("00:00-24:00=1MiB,03:00-04:00=off", "overlap"),
    ],
)
def test_parse_limit_refuses(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_limit(text)


def test_a_bad_value_names_the_setting() -> None:
    with pytest.raises(Exception, match=r"S3SPOOL_BANDWIDTH_LIMIT \(--bandwidth-limit\): 'x'"):
        load_settings(destination="noop://", spool_dirs="/tmp/s", bandwidth_limit="x")
    with pytest.raises(Exception, match=r"S3SPOOL_ROUTE_BANDWIDTH_LIMIT .*overlap"):
        load_settings(
            destination="noop://",
            spool_dirs="/tmp/s",
            route_bandwidth_limit="01:00-03:00=1MiB,02:00-04:00=1MiB",
        )
    s = load_settings(destination="noop://", spool_dirs="/tmp/s", bandwidth_limit=" 20MiB ")
    assert s.bandwidth_limit == "20MiB"  # kept as written, for `s3spool config`


SCHEDULE = "08:00-18:00=10MiB,18:00-23:00=2MiB,23:30-01:00=off"


@pytest.mark.parametrize(
    ("when", "rate"),
    [
        (at("07:59", 59), None),  # no window: no limit
        (at("08:00"), 10 * MIB),  # the start is included
        (at("17:59", 59), 10 * MIB),
        (at("18:00"), 2 * MIB),  # the end is not
        (at("22:59"), 2 * MIB),
        (at("23:00"), None),
        (at("23:30"), None),  # an explicit off
        (at("00:30"), None),  # ... that wraps midnight
        (at("01:00"), None),
    ],
)
def test_rate_at(when: datetime, rate: int | None) -> None:
    assert parse_limit(SCHEDULE).rate_at(when) == rate


@pytest.mark.parametrize(
    ("text", "when", "rate"),
    [
        ("22:00-06:00=1MiB", at("21:59"), None),
        ("22:00-06:00=1MiB", at("22:00"), MIB),
        ("22:00-06:00=1MiB", at("23:59", 59), MIB),
        ("22:00-06:00=1MiB", at("00:00"), MIB),
        ("22:00-06:00=1MiB", at("05:59"), MIB),
        ("22:00-06:00=1MiB", at("06:00"), None),
        ("18:00-24:00=1MiB", at("23:59"), MIB),
        ("18:00-24:00=1MiB", at("00:00"), None),
    ],
)
def test_windows_wrap_at_midnight(text: str, when: datetime, rate: int | None) -> None:
    assert parse_limit(text).rate_at(when) == rate


@pytest.mark.parametrize(
    ("when", "seconds"),
    [
        (at("07:59", 30), 30.0),
        (at("08:00"), 10 * 3600.0),  # at a boundary: the next one
        (at("23:10"), 20 * 60.0),
        (at("23:45"), 75 * 60.0),  # 01:00, across midnight
        (at("02:00"), 6 * 3600.0),
    ],
)
def test_next_change(when: datetime, seconds: float) -> None:
    assert parse_limit(SCHEDULE).next_change(when) == pytest.approx(seconds)
    assert math.isinf(parse_limit("20MiB").next_change(when))


@pytest.mark.parametrize(
    ("rate", "piece"),
    [(20 * MIB, STREAM_CHUNK), (8 * MIB, MIB), (MIB, 128 * KIB), (64 * KIB, 64 * KIB)],
)
def test_piece_size_is_at_most_one_chunk(rate: int, piece: int) -> None:
    assert piece_size(rate) == piece


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_bucket_refills_at_its_rate_and_holds_one_piece() -> None:
    clock = Clock()
    bucket = TokenBucket(8 * MIB, clock=clock)
    assert bucket.capacity == MIB
    assert bucket.tokens == MIB  # starts full: the first piece goes at once
    await bucket.take(MIB, ticket=1)
    assert bucket.tokens == 0
    clock.t += 0.0625
    bucket._refill()
    assert bucket.tokens == pytest.approx(MIB / 2)
    clock.t += 10.0  # a long pause banks no more than one piece
    bucket._refill()
    assert bucket.tokens == MIB
    bucket.set_rate(2 * MIB)  # a lower rate: smaller pieces, the level is capped
    assert bucket.capacity == 256 * KIB
    assert bucket.tokens == 256 * KIB
    bucket.set_rate(None)
    await bucket.take(100 * MIB, ticket=2)  # off: never waits
    bucket.set_rate(4 * MIB)  # on again: full
    assert bucket.tokens == 512 * KIB


def test_bandwidth_follows_the_schedule_on_its_clock() -> None:
    now = [at("07:59", 58)]
    values: dict[tuple[str, str], float] = {}

    class Gauge:
        def labels(self, scope: str, route: str) -> Gauge:
            self.key = (scope, route)
            key = self.key

            class Child:
                def set(self, value: float) -> None:
                    values[key] = value

            return Child()  # type: ignore[return-value]

    bw = Bandwidth(
        "08:00-18:00=10MiB",
        {"a": "20MiB", "b": None},
        gauge=Gauge(),
        now=lambda: now[0],
    )
    a, b = bw.handles["a"], bw.handles["b"]
    assert b.active is None  # no limit at all: nothing on the hot path
    assert a.active is not None
    assert len(a.active.buckets) == 1
    assert values == {("global", ""): 0, ("route", "a"): 20 * MIB, ("route", "b"): 0}
    now[0] = at("08:00")
    assert bw.evaluate() == pytest.approx(10 * 3600)
    assert a.active is not None
    assert len(a.active.buckets) == 2  # the route's own bucket, then the shared one
    assert b.active is not None
    assert values[("global", "")] == 10 * MIB
    changes = bw.update("off", {"a": "20MiB", "b": "1MiB", "c": "5MiB"})
    assert changes == [
        "BANDWIDTH_LIMIT 08:00-18:00=10MiB -> off",
        "route 'b' ROUTE_BANDWIDTH_LIMIT off -> 1MiB",
    ]
    assert values[("global", "")] == 0
    assert values[("route", "b")] == MIB
    assert math.isinf(bw.evaluate())
    assert bw.update("off", {"a": "20MiB", "b": "1MiB"}) == []


def _config(**kw: object) -> Config:
    return config_of(load_settings(destination="noop://", spool_dirs="/tmp/s", **kw))


def test_what_needs_a_restart() -> None:
    old = _config(bandwidth_limit="1MiB", workers=8, hold_for="1s")
    assert needs_restart(old, _config(bandwidth_limit="2MiB", workers=8, hold_for="1s")) == []
    assert needs_restart(
        old, _config(route_bandwidth_limit="2MiB", workers=9, hold_for="2s", http_addr="")
    ) == ["workers, http_addr", "hold_for"]
