"""Housekeeping, as plain functions the service calls every CLEANUP_INTERVAL (and --once
calls once at its end): done/ expiry, stale resubmit records, the empty subdirectories of
RECURSIVE spools, adoption of dead instances' claims, and the sweep of stale multipart uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .clock import cautious_now
from .errors import UploadError
from .metrics import Metrics
from .outcomes import expire_records
from .recovery import adopt, dead_instances, open_uploads
from .settings import Settings
from .spool import Claim, Spool
from .spoolguard import Guard
from .store import Store
from .tree import prune_empty, walk
from .watch import compile_ignore

log = logging.getLogger(__name__)


def expire_done(
    done: Path, delete_after: float, *, now: float | None = None, recursive: bool = False
) -> int:
    """Remove files that reached done/ more than ``delete_after`` seconds ago.

    "Reached done/" is the file's ctime: rename(2) sets it, while the mtime is
    still the producer's (an old file would otherwise be removed at once).  A clock
    stepped forward removes nothing early (``clock.cautious_now``).
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


#: Beside each spool's incoming/ (where `enqueue` stages too): its mtime says when a
#: multipart sweep last ran, for every instance and every `run --once` (a cron job then
#: sweeps once per interval, not once per run).
SWEEP_STAMP = ".s3spool-multipart-sweep"


def _stamp(spool: Spool) -> Path:
    return spool.dirs.incoming.parent / SWEEP_STAMP


def last_sweep(spools: Sequence[Spool]) -> float:
    """Wall time of the last multipart sweep any instance made of these spools.

    Spools that were never swept start the clock now (their stamp is written): the first
    `run --once` on a new spool then asks the store nothing either, and leftovers of
    earlier uploads are swept one interval later.
    """
    last = 0.0
    for spool in spools:
        with contextlib.suppress(OSError):
            last = max(last, os.stat(_stamp(spool)).st_mtime)
    if last == 0.0:
        last = time.time()
        _mark(spools)
    return last


def _mark(spools: Sequence[Spool]) -> None:
    for spool in spools:
        try:
            _stamp(spool).touch()
        except OSError as err:  # only costs an earlier sweep next time
            log.debug("cannot mark the sweep in %s: %s", _stamp(spool), err.strerror)


def sweep_due(s: Settings, last: float) -> bool:
    """At most every ``min(ABORT_MULTIPART_AFTER, 10 min)``; a clock stepped back sweeps now."""
    if s.abort_multipart_after <= 0:
        return False
    return not 0 <= time.time() - last < min(s.abort_multipart_after, 600.0)


async def sweep_multipart(
    store: Store, spools: Sequence[Spool], s: Settings, metrics: Metrics, last: float
) -> float:
    """Abort multipart uploads older than ABORT_MULTIPART_AFTER that no instance recorded,
    when one is due (``sweep_due``); returns when the last sweep ran."""
    if not sweep_due(s, last):
        return last
    now = time.time()
    live: set[str] = set()
    for spool in spools:
        live |= open_uploads(spool)
    try:
        stale = await store.stale_uploads(now - s.abort_multipart_after)
        for key, upload_id in stale:
            if upload_id in live:
                continue
            await store.abort_upload(key, upload_id)
            metrics.aborted.inc()
            log.info("aborted stale multipart upload %s of %r", upload_id, key)
    except UploadError as exc:
        log.warning("multipart sweep skipped: %s", exc)
        return now
    _mark(spools)
    return now
