"""Prometheus metrics of one service instance; each ``Metrics`` owns its registry, so several
services in one process (tests) never share counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    ProcessCollector,
)

from s3spool import __version__

if TYPE_CHECKING:
    import asyncio

    from s3spool.spool.guard import Guard
    from s3spool.spool.spool import Spool
    from s3spool.store.aimd import Throttle

SIZE_CLASSES = ((1024 * 1024, "small"), (64 * 1024 * 1024, "medium"))


def size_class(size: int) -> str:
    for limit, name in SIZE_CLASSES:
        if size < limit:
            return name
    return "large"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # prometheus-client's own process_* (RSS, open fds, CPU) and python_gc_* series
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.files = Counter(
            "s3spool_files",
            "Files by outcome (uploaded, failed, retried).",
            ["spool", "outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "s3spool_bytes",
            "Bytes by outcome (uploaded, failed, retried).",
            ["spool", "outcome"],
            registry=r,
        )
        self.failures = Counter(
            "s3spool_failures",
            "Failed or retried attempts by reason.",
            ["spool", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "s3spool_upload_duration_seconds",
            "Time from claim to committed, by size class.",
            ["size_class"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.in_flight = Gauge("s3spool_uploads_in_flight", "Uploads in flight.", registry=r)
        self.limit = Gauge(
            "s3spool_concurrency_limit", "Current limit on uploads in flight (AIMD).", registry=r
        )
        self.queue = Gauge(
            "s3spool_queue_depth", "Discovered files waiting for a worker.", registry=r
        )
        self.spool_files = Gauge(
            "s3spool_spool_files",
            "Files per spool directory (incoming/working/failed).",
            ["spool", "state"],
            registry=r,
        )
        self.lag = Gauge(
            "s3spool_spool_lag_seconds",
            "Age of the oldest file waiting in incoming/.",
            ["spool"],
            registry=r,
        )
        self.slowdowns = Counter("s3spool_slowdown", "SlowDown / 503 answers seen.", registry=r)
        self.aborted = Counter(
            "s3spool_multipart_aborted", "Multipart uploads aborted.", registry=r
        )
        self.paused = Gauge(
            "s3spool_paused", "1 while intake is paused by a store fault.", registry=r
        )
        self.spool_up = Gauge(
            "s3spool_spool_up",
            "0 while a directory of the spool is full, read-only, not writable or gone.",
            ["spool"],
            registry=r,
        )
        self.store_up = Gauge(
            "s3spool_store_up",
            "1 while the store answers (the last probe or request succeeded), else 0.",
            registry=r,
        )
        self.bandwidth = Gauge(
            "s3spool_bandwidth_limit_bytes",
            "Bandwidth limit in force, bytes per second (0: none): scope global "
            "(BANDWIDTH_LIMIT), or scope route (ROUTE_BANDWIDTH_LIMIT of that route).",
            ["scope", "route"],
            registry=r,
        )
        # The spool label of every other series leads to its route: a join, not a second label
        # on each series, so dashboards and alerts written before routes keep working.
        self.route = Gauge(
            "s3spool_route_spool",
            "1 for each spool of each route (join on spool to see a series' route).",
            ["route", "spool"],
            registry=r,
        )
        notifier = ["route", "notifier"]
        self.notify_sent = Counter(
            "s3spool_notify_sent", "Events a notifier accepted.", notifier, registry=r
        )
        self.notify_retried = Counter(
            "s3spool_notify_retried", "Notifier tries that failed and were retried.", notifier,
            registry=r,
        )  # fmt: skip
        self.notify_failed = Counter(
            "s3spool_notify_failed",
            "Events whose tries in one pass all failed (kept in the outbox, tried again).",
            notifier,
            registry=r,
        )
        self.notify_depth = Gauge(
            "s3spool_outbox_events", "Events waiting in the outbox for a notifier.", notifier,
            registry=r,
        )  # fmt: skip
        self.notify_age = Gauge(
            "s3spool_outbox_oldest_seconds",
            "Age of the oldest event waiting for a notifier (0 if none).",
            notifier,
            registry=r,
        )
        Info("s3spool_build", "Build information.", registry=r).info({"version": __version__})

    def follow(
        self,
        *,
        throttles: Sequence[Throttle],
        gates: Sequence[asyncio.Event],
        guards: Mapping[str, Mapping[Spool, Guard]],
        queue: Sized,
    ) -> None:
        """Gauges read from the running service's parts at scrape time (``guards``: per
        route name)."""
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
