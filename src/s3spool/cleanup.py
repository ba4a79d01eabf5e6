"""Periodic housekeeping helpers that touch only the filesystem.

The service's cleanup loop (``Service.cleanup_once``) also adopts dead
instances' claims and sweeps stale multipart uploads; those need the store
and the queue, so they live with the service.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .spool import Spool

log = logging.getLogger(__name__)


def expire_done(done: Path, delete_after: float, *, now: float | None = None) -> int:
    """Remove files that reached done/ more than ``delete_after`` seconds ago.

    "Reached done/" is the file's ctime: rename(2) sets it, while the mtime is
    still the producer's (an old file would otherwise be removed at once).
    Reason files of failed/ are never here; subdirectories are left alone.
    """
    cutoff = (now if now is not None else time.time()) - delete_after
    removed = 0
    try:
        it = os.scandir(done)
    except FileNotFoundError:
        return 0
    with it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.is_dir(follow_symlinks=False) or st.st_ctime > cutoff:
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove %s: %s", entry.path, exc.strerror)
    return removed


def count_entries(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in it)
    except OSError:
        return 0


def spool_counts(spool: Spool) -> dict[str, int]:
    """Files per state of one spool (working counts every instance's claims)."""
    working = 0
    try:
        with os.scandir(spool.dirs.working) as it:
            for inst in it:
                if inst.is_dir(follow_symlinks=False):
                    working += count_entries(Path(inst.path) / "files")
    except OSError:
        pass
    failed = count_entries(spool.dirs.failed)
    if spool.dirs.failed is not None and not spool.dirs.resubmit:
        failed -= sum(1 for n in _names(spool.dirs.failed) if n.endswith(".reason.json"))
    return {
        "incoming": count_entries(spool.dirs.incoming),
        "working": working,
        "failed": 0 if spool.dirs.resubmit else failed,
    }


def _names(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
