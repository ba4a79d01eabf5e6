"""Delivery events (schema: docs/event.schema.json); the id digests what identifies one
delivery, so a file delivered again after a crash gets the same id."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s3spool.errors import UploadError
    from s3spool.spool.spool import Claim
    from s3spool.store.base import Delivery

SCHEMA_VERSION = 1
OUTCOMES = ("delivered", "failed")


def event_id(parts: list[str]) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(
    claim: Claim,
    outcome: str,
    bucket: str,
    instance: str,
    delivery: Delivery | None = None,
    error: UploadError | None = None,
) -> dict[str, Any]:
    """One event about ``claim`` (its name: the relpath below incoming/, surrogateescape)."""
    assert outcome in OUTCOMES
    route, spool, name, key = claim.spool.dirs.route, claim.spool.label, claim.name, claim.key
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    parts = [route, spool, name, str(claim.size), str(claim.mtime_ns), bucket, key, outcome]
    event: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "id": event_id(parts),
        "outcome": outcome,
        "route": route,
        "spool": spool,
        "name": shown.rsplit("/", 1)[-1],
        "relpath": shown,
        "size": claim.size,
        "mtime": _iso(claim.mtime_ns / 1e9),
        "bucket": bucket or None,
        "key": key or None,
        "etag": delivery.etag if delivery else None,
        "checksum": delivery.checksum if delivery else None,
        "version_id": delivery.version_id if delivery else None,
        "reason": error.reason if error else None,
        "error": str(error) if error else None,
        "time": _iso(time.time()),
        "instance": instance,
    }
    if delivery is not None and delivery.bundle is not None:
        # BATCH=bundle: the file is a member of this object, its bytes at this offset
        event["bundle"], event["offset"] = delivery.bundle, delivery.offset
    return event


def env_of(event: dict[str, Any]) -> dict[str, str]:
    """``S3SPOOL_EVENT_<FIELD>`` variables of an event (exec notifier); None becomes ""."""
    return {
        f"S3SPOOL_EVENT_{k.upper()}": "" if v is None else str(v)
        for k, v in event.items()
        if not isinstance(v, dict | list)
    }
