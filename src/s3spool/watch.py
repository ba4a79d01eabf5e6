"""Discovery: inotify events and directory scans feed one bounded, de-duplicated queue.

Watches are added before the first scan, so a file renamed in during startup
is seen by one or the other.  A scan walks ``incoming/`` lazily and blocks
when the queue is full, so a backlog of any length costs at most
``QUEUE_SIZE`` entries of memory.  The inotify reader never blocks: when the
queue is full it drops the event and asks for a rescan instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import logging
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .errors import LocalFault
from .spool import Claim, Spool, local_fault

log = logging.getLogger(__name__)

#: (spool, file name): a file in that spool's incoming/
Item = tuple[Spool, str]
Job = Item | Claim


class Pending:
    """FIFO of discovered names (bounded, each name at most once) plus recovered claims."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
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

    def put_claim(self, claim: Claim) -> None:
        """Recovered claims bypass the bound: they are already on disk in working/."""
        self._q.put_nowait(claim)

    async def get(self) -> Job:
        job = await self._q.get()
        if isinstance(job, tuple):
            self._queued.discard(job)
            self._room.set()
        return job


def compile_ignore(patterns: Sequence[str]) -> Callable[[str], bool]:
    if not patterns:
        return lambda name: False
    rx = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL)
    return lambda name: rx.match(name) is not None


def _identity(path: os.PathLike[str] | str) -> tuple[int, int]:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(path))
    return st.st_dev, st.st_ino


def _watch_mask() -> Any:
    from asyncinotify import Mask

    # DELETE_SELF / MOVE_SELF: incoming/ itself went away (IGNORED follows, always sent)
    return Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.ONLYDIR | Mask.DELETE_SELF | Mask.MOVE_SELF


INOTIFY_HELP = {
    errno.EMFILE: "raise the sysctl fs.inotify.max_user_instances (e.g. to 512)",
    errno.ENOSPC: "raise the sysctl fs.inotify.max_user_watches (e.g. to 524288)",
    errno.ENOMEM: "the kernel is out of memory for inotify",
}


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
    ) -> None:
        self.spools = list(spools)
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
        try:
            from asyncinotify import Inotify
        except ImportError as exc:  # pragma: no cover - a dependency
            log.error("inotify unavailable (%s); relying on rescans", exc)
            return
        try:
            inotify = Inotify()
        except OSError as exc:
            self._inotify_failed(exc, "create an inotify instance")
            return
        try:
            for spool in self.spools:
                self._watches[spool] = inotify.add_watch(spool.dirs.incoming, _watch_mask())
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
        try:
            self._watches[spool] = inotify.add_watch(incoming, _watch_mask())
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
        """Notice an incoming/ that was removed, replaced or had a filesystem mounted on it.

        inotify says when a watched directory goes away, but not when a new one (or a
        mount) takes its place: compare the directory's identity every ``interval``.
        """
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
                    log.warning(
                        "spool=%s: %s was replaced (recreated or remounted); watching the new "
                        "one and rescanning",
                        spool.label,
                        spool.dirs.incoming,
                    )
                    self.rewatch(spool)
                    self.request_rescan()

    def _watch_gone(self, watch: Any, mask: Any) -> None:
        """incoming/ was deleted, moved away or unmounted: its spool pauses until it is back."""
        from asyncinotify import Mask

        spool = next((s for s, w in self._watches.items() if w is watch), None)
        if spool is None:
            return  # an old watch we replaced, or already reported
        del self._watches[spool]
        how = "moved away" if mask & Mask.MOVE_SELF else "deleted or unmounted"
        incoming = spool.dirs.incoming
        self.on_fault(
            spool,
            LocalFault(f"{incoming} was {how} (ENOENT)", reason="ENOENT", path=str(incoming)),
        )

    def _inotify_failed(self, exc: OSError, what: str) -> None:
        hint = INOTIFY_HELP.get(exc.errno or 0, "")
        log.error(
            "cannot %s: %s%s; falling back to scanning every %.0fs",
            what,
            exc.strerror,
            f" — {hint}" if hint else "",
            self._fallback_interval(),
        )

    def _fallback_interval(self) -> float:
        return min(self.rescan_interval, 5.0) if self.rescan_interval > 0 else 5.0

    async def read_events(self) -> None:
        """Forward MOVED_TO / CLOSE_WRITE names; rescan on queue overflow."""
        from asyncinotify import Mask

        inotify = self._inotify
        if inotify is None:
            return
        try:
            async for event in inotify:  # type: ignore[attr-defined]
                if event.mask & Mask.Q_OVERFLOW:
                    log.warning("inotify queue overflowed; rescanning")
                    self.request_rescan()
                    continue
                if event.mask & (Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF):
                    self._watch_gone(event.watch, event.mask)
                    continue
                if event.name is None or event.watch is None or event.mask & Mask.ISDIR:
                    continue
                name = os.fsdecode(event.name)
                spool = self._by_path.get(os.fspath(event.watch.path))
                if spool is None or self.is_ignored(name):
                    continue
                if not self.pending.offer((spool, name)):
                    self.request_rescan()
        finally:
            inotify.close()  # type: ignore[attr-defined]
            self.watching = False

    async def scan_loop(self) -> None:
        """Scan at start, every RESCAN_INTERVAL, and whenever a rescan is requested."""
        interval = self.rescan_interval if self._inotify is not None else self._fallback_interval()
        while True:
            self._rescan.clear()
            self._scan_started.set()
            await self.scan_all()
            self._first_scan_done.set()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the rescan event is set (seen: a SIGTERM right after a spool healed
            # left this loop running, and the service waited a whole RESCAN_INTERVAL to stop)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval if interval > 0 else None):
                    await self._rescan.wait()

    async def scan_all(self) -> None:
        for spool in self.spools:
            await self.scan(spool)

    async def scan(self, spool: Spool) -> None:
        if self.is_paused(spool):
            return
        try:
            it = os.scandir(spool.dirs.incoming)
        except OSError as exc:
            self._lost(spool, exc, "list incoming/")
            return
        with it:
            for entry in it:
                name = entry.name
                if self.is_ignored(name):
                    continue
                item = (spool, name)
                if item in self._timers or item in self.pending:
                    continue
                if not self.pending.offer(item):
                    await self.pending.put(item)


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
