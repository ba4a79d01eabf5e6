"""Crash safety and many instances, with the real process and SIGKILL.

Keys contain {uuid4}: a file uploaded twice would show up as two objects, so
"exactly one object per file" really tests that the key survives a crash.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from proc import SpoolProc
from s3servers import S3Target

MIB = 1024 * 1024


def _make_files(incoming: Path, count: int, big: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    incoming.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for i in range(count):
        size = 6 * MIB + rng.randrange(MIB) if i < big else rng.randrange(0, 20000)
        files[f"f{i:05d}"] = rng.randbytes(size)
    tmp = incoming.parent / "producer-tmp"
    tmp.mkdir(exist_ok=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        os.rename(tmp / name, incoming / name)
    return files


def _check_exactly_once(spool: Path, target: S3Target, files: dict[str, bytes]) -> None:
    keys = target.keys()
    by_name: dict[str, list[str]] = {}
    for key in keys:
        by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    dupes = {n: k for n, k in by_name.items() if len(k) > 1}
    assert not dupes, f"{len(dupes)} files stored more than once, e.g. {list(dupes.items())[:3]}"
    missing, extra = sorted(set(files) - set(by_name)), sorted(set(by_name) - set(files))
    assert not missing, f"missing {missing[:5]}"
    assert not extra, f"extra {extra[:5]}"
    for name, data in files.items():
        got = target.get(by_name[name][0])
        assert hashlib.md5(got).digest() == hashlib.md5(data).digest(), name
    assert set(os.listdir(spool / "done")) == set(files)
    assert os.listdir(spool / "incoming") == []
    leftovers = [str(p.relative_to(spool)) for p in (spool / "working").rglob("*")]
    assert leftovers == [], f"left in working/: {leftovers[:10]}"


def _env(target: S3Target, spool: Path, **extra: str) -> dict[str, str]:
    return {
        **target.env(),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_KEY_FORMAT": "{uuid4}/{fname}",
        "S3SPOOL_MULTIPART_THRESHOLD": "5MiB",
        "S3SPOOL_PART_SIZE": "5MiB",
        "S3SPOOL_CLEANUP_INTERVAL": "1",
        "S3SPOOL_LOG_LEVEL": "WARNING",
        "S3SPOOL_WORKERS": "8",
        **extra,
    }


def _count(path: Path) -> int:
    return len(os.listdir(path)) if path.exists() else 0


def _wait_done(spool: Path, count: int, proc: SpoolProc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _count(spool / "done") < count:
        assert time.monotonic() < deadline, f"not drained in {timeout}s\n{proc.log_tail()}"
        assert proc.alive(), proc.log_tail()
        time.sleep(0.1)


@pytest.mark.slow
def test_kill9_at_random_moments(tmp_path: Path, rclone_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    files = _make_files(spool / "incoming", 1000, big=6, seed=7)
    rng = random.Random(11)
    # Latency spreads the drain over many rounds, so kills land mid-upload, mid-multipart
    # and mid-route, not only at startup.
    proxy = FaultProxy(rclone_s3.endpoint_url).start()
    proxy.latency_s = 0.05
    env = _env(rclone_s3.via(proxy.url), spool, S3SPOOL_WORKERS="4")
    kills = 0
    progress = []
    for round_ in range(24):
        with SpoolProc(["run"], env, cwd=tmp_path, log_path=tmp_path / f"run-{round_}.log") as p:
            time.sleep(rng.uniform(0.6, 1.6))  # startup is ~0.5 s; kill anywhere after it
            if not p.alive():
                pytest.fail(p.log_tail())
            p.kill()
            p.wait(10)
            kills += 1
            progress.append(_count(spool / "done"))
    assert kills >= 20
    # most kills happened while work was left (not after the drain had finished)
    assert sum(1 for n in progress if n < len(files)) >= 15, progress
    env["S3SPOOL_LOG_LEVEL"] = "INFO"
    with SpoolProc(["run"], env, cwd=tmp_path, log_path=tmp_path / "final.log") as p:
        p.wait_for_log("watching 1 spool", 20)
        _wait_done(spool, len(files), p, 180)
        p.signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.log_tail()
    proxy.stop()
    _check_exactly_once(spool, rclone_s3, files)


@pytest.mark.slow
def test_three_instances_one_killed(tmp_path: Path, moto_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    files = _make_files(spool / "incoming", 2000, big=0, seed=3)
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.latency_s = 0.005  # keep all three busy long enough to kill one mid-run
        env = _env(moto_s3.via(proxy.url), spool)
        procs = [
            SpoolProc(["run"], env, cwd=tmp_path, log_path=tmp_path / f"i{i}.log") for i in range(3)
        ]
        try:
            deadline = time.monotonic() + 60
            while _count(spool / "done") < 600:
                assert time.monotonic() < deadline, procs[0].log_tail()
                time.sleep(0.05)
            procs[1].kill()
            procs[1].wait(10)
            _wait_done(spool, len(files), procs[0], 180)
            for p in (procs[0], procs[2]):
                p.signal(signal.SIGTERM)
                assert p.wait(30) == 0, p.log_tail()
        finally:
            for p in procs:
                p.__exit__(None, None, None)
        counts = proxy.snapshot()["counts"]
    # exactly one PutObject per file reached the store, across all instances
    assert counts["put_object"] == len(files), counts
    _check_exactly_once(spool, moto_s3, files)
    logs = "".join((tmp_path / f"i{i}.log").read_text() for i in (0, 2))
    assert re.search(r"recovered \d+ claims of dead instance", logs)
