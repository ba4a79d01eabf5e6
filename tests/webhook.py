"""A webhook receiver for tests: checks each event's HMAC signature, can fail a fraction of
requests, stall some, or be down; records every accepted event (duplicates included)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
from collections import Counter
from typing import Any

from aiohttp import web

from loopthread import LoopThread

SECRET = "test-webhook-secret"


class WebhookReceiver(LoopThread):
    def __init__(self, *, secret: str = SECRET, seed: int = 0, port: int = 0) -> None:
        self.secret = secret
        self.fail = 0.0  # fraction answered 500
        self.stall = 0.0  # fraction held for stall_s, then answered 200
        self.stall_s = 2.0
        self.down = False  # every request answered 503
        self.rng = random.Random(seed)
        self.events: list[dict[str, Any]] = []  # accepted, in order, duplicates included
        self.counts: Counter[str] = Counter()  # requests by what happened
        self.bad_signatures = 0
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._port = port  # 0: any free one

    def ids(self) -> Counter[str]:
        with self._lock:
            return Counter(e["id"] for e in self.events)

    def by_relpath(self) -> dict[str, set[str]]:
        """relpath -> the distinct event ids received for it."""
        out: dict[str, set[str]] = {}
        with self._lock:
            for e in self.events:
                out.setdefault(e["relpath"], set()).add(e["id"])
        return out

    async def _astart(self) -> int:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self._port

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.down:
            self._count("down")
            return web.Response(status=503)
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-S3spool-Signature", ""), expected):
            with self._lock:
                self.bad_signatures += 1
            return web.Response(status=401)
        roll = self.rng.random()
        if roll < self.fail:
            self._count("failed")
            return web.Response(status=500)
        if roll < self.fail + self.stall:
            self._count("stalled")
            await asyncio.sleep(self.stall_s)
        event = json.loads(body)
        assert request.headers["X-S3spool-Event-Id"] == event["id"]
        with self._lock:
            self.events.append(event)
        self._count("accepted")
        return web.Response(status=204)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1
