"""Run the real Service in the test's event loop, against a real store and real inotify."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from s3servers import S3Target
from s3spool.config.load import Config, Route, load_settings
from s3spool.config.settings import Settings
from s3spool.config.spools import DEFAULT_ROUTE, SpoolDirs
from s3spool.run.service import Service
from s3spool.spool.spool import Spool


def settings_for(spool: Path | list[Path] | None, target: S3Target | None, **kw: Any) -> Settings:
    """Settings for one test: env-free, short intervals, no HTTP listener."""
    base: dict[str, Any] = {
        "destination": f"s3://{target.bucket}/{target.prefix}" if target else "noop://",
        "http_addr": "",
        "rescan_interval": 5,
        "cleanup_interval": 1,
        "retry_backoff": 0.05,
        "retry_backoff_max": 0.5,
        "shutdown_grace": 10,
        "instance_id": f"test-{os.getpid()}-{time.monotonic_ns()}",
    }
    if spool is not None:
        base["spool_dirs"] = spool if isinstance(spool, list) else [spool]
    if target is not None:
        base.update(endpoint_url=target.endpoint_url, region=target.region, addressing_style="path")
    base.update(kw)
    return load_settings(**base)


def config_of(settings: Settings) -> Config:
    """The one implicit route of settings built by a test (``load_config`` reads no file)."""
    return Config((Route(DEFAULT_ROUTE, settings, {}),))


def use_credentials(monkeypatch: Any, target: S3Target) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", target.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", target.secret_key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


async def wait_until(pred: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(settings: Settings | Config, *, once: bool = False) -> AsyncIterator[Service]:
    config = settings if isinstance(settings, Config) else config_of(settings)
    svc = Service(config, once=once)
    if config.s.http_addr and not once:
        from s3spool.web import serve_http

        svc.http = serve_http  # as the command line hands it over
    async with _started(svc) as started:
        yield started


@contextlib.asynccontextmanager
async def _started(svc: Service) -> AsyncIterator[Service]:
    task = asyncio.create_task(svc.run())
    try:
        await wait_until(lambda: svc.ready or task.done(), 15, "service ready")
        if task.done():
            task.result()
        yield svc
    finally:
        svc.request_stop()
        await asyncio.wait_for(task, 30)


def drop(
    incoming: Path,
    name: str | bytes,
    data: bytes,
    mtime: float | None = None,
    *,
    owner: tuple[int, int] | None = None,
) -> Path:
    """Write to a temp name beside the spool and rename(2) it in, as producers do.

    ``owner``: (uid, gid) to chown the file to first, e.g. the user a service runs as.
    """
    tmp_dir = incoming.parent / "tmp-producer"
    tmp_dir.mkdir(exist_ok=True)
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    tmp = os.path.join(os.fsencode(tmp_dir), raw)
    with open(tmp, "wb") as fh:
        fh.write(data)
    if owner is not None:
        os.chown(tmp, *owner)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    dest = os.path.join(os.fsencode(incoming), raw)
    os.rename(tmp, dest)
    return Path(os.fsdecode(dest))


def open_spool(root: Path, instance: str = "me", *, recursive: bool = False) -> Spool:
    """The spool below ``root`` (incoming/, working/, done/, failed/), prepared and opened as
    instance ``instance``, as the service opens one."""
    spool = Spool(SpoolDirs.below(root), instance, recursive=recursive)
    spool.prepare()
    spool.open()
    return spool


def names(path: Path) -> set[str]:
    return set(os.listdir(path)) if path.exists() else set()
