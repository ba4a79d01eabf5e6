"""Discovery: inotify events and directory scans feed one bounded, de-duplicated queue.

A directory is watched before it is scanned, so a file renamed in meanwhile is seen by one."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from s3spool.config.codecs import compile_globs
from s3spool.errors import LocalFault
from s3spool.spool.batches import Batch
from s3spool.spool.dirs import walk
from s3spool.spool.spool import Claim, Spool, local_fault

log = logging.getLogger("s3spool.watch")

#: (spool, relpath): a file in that spool's incoming/ (``a/b/NAME`` in a subdirectory)
Item = tuple[Spool, str]
Job = Item | Claim | Batch  # a recovered claim or batch skips the queue's bound


class Pending:
    """FIFO of discovered names (bounded, each name at most once) plus recovered claims."""

    def __init__(self, maxsize: int, *, tickets: asyncio.Queue[None] | None = None) -> None:
        self.maxsize = maxsize
        #: one ticket per job put, shared by the lanes of several routes (routes.Lanes)
        self._tickets = tickets
        self._q: asyncio.Queue[Job] = asyncio.Queue()
        self._queued: set[Item] = set()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return self._q.qsize()

    def __contains__(self, item: Item) -> bool:
        return item in self._queued

    def offer(self, item: Item) -> bool:
        """Queue ``item`` unless full; ``True`` if it is (now) queued."""
        if item in self._queued:
            return True
        if len(self._queued) >= self.maxsize:
            return False
        self._queued.add(item)
        self._q.put_nowait(item)
        if self._tickets is not None:
            self._tickets.put_nowait(None)
        return True

    async def put(self, item: Item) -> None:
        while not self.offer(item):
            self._room.clear()
            await self._room.wait()

    def task_done(self) -> None:
        self._q.task_done()

    async def join(self) -> None:
        """Until every job taken so far has been marked done (``--once``)."""
        await self._q.join()

    def put_claim(self, claim: Claim | Batch) -> None:
        """Recovered claims bypass the bound: they are already on disk in working/."""
        self._q.put_nowait(claim)
        if self._tickets is not None:
            self._tickets.put_nowait(None)

    async def get(self) -> Job:
        return self._taken(await self._q.get())

    def get_nowait(self) -> Job:
        return self._taken(self._q.get_nowait())

    def _taken(self, job: Job) -> Job:
        if isinstance(job, tuple):
            self._queued.discard(job)
            self._room.set()
        return job


def compile_ignore(patterns: Sequence[str]) -> Callable[[str], bool]:
    rx = compile_globs(patterns)
    if rx is None:
        return lambda name: False
    return lambda name: rx.match(name) is not None


def _identity(path: os.PathLike[str] | str) -> tuple[int, int]:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(path))
    return st.st_dev, st.st_ino


def _watch_mask(recursive: bool = False) -> Any:
    from asyncinotify import Mask

    # DELETE_SELF / MOVE_SELF: incoming/ itself went away (IGNORED follows, always sent)
    mask = Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.ONLYDIR | Mask.DELETE_SELF | Mask.MOVE_SELF
    # RECURSIVE: CREATE for new directories; a file's CREATE is never taken (its CLOSE_WRITE
    # or MOVED_TO follows)
    return mask | Mask.CREATE if recursive else mask


INOTIFY_HELP = {
    errno.EMFILE: "raise the sysctl fs.inotify.max_user_instances (e.g. to 512)",
    errno.ENOSPC: "raise the sysctl fs.inotify.max_user_watches (e.g. to 524288)",
    errno.ENOMEM: "the kernel is out of memory for inotify",
}


def _hint(exc: OSError) -> str:
    hint = INOTIFY_HELP.get(exc.errno or 0)
    return f" — {hint}" if hint else ""


#: new subdirectories waiting for their scan; beyond this a full rescan finds them instead
MAX_NEW_DIRS = 10_000
#: an in-order scan sorts this many names at a time: memory bounded (about 10 MB) whatever
#: the backlog, and each batch of a run still holds neighbouring keys
ORDER_RUN = 100_000


class TreeWatch:
    """inotify watches on the subdirectories of RECURSIVE spools (by descriptor: watching one
    again names its new relpath), and new ones to scan. A spool with a subdirectory that could
    not be watched is rescanned every few seconds until a scan watched them all."""

    def __init__(self, rescan_every: float) -> None:
        self.rescan_every = rescan_every
        self._dirs: dict[int, tuple[Spool, str, Any]] = {}  # wd -> (spool, reldir, Watch)
        #: subdirectories that appeared (inotify), waiting to be watched and scanned
        self.new: deque[tuple[Spool, str]] = deque()
        self.has_new = asyncio.Event()
        #: spools with a subdirectory that could not be watched: rescanned often
        self.degraded: set[Spool] = set()
        self._missed: set[Spool] = set()  # ... in the scan under way

    def __len__(self) -> int:
        return len(self._dirs)

    def where(self, watch: Any) -> tuple[Spool, str] | None:
        found = self._dirs.get(watch.wd)
        return None if found is None else (found[0], found[1])

    def add(self, inotify: Any, spool: Spool, reldir: str) -> None:
        """Watch ``incoming/reldir`` (before a scan reads it)."""
        from asyncinotify import Mask

        path = f"{spool.dirs.incoming}/{reldir}"
        try:
            watch = inotify.add_watch(path, _watch_mask(True) | Mask.DONT_FOLLOW)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # gone again, or a symlink now
                self._missed.add(spool)
                self._degrade(spool, path, exc)
            return
        self._dirs[watch.wd] = (spool, reldir, watch)

    def _degrade(self, spool: Spool, path: str, exc: OSError) -> None:
        if spool in self.degraded:
            return
        self.degraded.add(spool)
        msg = "spool=%s: cannot watch %s: %s%s; falling back to scanning every %.0fs for the "
        msg += "files of subdirectories without a watch"
        log.error(msg, spool.label, path, exc.strerror, _hint(exc), self.rescan_every)

    def scan_started(self, spool: Spool) -> None:
        self._missed.discard(spool)

    def scan_done(self, spool: Spool) -> None:
        """A whole scan of ``spool`` ended: was every subdirectory watched this time?"""
        if spool in self.degraded and spool not in self._missed:
            self.degraded.discard(spool)
            log.warning("spool=%s: every subdirectory is watched again", spool.label)

    def appeared(self, spool: Spool, reldir: str) -> bool:
        """Queue a new subdirectory for its scan; False if too many wait (rescan instead)."""
        if len(self.new) >= MAX_NEW_DIRS:
            return False
        self.new.append((spool, reldir))
        self.has_new.set()
        return True

    def self_event(self, inotify: Any, watch: Any, mask: Any) -> None:
        """IGNORED, DELETE_SELF or MOVE_SELF of a subdirectory's watch."""
        from asyncinotify import Mask

        if mask & Mask.IGNORED:
            self._dirs.pop(watch.wd, None)  # removed, by us or with its directory
            return
        if not mask & Mask.MOVE_SELF:
            return  # DELETE_SELF: IGNORED follows
        # Renamed within incoming/ (the scan of its new place watches it there, before or
        # after this) or moved out: keep the watch only while its relpath names it.
        spool, reldir, _ = self._dirs[watch.wd]
        try:
            again = inotify.add_watch(f"{spool.dirs.incoming}/{reldir}", watch.mask)
        except OSError:
            again = None
        if again is not None and again.wd == watch.wd:
            return
        if again is not None:  # another directory took its name
            self._dirs[again.wd] = (spool, reldir, again)
        del self._dirs[watch.wd]
        with contextlib.suppress(OSError, ValueError):
            inotify.rm_watch(watch)

    def drop(self, inotify: Any, spool: Spool) -> None:
        """Forget every subdirectory watch of ``spool`` (its incoming/ is gone or replaced)."""
        for wd, (owner, _reldir, watch) in list(self._dirs.items()):
            if owner is spool:
                del self._dirs[wd]
                if inotify is not None:
                    with contextlib.suppress(OSError, ValueError):
                        inotify.rm_watch(watch)
        self.degraded.discard(spool)


