"""/metrics, /healthz and /readyz of the real service process, through a store outage."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from faultproxy import FaultProxy
from proc import SpoolProc
from s3servers import RcloneServer, S3Target, free_port
from s3spool import __version__
from s3spool.config.load import load_settings
from s3spool.run.service import Service
from s3spool.web import make_app, refresh_spool_gauges
from svc import config_of, drop

T = TypeVar("T")
WAIT_S = 30.0


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        return 0, str(exc.reason)  # not listening (yet)


def wait_for(what: str, probe: Callable[[], T | None], proc: SpoolProc | None = None) -> T:
    """Poll until probe() returns something truthy; fail after WAIT_S with the last value."""
    deadline = time.monotonic() + WAIT_S
    last: T | None = None
    while time.monotonic() < deadline:
        if proc is not None:
            assert proc.alive(), f"service exited\n{proc.log_tail()}"
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    log = proc.log_tail() if proc else ""
    raise AssertionError(f"{what}: not within {WAIT_S}s (last: {last!r})\n{log}")


def metrics(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = get(f"{base}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def test_metrics_and_readiness_follow_files_and_store(
    rclone_private: RcloneServer, tmp_path: Path
) -> None:
    target = rclone_private.new_target()
    root = tmp_path / "spool"
    root.mkdir()
    incoming = root / "incoming"
    label = str(root)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **target.env("up/"),
        "S3SPOOL_SPOOL_DIRS": str(root),
        "S3SPOOL_HTTP_ADDR": f"127.0.0.1:{port}",
        "S3SPOOL_MAX_LAG": "10m",
        "S3SPOOL_CONNECT_TIMEOUT": "2s",
        "S3SPOOL_READ_TIMEOUT": "5s",
        "S3SPOOL_RETRY_BACKOFF": "0.1s",
        # the periodic cleanup also sets the spool gauges; keep it out of the way so
        # these assertions can only pass if /metrics refreshes them itself
        "S3SPOOL_CLEANUP_INTERVAL": "1h",
    }
    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        wait_for("/readyz 200", lambda: get(f"{base}/readyz")[0] == 200, proc)
        assert get(f"{base}/healthz") == (200, "ok\n")
        m = metrics(base)
        assert value(m, "s3spool_paused") == 0
        assert value(m, "s3spool_concurrency_limit") >= 1
        assert value(m, "s3spool_build_info", version=__version__) == 1
        assert value(m, "process_open_fds") > 0

        for i in range(5):
            drop(incoming, f"f{i}.txt", f"file {i}".encode())

        def all_uploaded() -> bool:
            m = metrics(base)
            return (
                value(m, "s3spool_files_total", spool=label, outcome="delivered") == 5
                and value(m, "s3spool_spool_files", spool=label, state="incoming") == 0
            )

        wait_for("5 uploads counted", all_uploaded, proc)
        m = metrics(base)
        assert value(m, "s3spool_bytes_total", spool=label, outcome="delivered") == 5 * len(
            b"file 0"
        )
        assert value(m, "s3spool_upload_duration_seconds_count", size_class="small") == 5
        assert not [name for name, _ in m if name.endswith("_created")], "no *_created series"
        assert sorted(target.keys("up/")) == [f"up/f{i}.txt" for i in range(5)]

        # --- the store goes away: the next upload attempt pauses intake ---
        rclone_private.stop()
        drop(incoming, "trigger.txt", b"during the outage")
        status, body = wait_for(
            "/readyz 503",
            lambda: (r := get(f"{base}/readyz"))[0] == 503 and r,
            proc,
        )
        assert "store unavailable" in body
        assert value(metrics(base), "s3spool_paused") == 1
        assert get(f"{base}/healthz")[0] == 200, "the loop still answers while paused"

        # the trigger waits claimed in working/; files arriving now wait in incoming/, one of
        # them two hours old
        drop(incoming, "late-1.txt", b"late 1")
        drop(incoming, "late-2.txt", b"late 2")
        drop(incoming, "old.txt", b"old", mtime=time.time() - 7200)

        def waiting() -> bool:
            m = metrics(base)
            return (
                value(m, "s3spool_spool_files", spool=label, state="incoming") == 3
                and value(m, "s3spool_spool_files", spool=label, state="working") == 1
                and value(m, "s3spool_spool_lag_seconds", spool=label) >= 7200
            )

        wait_for("3 files waiting with a 2h lag", waiting, proc)
        status, body = get(f"{base}/readyz")
        assert status == 503
        assert "exceeds S3SPOOL_MAX_LAG" in body

        # --- the store comes back: ready again, everything delivered ---
        rclone_private.start()
        wait_for("/readyz 200 again", lambda: get(f"{base}/readyz")[0] == 200, proc)

        def drained() -> bool:
            m = metrics(base)
            return (
                value(m, "s3spool_files_total", spool=label, outcome="delivered") == 9
                and value(m, "s3spool_spool_files", spool=label, state="incoming") == 0
                and value(m, "s3spool_spool_files", spool=label, state="working") == 0
                and value(m, "s3spool_spool_lag_seconds", spool=label) == 0
                and value(m, "s3spool_paused") == 0
            )

        wait_for("all 9 delivered", drained, proc)
        assert "up/trigger.txt" in target.keys("up/")
        assert target.get("up/old.txt") == b"old"
        proc.signal()
        assert proc.wait(30) == 0


def test_readyz_follows_a_store_that_stops_answering(rclone_s3: S3Target, tmp_path: Path) -> None:
    """A store that takes the connection and never answers (a blackhole, a hung gateway): the
    idle probe gives up after 4 s, not after botocore's retries of 60 s read timeouts, so
    /readyz is unready within PROBE_INTERVAL + 5 s."""
    interval = 1.0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (tmp_path / "spool").mkdir()  # a spool root must exist
    with FaultProxy(rclone_s3.endpoint_url) as proxy:
        env = {
            **rclone_s3.via(proxy.url).env(),
            "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool"),
            "S3SPOOL_HTTP_ADDR": f"127.0.0.1:{port}",
            "S3SPOOL_PROBE_INTERVAL": f"{interval}s",
        }
        with SpoolProc(["run"], env, cwd=tmp_path) as proc:
            wait_for("/readyz 200", lambda: get(f"{base}/readyz")[0] == 200, proc)
            proxy.latency_s = 600.0  # every request hangs
            gone = time.monotonic()
            wait_for("/readyz 503", lambda: get(f"{base}/readyz")[0] == 503, proc)
            assert time.monotonic() - gone < interval + 5
            line = proc.wait_for_log(r"ERROR .*store unavailable: .*", 1).group(0)
            assert "the endpoint is unreachable" in line
            assert "HeadBucket: no answer within 4s" in line
            assert line.endswith("; run `s3spool check`")
            proxy.latency_s = 0.0
            wait_for("/readyz 200 again", lambda: get(f"{base}/readyz")[0] == 200, proc)
            proc.signal()
            assert proc.wait(30) == 0


def test_busy_http_addr_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "spool").mkdir()
        env = {
            "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool"),
            "S3SPOOL_DESTINATION": "noop://",
            "S3SPOOL_HTTP_ADDR": f"127.0.0.1:{port}",
        }
        with SpoolProc(["run"], env, cwd=tmp_path) as proc:
            assert proc.wait(30) == 78, proc.log_tail()
            assert f"S3SPOOL_HTTP_ADDR (--http-addr): cannot listen on 127.0.0.1:{port}" in (
                proc.log_text()
            )
        # --once serves no HTTP, so the same busy address is no obstacle
        (tmp_path / "spool" / "incoming" / "x").write_bytes(b"x")
        with SpoolProc(["run", "--once"], env, cwd=tmp_path) as once:
            assert once.wait(30) == 0, once.log_tail()
        assert (tmp_path / "spool" / "done" / "x").exists()


async def test_spool_gauges_count_eligible_files_at_most_once_a_second(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    (root / "working" / "inst" / "files").mkdir(parents=True)
    claim = root / "working" / "inst" / "files" / "claimed"
    claim.write_bytes(b"c")
    (root / "failed").mkdir()
    (root / "failed" / "bad").write_bytes(b"b")
    (root / "failed" / "bad.reason.json").write_bytes(b"{}")
    now = time.time()
    for name, age in (("old", 500), (".ignored", 5000), ("held", 30)):
        (incoming / name).write_bytes(b"x")
        os.utime(incoming / name, (now - age, now - age))
    os.utime(claim, (now - 300, now - 300))  # a claim waits too (the store may be down)
    (incoming / "link").symlink_to("/etc/hostname")
    os.utime(incoming / "link", (now - 9000, now - 9000), follow_symlinks=False)
    settings = load_settings(
        spool_dirs=str(root), destination="noop://", hold_for="60s", http_addr=""
    )
    service = Service(config_of(settings))
    app = make_app(service)
    label = str(root)

    lags = await refresh_spool_gauges(app)
    # "held" is younger than HOLD_FOR, ".ignored" ignored, "link" not a regular file
    assert 499 <= lags[label] <= 520

    def files(state: str) -> float | None:
        return service.metrics.registry.get_sample_value(
            "s3spool_spool_files", {"spool": label, "state": state}
        )

    assert files("incoming") == 4
    assert files("working") == 1
    assert files("failed") == 1

    (incoming / "old").unlink()
    assert (await refresh_spool_gauges(app))[label] == lags[label], "within 1s: cached"
    await asyncio.sleep(1.1)
    assert 299 <= (await refresh_spool_gauges(app))[label] <= 320, "the claim is the oldest"
    assert files("incoming") == 3
