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
import collections
import contextlib
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .clock import cautious_now
from .errors import (
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_STORE_UNAVAILABLE,
    EXIT_TEMPFAIL,
    FileChanged,
    FileVanished,
    LocalFault,
    PermanentError,
    Refused,
    StoreUnavailable,
    TransientError,
    UploadError,
)
from .keys import KeyInput, KeyTemplate, spool_dir_field
from .metrics import Metrics, size_class
from .settings import Settings, parse_destination
from .spool import Claim, Spool, open_claimed, spool_layouts
from .spoolguard import Guard
from .store import Delivery, Source, Store, open_store
from .survey import hold_left
from .throttle import Throttle, backoff
from .watch import Discovery, Item, Pending, WarnOnce

log = logging.getLogger(__name__)
file_log = logging.getLogger("s3spool.file")


class _NotStarted(Exception):
    """This claim's upload did not start (shutdown, or its key could not be recorded)."""

    def __init__(self, retry_after: float | None = None, local: LocalFault | None = None) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.local = local  # a spool directory refused: the spool's guard takes over


@dataclass(slots=True)
class Counts:
    delivered: int = 0
    failed: int = 0


class Service:
    def __init__(self, settings: Settings, *, once: bool = False) -> None:
        self.s = settings
        self.once = once
        _, _, prefix = parse_destination(settings.destination)
        self.template = KeyTemplate(settings.key_format, prefix)
        self.instance_id = settings.resolved_instance_id
        self.spools = [Spool(d, self.instance_id) for d in spool_layouts(settings)]
        self._index = {sp: i for i, sp in enumerate(self.spools)}
        self.guards = {sp: Guard(sp) for sp in self.spools}
        #: --once: files left behind by local faults, by "ERRNO in DIRECTORY"
        self.deferred: collections.Counter[str] = collections.Counter()
        self._spool_field = [
            spool_dir_field(sp.dirs.root or sp.dirs.incoming) for sp in self.spools
        ]
        self.pending = Pending(settings.queue_size)
        self.discovery = Discovery(
            self.spools,
            self.pending,
            ignore=settings.ignore,
            rescan_interval=settings.rescan_interval,
            on_fault=lambda index, fault: self._trip(self.spools[index], fault),
            is_paused=lambda index: self.guards[self.spools[index]].paused,
        )
        self.throttle = Throttle(settings.workers)
        self.metrics = Metrics()
        self.counts = Counts()
        self.store: Store | None = None
        self.gate = asyncio.Event()  # set: intake running; clear: paused by a store fault
        self.gate.set()
        self.stopping = False
        self.ready = False
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._force = False
        self._warn = WarnOnce()
        self._not_before: dict[Item, float] = {}
        self._resubmits: dict[Item, int] = {}
        # future-dated files: when first looked at (monotonic, immune to clock steps)
        self._first_seen: dict[Item, float] = {}
        self._busy: set[asyncio.Task[Any]] = set()
        self._idle: set[asyncio.Task[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._last_sweep = 0.0
        self.early_signals: list[int] = []
        self._wire_metrics()
        # labelled children looked up once, not per file
        self._uploaded_metrics = {
            sp.label: (
                self.metrics.files.labels(sp.label, "uploaded"),
                self.metrics.bytes.labels(sp.label, "uploaded"),
            )
            for sp in self.spools
        }

    # --- setup ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create and check every directory (``ConfigError`` on the first problem)."""
        for spool in self.spools:
            spool.prepare()

    def _wire_metrics(self) -> None:
        m = self.metrics
        m.in_flight.set_function(lambda: self.throttle.in_flight)
        m.limit.set_function(lambda: self.throttle.limit)
        m.queue.set_function(lambda: len(self.pending))
        m.paused.set_function(lambda: 0 if self.gate.is_set() else 1)
        # intake pauses exactly while the last probe of the store failed
        m.store_up.set_function(lambda: 1 if self.gate.is_set() else 0)
        for spool, guard in self.guards.items():
            m.spool_up.labels(spool.label).set_function(guard.up)

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
            try:
                found = await store.survey()
                if found:
                    log.info(
                        "store: %s", "; ".join(f"{topic}: {finding}" for topic, finding in found)
                    )
            except StoreUnavailable as exc:
                if self.once:
                    log.error("store unavailable: %s", exc)
                    return EXIT_STORE_UNAVAILABLE
                self._pause_now(exc)
            for spool in self.spools:
                if spool.opened:
                    for claim in spool.recover_own():
                        self.pending.put_claim(claim)
            self._adopt_dead()
            if not self.once:
                self.discovery.open_watches()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                intake: list[asyncio.Task[Any]] = []
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
                        intake.append(tg.create_task(self._watch_store()))
                if not self.gate.is_set():
                    intake.append(tg.create_task(self._probe_until_ok()))
                if not self.once:
                    intake.append(tg.create_task(self.discovery.layout_loop()))
                    for guard in self.guards.values():
                        if guard.fault is not None:
                            guard.start_healing(self._healed)
                self._intake = intake
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
            return self._once_summary()
        return self.exit_code

    def _once_summary(self) -> int:
        """--once: one line of counts, and the exit code they give."""
        for guard in self.guards.values():
            if guard.stranded and guard.fault is not None:  # uploaded or failed, not moved
                self.deferred[_why(guard.fault)] += len(guard.stranded)
        deferred = sum(self.deferred.values())
        why = ", ".join(f"{n} ({reason})" for reason, n in self.deferred.most_common())
        log.log(
            logging.WARNING if deferred or self.counts.failed else logging.INFO,
            "run --once: %d delivered, %d failed, %d deferred%s",
            self.counts.delivered,
            self.counts.failed,
            deferred,
            f": {why}" if why else "",
        )
        if self.exit_code != EXIT_OK:
            return self.exit_code
        if deferred:
            return EXIT_TEMPFAIL
        return EXIT_NOT_OK if self.counts.failed else EXIT_OK

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
                    await self._deliver(job)
                else:
                    await self._take(job)
            except Exception:
                # A bug must cost one file's turn, never the worker: log and go on.
                log.exception("worker %d: unexpected error on %r", wid, job)
            finally:
                self._busy.discard(task)
                self.pending.task_done()
            if self.stopping:
                return

    async def _take(self, item: Item) -> None:
        index, name = item
        spool = self.spools[index]
        if self.stopping:
            return
        path = spool.dirs.incoming / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if self._warn((item, "lstat")):
                log.warning("spool=%s name=%r: cannot stat: %s", spool.label, name, exc.strerror)
            return
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            if self._warn((item, kind)):
                log.warning(
                    "spool=%s name=%r: skipped, %s (left in place)", spool.label, name, kind
                )
            return
        # Backoffs are measured on the monotonic clock; a file's age can only be measured
        # on the wall clock its mtime comes from.
        mono = time.monotonic()
        if spool.dirs.resubmit and item not in self._not_before:
            self._recall_resubmit(item, spool, mono)
        wait = self._not_before.get(item, 0.0) - mono
        if self.s.hold_for > 0:
            now = cautious_now()
            seen_for = 0.0
            if st.st_mtime > now + 1:
                # A clock ahead of ours (or ours stepped back): HOLD_FOR counts from when we
                # first saw the file (survey.hold_left), on the monotonic clock.
                seen_for = mono - self._first_seen.setdefault(item, mono)
                if self._warn((item, "future")):
                    log.warning(
                        "spool=%s name=%r: mtime is in the future; HOLD_FOR counts from now",
                        spool.label,
                        name,
                    )
                if len(self._first_seen) > 100_000:
                    self._first_seen.pop(next(iter(self._first_seen)))
            wait = max(wait, hold_left(st.st_mtime, self.s.hold_for, now, seen_for))
        if wait > 0:
            if not self.once:
                self.discovery.defer(item, wait + 0.01)
            return
        guard = self.guards[spool]
        if guard.paused and guard.fault is not None:
            self._left_behind(guard.fault)  # its healing rescans the spool
            return
        await self.gate.wait()
        if self.stopping:
            return
        try:
            claim = spool.claim(name)
        except LocalFault as exc:
            self._trip(spool, exc)
            self._left_behind(exc)
            return
        except TransientError as exc:
            if exc.reason == "busy" and not self.once:
                self.discovery.defer(item, 1.0)
            elif exc.reason != "busy":
                log.warning("spool=%s name=%r: %s", spool.label, name, exc)
            return
        if claim is None:
            return  # another worker or instance won the rename
        claim.ctime = st.st_ctime
        self._not_before.pop(item, None)
        self._first_seen.pop(item, None)
        await self._deliver(claim)

    async def _deliver(self, claim: Claim) -> None:
        spool = claim.spool
        started = time.monotonic()
        try:
            fd = open_claimed(claim)
        except FileVanished as exc:
            log.warning("spool=%s name=%r: %s; nothing to deliver", spool.label, claim.name, exc)
            spool.forget_key(claim)
            return
        except PermanentError as exc:
            if exc.reason in ("symlink", "not_regular"):
                # swapped after the check: give it back untouched, like any non-regular file
                log.warning(
                    "spool=%s name=%r: skipped, %s (returned to incoming/)",
                    spool.label,
                    claim.name,
                    exc,
                )
                spool.unclaim(claim)
                return
            self._fail(claim, exc, started)
            return
        try:
            delivery = await self._upload(claim, fd)
        except _NotStarted as why:
            if why.local is not None:
                if claim.recovered:
                    # its key record must survive: deliver it from working/ once healed
                    self._strand(claim, why.local, lambda: self.pending.put_claim(claim))
                    return
                self._left_behind(why.local)
                spool.unclaim(claim)
                self._trip(spool, why.local)  # its healing rescans incoming/
                return
            if claim.recovered:
                # its key record must survive: the next start delivers it to the same key
                log.info(
                    "spool=%s name=%r: recovered claim left in working/ for the next start",
                    spool.label,
                    claim.name,
                )
                return
            spool.unclaim(claim)
            if why.retry_after is not None and not self.once:
                self.discovery.defer((self._index[spool], claim.name), why.retry_after)
            return
        except UploadError as exc:
            self._fail(claim, exc, started)
            return
        except asyncio.CancelledError:
            self._cancelled(claim)
            raise
        finally:
            os.close(fd)
        # No await between a confirmed upload and routing: cancellation cannot split them.
        self._commit(claim, delivery, started)

    async def _upload(self, claim: Claim, fd: int) -> Delivery:
        assert self.store is not None
        store = self.store
        if claim.key is None:
            claim.key = self.template.render(
                KeyInput(
                    os.fsencode(claim.name),
                    self._spool_field[self.spools.index(claim.spool)],
                    claim.mtime,
                    claim.ctime or claim.mtime,
                )
            )
            if self._needs_record(claim.size):
                try:
                    claim.spool.save_key(claim)
                except TransientError as exc:
                    # never upload under a key a crash could forget: give the file back
                    claim.key = None
                    if isinstance(exc, LocalFault):
                        log.debug("spool=%s name=%r: %s", claim.spool.label, claim.name, exc)
                        raise _NotStarted(local=exc) from None
                    log.error(
                        "spool=%s name=%r: %s; returned to incoming/, retrying later",
                        claim.spool.label,
                        claim.name,
                        exc,
                    )
                    raise _NotStarted(retry_after=self.s.retry_backoff_max) from None

        def record_upload_id(upload_id: str | None, part_size: int) -> None:
            if upload_id == claim.upload_id and part_size == claim.part_size:
                return
            claim.upload_id, claim.part_size = upload_id, part_size
            try:
                claim.spool.save_key(claim)
            except TransientError as exc:
                # the stale-upload sweep still finds it if we crash before completing
                log.warning("%s", exc)

        # A recorded multipart upload (ours, or a dead instance's) continues from the
        # parts the store holds.
        src = Source(
            fd,
            claim.size,
            claim.mtime_ns,
            claim.key,
            claim.name,
            on_upload_id=record_upload_id,
            upload_id=claim.upload_id,
            part_size=claim.part_size,
        )
        begun = False
        while True:
            if self.stopping and not begun:
                raise _NotStarted
            await self.gate.wait()
            if self.stopping and not begun:
                raise _NotStarted
            try:
                async with self.throttle.slot():
                    begun = True
                    if claim.recovered:
                        claim.recovered = False
                        if await store.delivered(src):
                            return Delivery(claim.key, claim.size, already_there=True)
                    delivery = await store.upload(src)
                _check_unchanged(fd, claim)
                self.throttle.on_success()
                return delivery
            except FileChanged as exc:
                claim.attempts += 1
                if claim.attempts >= self.s.retry_attempts:
                    raise
                st = os.fstat(fd)
                claim.size, claim.mtime, claim.mtime_ns = st.st_size, st.st_mtime, st.st_mtime_ns
                src.size, src.mtime_ns = claim.size, claim.mtime_ns
                log.warning(
                    "spool=%s name=%r: %s; uploading again", claim.spool.label, claim.name, exc
                )
            except StoreUnavailable as exc:
                await self._pause(exc)
            except Refused as exc:
                # One object refused: a prefix policy or a KMS grant, or the whole store?
                try:
                    await store.probe()
                except StoreUnavailable as down:
                    await self._pause(down)
                    continue
                raise PermanentError(str(exc), reason=exc.reason) from None
            except PermanentError as exc:
                if exc.reason == "exists" and await store.delivered(src):
                    return Delivery(claim.key, claim.size, already_there=True)
                raise
            except TransientError as exc:
                claim.attempts += 1
                self.metrics.files.labels(claim.spool.label, "retried").inc()
                self.metrics.failures.labels(claim.spool.label, exc.reason).inc()
                if claim.attempts >= self.s.retry_attempts:
                    try:
                        await store.probe()
                    except StoreUnavailable as down:
                        # the store is the problem, not this file: wait, then start over
                        claim.attempts = 0
                        await self._pause(down)
                        continue
                    raise
                delay = self._backoff(claim.attempts)
                log.info(
                    "spool=%s name=%r: %s; retry %d/%d in %.1fs",
                    claim.spool.label,
                    claim.name,
                    exc,
                    claim.attempts,
                    self.s.retry_attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)

    def _recall_resubmit(self, item: Item, spool: Spool, mono: float) -> None:
        """A resubmitted file seen for the first time by this process: its recorded backoff."""
        record = spool.load_resubmit(item[1])
        if record is None:
            return
        attempts, not_before = record
        self._resubmits[item] = attempts
        # wall clock across restarts; a clock stepped back cannot stretch it past the cap
        left = min(max(not_before - time.time(), 0.0), self.s.retry_backoff_max)
        self._not_before[item] = mono + left

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, self.s.retry_backoff, self.s.retry_backoff_max)

    # --- outcomes ---------------------------------------------------------------------------
    def _commit(self, claim: Claim, delivery: Delivery, started: float) -> None:
        try:
            self._route_done(claim, delivery, started)
        except LocalFault as exc:
            # uploaded: it waits in working/ and moves as soon as the directory works
            self._strand(claim, exc, lambda: self._route_done(claim, delivery, started))
        except FileVanished as exc:
            log.warning("spool=%s name=%r: uploaded, but %s", claim.spool.label, claim.name, exc)

    def _route_done(self, claim: Claim, delivery: Delivery, started: float) -> None:
        spool = claim.spool
        dest = spool.route_done(claim)
        duration = time.monotonic() - started
        self.counts.delivered += 1
        files, size_bytes = self._uploaded_metrics[spool.label]
        files.inc()
        size_bytes.inc(delivery.size)
        self.metrics.duration.labels(size_class(delivery.size)).observe(duration)
        if spool.dirs.resubmit:
            self._resubmits.pop((self._index[spool], claim.name), None)
            spool.forget_resubmit(claim.name)
        extra = {"note": "already in store"} if delivery.already_there else {}
        self._log_file(
            logging.INFO, claim, delivery.size, duration, "done" if dest else "removed", **extra
        )

    def _fail(self, claim: Claim, exc: UploadError, started: float) -> None:
        try:
            self._route_failed(claim, exc, started)
        except LocalFault as fault:
            self._strand(claim, fault, lambda: self._route_failed(claim, exc, started))
        except FileVanished as gone:
            log.warning(
                "spool=%s name=%r: failed (%s), and %s", claim.spool.label, claim.name, exc, gone
            )

    def _route_failed(self, claim: Claim, exc: UploadError, started: float) -> None:
        spool = claim.spool
        item = (self._index[spool], claim.name)
        reason = {
            "name": claim.name,
            "key": claim.key,
            "reason": exc.reason,
            "error": str(exc),
            "attempts": claim.attempts,
            "size": claim.size,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "instance": self.instance_id,
            "destination": self.s.destination,
        }
        outcome = "failed"
        if spool.dirs.resubmit:
            n = self._resubmits.get(item, 0) + 1
            self._resubmits[item] = n
            delay = self._backoff(n)
            self._not_before[item] = time.monotonic() + delay
            # on disk too: a restart must not retry a poison file at once
            spool.save_resubmit(claim.name, n, time.time() + delay)
            outcome = "resubmitted"
            if len(self._not_before) > 100_000:  # bounded; an old entry only shortens a wait
                self._not_before.pop(next(iter(self._not_before)))
                self._resubmits.pop(next(iter(self._resubmits)), None)
        dest = spool.route_failed(claim, reason)
        if dest is None:
            outcome = "removed"
        self.counts.failed += 1
        self.metrics.files.labels(spool.label, "failed").inc()
        self.metrics.bytes.labels(spool.label, "failed").inc(claim.size)
        self.metrics.failures.labels(spool.label, exc.reason).inc()
        self._log_file(
            logging.WARNING,
            claim,
            claim.size,
            time.monotonic() - started,
            outcome,
            reason=exc.reason,
            error=str(exc),
        )

    def _log_file(
        self, level: int, claim: Claim, size: int, duration: float, outcome: str, **extra: str
    ) -> None:
        """The one log record per file: spool, name, key, size, duration, outcome."""
        if not file_log.isEnabledFor(level):
            return
        fields = {
            "spool": claim.spool.label,
            "name": claim.name,
            "key": claim.key,
            "size": size,
            "duration": round(duration, 4),
            "outcome": outcome,
            **extra,
        }
        file_log.log(level, "file", extra={"fields": fields})

    def _cancelled(self, claim: Claim) -> None:
        """Shutdown cut an upload short: return the file if its key can be recomputed."""
        if self.template.stable and claim.upload_id is None:
            claim.spool.unclaim(claim)
        else:
            log.info(
                "spool=%s name=%r: upload cut short; kept in working/ so the next start "
                "delivers it to the same key %r",
                claim.spool.label,
                claim.name,
                claim.key,
            )

    # --- local faults -------------------------------------------------------------------------
    def _needs_record(self, size: int) -> bool:
        """Must this file's key be written down before its upload (which takes space)?"""
        return not self.template.stable or size >= self.s.multipart_threshold

    def _trip(self, spool: Spool, fault: LocalFault) -> None:
        """A directory of ``spool`` refused: pause that spool (see spoolguard.py)."""
        guard = self.guards[spool]
        guard.trip(fault)
        if not self.once and self._tg is not None and not self.stopping:
            guard.start_healing(self._healed)

    def _strand(self, claim: Claim, fault: LocalFault, route: Callable[[], None]) -> None:
        """A claim that a directory refused to take: the spool's guard routes it later."""
        log.debug("spool=%s name=%r: waits in working/: %s", claim.spool.label, claim.name, fault)
        self.guards[claim.spool].stranded.append((claim, route))
        self._trip(claim.spool, fault)

    def _left_behind(self, fault: LocalFault) -> None:
        """--once: one more file left behind by a local fault (exit 75)."""
        if self.once:
            self.deferred[_why(fault)] += 1

    def _healed(self, guard: Guard) -> None:
        index = self._index[guard.spool]
        self.discovery.rewatch(index)
        self.discovery.request_rescan()

    # --- store faults -------------------------------------------------------------------------
    def _on_slowdown(self) -> None:
        self.metrics.slowdowns.inc()
        self.throttle.on_slowdown()

    def _pause_now(self, exc: UploadError) -> None:
        if self.gate.is_set():
            self.gate.clear()
            log.error(
                "store unavailable (%s): intake paused, files stay where they are; "
                "probing until it answers",
                exc,
            )

    async def _pause(self, exc: UploadError) -> None:
        if self.once:
            log.error("store unavailable (%s): stopping (--once)", exc)
            self.exit_code = EXIT_STORE_UNAVAILABLE
            self.request_stop(force=True)
            raise asyncio.CancelledError
        if self.gate.is_set():
            self._pause_now(exc)
            if self._tg is not None:
                self._intake.append(self._tg.create_task(self._probe_until_ok()))
        await self.gate.wait()

    async def _watch_store(self) -> None:
        """While nothing else reaches the store, probe it: an outage shows before files pile up."""
        assert self.store is not None
        interval = self.s.probe_interval
        while True:
            await asyncio.sleep(interval)
            if not self.gate.is_set() or time.monotonic() - self.store.last_answer < interval:
                continue  # already paused (and probing), or the store answered recently
            try:
                await self.store.probe()
            except StoreUnavailable as exc:
                await self._pause(exc)

    async def _probe_until_ok(self) -> None:
        assert self.store is not None
        delay = 1.0
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(delay)
            try:
                await self.store.probe()
            except StoreUnavailable as exc:
                if time.monotonic() - last_log >= 60:
                    log.error("store still unavailable: %s (intake paused)", exc)
                    last_log = time.monotonic()
                delay = min(delay * 2, 10.0)
                continue
            log.warning("store reachable again: resuming intake")
            self.gate.set()
            return

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
        from .cleanup import expire_done

        self._adopt_dead()
        if self.once:
            for guard in self.guards.values():
                if (
                    guard.stranded
                    and await asyncio.to_thread(guard.spool.heal, guard.fault) is None
                ):
                    guard.reroute()  # the directory works again: move what waited
        for spool in self.spools:
            if self.guards[spool].paused:
                continue
            if spool.dirs.done is not None:
                removed = await asyncio.to_thread(expire_done, spool.dirs.done, self.s.delete_after)
                if removed:
                    log.info(
                        "spool=%s: removed %d files from done/ (older than %.0fs)",
                        spool.label,
                        removed,
                        self.s.delete_after,
                    )
            if spool.dirs.resubmit:
                # records of files that are gone (delivered elsewhere, removed by hand)
                stale = time.time() - max(4 * self.s.retry_backoff_max, 3600.0)
                await asyncio.to_thread(spool.expire_resubmits, stale)
        await self._sweep_multipart()

    async def _sweep_multipart(self) -> None:
        if self.store is None or self.s.abort_multipart_after <= 0 or not self.gate.is_set():
            return
        now = time.time()
        if now - self._last_sweep < min(self.s.abort_multipart_after, 600.0):
            return
        self._last_sweep = now
        live: set[str] = set()
        for spool in self.spools:
            live |= spool.open_uploads()
        try:
            stale = await self.store.stale_uploads(now - self.s.abort_multipart_after)
            for key, upload_id in stale:
                if upload_id in live:
                    continue
                await self.store.abort_upload(key, upload_id)
                self.metrics.aborted.inc()
                log.info("aborted stale multipart upload %s of %r", upload_id, key)
        except UploadError as exc:
            log.warning("multipart sweep skipped: %s", exc)

    def _adopt_dead(self) -> None:
        for spool in self.spools:
            if not spool.opened or self.guards[spool].paused:
                continue
            for dead in list(spool.dead_instances()):
                claims = spool.adopt(dead)
                if claims:
                    log.warning(
                        "spool=%s: recovered %d claims of dead instance %s",
                        spool.label,
                        len(claims),
                        dead.name,
                    )
                for claim in claims:
                    self.pending.put_claim(claim)


def _check_unchanged(fd: int, claim: Claim) -> None:
    st = os.fstat(fd)
    if st.st_size != claim.size or st.st_mtime_ns != claim.mtime_ns:
        raise FileChanged(
            f"changed during upload (size {claim.size}->{st.st_size})", reason="changed"
        )


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "not a regular file"


async def run_service(
    settings: Settings, *, once: bool = False, early_signals: list[int] | None = None
) -> int:
    service = Service(settings, once=once)
    service.early_signals = early_signals if early_signals is not None else []
    return await service.run()


def _why(fault: LocalFault) -> str:
    return f"{fault.reason} in {fault.path}"
