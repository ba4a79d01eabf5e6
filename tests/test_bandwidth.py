"""BANDWIDTH_LIMIT and ROUTE_BANDWIDTH_LIMIT on a real server: the limit holds for single PUTs
(in memory and streamed) and multipart parts, through either sender; schedules move it on
the clock; SIGHUP changes it in a running process without disturbing its uploads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from faultproxy import FaultProxy
from proc import SpoolProc
from s3servers import S3Target, free_port
from s3spool.store.bandwidth import Bandwidth
from svc import drop, names, running, settings_for, wait_until

KIB, MIB = 1024, 1024 * 1024
GAUGE = "s3spool_bandwidth_limit_bytes"


# 16 MiB: bodies in memory (<= 1 MiB), streamed single PUTs, and a multipart file
FILES = {
    **{f"small-{i}.bin": 512 * KIB for i in range(4)},
    **{f"mid-{i}.bin": 2 * MIB for i in range(4)},
    "big.bin": 6 * MIB,  # parts of 5 MiB and 1 MiB
}


@pytest.mark.parametrize(
    ("direct_put", "limits"),
    [
        (True, {"bandwidth_limit": "4MiB"}),
        (False, {"bandwidth_limit": "4MiB"}),  # botocore's pipeline, bodies in memory
        (True, {"route_bandwidth_limit": "4MiB", "bandwidth_limit": "32MiB"}),
    ],
    ids=["signed", "botocore", "route"],
)
async def test_the_limit_holds_for_puts_and_parts(
    rclone_s3: S3Target, spool: Path, direct_put: bool, limits: dict[str, str]
) -> None:
    settings = settings_for(
        spool,
        rclone_s3,
        direct_put=direct_put,
        multipart_threshold="5MiB",
        part_size="5MiB",
        **limits,
    )
    total = sum(FILES.values())
    async with running(settings) as svc:
        handle = svc.bandwidth.handles["default"]
        assert handle is not None
        assert handle.active is not None
        start = time.monotonic()
        for name, size in FILES.items():
            drop(spool / "incoming", name, os.urandom(size))
        await wait_until(lambda: len(names(spool / "done")) == len(FILES), 30, "all delivered")
        took = time.monotonic() - start
        assert svc.counts.failed == 0
    assert sorted(rclone_s3.keys()) == sorted(FILES)
    assert rclone_s3.head("big.bin")["ContentLength"] == 6 * MIB
    # 16 MiB at 4 MiB/s, less the first piece (512 KiB) the bucket holds when it starts
    expected = (total - 512 * KIB) / (4 * MIB)
    assert 0.85 * expected <= took <= 1.4 * expected, f"{took:.2f}s, expected ~{expected:.2f}s"


@pytest.mark.parametrize("direct_put", [True, False], ids=["signed", "botocore"])
async def test_retried_bodies_are_paced_and_whole(
    rclone_s3: S3Target, spool: Path, direct_put: bool
) -> None:
    """A failed attempt is sent again, paced again: botocore retries a body inside one call
    (after rewinding it), the pipeline retries a file, multipart a part."""
    files = {f"f{i}.bin": os.urandom(MIB + i) for i in range(6)}
    files["big.bin"] = os.urandom(6 * MIB)
    with FaultProxy(rclone_s3.endpoint_url, seed=7) as proxy:
        proxy.error500 = 0.3
        proxy.fault_kinds = frozenset({"put_object", "upload_part"})
        settings = settings_for(
            spool,
            rclone_s3.via(proxy.url),
            direct_put=direct_put,
            bandwidth_limit="8MiB",
            multipart_threshold="5MiB",
            part_size="5MiB",
        )
        async with running(settings) as svc:
            start = time.monotonic()
            for name, data in files.items():
                drop(spool / "incoming", name, data)
            await wait_until(lambda: len(names(spool / "done")) == len(files), 60, "delivered")
            took = time.monotonic() - start
            assert svc.counts.failed == 0
        with proxy._lock:
            sent = sum(proxy.bytes_in.values())
        assert proxy.snapshot()["injected"].get("error500", 0) > 0
    for name, data in files.items():
        assert rclone_s3.get(name) == data
    # every byte sent, retries included, went through the limit (less the first piece)
    assert took >= 0.85 * (sent - MIB) / (8 * MIB), (took, sent)


async def test_no_limit_puts_nothing_on_the_path(rclone_s3: S3Target, spool: Path) -> None:
    settings = settings_for(spool, rclone_s3)
    async with running(settings) as svc:
        handle = svc.bandwidth.handles["default"]
        assert handle is not None  # there to take a limit that SIGHUP may bring ...
        assert handle.active is None  # ... and nothing to pace with until then
        start = time.monotonic()
        for name, size in FILES.items():
            drop(spool / "incoming", name, os.urandom(size))
        await wait_until(lambda: len(names(spool / "done")) == len(FILES), 30, "all delivered")
        assert time.monotonic() - start < 2.0  # 16 MiB to a local server
    assert not hasattr(settings, "bandwidth")  # run time state stays off the settings


async def test_a_schedule_moves_the_limit_at_its_boundary() -> None:
    now = [datetime(2026, 11, 30, 7, 59, 59, 500_000)]
    bw = Bandwidth("08:00-18:00=8MiB,18:00-08:00=2MiB", {"default": None}, now=lambda: now[0])
    task = asyncio.create_task(bw.run())
    try:
        assert bw.shared.bucket.rate == 2 * MIB
        now[0] = datetime(2026, 11, 30, 8, 0, 0, 100_000)  # the wall clock passes 08:00
        start = time.monotonic()
        await wait_until(lambda: bw.shared.bucket.rate == 8 * MIB, 3, "the day rate")
        assert time.monotonic() - start <= 1.1  # re-read at least once a second
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _gauge(base: str, **labels: str) -> float | None:
    """The bandwidth gauge with ``labels`` on the process's /metrics (None: no answer)."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == GAUGE and sample.labels == labels:
                return float(sample.value)
    return None


