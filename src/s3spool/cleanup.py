"""Periodic housekeeping helpers that touch only the filesystem.

The service's cleanup loop (``Service.cleanup_once``) also adopts dead
instances' claims and sweeps stale multipart uploads; those need the store
and the queue, so they live with the service.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .clock import cautious_now

log = logging.getLogger(__name__)


def expire_done(done: Path, delete_after: float, *, now: float | None = None) -> int:
    """Remove files that reached done/ more than ``delete_after`` seconds ago.

    "Reached done/" is the file's ctime: rename(2) sets it, while the mtime is
    still the producer's (an old file would otherwise be removed at once).  A clock
    stepped forward removes nothing early (``clock.cautious_now``).
    Reason files of failed/ are never here; subdirectories are left alone.
    """
    cutoff = (now if now is not None else cautious_now()) - delete_after
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
