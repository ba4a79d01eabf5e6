"""The service: discovery, workers (claim, upload, route) and cleanup in one TaskGroup.
On SIGTERM/SIGINT intake stops, uploads in flight get SHUTDOWN_GRACE (a second signal skips
it), unstarted claims go back to incoming/; SIGHUP re-reads the configuration (``reload.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from s3spool import logs
from s3spool.config.load import Config
from s3spool.errors import (
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_STORE_UNAVAILABLE,
    EXIT_TEMPFAIL,
    UploadError,
)
from s3spool.metrics import Metrics
from s3spool.notify.notifications import flush, report_left, send_left
from s3spool.run.pipeline import Pipeline
from s3spool.run.progress import Counts, Progress, count_waiting, took
from s3spool.run.reload import reload
from s3spool.run.routes import CHECK_HINT, Lanes, RouteRun, last_sweep, sweep_due
from s3spool.spool.batches import Batch
from s3spool.spool.scan import work_waiting
from s3spool.spool.spool import Claim
from s3spool.store.bandwidth import Bandwidth
from s3spool.store.base import ByteBudget

log = logging.getLogger("s3spool.service")


class Service:
    """Lifecycle, signals and drain, and the workers all routes share."""

    def __init__(self, config: Config, *, once: bool = False) -> None:
        self.config = config
        self.s = settings = self.config.s
        self.once = once
        self.instance_id = settings.resolved_instance_id
        self.metrics = Metrics()
        self.stopping = False
        self.ready = False
        self.exit_code = EXIT_OK
        tickets: asyncio.Queue[None] | None = asyncio.Queue() if len(config.routes) > 1 else None
        self.counts = Counts()
        if once:
            self.counts.claims_left = settings.max_files
        self.routes = [
            RouteRun(
                route,
                stopping=lambda: self.stopping,
                running=lambda: self.running,
                spawn=self.spawn,
                store_down=self.store_down,
                once=once,
                metrics=self.metrics,
                tickets=tickets,
            )
            for route in self.config.routes
        ]
        self.pipelines = [Pipeline(r, self.counts) for r in self.routes]
        self.lanes = Lanes([r.pending for r in self.routes], tickets)
        self.bandwidth = Bandwidth(
            settings.bandwidth_limit,
            {r.name: r.s.route_bandwidth_limit for r in self.config.routes},
            gauge=self.metrics.bandwidth,
        )
        self._reloading = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self.spools = [sp for r in self.routes for sp in r.spools]
        self.guards = {sp: g for r in self.routes for sp, g in r.guards.items()}
        self._stop = asyncio.Event()
        self._force = False
        self._busy: set[asyncio.Task[Any]] = set()
        self._idle: set[asyncio.Task[Any]] = set()
        self._intake: list[asyncio.Task[Any]] = []
        self._tg: asyncio.TaskGroup | None = None
        self.early_signals: list[int] = []
        #: /metrics, /healthz, /readyz (``web.serve_http``, which ``cli`` hands over)
        self.http: Callable[[Service], Coroutine[Any, Any, None]] | None = None
        self.progress = Progress(
            self.counts, [(sp, r.discovery.is_ignored) for r in self.routes for sp in r.spools]
        )
        self._by_spool = {
            sp: p for r, p in zip(self.routes, self.pipelines, strict=True) for sp in r.spools
        }
        self.metrics.follow(
            throttles=[r.throttle for r in self.routes],
            gates=[r.gate for r in self.routes],
            guards={r.name: r.guards for r in self.routes},
            queue=self.lanes,
        )

    @property
    def running(self) -> bool:
        return self._tg is not None and not self.stopping

    def spawn(self, coro: Any) -> None:
        assert self._tg is not None
        self._intake.append(self._tg.create_task(coro))

    def prepare(self) -> None:
        """Create and check every directory (``ConfigError`` on the first problem)."""
        for spool in self.spools:
            spool.prepare()

    def request_stop(self, *, force: bool = False) -> None:
        self._force = self._force or force or self._stop.is_set()
        self._stop.set()
        if self._force:
            for task in list(self._busy):
                task.cancel()

    async def run(self) -> int:
        code = await self._serve()
        # a clean stop (a drained signal, the end of --once) says so, in one line
        c = self.counts
        log.log(
            logging.INFO if code == EXIT_OK else logging.WARNING,
            "stopped: %d delivered, %d failed in %s; exit %d",
            c.delivered,
            c.failed,
            took(time.monotonic() - self.progress.started),
            code,
        )
        return code

    async def _serve(self) -> int:
        self.prepare()
        try:
            for route in self.routes:
                route.open()
                route.last_sweep = last_sweep(route.spools)
            if self.once and not any(
                sweep_due(r.s, r.last_sweep) or work_waiting(r.spools, r.discovery.is_ignored)
                for r in self.routes
            ):
                # A cron job's empty run: no botocore to import, no client, no request;
                # only the events earlier runs left (adopted by the cleanup) are sent.
                await self.cleanup_once()
                notifications = [r.notifications for r in self.routes]
                # no signal handlers yet: __main__ notes a SIGTERM in early_signals
                await send_left(
                    notifications, self.s.shutdown_grace, lambda: bool(self.early_signals)
                )
                return self._once_summary()
            from s3spool.store.open import open_store

            budget = ByteBudget(self.s.buffer_limit)  # one bound for all routes' uploads
            async with contextlib.AsyncExitStack() as stack:
                for route in self.routes:
                    limiter = self.bandwidth.handles[route.name]
                    store = open_store(route.s, route.on_slowdown, budget, limiter)
                    route.store = await stack.enter_async_context(store)
                return await self._run()
        finally:
            for route in self.routes:
                route.close()

    async def _run(self) -> int:
        if not gc.isenabled():  # __main__ held collection off for the start-up
            # what start-up built lives as long as the process (garbage and all: collecting
            # it first costs more than it frees, bench/RESULTS.md)
            gc.freeze()
            gc.enable()
        loop = asyncio.get_running_loop()
        hup = signal.getsignal(signal.SIGHUP)
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        for early in self.early_signals:  # arrived during startup, before these handlers
            self._on_signal(early)
        try:
            for route in self.routes:
                route.recover()
                if not self.once:
                    route.discovery.open_watches()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for route in self.routes:
                    assert route.store is not None
                    route.announce(route.store)
                    # the start-up survey runs beside the first uploads, not before them
                    for coro in route.intake(route.store):
                        self.spawn(coro)
                workers = [
                    tg.create_task(self._worker(i), name=f"worker-{i}")
                    for i in range(self.s.workers)
                ]
                # notifiers outlive the drain; what they have not sent waits in the outbox
                after = [
                    tg.create_task(r.notifications.run()) for r in self.routes if r.notifications
                ]
                after.append(tg.create_task(self.bandwidth.run(), name="bandwidth"))
                if self.http is not None:  # not intake: /readyz answers (503) while draining
                    after.append(tg.create_task(self.http(self)))
                if self.once:
                    self.spawn(self._once_driver())
                    self.spawn(self.progress.run())
                    if self.s.max_duration is not None:
                        self.spawn(self._deadline(self.s.max_duration))
                else:
                    self.spawn(self._cleanup_loop())
                    tg.create_task(self._mark_ready())
                await self._stop.wait()
                await self._shutdown(workers)
                await asyncio.wait(workers)
                for task in after:
                    task.cancel()
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    if not loop.remove_signal_handler(sig):
                        continue
                    if sig == signal.SIGHUP and hup is not None:
                        signal.signal(sig, hup)  # as it was: a late SIGHUP stops nothing
                    elif sig == signal.SIGTERM:
                        signal.signal(sig, _late_term)
            for task in self._reloads:
                task.cancel()
            await asyncio.gather(*self._reloads, return_exceptions=True)
        if self.once:
            self.progress.summary()
            return self._once_summary()
        return self.exit_code

    def _once_summary(self) -> int:
        self.counts.requests = sum(r.store.requests for r in self.routes if r.store is not None)
        left, _ = count_waiting(self.progress.spools)
        if self.counts.bounded and left:  # MAX_FILES, MAX_DURATION: what waits is deferred (75)
            self.counts.deferred[self.counts.bounded] += left
        elapsed = time.monotonic() - self.progress.started
        outcomes = self.pipelines[0].outcomes
        code = outcomes.once_summary(
            self.guards.values(), self.exit_code, left=left, elapsed=elapsed
        )
        # events not accepted are work left, as files left behind are
        if report_left([r.notifications for r in self.routes]) and code in (EXIT_OK, EXIT_NOT_OK):
            return EXIT_TEMPFAIL
        return code

    async def _deadline(self, seconds: float) -> None:
        """--once with MAX_DURATION: then stop as on SIGTERM (uploads in flight get the grace)."""
        await asyncio.sleep(seconds)
        self.counts.bounded = f"MAX_DURATION {seconds:g}s reached"
        log.info("%s: draining (%d uploads in flight)", self.counts.bounded, len(self._busy))
        self.request_stop()

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            task = asyncio.get_running_loop().create_task(self._reload(), name="reload")
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
            return
        name = signal.Signals(sig).name
        if self._stop.is_set():
            log.warning("%s again: stopping now, without waiting for uploads", name)
            self.request_stop(force=True)
            return
        grace = self.s.shutdown_grace
        log.info("%s: draining (%d uploads in flight, grace %.0fs)", name, len(self._busy), grace)
        self.request_stop()

    async def _reload(self) -> None:
        async with self._reloading:  # one at a time, in order
            await reload(self.config, self.bandwidth)

    async def _mark_ready(self) -> None:
        # ready once discovery runs: a first scan of a large backlog would keep a pod unready
        for route in self.routes:
            await route.discovery.wait_scan_started()
        self.ready = True
        workers, instance = self.s.workers, self.instance_id
        if len(self.routes) == 1:
            msg = "watching %d spool(s) (%s) -> %s with %d workers (instance %s)"
            spools = ", ".join(sp.label for sp in self.spools)  # absolute, as resolved
            dest = self.routes[0].s.destination
            log.info(msg, len(self.spools), spools, dest, workers, instance)
            return
        for route in self.routes:
            spools = ", ".join(sp.label for sp in route.spools)
            msg = "route %s: watching %d spool(s) (%s) -> %s"
            log.info(msg, route.name, len(route.spools), spools, route.s.destination)
        # one pool serves every route
        log.info("%d workers for %d routes (instance %s)", workers, len(self.routes), instance)

    async def _shutdown(self, workers: list[asyncio.Task[Any]]) -> None:
        self.stopping = True
        self.ready = False
        for task in self._intake:
            task.cancel()
        for task in list(self._idle):
            task.cancel()
        busy = [t for t in workers if t in self._busy]
        if busy and not all(r.gate.is_set() for r in self.routes):
            log.warning("store unavailable: not waiting for %d stalled uploads", len(busy))
        elif busy and not self._force:
            _, still = await asyncio.wait(busy, timeout=self.s.shutdown_grace)
            if still:
                log.warning(
                    "grace of %.0fs over: cancelling %d uploads", self.s.shutdown_grace, len(still)
                )
        for task in workers:
            task.cancel()
        for pipeline in self.pipelines:
            pipeline.batches.release()

    async def _once_driver(self) -> None:
        """--once: one scan, then stop when every queued and recovered file is handled."""
        for route in self.routes:
            await route.discovery.scan_all()
        await self.lanes.join()
        while sum(p.batches.flush() for p in self.pipelines):  # BATCH: what is still forming
            await self.lanes.join()
        # the cleanup phase a cron job expects: expire done/, sweep stale multipart uploads
        await self.cleanup_once()
        # what is left is sent by the next run, which adopts this instance's outbox
        await flush([r.notifications for r in self.routes], self.s.shutdown_grace)
        self.request_stop()

    async def _worker(self, wid: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            self._idle.add(task)
            try:
                lane, job = await self.lanes.get()
            finally:
                self._idle.discard(task)
            self._busy.add(task)
            try:
                if isinstance(job, Claim):
                    await self._by_spool[job.spool].deliver(job, recovered=True)
                elif isinstance(job, Batch):
                    await self._by_spool[job.spool].batches.deliver(job)
                else:
                    await self._by_spool[job[0]].take(job)
            except Exception:
                # A bug must cost one file's turn, never the worker: log and go on.
                log.exception("worker %d: unexpected error on %r", wid, job)
            finally:
                self._busy.discard(task)
                lane.task_done()
            if self.stopping:
                return

    async def store_down(self, exc: UploadError, route: str = "") -> None:
        """--once: a store is unavailable; stop, exit 3 (``route``: the line's prefix)."""
        if self.exit_code != EXIT_STORE_UNAVAILABLE:
            log.error("%sstore unavailable: %s; stopping (--once); %s", route, exc, CHECK_HINT)
            self.exit_code = EXIT_STORE_UNAVAILABLE
        self.request_stop(force=True)
        raise asyncio.CancelledError

    async def _cleanup_loop(self) -> None:
        for route in self.routes:
            await route.discovery.wait_first_scan()
        while True:
            try:
                await self.cleanup_once()
            except Exception:
                log.exception("cleanup failed; trying again in %.0fs", self.s.cleanup_interval)
            await asyncio.sleep(self.s.cleanup_interval)

    async def cleanup_once(self) -> None:
        for route in self.routes:
            await route.cleanup_once()


def _late_term(sig: int, _frame: object) -> None:
    """SIGTERM after the drain: the process dies as asked, but not before the log lines it
    holds are written."""
    logs.flush()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
