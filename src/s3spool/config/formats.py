"""Value formats of settings, wherever they are written: durations, sizes, lists, ``k=v``
pairs and bandwidth limits."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field
from pydantic_settings import NoDecode

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: The longest duration: timers and thread waits overflow near 300 years (time_t, TIMEOUT_MAX).
MAX_DURATION = 100 * 365 * 86400.0
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> Any:
    """``90``, ``"90"``, ``"90s"``, ``"5m"``, ``"1h"``, ``"250ms"``, ``"2d"`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration (use seconds or 30s / 5m / 1h)")
        seconds = float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]
    else:
        return value
    if math.isnan(seconds):
        raise ValueError(f"{value!r} is not a duration")
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than 100 years")
    return seconds


def parse_size(value: Any) -> Any:
    """``1048576``, ``"8MiB"``, ``"1GiB"``, ``"500KB"``, ``"16M"`` → bytes (``KiB``, ``MiB``,
    ``GiB`` and bare ``K``, ``M``, ``G`` are powers of 1024; ``KB``, ``MB``, ``GB`` of 1000)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size (use bytes or 8MiB / 1GiB)")
        unit = (m.group(2) or "").lower()
        exp = "kmgt".index(unit[0]) + 1 if unit and unit[0] in "kmgt" else 0
        base = 1000 if unit.endswith("b") and not unit.endswith("ib") and exp else 1024
        return int(float(m.group(1)) * base**exp)
    return value


def format_duration(seconds: float) -> str:
    """The inverse of ``parse_duration``, as a person writes it: ``24h``, ``90m``, ``30s``,
    ``0.5s``; ``parse_duration(format_duration(x)) == x``."""
    for unit, scale in (("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    # the shortest digits that read back as the same float, never in exponent form
    return f"{Decimal(repr(float(seconds))):f}s"


_SIZE_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def format_size(size: int) -> str:
    """The inverse of ``parse_size``: the largest binary unit that divides ``size`` exactly
    (``128MiB``), else bytes (``1000``)."""
    for unit, scale in _SIZE_UNITS:
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def parse_list(value: Any) -> Any:
    """A JSON list or a comma-separated string (env and CLI both use this)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list: {exc}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def parse_path(value: Any) -> Any:
    """A path; empty: unset (``Path("")`` would be the working directory)."""
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError(f"{value!r} holds a NUL character")
        return value or None
    return value


def parse_paths(value: Any) -> Any:
    value = parse_list(value)
    if isinstance(value, list):
        return [parse_path(item) if isinstance(item, str) else item for item in value]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(parse_list)]
PathList = Annotated[list[Path], NoDecode, BeforeValidator(parse_paths)]
OptionalPath = Annotated[Path | None, BeforeValidator(parse_path)]

#: a host name as botocore takes it in an endpoint URL (botocore.utils.is_valid_endpoint_url)
_HOST_RE = re.compile(r"((?!-)[A-Za-z\d-]{1,63}(?<!-)\.)*(?!-)[A-Za-z\d-]{1,63}(?<!-)\.?")
#: a region as botocore takes it (botocore.utils.validate_region_name)
_REGION_RE = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")


def parse_endpoint_url(value: Any) -> Any:
    """``http(s)://host[:port][/path]``, checked as botocore will (else it fails at the first
    client, with a traceback); empty: unset."""
    if not isinstance(value, str):
        return value
    if not value:
        return None
    bad = next((c for c in value if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ValueError(f"{value!r} holds {bad!r}; a URL has no white space or control characters")
    if "://" not in value:
        raise ValueError(f"{value!r} has no scheme: write http://{value} or https://{value}")
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # a bracketed host that is no IPv6 address
        raise ValueError(f"{value!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{value!r} must start with http:// or https://")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ValueError(f"{value!r} has no valid port (a number from 1 to 65535)") from None
    host = parts.hostname or ""
    if ":" in host:  # [IPv6]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: [{host}] is not an IPv6 address") from None
    elif len(host) > 255 or not _HOST_RE.fullmatch(host):
        raise ValueError(f"{value!r} has no valid host name")
    return value


def parse_region(value: Any) -> Any:
    """A region name (``eu-west-1``); empty: unset (botocore's chain)."""
    if value == "":
        return None
    if isinstance(value, str) and not _REGION_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a region name (letters, digits, '-': eu-west-1)")
    return value


EndpointUrl = Annotated[str | None, BeforeValidator(parse_endpoint_url)]
Region = Annotated[str | None, BeforeValidator(parse_region)]


def parse_pairs(value: Any) -> Any:
    """``k=v`` pairs → dict: ``"a=1,b=2"``, a JSON list ``["a=1"]``, a JSON object or a dict
    (a TOML table; numbers become text).  Names are stripped; values only in the comma form
    (a JSON list or object keeps them as written)."""
    comma = False
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON object: {exc}") from None
        else:
            comma = not text.startswith("[")
            value = parse_list(text)
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                v = str(v)
            if not isinstance(v, str):
                raise ValueError(f"the value of {k!r} is not text")
            out[str(k).strip()] = v
        return out
    if not isinstance(value, list):
        return value  # pydantic says what it expected
    pairs: dict[str, str] = {}
    for item in value:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"{item!r} is not k=v")
        k, _, v = item.partition("=")
        k = k.strip()
        if k in pairs:
            raise ValueError(f"{k!r} is given twice")
        pairs[k] = v.strip() if comma else v
    return pairs


Pairs = Annotated[dict[str, str] | None, NoDecode, BeforeValidator(parse_pairs)]


# --- bandwidth limits (BANDWIDTH_LIMIT, ROUTE_BANDWIDTH_LIMIT) ---------------------------------
# A rate is a size per second (``20MiB``, ``20MiB/s``); ``off`` or empty: no limit.  A schedule
# is ``HH:MM-HH:MM=RATE`` windows in local time (end excluded, wrapping midnight, ``24:00`` ending
# one) that must not overlap; where none applies there is no limit.  The settings keep the text
# as written; ``store/bandwidth.py`` enforces the parsed ``Limit``.

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
        return "-".join(f"{m // 60:02d}:{m % 60:02d}" for m in (self.start, self.end))


@dataclass(frozen=True, slots=True)
class Limit:
    """A parsed limit: a fixed ``rate`` (None: off), or a schedule of ``windows``."""

    rate: int | None = None
    windows: tuple[Window, ...] = ()

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
        return Limit()
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
