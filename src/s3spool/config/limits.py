"""Bandwidth limit values (``BANDWIDTH_LIMIT``, ``ROUTE_BANDWIDTH_LIMIT``): a rate, ``off``, or
a daily schedule of local-time windows.

* a rate in bytes per second, written as a size: ``20MiB``, ``500KB``, ``1048576`` (``/s`` may
  follow: ``20MiB/s``);
* ``off`` (or empty): no limit;
* a schedule: ``08:00-18:00=10MiB,18:00-08:00=off``.  Each window is ``HH:MM-HH:MM=RATE``
  (or ``=off``), start included, end excluded, in the local time of the host; a window
  whose end is before its start wraps midnight (``22:00-06:00``); ``24:00`` may end a
  window.  Windows must not overlap (so at most one applies at any time).  Where no
  window applies there is no limit.

Parsed values are plain data (``Limit``); ``bandwidth.py`` enforces them.  The settings keep
the text as written, checked by ``parse_bandwidth_limit``, so ``s3spool config`` shows it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

from s3spool.config.formats import parse_size

#: Below this a single chunk would take longer than stores wait for a slow body.
MIN_RATE = 64 * 1024
DAY_MINUTES = 24 * 60
_SYNTAX = "a rate, off or a schedule (e.g. 20MiB, off, 08:00-18:00=10MiB,18:00-08:00=off)"
_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class Window:
    """``start``-``end`` (minutes of the day; ``end`` < ``start`` wraps midnight) at ``rate``
    bytes per second (None: off)."""

    start: int
    end: int
    rate: int | None

    def covers(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def minutes(self) -> set[int]:
        span = (self.end - self.start) % DAY_MINUTES or DAY_MINUTES
        return {(self.start + i) % DAY_MINUTES for i in range(span)}

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class Limit:
    """A parsed limit: a fixed ``rate`` (None: off), or a schedule of ``windows``."""

    rate: int | None = None
    windows: tuple[Window, ...] = ()

    @property
    def scheduled(self) -> bool:
        return bool(self.windows)

    def rate_at(self, when: datetime) -> int | None:
        """Bytes per second at local time ``when`` (None: no limit)."""
        if not self.windows:
            return self.rate
        minute = when.hour * 60 + when.minute
        for window in self.windows:
            if window.covers(minute):
                return window.rate
        return None

    def next_change(self, when: datetime) -> float:
        """Seconds from ``when`` to the next window boundary (inf without a schedule)."""
        if not self.windows:
            return math.inf
        now = when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6
        edges = {w.start for w in self.windows} | {w.end % DAY_MINUTES for w in self.windows}
        return min((edge * 60 - now) % 86400 or 86400.0 for edge in edges)


OFF = Limit()


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


class _NotARate(ValueError):
    pass


def parse_rate(text: str) -> int | None:
    """``20MiB`` (or ``20MiB/s``) → bytes per second; ``off`` → None."""
    text = text.strip()
    if text.lower() in ("off", ""):
        return None
    if text.lower().endswith("/s"):
        text = text[:-2]
    try:
        rate = parse_size(text)
    except ValueError:
        raise _NotARate(f"{text!r} is not a rate (e.g. 20MiB) or off") from None
    if rate == 0:
        raise ValueError("0 would stop every upload; write off for no limit")
    if rate < MIN_RATE:
        raise ValueError(f"{text!r} is below the smallest limit, 64KiB per second")
    return int(rate)


def _minute(hh: str, mm: str, text: str, *, end: bool) -> int:
    hour, minute = int(hh), int(mm)
    if minute > 59 or hour > 24 or (hour == 24 and (minute or not end)):
        raise ValueError(f"window {text!r}: {hh}:{mm} is not a time of day (00:00 to 23:59)")
    return hour * 60 + minute


def parse_limit(value: Any) -> Limit:
    """A setting's value (text, a number of bytes, None) → ``Limit``, or ``ValueError``."""
    if value is None:
        return OFF
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not {_SYNTAX}")
    if isinstance(value, int):
        return Limit(parse_rate(str(value)))
    items = [item.strip() for item in value.split(",")]
    if len(items) == 1 and "=" not in items[0]:
        try:
            return Limit(parse_rate(items[0]))
        except _NotARate:
            raise ValueError(f"{items[0]!r} is not {_SYNTAX}") from None
    windows: list[Window] = []
    for item in items:
        span, sep, rate = item.partition("=")
        m = _WINDOW_RE.match(span.strip())
        if not sep or m is None:
            raise ValueError(f"{item!r} is not a window HH:MM-HH:MM=RATE (e.g. 08:00-18:00=10MiB)")
        start = _minute(m.group(1), m.group(2), span.strip(), end=False)
        end = _minute(m.group(3), m.group(4), span.strip(), end=True)
        if start == end:
            raise ValueError(f"window {span.strip()!r} is empty (use 00:00-24:00 for all day)")
        if not rate.strip():
            raise ValueError(f"window {span.strip()!r}: no rate (write off for no limit)")
        try:
            windows.append(Window(start, end, parse_rate(rate)))
        except ValueError as exc:
            raise ValueError(f"window {span.strip()!r}: {exc}") from None
    for i, one in enumerate(windows):
        for other in windows[:i]:
            if one.minutes() & other.minutes():
                raise ValueError(f"windows {other} and {one} overlap")
    return Limit(windows=tuple(windows))


def parse_bandwidth_limit(value: Any) -> str | None:
    """The check of a setting's value: the text as written (None for empty), if it parses."""
    parse_limit(value)
    if isinstance(value, int):
        return str(value)
    return value.strip() or None if isinstance(value, str) else None


BandwidthLimit = Annotated[str | None, BeforeValidator(parse_bandwidth_limit)]