def _wait(pred: Any, timeout: float, what: str, proc: SpoolProc) -> float:
    """Seconds until ``pred()`` held (fails after ``timeout``)."""
    start = time.monotonic()
    proc.wait_until(pred, timeout, what)
    return time.monotonic() - start


def test_sighup_changes_the_limit_of_a_running_process(rclone_s3: S3Target, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    count, size = 48, 512 * KIB  # 24 MiB
    (spool / "incoming").mkdir(parents=True)
    for i in range(count):
        drop(spool / "incoming", f"f{i:02d}.bin", os.urandom(size))
    config = tmp_path / "s3spool.toml"
    config.write_text('bandwidth_limit = "1MiB"\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **rclone_s3.env(),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_CONFIG": str(config),
        "S3SPOOL_HTTP_ADDR": f"127.0.0.1:{port}",
        "S3SPOOL_INSTANCE_ID": "hup",
    }
    done = spool / "done"
    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        _wait(lambda: _gauge(base, scope="global", route="") == MIB, 30, "1 MiB/s", proc)
        proc.wait_until(lambda: len(names(done)) >= 2, 30, "the first files")
        before, t0 = len(names(done)), time.monotonic()
        time.sleep(3.0)
        slow = (len(names(done)) - before) * size / (time.monotonic() - t0)
        assert slow <= 1.5 * MIB, f"{slow / MIB:.2f} MiB/s at a limit of 1 MiB/s"

        config.write_text('bandwidth_limit = "8MiB"\n')
        mark = proc.mark()
        proc.signal(signal.SIGHUP)
        took = _wait(lambda: _gauge(base, scope="global", route="") == 8 * MIB, 5, "8MiB", proc)
        assert took <= 2.0
        before, t0 = len(names(done)), time.monotonic()
        time.sleep(1.5)
        fast = (len(names(done)) - before) * size / (time.monotonic() - t0)
        assert fast >= 4 * MIB, f"{fast / MIB:.2f} MiB/s after SIGHUP raised the limit to 8"
        proc.wait_for_log(r"BANDWIDTH_LIMIT 1MiB -> 8MiB", since=mark)
        proc.wait_until(lambda: len(names(done)) == count, 30, "all delivered")

        # a file that does not load changes nothing, and the process carries on
        config.write_text('bandwidth_limit = "fast"\n')
        mark = proc.mark()
        proc.signal(signal.SIGHUP)
        proc.wait_for_log(r"key bandwidth_limit .*'fast' is not a rate", since=mark)
        proc.wait_for_log(r"the running configuration stays", since=mark)
        assert _gauge(base, scope="global", route="") == 8 * MIB

        # what only a restart applies is named, and keeps its value
        config.write_text('bandwidth_limit = "off"\nworkers = 8\nhold_for = "1s"\n')
        mark = proc.mark()
        proc.signal(signal.SIGHUP)
        proc.wait_for_log(r"need a restart to apply: workers; hold_for", since=mark)
        _wait(lambda: _gauge(base, scope="global", route="") == 0, 5, "off", proc)

        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    log = proc.log_text()
    assert "Traceback" not in log
    assert "outcome=failed" not in log
    assert len(rclone_s3.keys()) == count
    assert names(spool / "failed") == set()