class Discovery:
    """Finds files in every incoming/ and offers them to ``pending``."""

    def __init__(
        self,
        spools: Sequence[Spool],
        pending: Pending,
        *,
        ignore: Sequence[str],
        rescan_interval: float,
        on_fault: Callable[[Spool, LocalFault], None] = lambda spool, fault: None,
        is_paused: Callable[[Spool], bool] = lambda spool: False,
        in_order: bool = False,
    ) -> None:
        self.spools = list(spools)
        #: a scan offers its files in name order, not the directory's (BATCH=extract: each
        #: batch then holds neighbouring keys, and its confirming listing pages through its own)
        self.in_order = in_order
        #: a spool's incoming/ is gone or unreadable (the service pauses that spool)
        self.on_fault = on_fault
        #: scans skip a paused spool; its guard asks for a rescan when it heals
        self.is_paused = is_paused
        self._watches: dict[Spool, Any] = {}  # spool -> asyncinotify Watch
        self._ident: dict[Spool, tuple[int, int]] = {}  # spool -> incoming/'s (dev, ino)
        self.pending = pending
        self.is_ignored = compile_ignore(ignore)
        self.rescan_interval = rescan_interval
        self.watching = False  # inotify active (readiness)
        self._rescan = asyncio.Event()
        self._timers: dict[Item, asyncio.TimerHandle] = {}
        self._inotify: object | None = None
        self._by_path = {os.fspath(s.dirs.incoming): s for s in self.spools}
        self._first_scan_done = asyncio.Event()
        self._scan_started = asyncio.Event()
        self.tree = TreeWatch(self._fallback_interval())  # RECURSIVE spools' subdirectories

    # --- public -------------------------------------------------------------------------
    def request_rescan(self) -> None:
        self._rescan.set()

    def defer(self, item: Item, delay: float) -> None:
        """Offer ``item`` again after ``delay`` seconds (HOLD_FOR, resubmit backoff, busy name)."""
        if item in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(item, None)
            if not self.pending.offer(item):
                self.request_rescan()

        self._timers[item] = loop.call_later(max(delay, 0.0), fire)

    async def wait_first_scan(self) -> None:
        await self._first_scan_done.wait()

    async def wait_scan_started(self) -> None:
        await self._scan_started.wait()

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    # --- tasks --------------------------------------------------------------------------
    def open_watches(self) -> None:
        """Set up inotify before the first scan; on failure, say why and rely on rescans."""
        from asyncinotify import Inotify

        try:
            inotify = Inotify()
        except OSError as exc:
            self._inotify_failed(exc, "create an inotify instance")
            return
        try:
            for spool in self.spools:
                mask = _watch_mask(spool.recursive)
                self._watches[spool] = inotify.add_watch(spool.dirs.incoming, mask)
                self._ident[spool] = _identity(spool.dirs.incoming)
        except OSError as exc:
            inotify.close()
            self._watches.clear()
            self._inotify_failed(exc, "watch incoming/")
            return
        self._inotify = inotify
        self.watching = True

    def rewatch(self, spool: Spool) -> None:
        """Watch a spool's incoming/ again (recreated, remounted, or back after a fault)."""
        incoming = spool.dirs.incoming
        try:
            self._ident[spool] = _identity(incoming)
        except OSError as exc:
            self._lost(spool, exc)
            return
        inotify: Any = self._inotify
        if inotify is None:
            return  # scans only
        old = self._watches.pop(spool, None)
        if old is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                inotify.rm_watch(old)
        self.tree.drop(inotify, spool)  # the rescan that follows watches them again
        try:
            self._watches[spool] = inotify.add_watch(incoming, _watch_mask(spool.recursive))
        except OSError as exc:
            self._lost(spool, exc)

    def _lost(self, spool: Spool, exc: OSError, what: str = "watch incoming/") -> None:
        """incoming/ failed us: a directory fault pauses the spool; anything else is logged."""
        fault = local_fault(exc, what, spool.dirs.incoming)
        if isinstance(fault, LocalFault):
            self.on_fault(spool, fault)
        else:
            log.error("spool=%s: %s", spool.label, fault)

    async def layout_loop(self, interval: float = 1.0) -> None:
        """Notice an incoming/ removed, replaced or mounted over, by its identity every
        ``interval`` (inotify tells when a watched directory goes, not when another comes)."""
        while True:
            await asyncio.sleep(interval)
            for spool in self.spools:
                if self.is_paused(spool):
                    continue  # its guard probes it
                try:
                    ident = _identity(spool.dirs.incoming)
                except OSError as exc:
                    self._lost(spool, exc)
                    continue
                if ident != self._ident.get(spool):
                    msg = "spool=%s: %s was replaced (recreated or remounted); watching the new "
                    log.warning(msg + "one and rescanning", spool.label, spool.dirs.incoming)
                    self.rewatch(spool)
                    self.request_rescan()

    def _watch_gone(self, watch: Any, mask: Any) -> None:
        """incoming/ was deleted, moved away or unmounted: its spool pauses until it is back."""
        from asyncinotify import Mask

        spool = next((s for s, w in self._watches.items() if w is watch), None)
        if spool is None:
            return  # an old watch we replaced, or already reported
        del self._watches[spool]
        self.tree.drop(self._inotify, spool)
        how = "moved away" if mask & Mask.MOVE_SELF else "deleted or unmounted"
        incoming = spool.dirs.incoming
        self.on_fault(
            spool,
            LocalFault(f"{incoming} was {how} (ENOENT)", reason="ENOENT", path=str(incoming)),
        )

    def _inotify_failed(self, exc: OSError, what: str) -> None:
        msg = "cannot %s: %s%s; falling back to scanning every %.0fs"
        log.error(msg, what, exc.strerror, _hint(exc), self._fallback_interval())

    def _fallback_interval(self) -> float:
        return min(self.rescan_interval, 5.0) if self.rescan_interval > 0 else 5.0

    async def read_events(self) -> None:
        """Forward MOVED_TO / CLOSE_WRITE names; rescan on queue overflow.  New subdirectories
        of RECURSIVE spools are scanned beside the reader, which never blocks."""
        inotify = self._inotify
        if inotify is None:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                if any(spool.recursive for spool in self.spools):
                    tg.create_task(self._scan_new_dirs())
                async for event in inotify:  # type: ignore[attr-defined]
                    self._on_event(inotify, event)
        finally:
            inotify.close()  # type: ignore[attr-defined]
            self.watching = False

    def _on_event(self, inotify: Any, event: Any) -> None:
        from asyncinotify import Mask

        mask, watch = event.mask, event.watch
        if mask & Mask.Q_OVERFLOW:
            log.warning("inotify queue overflowed; rescanning")
            self.request_rescan()
            return
        if watch is None:
            return
        where = self.tree.where(watch)
        if mask & (Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF):
            if where is None:
                self._watch_gone(watch, mask)
            else:
                self.tree.self_event(inotify, watch, mask)
            return
        if event.name is None:
            return
        spool, reldir = where or (self._by_path.get(os.fspath(watch.path)), "")
        name = os.fsdecode(event.name)
        if spool is None or self.is_ignored(name):
            return
        rel = f"{reldir}/{name}" if reldir else name
        if mask & Mask.ISDIR:
            new_dir = spool.recursive and mask & (Mask.CREATE | Mask.MOVED_TO)
            if new_dir and not self.tree.appeared(spool, rel):
                self.request_rescan()
            return
        if mask & Mask.CREATE:
            return  # a file still being written: CLOSE_WRITE or MOVED_TO follows
        if not self.pending.offer((spool, rel)):
            self.request_rescan()

    async def _scan_new_dirs(self) -> None:
        """Watch and scan each subdirectory that appeared (a whole tree may be moved in)."""
        tree = self.tree
        while True:
            await tree.has_new.wait()
            tree.has_new.clear()
            while tree.new:
                await self.scan(*tree.new.popleft())

    async def scan_loop(self) -> None:
        """Scan at start, every RESCAN_INTERVAL, and whenever a rescan is requested."""
        while True:
            watched = self._inotify is not None and not self.tree.degraded
            interval = self.rescan_interval if watched else self._fallback_interval()
            self._rescan.clear()
            self._scan_started.set()
            await self.scan_all()
            self._first_scan_done.set()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the rescan event is set (a SIGTERM just after a spool healed was lost)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval if interval > 0 else None):
                    await self._rescan.wait()

    async def scan_all(self) -> None:
        for spool in self.spools:
            await self.scan(spool)

    async def scan(self, spool: Spool, base: str = "") -> None:
        """Offer the files of incoming/ (or of its subdirectory ``base``) not queued yet; in a
        RECURSIVE spool those of its subdirectories too, each watched before it is read."""
        if self.is_paused(spool):
            return

        def enter(rel: str) -> None:
            if base or rel:  # incoming/ itself has its watch
                reldir = f"{base}/{rel}" if base and rel else base or rel
                self.tree.add(self._inotify, spool, reldir)

        watching = spool.recursive and self.watching and spool in self._watches
        prefix = f"{base}/" if base else ""
        if not base:
            self.tree.scan_started(spool)
        top = spool.dirs.incoming / base if base else spool.dirs.incoming
        if base and (os.path.islink(top) or not os.path.isdir(top)):
            return  # gone again, or a symlink now: never followed
        try:
            found: Iterable[str] = (
                rel
                for rel, entry in walk(
                    top,
                    recursive=spool.recursive,
                    skip_dir=self.is_ignored,
                    enter=enter if watching else None,
                )
                if not self.is_ignored(entry.name)
            )
            if self.in_order:
                found = _in_runs(found, ORDER_RUN)
            for rel in found:
                item = (spool, prefix + rel)
                if item in self._timers or item in self.pending:
                    continue
                if not self.pending.offer(item):
                    await self.pending.put(item)
        except OSError as exc:
            if not base:  # a new subdirectory may be gone again: nothing to say
                self._lost(spool, exc, "list incoming/")
            return
        if not base:
            self.tree.scan_done(spool)


def _in_runs(names: Iterable[str], size: int) -> Iterator[str]:
    """``names`` sorted ``size`` at a time."""
    it = iter(names)
    while run := list(itertools.islice(it, size)):
        yield from sorted(run)


class WarnOnce:
    """Remember what was warned about, so a file left in place is not logged every scan."""

    def __init__(self, limit: int = 10000) -> None:
        self._seen: deque[object] = deque()
        self._set: set[object] = set()
        self._limit = limit

    def __call__(self, key: object) -> bool:
        if key in self._set:
            return False
        self._set.add(key)
        self._seen.append(key)
        if len(self._seen) > self._limit:
            self._set.discard(self._seen.popleft())
        return True
