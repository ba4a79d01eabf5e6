"""The value formats of settings, wherever they are written (variable, flag, config file):
durations (``90``, ``"5m"``), sizes (``"8MiB"``), lists (``a,b`` or JSON) and ``k=v`` pairs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import NoDecode

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> Any:
    """``90``, ``"90"``, ``"90s"``, ``"5m"``, ``"1h"``, ``"250ms"``, ``"2d"`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration (use seconds or 30s / 5m / 1h)")
        return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]
    return value


def parse_size(value: Any) -> Any:
    """``1048576``, ``"8MiB"``, ``"1GiB"``, ``"500KB"``, ``"16M"`` → bytes.

    ``KiB/MiB/GiB`` and bare ``K/M/G`` are powers of 1024; ``KB/MB/GB`` powers of 1000.
    """
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


def _non_negative(v: float) -> float:
    if v < 0:
        raise ValueError("must not be negative")
    return v


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_non_negative)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(parse_list)]
PathList = Annotated[list[Path], NoDecode, BeforeValidator(parse_list)]


def parse_pairs(value: Any) -> Any:
    """``k=v`` pairs → dict: ``"a=1,b=2"``, a JSON list ``["a=1"]``, a JSON object or a dict
    (a TOML table; numbers become text).  Names are stripped; values only in the comma form
    (a JSON list or object keeps them as written)."""
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
            if comma:
                value = [_strip_pair(item) for item in value]
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
        pairs[k] = v
    return pairs


def _strip_pair(item: str) -> str:
    k, sep, v = item.partition("=")
    return f"{k.strip()}{sep}{v.strip()}"


Pairs = Annotated[dict[str, str] | None, NoDecode, BeforeValidator(parse_pairs)]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)]
