"""What may change while the service runs: the bandwidth limits, and SIGHUP to re-read them.

``live_config`` wraps a service's run (``service.run_service``): it sets up the bandwidth
limits (``bandwidth.py``) and hands each route's limiter to its settings, where the route's
store picks it up; it follows the limits' schedules; and on SIGHUP it loads the
configuration again, from the same flags, variables and config file:

* what can change at run time is applied at once: ``BANDWIDTH_LIMIT`` and each route's
  ``ROUTE_BANDWIDTH_LIMIT``;
* every other setting that changed is named in one log line as needing a restart (and
  keeps its running value);
* a configuration that does not load (a bad value, a TOML error, a missing file) changes
  nothing: the error is logged and the running configuration stays.

Uploads in flight are not interrupted: a reload only changes the buckets' rates.  Every
re-read is compared with the configuration the service started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from s3spool.config.load import Config, load_config
from s3spool.config.settings import GLOBAL_FIELDS, Settings
from s3spool.errors import ConfigError
from s3spool.store.bandwidth import Bandwidth

log = logging.getLogger("s3spool.service")

#: Settings a re-read configuration applies at run time; every other change needs a restart.
RUNTIME_FIELDS = frozenset({"bandwidth_limit", "route_bandwidth_limit"})


class Live:
    """The bandwidth limits of a running configuration, and its reload."""

    def __init__(
        self, config: Config, gauge: Any = None, *, now: Callable[[], datetime] = datetime.now
    ) -> None:
        self.config = config
        self.bandwidth = Bandwidth(
            config.s.bandwidth_limit,
            {r.name: r.s.route_bandwidth_limit for r in config.routes},
            gauge=gauge,
            now=now,
        )
        for route in config.routes:
            route.s.attach_bandwidth(self.bandwidth.handles[route.name])
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    def detach(self) -> None:
        for route in self.config.routes:
            route.s.attach_bandwidth(None)

    def request(self) -> None:
        """SIGHUP: reload in a task of its own (reloads run one at a time, in order)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Load the configuration again and apply it; False if nothing could be applied."""
        async with self._lock:
            flags = self.config.flags
            if flags is None:
                log.warning("SIGHUP: these settings were not loaded from a configuration")
                return False
            try:
                # off the event loop: parsing and validating every route takes a few ms
                new = await asyncio.to_thread(load_config, flags)
            except ConfigError as exc:
                log.error("SIGHUP: not applied, the running configuration stays: %s", exc)
                return False
            except Exception:
                log.exception("SIGHUP: the configuration could not be loaded; it stays as it was")
                return False
            changes = self.bandwidth.update(
                new.s.bandwidth_limit, {r.name: r.s.route_bandwidth_limit for r in new.routes}
            )
            source = f"re-read {new.path}" if new.path else "re-read the settings"
            log.info(
                "SIGHUP: %s: %s",
                source,
                "; ".join(changes) if changes else "bandwidth limits unchanged",
            )
            restart = needs_restart(self.config, new)
            if restart:
                log.warning(
                    "SIGHUP: changed settings need a restart to apply: %s", "; ".join(restart)
                )
            return True


def needs_restart(old: Config, new: Config) -> list[str]:
    """The changes between two configurations that only a restart applies, by route."""
    order = list(Settings.model_fields)
    out = [f for f in order if f in GLOBAL_FIELDS - RUNTIME_FIELDS and _differs(old.s, new.s, f)]
    if out:
        out = [", ".join(out)]
    before = {r.name: r for r in old.routes}
    named = len(old.routes) > 1 or len(new.routes) > 1 or old.routes[0].name != new.routes[0].name
    for route in new.routes:
        was = before.get(route.name)
        if was is None:
            out.append(f"route {route.name!r} (new)")
            continue
        fields = [
            f
            for f in order
            if f not in GLOBAL_FIELDS | RUNTIME_FIELDS and _differs(was.s, route.s, f)
        ]
        if fields:
            out.append((f"route {route.name!r}: " if named else "") + ", ".join(fields))
    now = {r.name for r in new.routes}
    out += [f"route {r.name!r} (removed)" for r in old.routes if r.name not in now]
    return out


def _differs(a: Settings, b: Settings, field: str) -> bool:
    return bool(getattr(a, field) != getattr(b, field))


@contextlib.asynccontextmanager
async def live_config(
    config: Config, gauge: Any = None, early_signals: list[int] | None = None
) -> AsyncIterator[Live]:
    """Bandwidth limits and SIGHUP around a service's run (``gauge``: the metrics' bandwidth
    gauge).  A SIGHUP among ``early_signals`` (caught before the loop ran) is taken out of
    the list and handled as a reload."""
    live = Live(config, gauge)
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGHUP)
    listening = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, live.request)
        listening = True
    early = early_signals if early_signals is not None else []
    if signal.SIGHUP in early:
        while signal.SIGHUP in early:
            early.remove(signal.SIGHUP)
        live.request()
    schedules = loop.create_task(live.bandwidth.run(), name="bandwidth")
    try:
        yield live
    finally:
        schedules.cancel()
        for task in list(live._tasks):
            task.cancel()
        await asyncio.gather(schedules, *live._tasks, return_exceptions=True)
        if listening:
            loop.remove_signal_handler(signal.SIGHUP)
            if previous is not None:
                signal.signal(signal.SIGHUP, previous)  # as it was: a late SIGHUP stops nothing
        live.detach()
