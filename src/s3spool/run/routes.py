"""Routes at run time: each route's spools, discovery, store and store gate (a store that is
down pauses only its routes), the lanes the workers take jobs from, and the multipart sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from s3spool.config.load import Route
from s3spool.config.settings import Settings
from s3spool.config.spools import DEFAULT_ROUTE, spool_layouts
from s3spool.errors import LocalFault, StoreUnavailable, UploadError
from s3spool.metrics import Metrics
from s3spool.notify.notifications import Notifications
from s3spool.spool.cleanup import adopt_dead, tidy_spools
from s3spool.spool.guard import Guard, heal
from s3spool.spool.recovery import open_uploads, recover_own
from s3spool.spool.spool import Spool
from s3spool.spool.watch import Discovery, Job, Pending
from s3spool.store.aimd import Throttle
from s3spool.store.base import UNKNOWN, Store
from s3spool.store.s3errors import no_answer

log = logging.getLogger("s3spool.service")
sweep_log = logging.getLogger("s3spool.cleanup")

#: Seconds a readiness probe may take (connect, retries and all): /readyz follows the store
#: within PROBE_INTERVAL plus this, whatever the connect and read timeouts of uploads are.
PROBE_TIMEOUT = 4.0
#: Where an operator finds the whole story of a store that does not answer.
CHECK_HINT = "run `s3spool check`"


class RouteRun:
    """One route while the service runs, with what it needs of the service as callables.
    Intake runs while the store answers (``gate`` set): a store-wide fault closes the gate
    (one log line), a probe with backoff reopens it; idle probes notice an outage early."""

    def __init__(
        self,
        route: Route,
        *,
        stopping: Callable[[], bool],
        running: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        store_down: Callable[[UploadError, str], Awaitable[None]],
        once: bool,
        metrics: Metrics,
        tickets: asyncio.Queue[None] | None,
    ) -> None:
        s = self.s = route.s
        self.name = route.name
        self._stopping, self._running, self._spawn = stopping, running, spawn
        self._store_down = store_down
        self.once = once
        instance = s.resolved_instance_id
        self.spools = [
            Spool(d, instance, recursive=s.recursive) for d in spool_layouts(s, route=route.name)
        ]
        self.guards = {sp: Guard(sp) for sp in self.spools}
        self.pending = Pending(s.queue_size, tickets=tickets)
        self.discovery = Discovery(
            self.spools,
            self.pending,
            ignore=s.ignore,
            rescan_interval=s.rescan_interval,
            on_fault=self.trip,
            is_paused=lambda spool: self.guards[spool].paused,
            in_order=s.batch == "extract",
        )
        self.throttle = Throttle(s.workers)
        self.metrics = metrics
        self.store: Store | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.surveyed = asyncio.Event()  # the sweep needs what the survey learned
        self.last_sweep = 0.0
        self.notifications = Notifications(route.name, s, self.spools, metrics, once=once)

    @property
    def stopping(self) -> bool:
        return self._stopping()

    def on_slowdown(self) -> None:
        self.metrics.slowdowns.inc()
        self.throttle.on_slowdown()

    def open(self) -> None:
        for spool in self.spools:
            try:
                spool.open()
            except LocalFault as exc:
                # e.g. a full filesystem: this spool waits, the others start
                self.guards[spool].trip(exc)

    def recover(self) -> None:
        """Our own claims of an earlier life, then dead instances' claims, into the queue."""
        for spool in self.spools:
            if spool.opened:
                for claim in recover_own(spool):
                    self.pending.put_claim(claim)
        adopt_dead(self.spools, self.guards, self.pending.put_claim, self.notifications.names)

    def intake(self, store: Store) -> list[Any]:
        """The coroutines that find work for this route (the service runs them)."""
        coros: list[Any] = [self.survey(store)]
        if not self.once:
            coros += [self.discovery.read_events(), self.discovery.scan_loop()]
            if self.s.probe_interval > 0:
                coros.append(self.watch(store, self.s.probe_interval))
            coros.append(self.discovery.layout_loop())
            for guard in self.guards.values():
                if guard.fault is not None:
                    guard.start_healing(self._healed)
        return coros

    def close(self) -> None:
        for guard in self.guards.values():
            guard.stop_healing()
        for spool in self.spools:
            spool.close()
        self.discovery.close()

    def trip(self, spool: Spool, fault: LocalFault) -> None:
        """A directory of ``spool`` refused: pause that spool (see spoolguard.py)."""
        guard = self.guards[spool]
        guard.trip(fault)
        if not self.once and self._running():
            guard.start_healing(self._healed)

    def _healed(self, guard: Guard) -> None:
        self.discovery.rewatch(guard.spool)
        self.discovery.request_rescan()

    async def pause(self, exc: UploadError) -> None:
        """This route's store is unavailable: its intake waits until a probe succeeds."""
        if self.once:
            await self._store_down(exc, self._route)
        if self.gate.is_set():
            self.gate.clear()
            log.error(
                "%sstore unavailable: %s; intake paused, files stay where they are; "
                "probing until it answers; %s",
                self._route,
                exc,
                CHECK_HINT,
            )
            if self._running() and self.store is not None:
                self._spawn(self._reopen_when_up(self.store))
        await self.gate.wait()

    def announce(self, store: Store) -> None:
        """The route's one ``store`` line, before its first upload (what the survey learns
        comes at DEBUG)."""
        log.info("%s %s at %s", self._store_for, self.s.destination, store.where())

    @property
    def _store_for(self) -> str:
        return "store:" if self.name == DEFAULT_ROUTE else f"store for route {self.name}:"

    @property
    def _route(self) -> str:
        """A line's prefix naming the route, where there are routes to tell apart."""
        return "" if self.name == DEFAULT_ROUTE else f"route {self.name}: "

    async def survey(self, store: Store) -> None:
        """The start-up survey, beside the first uploads: a DEBUG line, or a pause."""
        try:
            found = await store.survey()
        except StoreUnavailable as exc:
            await self.pause(exc)
            return
        finally:
            self.surveyed.set()
        known = [(topic, finding) for topic, finding in found if not finding.startswith(UNKNOWN)]
        if known:
            log.debug("%s %s", self._store_for, "; ".join(f"{t}: {f}" for t, f in known))

    async def _reopen_when_up(self, store: Store) -> None:
        """Probe with backoff (1 s doubling to 10 s) until the store answers; then reopen."""
        delay = 1.0
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(delay)
            try:
                await probe(store)
            except StoreUnavailable as exc:
                if time.monotonic() - last_log >= 60:
                    log.error(
                        "%sstore still unavailable: %s (intake paused); %s",
                        self._route,
                        exc,
                        CHECK_HINT,
                    )
                    last_log = time.monotonic()
                delay = min(delay * 2, 10.0)
                continue
            log.warning("%sstore reachable again: resuming intake", self._route)
            self.gate.set()
            return

    async def watch(self, store: Store, interval: float) -> None:
        """Probe the store once nothing else reached it for ``interval``."""
        due = time.monotonic() + interval
        while True:
            await asyncio.sleep(due - time.monotonic())
            now = time.monotonic()
            if not self.gate.is_set():  # paused: _reopen_when_up probes
                due = now + interval
                continue
            if now - store.last_answer < interval:  # the store answered recently
                due = store.last_answer + interval
                continue
            due = now + interval
            try:
                await probe(store)
            except StoreUnavailable as exc:
                await self.pause(exc)

    async def cleanup_once(self) -> None:
        adopt_dead(self.spools, self.guards, self.pending.put_claim, self.notifications.names)
        if self.once:
            for guard in self.guards.values():
                if (
                    guard.stranded
                    and await asyncio.to_thread(heal, guard.spool, guard.fault) is None
                ):
                    guard.settle_stranded()  # the directory works again: move what waited
        await tidy_spools(self.spools, self.guards, self.s)
        if self.store is not None and self.gate.is_set():
            await self.surveyed.wait()
            await self._sweep(self.store)

    async def _sweep(self, store: Store) -> None:
        """Abort multipart uploads older than ABORT_MULTIPART_AFTER that no instance recorded,
        when a sweep is due (``sweep_due``)."""
        if not sweep_due(self.s, self.last_sweep):
            return
        now = time.time()
        live: set[str] = set()
        for spool in self.spools:
            live |= open_uploads(spool)
        try:
            for key, upload_id in await store.stale_uploads(now - self.s.abort_multipart_after):
                if upload_id not in live:
                    await store.abort_upload(key, upload_id)
                    self.metrics.aborted.inc()
                    sweep_log.info("aborted stale multipart upload %s of %r", upload_id, key)
        except UploadError as exc:
            sweep_log.warning("multipart sweep skipped: %s", exc)
        else:
            _mark(self.spools)
        self.last_sweep = now


