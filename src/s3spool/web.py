"""HTTP endpoints of a running service (``/metrics``, ``/healthz``, ``/readyz``), served on its
own event loop: ``/healthz`` answering proves the loop is not blocked."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from s3spool.config.settings import parse_http_addr
from s3spool.errors import ConfigError
from s3spool.spool.cleanup import cautious_now
from s3spool.spool.scan import SpoolGauges, spool_gauges

if TYPE_CHECKING:
    from s3spool.run.service import Service


log = logging.getLogger("s3spool.http")

_SERVICE: web.AppKey[Service] = web.AppKey("service")


#: A scrape re-reads the spools at most this often; scrapes in between reuse the values.
GAUGE_REFRESH_INTERVAL = 1.0


@dataclass(slots=True)
class _GaugeState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    at: float = -math.inf
    lags: dict[str, float] = field(default_factory=dict)


_GAUGES: web.AppKey[_GaugeState] = web.AppKey("gauges", _GaugeState)


async def refresh_spool_gauges(app: web.Application) -> dict[str, float]:
    """Refresh the spool_files and spool_lag gauges, at most once per ``GAUGE_REFRESH_INTERVAL``
    (concurrent scrapes wait for the last pass); returns the lag per spool."""
    service, state = app[_SERVICE], app[_GAUGES]
    async with state.lock:
        if time.monotonic() - state.at < GAUGE_REFRESH_INTERVAL:
            return dict(state.lags)
        each = [
            (sp.dirs, r.discovery.is_ignored, r.s.hold_for, sp.recursive)
            for r in service.routes
            for sp in r.spools
        ]

        def work() -> list[SpoolGauges]:
            now = cautious_now()
            return [spool_gauges(d, ign, hold, now, recursive=rec) for d, ign, hold, rec in each]

        m = service.metrics
        state.lags = {}
        for (dirs, *_), g in zip(each, await asyncio.to_thread(work), strict=True):
            for name in ("incoming", "working", "failed"):
                m.spool_files.labels(dirs.label, name).set(getattr(g, name))
            m.lag.labels(dirs.label).set(g.lag)
            state.lags[dirs.label] = g.lag
        state.at = time.monotonic()
        return dict(state.lags)


def readiness(service: Service, lags: dict[str, float]) -> list[str]:
    """Why the service is not ready (empty list: ready)."""
    problems: list[str] = []
    if service.stopping:
        problems.append("shutting down")
    elif not service.ready:
        problems.append("first scan of the spools not finished")
    several = len(service.routes) > 1
    for route in service.routes:
        which = f"route {route.name}: " if several else ""
        if not route.discovery.watching:
            problems.append(f"{which}inotify watches not active (see the log; rescans only)")
        if not route.gate.is_set():
            problems.append(f"{which}store unavailable: intake paused until a probe succeeds")
    for guard in service.guards.values():
        if guard.fault is not None:
            problems.append(f"spool {guard.spool.label}: {guard.fault}")
    max_age = service.s.outbox_max_age
    if max_age is not None:
        for route in service.routes:
            age = route.notifications.oldest() if route.notifications else 0.0
            if age > max_age:
                problems.append(
                    f"route {route.name}: a notification event waits for {age:.0f}s, more than "
                    f"S3SPOOL_OUTBOX_MAX_AGE ({max_age:.0f}s)"
                )
    max_lag = service.s.max_lag
    for label, lag in sorted(lags.items()):
        if max_lag is not None and lag > max_lag:
            problems.append(
                f"spool {label}: lag {lag:.0f}s exceeds S3SPOOL_MAX_LAG ({max_lag:.0f}s)"
            )
    return problems


async def _metrics(request: web.Request) -> web.Response:
    await refresh_spool_gauges(request.app)
    body = generate_latest(request.app[_SERVICE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    # Only read the spools when a lag threshold makes their state part of readiness.
    lags = await refresh_spool_gauges(request.app) if service.s.max_lag is not None else {}
    problems = readiness(service, lags)
    if problems:
        return web.Response(status=503, text="not ready:\n" + "".join(f"- {p}\n" for p in problems))
    return web.Response(text="ready\n")


def make_app(service: Service) -> web.Application:
    app = web.Application()
    app[_SERVICE] = service
    app[_GAUGES] = _GaugeState()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def serve_http(service: Service) -> None:
    """Serve until cancelled; ``ConfigError`` naming HTTP_ADDR if the address cannot be bound."""
    host, port = parse_http_addr(service.s.http_addr)
    runner = web.AppRunner(make_app(service), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"S3SPOOL_HTTP_ADDR (--http-addr): cannot listen on {host}:{port}: "
                f"{exc.strerror or exc}"
            ) from None
        log.info("serving /metrics, /healthz, /readyz on http://%s:%d", host, port)
        await asyncio.Event().wait()  # until the service cancels this task
    finally:
        await runner.cleanup()
