"""Notifications of one route: events written to the outbox before the file leaves working/,
then offered to each notifier's bounded queue; a sweep brings back what waits on disk."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Any

from s3spool.config.notifiers import NotifierSpec
from s3spool.config.settings import Settings
from s3spool.metrics import Metrics
from s3spool.notify.notifiers import NotifyFailed, NotifyRefused, make_notifier
from s3spool.spool.outbox import OUTBOX, Outbox
from s3spool.spool.spool import Spool
from s3spool.store.aimd import retry_delay

log = logging.getLogger("s3spool.notify")

QUEUE_SIZE = 1000  # per notifier: events in memory; the rest wait on disk
SWEEP_INTERVAL = 5.0
#: an event whose tries in one pass all failed waits this long for the next
RETRY_LATER = 30.0


def manifest_dir(spool: Spool) -> Path:
    d = spool.dirs
    base = d.root or (d.done.parent if d.done is not None else d.incoming.parent)
    return base / "manifest"


class Notifications:
    """The notifiers of one route and the outboxes of its spools."""

    def __init__(
        self,
        route: str,
        settings: Settings,
        spools: Sequence[Spool],
        metrics: Metrics,
        *,
        once: bool = False,
    ) -> None:
        self.route = route
        self.once = once
        self.specs: list[NotifierSpec] = list(settings.notify)
        self.settings = settings
        self.metrics = metrics
        self.outboxes = {sp.label: Outbox(sp.me / OUTBOX) for sp in spools}
        self._manifests = {sp.label: manifest_dir(sp) for sp in spools}
        self._queues: dict[str, asyncio.Queue[tuple[str, str]]] = {
            spec.name: asyncio.Queue(QUEUE_SIZE) for spec in self.specs
        }
        #: (spool label, event id) queued or being sent, per notifier: never twice at once
        self._known: dict[str, set[tuple[str, str]]] = {s.name: set() for s in self.specs}
        #: not before (monotonic) for events whose last pass failed
        self._later: dict[str, dict[tuple[str, str], float]] = {s.name: {} for s in self.specs}
        #: per notifier: why its last try failed (the --once summary), whether it refused us
        self.last_error: dict[str, str] = {}
        self._refused: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.specs)

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.specs}

    # --- the commit step (synchronous: no await between upload and settling) -----------------
    def record(self, spool: Spool, event: dict[str, Any]) -> None:
        """Write ``event`` durably for every notifier that wants it (``LocalFault`` if the
        working directory refuses), then offer it to their queues."""
        wanted = [s.name for s in self.specs if event["outcome"] in s.on]
        if not wanted:
            return
        self.outboxes[spool.label].put(event, wanted)
        for name in wanted:
            self._offer(name, (spool.label, event["id"]))

    def _offer(self, name: str, item: tuple[str, str]) -> None:
        known = self._known[name]
        if item in known:
            return
        try:
            self._queues[name].put_nowait(item)
        except asyncio.QueueFull:
            return  # on disk: the sweep brings it back when there is room
        known.add(item)

    # --- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Run every notifier until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for spec in self.specs:
                tg.create_task(self._run_one(spec))

    async def _run_one(self, spec: NotifierSpec) -> None:
        notifier = make_notifier(spec, self.settings, self._manifests.__getitem__)
        labels = (self.route, spec.name)
        m = self.metrics
        m.notify_depth.labels(*labels).set_function(lambda: self._depth(spec.name)[0])
        m.notify_age.labels(*labels).set_function(lambda: self._depth(spec.name)[1])
        opened = notifier if isinstance(notifier, AbstractAsyncContextManager) else nullcontext()
        async with opened, asyncio.TaskGroup() as tg:
            for _ in range(spec.concurrency):
                tg.create_task(self._send_loop(spec, notifier))
            tg.create_task(self._sweep_loop(spec))

    def _depth(self, name: str) -> tuple[int, float]:
        n, age = 0, 0.0
        for outbox in self.outboxes.values():
            k, a = outbox.depth(name)
            n, age = n + k, max(age, a)
        return n, age

    def idle(self) -> bool:
        """Nothing queued or being sent, and nothing waiting on disk."""
        return not any(self._known.values()) and all(
            self._depth(s.name)[0] == 0 for s in self.specs
        )

    def settled(self) -> bool:
        """Nothing queued or being sent, and each event on disk failed its last pass: nothing
        more happens before ``RETRY_LATER`` (--once stops waiting)."""
        if any(self._known.values()):
            return False
        return all(
            (label, event_id) in self._later[s.name]
            for s in self.specs
            for label, outbox in self.outboxes.items()
            for event_id, _mtime in outbox.waiting(s.name)
        )

    def left(self) -> list[str]:
        """One line per notifier with events not accepted yet: their ids, the last error, and
        where they wait."""
        lines = []
        for spec in self.specs:
            ids: list[str] = []
            where = []
            for outbox in self.outboxes.values():
                found = [event_id for event_id, _mtime in outbox.waiting(spec.name)]
                if found:
                    ids += found
                    where.append(str(outbox.root / spec.name))
            if not ids:
                continue
            more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
            shown = ", ".join(sorted(ids)[:3]) + more
            error = self.last_error.get(spec.name, "no answer before the end of the run")
            lines.append(
                f"notifier {spec.name} (route {self.route}): {len(ids)} events not sent "
                f"({shown}); last error: {error}; they wait in {', '.join(where)} "
                "for the next run"
            )
        return lines

    def oldest(self) -> float:
        """Age of the oldest event any notifier of this route has not accepted (/readyz)."""
        return max((self._depth(s.name)[1] for s in self.specs), default=0.0)

    async def _sweep_loop(self, spec: NotifierSpec) -> None:
        while True:
            self.sweep(spec.name)
            await asyncio.sleep(SWEEP_INTERVAL)

    def sweep(self, name: str) -> None:
        """Offer events waiting on disk (after a restart, a full queue, a failed pass)."""
        now = time.monotonic()
        later = self._later[name]
        queue = self._queues[name]
        for label, outbox in self.outboxes.items():
            for event_id, _mtime in outbox.waiting(name):
                if queue.full():
                    return
                item = (label, event_id)
                if later.get(item, 0.0) > now:
                    continue
                later.pop(item, None)
                self._offer(name, item)

    async def _send_loop(self, spec: NotifierSpec, notifier: Any) -> None:
        name = spec.name
        queue = self._queues[name]
        m = self.metrics
        labels = (self.route, name)
        while True:
            item = await queue.get()
            try:
                label, event_id = item
                outbox = self.outboxes[label]
                event = await asyncio.to_thread(outbox.load, name, event_id)
                if event is None:
                    continue  # accepted meanwhile (a duplicate offer), or unreadable
                body = json.dumps(event, ensure_ascii=False, sort_keys=True).encode()
                for attempt in range(1, spec.retries + 1):
                    try:
                        await notifier.send(event, body)
                    except NotifyFailed as exc:
                        self.last_error[name] = str(exc)
                        # a wrong secret or token is not fixed by trying again within the pass
                        refused = isinstance(exc, NotifyRefused)
                        if refused and name not in self._refused:
                            self._refused.add(name)
                            log.warning(
                                "notifier %s (route %s): %s: the receiver refused the request; "
                                "check the notifier's secret, token or headers",
                                name, self.route, exc,
                            )  # fmt: skip
                        if refused or attempt == spec.retries:
                            m.notify_failed.labels(*labels).inc()
                            self._give_up(name, item, attempt, exc)
                            break
                        m.notify_retried.labels(*labels).inc()
                        await asyncio.sleep(retry_delay(attempt, 0.5, 30.0))
                    else:
                        await asyncio.to_thread(outbox.done, name, event_id)
                        m.notify_sent.labels(*labels).inc()
                        self._refused.discard(name)
                        break
            finally:
                self._known[name].discard(item)

    def _give_up(self, name: str, item: tuple[str, str], tries: int, exc: NotifyFailed) -> None:
        """This pass over ``item`` failed: the next in ``RETRY_LATER``, or (--once, whose summary
        warns of what is left) in the next run."""
        self._later[name][item] = time.monotonic() + RETRY_LATER
        msg = "notifier %s (route %s): event %s not accepted after %d tries: %s; kept"
        if self.once:
            log.info(msg + " for the next run", name, self.route, item[1], tries, exc)
        else:
            msg += ", next try in %.0fs"
            log.warning(msg, name, self.route, item[1], tries, exc, RETRY_LATER)


async def flush(
    routes: Sequence[Notifications], grace: float, stopped: Callable[[], bool] = lambda: False
) -> None:
    """--once: until every notifier has accepted its events, or failed a pass over each, for
    ``grace`` at most (or until ``stopped``); a wait of over a second says what it waits for."""
    busy = [n for n in routes if n]
    loop = asyncio.get_running_loop()
    start = loop.time()
    told = False
    while busy and loop.time() < start + grace and not stopped():
        if all(n.settled() for n in busy):
            return
        if not told and loop.time() > start + 1.0:
            told = True
            waiting = sum(n._depth(s.name)[0] for n in busy for s in n.specs)
            errors = "".join(
                f"; last error of notifier {k}: {v}" for n in busy for k, v in n.last_error.items()
            )
            log.info(
                "run --once: waiting up to %.0fs more (SHUTDOWN_GRACE) for notifiers to accept "
                "%d events%s",
                start + grace - loop.time(), waiting, errors,
            )  # fmt: skip
        await asyncio.sleep(0.1)


async def send_left(
    routes: Sequence[Notifications], grace: float, stopped: Callable[[], bool]
) -> None:
    """--once with no file to take: run the notifiers over the events earlier runs left, until
    ``stopped`` (a signal)."""
    busy = [n for n in routes if n and not n.idle()]
    if not busy:
        return
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(n.run()) for n in busy]
        await flush(busy, grace, stopped)
        for task in runs:
            task.cancel()


def report_left(routes: Sequence[Notifications]) -> bool:
    """--once: a WARNING per notifier with events not accepted; whether there were any."""
    lines = [line for n in routes if n for line in n.left()]
    for line in lines:
        log.warning("run --once: %s", line)
    return bool(lines)
