"""Housekeeping every CLEANUP_INTERVAL: done/ expiry, stale resubmit records, empty
subdirectories, dead instances' claims; and ``cautious_now``, the clock of file ages."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from s3spool.config.settings import Settings
from s3spool.spool.dirs import prune_empty, walk
from s3spool.spool.guard import Guard
from s3spool.spool.recovery import adopt, dead_instances
from s3spool.spool.resubmit import expire_records
from s3spool.spool.spool import Claim, Spool
from s3spool.spool.watch import compile_ignore

log = logging.getLogger("s3spool.cleanup")

_WALL0 = time.time()
_MONO0 = time.monotonic()


def cautious_now() -> float:
    """``time.time()``, capped at the start time plus the monotonic time elapsed since.

    File ages (mtime, ctime) are wall-clock times, so a forward clock step (NTP after a
    suspend, ``date -s``) would make files look older: ``HOLD_FOR`` would release a file
    early and ``DELETE_AFTER`` remove one early from done/.  With this cap both are only
    delayed, by at most the step.  A backward step makes files look younger (delayed too);
    a file dated in the future has ``HOLD_FOR`` counted from when it was first seen
    (run/pipeline.py).  A step while s3spool was not running cannot be seen.
    """
    return min(time.time(), _WALL0 + (time.monotonic() - _MONO0))


def expire_done(
    done: Path, delete_after: float, *, now: float | None = None, recursive: bool = False
) -> int:
    """Remove files that reached done/ more than ``delete_after`` seconds ago.

    "Reached done/" is the file's ctime: rename(2) sets it, while the mtime is
    still the producer's (an old file would otherwise be removed at once).  A clock
    stepped forward removes nothing early (``cautious_now``).
    Reason files of failed/ are never here; subdirectories are left alone unless the
    spool is RECURSIVE (its files keep their relpath in done/).
    """
    cutoff = (now if now is not None else cautious_now()) - delete_after
    removed = 0
    try:
        for _rel, entry in walk(done, recursive=recursive):
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
    except FileNotFoundError:
        pass
    return removed


def prune_subdirs(
    spool: Spool, grace: float, is_ignored: Callable[[str], bool], *, now: float | None = None
) -> int:
    """RECURSIVE: remove the empty subdirectories of incoming/, done/ and failed/ in which
    nothing changed for ``grace`` seconds (never those directories themselves).

    The grace is what keeps a directory a producer just made, and has not renamed its file
    into yet; rmdir(2) removes only an empty directory, so a file renamed in at the last
    moment keeps its directory.  incoming/'s subdirectories whose names match IGNORE are
    the producers' own (staging) and are not looked into.
    """
    cutoff = (now if now is not None else cautious_now()) - grace
    d = spool.dirs
    removed = prune_empty(d.incoming, unchanged_since=cutoff, skip_dir=is_ignored)
    for path in (d.done, None if d.resubmit else d.failed):
        if path is not None:
            removed += prune_empty(path, unchanged_since=cutoff)
    return removed


async def tidy_spools(spools: Sequence[Spool], guards: Mapping[Spool, Guard], s: Settings) -> None:
    """done/ expiry, stale resubmit records and empty subdirectories (RECURSIVE), for every
    spool that is not paused."""
    is_ignored = compile_ignore(s.ignore)
    for spool in spools:
        if guards[spool].paused:
            continue
        if spool.dirs.done is not None:
            removed = await asyncio.to_thread(
                expire_done, spool.dirs.done, s.delete_after, recursive=spool.recursive
            )
            if removed:
                log.info(
                    "spool=%s: removed %d files from done/ (older than %.0fs)",
                    spool.label,
                    removed,
                    s.delete_after,
                )
        if spool.dirs.resubmit:
            # records of files that are gone (delivered elsewhere, removed by hand)
            stale = time.time() - max(4 * s.retry_backoff_max, 3600.0)
            await asyncio.to_thread(expire_records, spool, stale)
        if spool.recursive and s.rmdir_after > 0:
            pruned = await asyncio.to_thread(prune_subdirs, spool, s.rmdir_after, is_ignored)
            if pruned:
                log.debug("spool=%s: removed %d empty subdirectories", spool.label, pruned)


def adopt_dead(
    spools: Sequence[Spool], guards: Mapping[Spool, Guard], deliver: Callable[[Claim], None]
) -> None:
    """Claims of dead instances, with their keys, into ours; each handed to ``deliver``."""
    for spool in spools:
        if not spool.opened or guards[spool].paused:
            continue
        for dead in list(dead_instances(spool)):
            claims = adopt(spool, dead)
            if claims:
                log.warning(
                    "spool=%s: recovered %d claims of dead instance %s",
                    spool.label,
                    len(claims),
                    dead.name,
                )
            for claim in claims:
                deliver(claim)
