"""Housekeeping every CLEANUP_INTERVAL: done/ expiry, stale resubmit records, empty
subdirectories, dead instances' claims; and ``cautious_now``, the clock of file ages."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from s3spool.config.settings import Settings
from s3spool.spool.batches import Batch
from s3spool.spool.dirs import prune_empty, walk
from s3spool.spool.guard import Guard
from s3spool.spool.outbox import OUTBOX, Outbox
from s3spool.spool.recovery import adopt, dead_instances
from s3spool.spool.resubmit import expire_records
from s3spool.spool.spool import Claim, Spool
from s3spool.spool.watch import compile_ignore

log = logging.getLogger("s3spool.cleanup")

_WALL0 = time.time()
_MONO0 = time.monotonic()


def cautious_now() -> float:
    """``time.time()``, capped at the start time plus the monotonic time elapsed since: a clock
    stepped forward must not make files look older (``HOLD_FOR`` and ``DELETE_AFTER`` early);
    a step either way only delays them."""
    return min(time.time(), _WALL0 + (time.monotonic() - _MONO0))


def expire_done(
    done: Path, delete_after: float, *, now: float | None = None, recursive: bool = False
) -> int:
    """Remove files that reached done/ more than ``delete_after`` seconds ago: by ctime, which
    rename(2) sets (the mtime is still the producer's); subdirectories only if RECURSIVE."""
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
    """RECURSIVE: remove the subdirectories of incoming/, done/ and failed/ empty and unchanged
    for ``grace`` seconds (a producer may have just made one); IGNOREd ones are not entered."""
    cutoff = (now if now is not None else cautious_now()) - grace
    d = spool.dirs
    removed = prune_empty(d.incoming, unchanged_since=cutoff, skip_dir=is_ignored)
    for path in (d.done, None if d.resubmit else d.failed):
        if path is not None:
            removed += prune_empty(path, unchanged_since=cutoff)
    return removed


async def tidy_spools(spools: Sequence[Spool], guards: Mapping[Spool, Guard], s: Settings) -> None:
    """done/ expiry, stale resubmit records and empty subdirectories of each spool not paused."""
    is_ignored = compile_ignore(s.ignore)
    for spool in spools:
        if guards[spool].paused:
            continue
        if spool.dirs.done is not None:
            removed = await asyncio.to_thread(
                expire_done, spool.dirs.done, s.delete_after, recursive=spool.recursive
            )
            if removed:
                msg = "spool=%s: removed %d files from done/ (older than %.0fs)"
                log.info(msg, spool.label, removed, s.delete_after)
        if spool.dirs.resubmit:
            # records of files that are gone (delivered elsewhere, removed by hand)
            stale = time.time() - max(4 * s.retry_backoff_max, 3600.0)
            await asyncio.to_thread(expire_records, spool, stale)
        if spool.recursive and s.rmdir_after > 0:
            pruned = await asyncio.to_thread(prune_subdirs, spool, s.rmdir_after, is_ignored)
            if pruned:
                log.debug("spool=%s: removed %d empty subdirectories", spool.label, pruned)


def adopt_dead(
    spools: Sequence[Spool],
    guards: Mapping[Spool, Guard],
    deliver: Callable[[Claim | Batch], None],
    notifiers: Collection[str],
) -> None:
    """Claims of dead instances, with their keys, into ours; each handed to ``deliver``; and
    their events for ``notifiers`` (the configured ones)."""
    for spool in spools:
        if not spool.opened or guards[spool].paused:
            continue
        for dead in list(dead_instances(spool)):
            claims = adopt(spool, dead, notifiers)
            if claims:
                msg = "spool=%s: recovered %d claims of dead instance %s"
                log.warning(msg, spool.label, len(claims), dead.name)
            for claim in claims:
                deliver(claim)
            _warn_unsent(spool, dead / OUTBOX, notifiers)
        _warn_unsent(spool, spool.me / OUTBOX, notifiers)  # a fixed INSTANCE_ID's own


#: outbox directories of notifiers no longer configured, warned of once per process
_warned: set[Path] = set()


def _warn_unsent(spool: Spool, outbox: Path, notifiers: Collection[str]) -> None:
    box = Outbox(outbox)
    for name in box.notifiers():
        path = outbox / name
        if name in notifiers or path in _warned or not any(box.waiting(name)):
            continue
        _warned.add(path)
        log.warning(
            "spool=%s: notification events wait in %s for notifier %r, which is not "
            "configured: configure it again to send them, or remove the directory",
            spool.label, path, name,
        )  # fmt: skip
