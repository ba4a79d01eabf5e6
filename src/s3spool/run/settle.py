"""Settling a file after its upload: to done/ or failed/ (or back, resubmitted), and its log
line; a directory that refuses strands it with its spool's guard until it works."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from s3spool.config.settings import Settings
from s3spool.config.spools import DEFAULT_ROUTE
from s3spool.errors import (
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_TEMPFAIL,
    FileVanished,
    LocalFault,
    UploadError,
)
from s3spool.logs import log_fields
from s3spool.metrics import Metrics, size_class
from s3spool.notify.events import make_event
from s3spool.notify.notifications import Notifications
from s3spool.run.progress import Counts, took
from s3spool.spool.guard import Guard
from s3spool.spool.resubmit import forget_record, load_record, save_record
from s3spool.spool.scan import human_size
from s3spool.spool.spool import Claim, Spool, about
from s3spool.spool.watch import Item
from s3spool.store.aimd import backoff
from s3spool.store.base import Delivery

log = logging.getLogger("s3spool.service")
file_log = logging.getLogger("s3spool.file")


class NotStarted(Exception):
    """This claim's upload did not start (shutdown, or its key could not be recorded)."""

    def __init__(self, retry_after: float | None = None, local: LocalFault | None = None) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.local = local  # a spool directory refused: the spool's guard takes over


def why(fault: LocalFault) -> str:
    """How --once's summary names a local fault."""
    return f"{fault.reason} in {fault.path}"


