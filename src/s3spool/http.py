"""HTTP endpoints of a running service: ``/metrics``, ``/healthz``, ``/readyz``.

Served by aiohttp on the service's own event loop, so ``/healthz`` answering
at all proves the loop is not blocked.  Nothing here touches the store; the
only filesystem work (spool gauges at scrape time) runs in a thread and is
rate-limited in ``ops.refresh_spool_gauges``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import ConfigError
from .ops import refresh_spool_gauges
from .settings import parse_http_addr

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger(__name__)

_SERVICE: web.AppKey[Service] = web.AppKey("service")


def readiness(service: Service, lags: dict[str, float]) -> list[str]:
    """Why the service is not ready (empty list: ready)."""
    problems: list[str] = []
    if service.stopping:
        problems.append("shutting down")
    elif not service.ready:
        problems.append("first scan of the spools not finished")
    if not service.discovery.watching:
        problems.append("inotify watches not active (see the log; rescans only)")
    if not service.gate.is_set():
        problems.append("store unavailable: intake paused until a probe succeeds")
    for guard in service.guards.values():
        if guard.fault is not None:
            problems.append(f"spool {guard.spool.label}: {guard.fault}")
    max_lag = service.s.max_lag
    if max_lag is not None:
        for label, lag in sorted(lags.items()):
            if lag > max_lag:
                problems.append(
                    f"spool {label}: lag {lag:.0f}s exceeds S3SPOOL_MAX_LAG ({max_lag:.0f}s)"
                )
    return problems


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    await refresh_spool_gauges(service)
    body = generate_latest(service.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    # Reaching this line means the event loop runs handlers: that is the whole check.
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    # Only read the spools when a lag threshold makes their state part of readiness.
    lags = await refresh_spool_gauges(service) if service.s.max_lag is not None else {}
    problems = readiness(service, lags)
    if problems:
        return web.Response(status=503, text="not ready:\n" + "".join(f"- {p}\n" for p in problems))
    return web.Response(text="ready\n")


def make_app(service: Service) -> web.Application:
    app = web.Application()
    app[_SERVICE] = service
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
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"S3SPOOL_HTTP_ADDR (--http-addr): cannot listen on {host}:{port}: "
                f"{exc.strerror or exc}"
            ) from None
        log.info("serving /metrics, /healthz, /readyz on http://%s:%d", host, port)
        await asyncio.Event().wait()  # until the service cancels this task
    finally:
        await runner.cleanup()
