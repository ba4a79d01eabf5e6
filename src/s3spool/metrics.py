"""Prometheus metrics of one service instance; each ``Metrics`` owns its registry, so several
services in one process (tests) never share counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)

from s3spool import __version__

if TYPE_CHECKING:
    import asyncio

    from s3spool.spool.guard import Guard
    from s3spool.spool.spool import Spool
    from s3spool.store.aimd import Throttle


# no *_created series beside each counter: a timestamp per series that dashboards never use
disable_created_metrics()  # type: ignore[no-untyped-call]


def size_class(size: int) -> str:
    if size < 1024 * 1024:
        return "small"
    return "medium" if size < 64 * 1024 * 1024 else "large"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_* (RSS, open fds, CPU) and python_gc_* series
        GCCollector(registry=r)
        counter, gauge = partial(Counter, registry=r), partial(Gauge, registry=r)
        by_outcome, notifier = ["spool", "outcome"], ["route", "notifier"]
        self.files = counter("s3spool_files", "Files by outcome (delivered, failed).", by_outcome)
        self.bytes = counter("s3spool_bytes", "Bytes by outcome (delivered, failed).", by_outcome)
        self.retries = counter(
            "s3spool_retries", "Upload attempts that failed and were tried again.", ["spool"]
        )
        self.failures = counter(
            "s3spool_failures", "Failed or retried attempts by reason.", ["spool", "reason"]
        )
        self.duration = Histogram(
            "s3spool_upload_duration_seconds",
            "Time from claim to committed, by size class.",
            ["size_class"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.batches = counter(
            "s3spool_batches", "Batches delivered as one bundle (BATCH=bundle).", ["spool"]
        )
        self.batch_bytes = Histogram(
            "s3spool_batch_bytes",
            "Bytes of each bundle delivered (BATCH=bundle).",
            registry=r,
            buckets=tuple(float(2**n) for n in range(16, 30, 2)),  # 64 KiB to 256 MiB
        )
        self.in_flight = gauge("s3spool_uploads_in_flight", "Uploads in flight.")
        self.limit = gauge(
            "s3spool_concurrency_limit", "Current limit on uploads in flight (AIMD)."
        )
        self.queue = gauge("s3spool_queue_depth", "Discovered files waiting for a worker.")
        self.spool_files = gauge(
            "s3spool_spool_files",
            "Files per spool directory (incoming, working: claimed, not yet settled; failed).",
            ["spool", "state"],
        )
        self.lag = gauge(
            "s3spool_spool_lag_seconds",
            "Age of the oldest file not yet delivered (in incoming/ and due, or claimed).",
            ["spool"],
        )
        self.slowdowns = counter("s3spool_slowdown", "SlowDown / 503 answers seen.")
        self.aborted = counter("s3spool_multipart_aborted", "Multipart uploads aborted.")
        self.paused = gauge("s3spool_paused", "1 while intake is paused by a store fault.")
        self.spool_up = gauge(
            "s3spool_spool_up",
            "0 while a directory of the spool is full, read-only, not writable or gone.",
            ["spool"],
        )
        self.store_up = gauge(
            "s3spool_store_up",
            "1 while the store answers (the last probe or request succeeded), else 0.",
        )
        self.bandwidth = gauge(
            "s3spool_bandwidth_limit_bytes",
            "Bandwidth limit in force, bytes per second (0: none): scope global "
            "(BANDWIDTH_LIMIT), or scope route (ROUTE_BANDWIDTH_LIMIT of that route).",
            ["scope", "route"],
        )
        # The spool label of every other series leads to its route: a join, not a second label
        # on each series, so dashboards and alerts written before routes keep working.
        self.route = gauge(
            "s3spool_route_spool",
            "1 for each spool of each route (join on spool to see a series' route).",
            ["route", "spool"],
        )
        self.notify_sent = counter("s3spool_notify_sent", "Events a notifier accepted.", notifier)
        self.notify_retried = counter(
            "s3spool_notify_retried", "Notifier tries that failed and were retried.", notifier
        )
        self.notify_failed = counter(
            "s3spool_notify_failed",
            "Events whose tries in one pass all failed (kept in the outbox, tried again).",
            notifier,
        )
        self.notify_depth = gauge(
            "s3spool_outbox_events", "Events waiting in the outbox for a notifier.", notifier
        )
        self.notify_age = gauge(
            "s3spool_outbox_oldest_seconds",
            "Age of the oldest event waiting for a notifier (0 if none).",
            notifier,
        )
        self.build = Info("s3spool_build", "Build information.", registry=r)
        self.build.info({"version": __version__})

    def follow(
        self,
        *,
        throttles: Sequence[Throttle],
        gates: Sequence[asyncio.Event],
        guards: Mapping[str, Mapping[Spool, Guard]],
        queue: Sized,
    ) -> None:
        """Gauges read from the running service at scrape time (``guards``: per route name)."""
        self.in_flight.set_function(lambda: sum(t.in_flight for t in throttles))
        self.limit.set_function(lambda: sum(t.limit for t in throttles))
        self.queue.set_function(lambda: len(queue))
        # intake pauses exactly while the last probe of a store failed
        self.paused.set_function(lambda: 0 if all(g.is_set() for g in gates) else 1)
        self.store_up.set_function(lambda: 1 if all(g.is_set() for g in gates) else 0)
        for route, of_route in guards.items():
            for spool, guard in of_route.items():
                self.spool_up.labels(spool.label).set_function(guard.up)
                self.route.labels(route, spool.label).set(1)