class Resubmits:
    """Resubmit mode: each name's attempts and next try, in memory and on disk for restarts."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._not_before: dict[Item, float] = {}  # monotonic
        self._attempts: dict[Item, int] = {}

    def wait(self, item: Item, mono: float) -> float:
        """Seconds until ``item`` may be tried again (0: now)."""
        if item not in self._not_before:
            record = load_record(*item)  # seen first by this process
            if record is not None:
                self._attempts[item], not_before = record
                # wall clock across restarts; a clock stepped back cannot stretch it past the cap
                left = min(max(not_before - time.time(), 0.0), self.s.retry_backoff_max)
                self._not_before[item] = mono + left
        return self._not_before.get(item, 0.0) - mono

    def taken(self, item: Item) -> None:
        self._not_before.pop(item, None)

    def failed(self, item: Item) -> None:
        """One more failed attempt: back off, in memory and on disk."""
        n = self._attempts.get(item, 0) + 1
        self._attempts[item] = n
        delay = backoff(n, self.s.retry_backoff, self.s.retry_backoff_max)
        self._not_before[item] = time.monotonic() + delay
        # on disk too: a restart must not retry a poison file at once
        save_record(*item, n, time.time() + delay)
        if len(self._not_before) > 100_000:  # bounded; an old entry only shortens a wait
            self._not_before.pop(next(iter(self._not_before)))
            self._attempts.pop(next(iter(self._attempts)), None)

    def forget(self, item: Item) -> None:
        self._attempts.pop(item, None)
        forget_record(*item)


class Outcomes:
    """Settles delivered and failed claims and writes the one log record per file."""

    def __init__(
        self,
        settings: Settings,
        spools: list[Spool],
        *,
        trip: Callable[[Spool, LocalFault], None],
        once: bool,
        metrics: Metrics,
        guards: dict[Spool, Guard],
        resubmits: Resubmits,
        stable_keys: bool,
        counts: Counts | None = None,
    ) -> None:
        self.s = settings
        self.trip = trip  # a directory refused: pause that spool (the service's guard)
        self.once = once
        self.metrics = metrics
        self.guards = guards
        self.resubmits = resubmits
        self.stable_keys = stable_keys  # a key the next start renders the same
        self.instance_id = settings.resolved_instance_id
        self.counts = counts if counts is not None else Counts()  # shared by all routes
        #: the route's notifiers (routes.py sets them); empty: no events are written
        self.notifications: Notifications | None = None
        self.deferred = self.counts.deferred
        # labelled children looked up once, not per file
        self._delivered_metrics = {
            sp.label: (
                metrics.files.labels(sp.label, "delivered"),
                metrics.bytes.labels(sp.label, "delivered"),
            )
            for sp in spools
        }
        # per size class, made on first use like labels() (an unused class stays unexported)
        self._duration = functools.cache(metrics.duration.labels)

    def settle(self, claim: Claim, result: Delivery | UploadError, started: float) -> None:
        """Move a claim to done/ (delivered) or failed/ (``result`` is the error); one that a
        directory refuses waits in working/ and moves as soon as the directory works."""
        failed = isinstance(result, UploadError)
        move: Callable[..., None] = self._settle_failed if failed else self._settle_done
        try:
            move(claim, result, started)
        except LocalFault as fault:
            self.strand(claim, fault, lambda: move(claim, result, started))
        except FileVanished as gone:
            what = f"failed ({result})" if failed else "delivered"
            about(log.warning, claim.spool, claim.name, "%s, but %s", what, gone)

    def _settle_done(self, claim: Claim, delivery: Delivery, started: float) -> None:
        spool = claim.spool
        if self.notifications:
            # durable before the file leaves working/: a crash after this line redelivers
            # nothing and loses no event; before it, recovery redelivers and records it again
            event = make_event(claim, "delivered", self.s.bucket, self.instance_id, delivery)
            self.notifications.record(spool, event)
        dest = spool.settle_done(claim)
        duration = time.monotonic() - started
        self.counts.delivered += 1
        self.counts.bytes += delivery.size
        files, size_bytes = self._delivered_metrics[spool.label]
        files.inc()
        size_bytes.inc(delivery.size)
        self._duration(size_class(delivery.size)).observe(duration)
        if spool.dirs.resubmit:
            self.resubmits.forget((spool, claim.name))
        extra: dict[str, object] = {"note": "already in store"} if delivery.already_there else {}
        if delivery.stored is not None:
            extra["stored"] = delivery.stored  # bytes in the store: compressed (COMPRESS)
        if delivery.bundle is not None:
            extra["bundle"], extra["offset"] = delivery.bundle, delivery.offset
        if dest is None:
            extra["then"] = "removed"  # REMOVE_ON_SUCCESS
        self.log_file(logging.INFO, claim, delivery.size, duration, "delivered", **extra)

    def _settle_failed(self, claim: Claim, exc: UploadError, started: float) -> None:
        spool = claim.spool
        item = (spool, claim.name)
        reason = {
            "name": claim.name,
            "key": claim.key or None,
            "reason": exc.reason,
            "error": str(exc),
            "attempts": claim.attempts,
            "size": claim.size,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "instance": self.instance_id,
            "destination": self.s.destination,
        }
        extra: dict[str, object] = {}
        if spool.dirs.resubmit:
            self.resubmits.failed(item)
            extra["then"] = "resubmitted"
        elif self.notifications:  # a resubmitted file is not failed yet: no event
            event = make_event(claim, "failed", self.s.bucket, self.instance_id, error=exc)
            self.notifications.record(spool, event)
        dest = spool.settle_failed(claim, reason)
        if dest is None:
            extra["then"] = "removed"  # REMOVE_ON_FAILURE
        self.counts.failed += 1
        self.metrics.files.labels(spool.label, "failed").inc()
        self.metrics.bytes.labels(spool.label, "failed").inc(claim.size)
        self.metrics.failures.labels(spool.label, exc.reason).inc()
        self.log_file(
            logging.WARNING,
            claim,
            claim.size,
            time.monotonic() - started,
            "failed",
            reason=exc.reason,
            error=str(exc),
            **extra,
        )

    def log_file(
        self, level: int, claim: Claim, size: int, duration: float, outcome: str, **extra: object
    ) -> None:
        """The one log record per file: (route,) spool, name, key, size, duration, outcome
        (delivered or failed)."""
        if not file_log.isEnabledFor(level):
            return
        fields: dict[str, object] = {
            "spool": claim.spool.label,
            "name": claim.name,
            "key": claim.key or None,
            "size": size,
            "duration": round(duration, 4),
            "outcome": outcome,
            **extra,
        }
        route = claim.spool.dirs.route
        if route != DEFAULT_ROUTE:
            # only with [[route]] tables: the line stays as it was for everyone else
            fields = {"route": route, **fields}
        log_fields(file_log, level, "file", fields)

    def strand(self, claim: Claim, fault: LocalFault, settle: Callable[[], None]) -> None:
        """A claim that a directory refused to take: the spool's guard settles it later."""
        about(log.debug, claim.spool, claim.name, "waits in working/: %s", fault)
        self.guards[claim.spool].stranded.append((claim, settle))
        self.trip(claim.spool, fault)

    def left_behind(self, fault: LocalFault) -> None:
        """--once: one more file left behind by a local fault (exit 75)."""
        if self.once:
            self.deferred[why(fault)] += 1

    def cancelled(self, claim: Claim) -> None:
        """Shutdown cut an upload short: return the file if its key can be recomputed."""
        if self.stable_keys and claim.upload_id is None:
            claim.spool.unclaim(claim)
        else:
            about(
                log.info,
                claim.spool,
                claim.name,
                "upload cut short; kept in working/ so the next start delivers it to the "
                "same key %r",
                claim.key,
            )

    def once_summary(
        self, guards: Iterable[Guard], exit_code: int, *, left: int, elapsed: float
    ) -> int:
        """--once: one line of counts (``left``: files still waiting in the spools), and the
        exit code they give (0, 1, 75, or ``exit_code``)."""
        for guard in guards:
            if guard.stranded and guard.fault is not None:  # uploaded or failed, not moved
                self.deferred[why(guard.fault)] += len(guard.stranded)
        deferred = sum(self.deferred.values())
        reasons = ", ".join(f"{n} ({r})" for r, n in self.deferred.most_common())
        log.log(
            logging.WARNING if deferred or self.counts.failed or exit_code else logging.INFO,
            "run --once: %d delivered (%s), %d failed, %d deferred, %d left waiting in %s%s",
            self.counts.delivered,
            human_size(self.counts.bytes)
            + (
                f", {self.counts.bundles} batches, {self.counts.requests} requests"
                if self.counts.bundles
                else ""
            ),
            self.counts.failed,
            deferred,
            left,
            took(elapsed),
            f"; deferred: {reasons}" if reasons else "",
        )
        if exit_code != EXIT_OK:
            return exit_code
        if deferred:
            return EXIT_TEMPFAIL
        return EXIT_NOT_OK if self.counts.failed else EXIT_OK