async def probe(store: Store) -> None:
    """``store.probe()`` that fails (``Unreachable``) without an answer within PROBE_TIMEOUT.
    A bound on the call, not a second client with short timeouts: one client per process."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await store.probe()
    except TimeoutError:
        raise no_answer("HeadBucket", PROBE_TIMEOUT) from None


class Lanes:
    """The workers' view of every route's queue, taken in turn.  With several routes, each job
    adds a ticket to one shared queue: a worker takes a ticket, then the next lane's job."""

    def __init__(self, lanes: Sequence[Pending], tickets: asyncio.Queue[None] | None) -> None:
        self.lanes = list(lanes)
        self._tickets = tickets
        self._next = 0

    def __len__(self) -> int:
        return sum(len(lane) for lane in self.lanes)

    async def get(self) -> tuple[Pending, Job]:
        if self._tickets is None:
            lane = self.lanes[0]
            return lane, await lane.get()
        await self._tickets.get()
        n = len(self.lanes)
        for i in range(n):
            lane = self.lanes[(self._next + i) % n]
            if len(lane):
                self._next = (self._next + i + 1) % n
                return lane, lane.get_nowait()
        raise AssertionError("a ticket without a job")  # pragma: no cover - see __init__

    async def join(self) -> None:
        for lane in self.lanes:
            await lane.join()


#: Beside each spool's incoming/: its mtime says when any instance last swept (so a cron job
#: of `run --once` sweeps once per interval, not once per run).
SWEEP_STAMP = ".s3spool-multipart-sweep"


def _stamp(spool: Spool) -> Path:
    return spool.dirs.incoming.parent / SWEEP_STAMP


def last_sweep(spools: Sequence[Spool]) -> float:
    """Wall time of the last multipart sweep any instance made of these spools; never swept
    starts the clock now (a first `run --once` asks the store nothing)."""
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
            sweep_log.debug("cannot mark the sweep in %s: %s", _stamp(spool), err.strerror)


def sweep_due(s: Settings, last: float) -> bool:
    """At most every ``min(ABORT_MULTIPART_AFTER, 10 min)``; a clock stepped back sweeps now."""
    if s.abort_multipart_after <= 0:
        return False
    return not 0 <= time.time() - last < min(s.abort_multipart_after, 600.0)
