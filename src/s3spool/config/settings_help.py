"""Describing the settings to people: ``--help`` and the README's table come from here.

Kept apart from ``settings.py``, which only reads and checks them.  ``flags.py`` is this
module's output, written by ``scripts/settings_doc.py --write`` so that ``s3spool --help``
and the flag parser need not import pydantic (tests/test_docs.py fails when it is stale).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from s3spool.config.catalog import env_name, flag_name
from s3spool.config.settings import Settings

KIB = 1024
UNITS = (("GiB", KIB**3), ("MiB", KIB**2), ("KiB", KIB))


def _validator_names(annotation: Any, metadata: list[Any]) -> set[str]:
    """Names of the BeforeValidator functions on a field (parse_size, parse_duration, ...)."""
    names: set[str] = set()
    stack: list[Any] = [*metadata, annotation]
    while stack:
        item = stack.pop()
        func = getattr(item, "func", None)
        if func is not None:
            names.add(getattr(func, "__name__", ""))
        stack.extend(getattr(item, "__metadata__", ()))
        stack.extend(typing.get_args(item))
    return names


def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _strip_optional(rest[0])
    if origin is typing.Annotated:
        return _strip_optional(args[0])
    return annotation


def value_kind(field: str) -> str:
    """What kind of value a setting takes: size, duration, list, boolean, choice, ..."""
    info = Settings.model_fields.get(field)
    if info is None:
        return ""
    validators = _validator_names(info.annotation, list(info.metadata))
    if "parse_size" in validators:
        return "size"
    if "parse_duration" in validators:
        return "duration"
    if "parse_list" in validators:
        return "list"
    if "parse_bandwidth_limit" in validators:
        return "rate, `off` or schedule"
    base = _strip_optional(info.annotation)
    if typing.get_origin(base) is typing.Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(base))
    bounds = {
        name: getattr(m, name)
        for m in info.metadata
        for name in ("ge", "le")
        if getattr(m, name, None) is not None
    }
    if base is bool:
        return "boolean"
    if base in (int, float):
        word = "integer" if base is int else "number"
        if "ge" in bounds and "le" in bounds:
            return f"{word}, {_num(bounds['ge'])} to {_num(bounds['le'])}"
        if "ge" in bounds:
            return f"{word}, at least {_num(bounds['ge'])}"
        return word
    if base is Path:
        return "path"
    return "string"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _exact_size(n: int) -> str:
    for unit, scale in UNITS:
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _exact_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, scale in (("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{seconds:g}s"


def format_default(kind: str, text: str) -> str:
    """Show size and duration defaults the way an operator would write them."""
    try:
        if kind == "size":
            return _exact_size(int(text))
        if kind == "duration":
            return _exact_duration(float(text))
        if kind.startswith("number"):
            return f"{float(text):g}"
    except ValueError:
        pass
    return text


def default_text(field: str) -> str:
    """A setting's default as an operator would write it (``16MiB``, ``30s``, ``none``)."""
    info = Settings.model_fields[field]
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None or value == "" or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return format_default(value_kind(field), str(value))


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env var, flag, default, description) for every setting: the CLI help and the README."""
    rows = []
    for field, info in Settings.model_fields.items():
        rows.append(
            (env_name(field), flag_name(field), default_text(field), info.description or "")
        )
    return rows


def flags_table() -> str:
    """The generated part of ``flags.py``: each setting's name, whether it is a switch,
    its default and its help."""
    rows = "".join(
        f"    ({field!r}, {info.annotation is bool}, {default_text(field)!r}, "
        f"{info.description or ''!r}),\n"
        for field, info in Settings.model_fields.items()
    )
    return "SETTINGS: tuple[tuple[str, bool, str, str], ...] = (\n" + rows + ")\n"
