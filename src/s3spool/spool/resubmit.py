"""Resubmit records: working/.resubmit/RELPATH, shared by every instance of the spool, so a
restart keeps a poison file's backoff."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from s3spool.spool.dirs import files_below, prune_empty, prune_parents, write_atomic
from s3spool.spool.spool import Spool

log = logging.getLogger("s3spool.service")


def _records(spool: Spool) -> Path:
    return spool.dirs.working / ".resubmit"


def load_record(spool: Spool, name: str) -> tuple[int, float] | None:
    """(attempts so far, wall time of the next try) recorded for a resubmitted name."""
    try:
        with open(_records(spool) / name, encoding="utf-8") as fh:
            data = json.load(fh)
        return int(data["attempts"]), float(data["not_before"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_record(spool: Spool, name: str, attempts: int, not_before: float) -> None:
    """Record a resubmission; on failure the backoff only lives in memory (logged)."""
    record = {"attempts": attempts, "not_before": round(not_before, 3)}
    try:
        _records(spool).mkdir(exist_ok=True)
        write_atomic(_records(spool), name, json.dumps(record).encode())
    except OSError as exc:
        msg = "spool=%s name=%r: cannot record its resubmit backoff in %s: %s (kept in memory)"
        log.warning(msg, spool.label, name, _records(spool), exc.strerror)


def forget_record(spool: Spool, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_records(spool) / name)
        prune_parents(os.fspath(_records(spool)), name)


def expire_records(spool: Spool, before: float) -> int:
    """Remove records whose next try is before ``before`` and whose file is gone."""
    removed = 0
    records = _records(spool)
    try:
        names = files_below(records)
    except OSError:
        return 0
    for name in names:
        if os.path.lexists(spool.dirs.incoming / name):
            continue
        record = load_record(spool, name)
        if record is None or record[1] < before:
            with contextlib.suppress(OSError):
                os.unlink(records / name)
                removed += 1
    prune_empty(records, unchanged_since=before)  # directories of RECURSIVE spools' records
    return removed
