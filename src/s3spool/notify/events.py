"""Delivery events (schema: docs/event.schema.json); the id digests what identifies one
delivery, so a file delivered again after a crash gets the same id."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1
OUTCOMES = ("delivered", "failed")


def event_id(parts: list[str]) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(
    *,
    outcome: str,
    route: str,
    spool: str,
    name: str,
    size: int,
    mtime_ns: int,
    bucket: str,
    key: str,
    instance: str,
    now: float,
    etag: str | None = None,
    checksum: str | None = None,
    version_id: str | None = None,
    reason: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One event; ``name`` is the path relative to incoming/ (str, surrogateescape)."""
    assert outcome in OUTCOMES
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    basename = shown.rsplit("/", 1)[-1]
    return {
        "schema": SCHEMA_VERSION,
        "id": event_id([route, spool, name, str(size), str(mtime_ns), bucket, key, outcome]),
        "outcome": outcome,
        "route": route,
        "spool": spool,
        "name": basename,
        "relpath": shown,
        "size": size,
        "mtime": _iso(mtime_ns / 1e9),
        "bucket": bucket or None,
        "key": key or None,
        "etag": etag,
        "checksum": checksum,
        "version_id": version_id,
        "reason": reason,
        "error": error,
        "time": _iso(now),
        "instance": instance,
    }


def env_of(event: dict[str, Any]) -> dict[str, str]:
    """``S3SPOOL_EVENT_<FIELD>`` variables of an event (exec notifier); None becomes ""."""
    return {
        f"S3SPOOL_EVENT_{k.upper()}": "" if v is None else str(v)
        for k, v in event.items()
        if not isinstance(v, dict | list)
    }
