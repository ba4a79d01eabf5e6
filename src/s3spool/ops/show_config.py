"""``s3spool config``: the effective configuration per route, each value with its origin and
secrets masked, as TOML that reads back as the same configuration (or ``--json``); durations
and sizes are written as in a config file (``"24h"``, ``"128MiB"``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from s3spool.config.formats import format_duration, format_size
from s3spool.config.load import DEFAULT, Config, Route
from s3spool.config.settings import GLOBAL_FIELDS, Settings, field_parsers

#: Names that hold a secret (settings, notifier keys, header names): shown as "***"
SECRET_WORDS = ("secret", "password", "token", "authorization", "api-key", "api_key")
MASK = "***"


def shown(field: str, value: Any) -> Any:
    """``value`` as JSON data, with secrets masked."""
    if value is None:
        return None
    if any(word in field for word in SECRET_WORDS):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [shown(field, v) for v in value]
    if isinstance(value, BaseModel):  # a notifier table: what it sets
        value = value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, dict):
        return {str(k): shown(str(k).lower(), v) for k, v in value.items()}
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.password:
            host = parts.hostname or ""
            netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    return value


def _fields(route: Route, *, process: bool) -> dict[str, dict[str, Any]]:
    """The settings of the whole process (``process``), or those of one route."""
    return {
        name: {
            "value": shown(name, getattr(route.s, name)),
            "from": route.origin.get(name, DEFAULT),
        }
        for name in Settings.model_fields
        if (name in GLOBAL_FIELDS) == process
    }


def describe(config: Config) -> dict[str, Any]:
    return {
        "config_file": str(config.path) if config.path else None,
        "global": _fields(config.routes[0], process=True),
        "routes": [{"name": r.name, "settings": _fields(r, process=False)} for r in config.routes],
    }


def show_config(config: Config, *, as_json: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    doc = describe(config)
    if as_json:
        json.dump(doc, out, indent=1)
        out.write("\n")
        return 0
    print(f"# config file: {doc['config_file'] or '(none)'}", file=out)
    print("# each value's origin: flag, env, route (its [[route]] table), file, default", file=out)
    _table(doc["global"], out)
    for route in doc["routes"]:
        print(f"\n[[route]]\nname = {json.dumps(route['name'])}", file=out)
        _table(route["settings"], out)
    return 0


def _table(fields: dict[str, dict[str, Any]], out: TextIO) -> None:
    width = max(len(name) for name in fields)
    for name, item in fields.items():
        value, origin = item["value"], item["from"]
        if value is None:
            print(f"# {name:<{width}} (not set)  # {origin}", file=out)
        else:
            print(f"{name:<{width}} = {_toml(_written(name, value))}  # {origin}", file=out)


def _written(name: str, value: Any) -> Any:
    """A duration or a size as a person writes it (``"24h"``, ``"128MiB"``); it reads back
    as the same value."""
    parsers = field_parsers(name)
    if "parse_duration" in parsers:
        return format_duration(value)
    if "parse_size" in parsers:
        text = format_size(value)
        return value if text.isdigit() else text  # bytes stay a number
    return value


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are spelled alike in TOML
