"""Delivery guarantees under faults: a proxy that misbehaves, a store that goes away,
corrupted bodies, conditional writes, multipart leftovers, recovered claims, inotify limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from proc import SpoolProc, as_user
from s3servers import RcloneServer, S3Target
from svc import drop, names, running, settings_for, use_credentials, wait_until

MIB = 1024 * 1024


async def test_faulty_proxy_all_delivered_and_concurrency_drops(
    spool: Path, s3: S3Target, caplog: pytest.LogCaptureFixture
) -> None:
    files = {f"p{i:03d}": os.urandom(2000 + i) for i in range(200)}
    with FaultProxy(s3.endpoint_url, seed=5) as proxy:
        proxy.slowdown, proxy.error500, proxy.reset = 0.10, 0.06, 0.05
        proxy.latency_s = 0.005
        settings = settings_for(spool, s3.via(proxy.url), workers=16, retry_attempts=10)
        lowest = 16
        async with running(settings) as svc:
            for name, data in files.items():
                drop(spool / "incoming", name, data)
            deadline = time.monotonic() + 90
            while len(names(spool / "done")) < len(files):
                assert time.monotonic() < deadline, "not delivered under faults"
                lowest = min(lowest, svc.routes[0].throttle.limit)
                await asyncio.sleep(0.01)
        injected = proxy.snapshot()["injected"]
    total = sum(proxy.counts.values()) + sum(injected.values())
    assert sum(injected.values()) >= 0.2 * total * 0.7, (injected, total)  # ~21 % asked
    for fault in ("slowdown", "error500", "reset"):
        assert injected[fault], (fault, injected)
    assert names(spool / "failed") == set()
    assert lowest < 16, "uploads in flight never lowered under SlowDown"
    assert any("throttling (SlowDown)" in r.getMessage() for r in caplog.records)
    for name, data in files.items():
        assert s3.get(name) == data


async def test_store_down_for_ten_seconds(
    spool: Path, rclone_private: RcloneServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = rclone_private.new_target()
    use_credentials(monkeypatch, target)
    settings = settings_for(spool, target, connect_timeout=1, read_timeout=5, retry_attempts=3)
    async with running(settings) as svc:
        for i in range(20):
            drop(spool / "incoming", f"before-{i}", b"b%d" % i)
        await wait_until(lambda: len(names(spool / "done")) == 20)
        rclone_private.stop()
        for i in range(30):
            drop(spool / "incoming", f"during-{i}", b"d%d" % i)
            await asyncio.sleep(0.1)
        await wait_until(lambda: not svc.routes[0].gate.is_set(), 10, "intake paused")
        await asyncio.sleep(7)  # down for ~10 s in all
        assert names(spool / "failed") == set()
        rclone_private.start()
        await wait_until(lambda: len(names(spool / "done")) == 50, 60, "all delivered")
    assert names(spool / "failed") == set()
    assert len(target.keys()) == 50
    assert target.get("during-29") == b"d29"


async def test_missing_bucket_pauses_then_resumes(spool: Path, moto_s3: S3Target) -> None:
    target = S3Target(
        moto_s3.endpoint_url,
        moto_s3.bucket + "-later",
        moto_s3.access_key,
        moto_s3.secret_key,
        moto_s3.region,
        moto_s3.kind,
    )
    async with running(settings_for(spool, target)) as svc:
        drop(spool / "incoming", "waits", b"patience")
        await wait_until(lambda: not svc.routes[0].gate.is_set(), 10, "paused on NoSuchBucket")
        await asyncio.sleep(1)
        assert names(spool / "failed") == set()
        assert "waits" in names(spool / "incoming") | {
            p.name for p in (spool / "working").rglob("waits")
        }
        target.client().create_bucket(Bucket=target.bucket)
        await wait_until(lambda: names(spool / "done") == {"waits"}, 30)
    assert target.get("waits") == b"patience"


@pytest.mark.parametrize("size", [1000, 7 * MIB], ids=["put", "multipart"])
async def test_corrupted_body_is_caught_and_resent(spool: Path, s3: S3Target, size: int) -> None:
    data = os.urandom(size)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.corrupt_next(1)
        settings = settings_for(
            spool, s3.via(proxy.url), multipart_threshold=5 * MIB, part_size=5 * MIB
        )
        async with running(settings):
            drop(spool / "incoming", "precious", data)
            await wait_until(lambda: names(spool / "done") == {"precious"}, 30)
        snap = proxy.snapshot()
    assert snap["injected"]["corrupt"] == 1
    kind = "put_object" if size < 5 * MIB else "upload_part"
    assert snap["counts"][kind] >= (2 if kind == "put_object" else 3)  # the corrupted one resent
    assert hashlib.sha256(s3.get("precious")).digest() == hashlib.sha256(data).digest()


async def test_overwrite_never(spool: Path, moto_s3: S3Target) -> None:
    moto_s3.put("same", b"identical")
    moto_s3.put("other", b"original")
    async with running(settings_for(spool, moto_s3, overwrite="never")) as svc:
        drop(spool / "incoming", "same", b"identical")
        drop(spool / "incoming", "other", b"different")
        await wait_until(lambda: svc.counts.delivered + svc.counts.failed == 2)
    assert names(spool / "done") == {"same"}
    assert moto_s3.get("other") == b"original"  # never replaced
    reason = json.loads((spool / "failed" / "other.reason.json").read_text())
    assert reason["reason"] == "exists"


async def test_failed_multipart_is_aborted(spool: Path, moto_s3: S3Target) -> None:
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.error500 = 1.0
        proxy.fault_kinds = frozenset({"upload_part"})
        settings = settings_for(
            spool,
            moto_s3.via(proxy.url),
            multipart_threshold=5 * MIB,
            part_size=5 * MIB,
            retry_attempts=2,
        )
        async with running(settings) as svc:
            drop(spool / "incoming", "big", os.urandom(6 * MIB))
            await wait_until(lambda: svc.counts.failed == 1, 60)
        counts = proxy.snapshot()["counts"]
    assert counts["abort_mpu"] >= 1
    uploads = moto_s3.client().list_multipart_uploads(Bucket=moto_s3.bucket).get("Uploads", [])
    assert uploads == []
    assert (spool / "failed" / "big").stat().st_size == 6 * MIB


async def test_stale_multipart_uploads_are_swept(spool: Path, moto_s3: S3Target) -> None:
    client = moto_s3.client()
    stale = client.create_multipart_upload(Bucket=moto_s3.bucket, Key="pfx/left-behind")
    outside = client.create_multipart_upload(Bucket=moto_s3.bucket, Key="elsewhere/keep")
    await asyncio.sleep(1.5)
    settings = settings_for(
        spool, moto_s3, destination=f"s3://{moto_s3.bucket}/pfx", abort_multipart_after=1
    )
    async with running(settings) as svc:
        await wait_until(lambda: svc.metrics.aborted._value.get() >= 1, 15)
    left = {
        u["UploadId"]
        for u in client.list_multipart_uploads(Bucket=moto_s3.bucket).get("Uploads", [])
    }
    assert stale["UploadId"] not in left
    assert outside["UploadId"] in left  # outside the destination prefix: not ours


async def test_recovered_claim_already_in_store_is_not_uploaded_again(
    spool: Path, s3: S3Target
) -> None:
    """A crash after PutObject but before the move to done/: the restart only settles it."""
    dead = spool / "working" / "dead-instance"
    (dead / "files").mkdir(parents=True)
    (dead / "keys").mkdir()
    data = os.urandom(5000)
    (dead / "files" / "half-done").write_bytes(data)
    (dead / "keys" / "half-done").write_text(json.dumps({"key": "u-1234/half-done"}))
    s3.put("u-1234/half-done", data)
    with FaultProxy(s3.endpoint_url) as proxy:
        settings = settings_for(spool, s3.via(proxy.url), key_format="{uuid4}/{fname}")
        async with running(settings):
            await wait_until(lambda: names(spool / "done") == {"half-done"}, 15)
        counts = proxy.snapshot()["counts"]
    assert counts.get("put_object", 0) == 0
    assert s3.keys() == ["u-1234/half-done"]
    assert not dead.exists()


async def test_recovered_claim_with_stale_object_is_uploaded_to_same_key(
    spool: Path, moto_s3: S3Target
) -> None:
    dead = spool / "working" / "dead-instance"
    (dead / "files").mkdir(parents=True)
    (dead / "keys").mkdir()
    (dead / "files" / "f").write_bytes(b"the real content")
    (dead / "keys" / "f").write_text(json.dumps({"key": "fixed/key"}))
    moto_s3.put("fixed/key", b"truncated")
    async with running(settings_for(spool, moto_s3, key_format="{uuid4}/{fname}")):
        await wait_until(lambda: names(spool / "done") == {"f"}, 15)
    assert moto_s3.keys() == ["fixed/key"]
    assert moto_s3.get("fixed/key") == b"the real content"


_HOG_INSTANCES = """
import ctypes, sys, time
libc = ctypes.CDLL(None)
fds = [libc.inotify_init() for _ in range(int(sys.argv[1]))]
print(sum(f >= 0 for f in fds), flush=True)
time.sleep(120)
"""

_HOG_WATCHES = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
base = sys.argv[2]
n = 0
for i in range(int(sys.argv[1]) + 10):
    path = os.path.join(base, str(i)).encode()
    open(path, "wb").close()
    if libc.inotify_add_watch(fd, path, 0x2) < 0:  # IN_MODIFY; fails with ENOSPC at the limit
        break
    n += 1
print(n, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(
    ("limit_file", "hog", "hint"),
    [
        ("max_user_instances", _HOG_INSTANCES, "max_user_instances"),
        ("max_user_watches", _HOG_WATCHES, "max_user_watches"),
    ],
    ids=["instances", "watches"],
)
def test_inotify_exhausted_falls_back_to_rescans(
    moto_s3: S3Target, limit_file: str, hog: str, hint: str
) -> None:
    """Another process of the same user holds every inotify instance (or watch) allowed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the service as a separate user with its own limits")
    limit = int(Path(f"/proc/sys/fs/inotify/{limit_file}").read_text())
    if limit > 300_000:
        pytest.skip(f"fs.inotify.{limit_file}={limit} is too large to exhaust in a test")
    base = Path(tempfile.mkdtemp(prefix="s3spool-inotify-"))
    base.chmod(0o755)
    spool, hog_dir = base / "spool", base / "hog"
    for sub in ("incoming", "working", "done", "failed"):
        (spool / sub).mkdir(parents=True)
    hog_dir.mkdir()
    subprocess.run(["chown", "-R", "65534:65534", str(spool), str(hog_dir)], check=True)
    user = as_user()
    hogger = subprocess.Popen(
        [*user, sys.executable, "-c", hog, str(limit), str(hog_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hogger.stdout is not None
        assert int(hogger.stdout.readline()) > 0
        env = {**moto_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool), "S3SPOOL_RESCAN_INTERVAL": "1"}
        with SpoolProc(["run"], env, cwd=base, log_path=base / "s3spool.log", wrapper=user) as proc:
            proc.wait_for_log(hint, 15)
            proc.wait_for_log(r"falling back to scanning every 1s", 5)
            (spool / "incoming" / "late").write_bytes(b"found by a rescan")
            deadline = time.monotonic() + 15
            while not (spool / "done" / "late").exists():
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.1)
            proc.signal()
            assert proc.wait(20) == 0
        assert moto_s3.get("late") == b"found by a rescan"
    finally:
        hogger.kill()
        hogger.wait()
        subprocess.run(["rm", "-rf", str(base)], check=False)
