"""SIGHUP: load the configuration again; apply the bandwidth limits, name what else changed
as needing a restart, and change nothing if it does not load."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Set

from s3spool.config.load import Config, load_config
from s3spool.config.settings import GLOBAL_FIELDS, Settings
from s3spool.errors import ConfigError
from s3spool.store.bandwidth import Bandwidth

log = logging.getLogger("s3spool.service")

#: Settings a re-read configuration applies at run time; every other change needs a restart.
RUNTIME_FIELDS = frozenset({"bandwidth_limit", "route_bandwidth_limit"})


async def reload(config: Config, bandwidth: Bandwidth) -> None:
    """Load the configuration again and apply its bandwidth limits (SIGHUP)."""
    if config.flags is None:
        log.warning("SIGHUP: these settings were not loaded from a configuration")
        return
    try:
        # off the event loop: parsing and validating every route takes a few ms
        new = await asyncio.to_thread(load_config, config.flags)
    except ConfigError as exc:
        log.error("SIGHUP: not applied, the running configuration stays: %s", exc)
        return
    except Exception:
        log.exception("SIGHUP: the configuration could not be loaded; it stays as it was")
        return
    changes = bandwidth.update(
        new.s.bandwidth_limit, {r.name: r.s.route_bandwidth_limit for r in new.routes}
    )
    source = f"re-read {new.path}" if new.path else "re-read the settings"
    log.info(
        "SIGHUP: %s: %s", source, "; ".join(changes) if changes else "bandwidth limits unchanged"
    )
    restart = needs_restart(config, new)
    if restart:
        log.warning("SIGHUP: changed settings need a restart to apply: %s", "; ".join(restart))


def needs_restart(old: Config, new: Config) -> list[str]:
    """The changes between two configurations that only a restart applies, by route."""

    def changed(a: Settings, b: Settings, fields: Set[str]) -> str:
        names = [f for f in Settings.model_fields if f in fields and getattr(a, f) != getattr(b, f)]
        return ", ".join(names)

    top = changed(old.s, new.s, GLOBAL_FIELDS - RUNTIME_FIELDS)
    out = [top] if top else []
    per_route = set(Settings.model_fields) - GLOBAL_FIELDS - RUNTIME_FIELDS
    before = {r.name: r for r in old.routes}
    named = len(old.routes) > 1 or len(new.routes) > 1 or old.routes[0].name != new.routes[0].name
    for route in new.routes:
        was = before.get(route.name)
        if was is None:
            out.append(f"route {route.name!r} (new)")
        elif fields := changed(was.s, route.s, per_route):
            out.append((f"route {route.name!r}: " if named else "") + fields)
    now = {r.name for r in new.routes}
    out += [f"route {r.name!r} (removed)" for r in old.routes if r.name not in now]
    return out
