"""The service: discovery → workers (claim, upload, route) → cleanup, in one TaskGroup.

Life of one file (see README "Architecture")::

    incoming/NAME ──claim (rename)──► working/<instance>/files/NAME
        ──upload + verify──► done/NAME | failed/NAME (+ .reason.json) | unlinked

Shutdown (SIGTERM/SIGINT): intake stops at once; claimed files whose upload
has not started go back to incoming/; uploads in flight get SHUTDOWN_GRACE to
finish, then are cancelled (a multipart upload is aborted) and their files
returned or kept for the next start.  A second signal skips the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from .cleanup import adopt_dead, last_sweep, sweep_due, sweep_multipart, tidy_spools
from .errors import (
    EXIT_OK,
    EXIT_STORE_UNAVAILABLE,
    LocalFault,
    UploadError,
)
from .metrics import Metrics
from .outcomes import Counts
from .pipeline import Pipeline
from .recovery import recover_own
from .settings import Settings
from .spool import Claim, Spool, spool_layouts
from .spoolguard import Guard, heal
from .store import Store
from .storegate import StoreGate
from .survey import work_waiting
from .throttle import Throttle
from .watch import Discovery, Pending

log = logging.getLogger(__name__)
file_log = logging.getLogger("s3spool.file")


class Service:
    """Lifecycle, signals and drain; the store gate; housekeeping. Files: ``pipeline.py``."""

    def __init__(self, settings: Settings, *, once: bool = False) -> None:
        self.s = settings
        self.once = once
        self.instance_id = settings.resolved_instance_id
        self.spools = [Spool(d, self.instance_id) for d in spool_layouts(settings)]
        self.guards = {sp: Guard(sp) for sp in self.spools}
        self.pending = Pending(settings.queue_size)
        self.discovery = Discovery(
            self.spools,
            self.pending,
            ignore=settings.ignore,
            rescan_interval=settings.rescan_interval,
            on_fault=self.trip,
            is_paused=lambda spool: self.guards[spool].paused,
        )
        self.throttle = Throttle(settings.workers)
        self.metrics = Metrics()
        self.store: Store | None = None
        self.store_gate = StoreGate()
        self.gate = self.store_gate.event  # set: intake running; clear: the store is down
        self.stopping = False
        self.ready = False
        self.exit_code = EXIT_OK
        self.pipeline = Pipeline(
            settings,
            self.spools,
            host=self,
            once=once,
            pending=self.pending,
            discovery=self.discovery,
            throttle=self.throttle,
            metrics=self.metrics,
            guards=self.guards,
        )
        self._stop = asyncio.Event()
        self._force = False
        self._busy: set[asyncio.Task[Any]] = set()
        self._idle: set[asyncio.Task[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._last_sweep = 0.0
        self.early_signals: list[int] = []
        self.metrics.follow(
            throttle=self.throttle, pending=self.pending, gate=self.gate, guards=self.guards
        )

    @property
    def counts(self) -> Counts:
        return self.pipeline.outcomes.counts

    # --- setup ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create and check every directory (``ConfigError`` on the first problem)."""
        for spool in self.spools:
            spool.prepare()

    def request_stop(self, *, force: bool = False) -> None:
        if self._stop.is_set():
            force = True
        self._force = self._force or force
        self._stop.set()
        if self._force:
            for task in list(self._busy):
                task.cancel()

    # --- run ---------------------------------------------------------------------------------
    async def run(self) -> int:
        self.prepare()
        try:
            for spool in self.spools:
                try:
                    spool.open()
                except LocalFault as exc:
                    # e.g. a full filesystem: this spool waits, the others start
                    self.guards[spool].trip(exc)
            self._last_sweep = last_sweep(self.spools)
            if (
                self.once
                and not sweep_due(self.s, self._last_sweep)
                and not work_waiting(self.spools, self.discovery.is_ignored)
            ):
                # A cron job's empty run: no botocore to import, no client, no request.
                await self.cleanup_once()
                return self.pipeline.outcomes.once_summary(self.guards.values(), self.exit_code)
            from .destinations import open_store

            async with open_store(self.s, on_slowdown=self._on_slowdown) as store:
                self.store = store
                return await self._run(store)
        finally:
            for guard in self.guards.values():
                guard.stop_healing()
            for spool in self.spools:
                spool.close()
            self.discovery.close()

    async def _run(self, store: Store) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        for early in self.early_signals:
            self._on_signal(early)  # arrived during startup, before these handlers existed
        try:
            for spool in self.spools:
                if spool.opened:
                    for claim in recover_own(spool):
                        self.pending.put_claim(claim)
            adopt_dead(self.spools, self.guards, self.pending.put_claim)
            if not self.once:
                self.discovery.open_watches()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                # the start-up survey runs beside the first uploads, not before them
                survey = self.store_gate.survey(store, self.pause)
                intake: list[asyncio.Task[Any]] = [tg.create_task(survey)]
                self._intake = intake
                http: asyncio.Task[Any] | None = None
                if self.s.http_addr and not self.once:
                    from .http import serve_http

                    # not intake: /readyz must keep answering (503) while draining
                    http = tg.create_task(serve_http(self))
                workers = [
                    tg.create_task(self._worker(i), name=f"worker-{i}")
                    for i in range(self.s.workers)
                ]
                if self.once:
                    intake.append(tg.create_task(self._once_driver()))
                else:
                    intake.append(tg.create_task(self.discovery.read_events()))
                    intake.append(tg.create_task(self.discovery.scan_loop()))
                    intake.append(tg.create_task(self._cleanup_loop()))
                    if self.s.probe_interval > 0:
                        watch = self.store_gate.watch(store, self.s.probe_interval, self.pause)
                        intake.append(tg.create_task(watch))
                if not self.once:
                    intake.append(tg.create_task(self.discovery.layout_loop()))
                    for guard in self.guards.values():
                        if guard.fault is not None:
                            guard.start_healing(self._healed)
                if not self.once:
                    tg.create_task(self._mark_ready())
                await self._stop.wait()
                await self._shutdown(intake, workers)
                if http is not None:
                    await asyncio.wait(workers)
                    http.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if self.once:
            return self.pipeline.outcomes.once_summary(self.guards.values(), self.exit_code)
        return self.exit_code

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stop.is_set():
            log.warning("%s again: stopping now, without waiting for uploads", name)
            self.request_stop(force=True)
            return
        log.info(
            "%s: draining (%d uploads in flight, grace %.0fs)",
            name,
            len(self._busy),
            self.s.shutdown_grace,
        )
        self.request_stop()

    async def _mark_ready(self) -> None:
        # Ready once discovery runs; waiting for the first scan to *finish* would keep
        # a pod unready for as long as a backlog larger than QUEUE_SIZE takes to hand out.
        await self.discovery.wait_scan_started()
        self.ready = True
        log.info(
            "watching %d spool(s) -> %s with %d workers (instance %s)",
            len(self.spools),
            self.s.destination,
            self.s.workers,
            self.instance_id,
        )

    async def _shutdown(
        self, intake: list[asyncio.Task[Any]], workers: list[asyncio.Task[Any]]
    ) -> None:
        self.stopping = True
        self.ready = False
        for task in intake:
            task.cancel()
        for task in list(self._idle):
            task.cancel()
        busy = [t for t in workers if t in self._busy]
        if busy and not self.gate.is_set():
            log.warning("store unavailable: not waiting for %d stalled uploads", len(busy))
        elif busy and not self._force:
            _, still = await asyncio.wait(busy, timeout=self.s.shutdown_grace)
            if still:
                log.warning(
                    "grace of %.0fs over: cancelling %d uploads", self.s.shutdown_grace, len(still)
                )
        for task in workers:
            task.cancel()

    async def _once_driver(self) -> None:
        """--once: one scan, then stop when every queued and recovered file is handled."""
        await self.discovery.scan_all()
        await self.pending.join()
        # the cleanup phase a cron job expects: expire done/, sweep stale multipart uploads
        await self.cleanup_once()
        self.request_stop()

    # --- workers -----------------------------------------------------------------------------
    async def _worker(self, wid: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            self._idle.add(task)
            try:
                job = await self.pending.get()
            finally:
                self._idle.discard(task)
            self._busy.add(task)
            try:
                if isinstance(job, Claim):
                    await self.pipeline.deliver(job)
                else:
                    await self.pipeline.take(job)
            except Exception:
                # A bug must cost one file's turn, never the worker: log and go on.
                log.exception("worker %d: unexpected error on %r", wid, job)
            finally:
                self._busy.discard(task)
                self.pending.task_done()
            if self.stopping:
                return

    # --- local faults -------------------------------------------------------------------------
    def trip(self, spool: Spool, fault: LocalFault) -> None:
        """A directory of ``spool`` refused: pause that spool (see spoolguard.py)."""
        guard = self.guards[spool]
        guard.trip(fault)
        if not self.once and self._tg is not None and not self.stopping:
            guard.start_healing(self._healed)

    def _healed(self, guard: Guard) -> None:
        self.discovery.rewatch(guard.spool)
        self.discovery.request_rescan()

    # --- store faults -------------------------------------------------------------------------
    def _on_slowdown(self) -> None:
        self.metrics.slowdowns.inc()
        self.throttle.on_slowdown()

    async def pause(self, exc: UploadError) -> None:
        if self.once:
            if self.exit_code != EXIT_STORE_UNAVAILABLE:
                log.error("store unavailable: %s; stopping (--once)", exc)
                self.exit_code = EXIT_STORE_UNAVAILABLE
            self.request_stop(force=True)
            raise asyncio.CancelledError
        if self.store_gate.close(exc) and self._tg is not None and self.store is not None:
            self._intake.append(self._tg.create_task(self.store_gate.reopen_when_up(self.store)))
        await self.gate.wait()

    # --- cleanup ------------------------------------------------------------------------------
    async def _cleanup_loop(self) -> None:
        await self.discovery.wait_first_scan()
        while True:
            try:
                await self.cleanup_once()
            except Exception:
                log.exception("cleanup failed; trying again in %.0fs", self.s.cleanup_interval)
            await asyncio.sleep(self.s.cleanup_interval)

    async def cleanup_once(self) -> None:
        adopt_dead(self.spools, self.guards, self.pending.put_claim)
        if self.once:
            for guard in self.guards.values():
                if (
                    guard.stranded
                    and await asyncio.to_thread(heal, guard.spool, guard.fault) is None
                ):
                    guard.reroute()  # the directory works again: move what waited
        await tidy_spools(self.spools, self.guards, self.s)
        if self.store is not None and self.gate.is_set():
            await self.store_gate.surveyed.wait()
            self._last_sweep = await sweep_multipart(
                self.store, self.spools, self.s, self.metrics, self._last_sweep
            )


async def run_service(
    settings: Settings, *, once: bool = False, early_signals: list[int] | None = None
) -> int:
    service = Service(settings, once=once)
    service.early_signals = early_signals if early_signals is not None else []
    return await service.run()
