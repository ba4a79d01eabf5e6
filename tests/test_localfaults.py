"""Local faults: directories that come and go, full, read-only and unwritable filesystems.

Real directories and real filesystems: tmpfs mounts of a few MiB (root only: skipped with the
reason otherwise; CI runs as root). In every case nothing is lost, no traceback is printed,
the other spools go on, and the spool resumes within 2 s of the fault clearing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proc import SpoolProc, as_user, cli
from s3servers import S3Target
from svc import drop, names, running, settings_for, wait_until

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="mounting a tmpfs needs root")
RECOVERY_S = 2.0  # the bound from the fault clearing to delivery


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "2m", inodes: int | None = None) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def lay_out(spool: Path) -> None:
    """A spool's directories, made before s3spool starts (on a filesystem about to be full)."""
    for sub in ("incoming", "working", "done", "failed"):
        (spool / sub).mkdir(parents=True)


def fill(fs: Path) -> None:
    """Use every free byte of the filesystem under ``fs``."""
    with open(fs / "filler", "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    with contextlib.suppress(OSError), open(fs / "filler2", "wb") as fh:  # the last page
        while True:
            fh.write(b"\0")
            fh.flush()


def fault_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "s3spool.spoolguard"]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# --- directories that come and go -----------------------------------------------------------


async def test_incoming_deleted_and_recreated_is_watched_again(
    moto_s3: S3Target, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3spool")
    # no periodic rescan within the test: only a watch can find the last file
    async with running(settings_for(spool, moto_s3, rescan_interval=600)) as svc:
        drop(spool / "incoming", "before", b"1")
        await wait_until(lambda: names(spool / "done") == {"before"}, 10)
        subprocess.run(["rm", "-rf", str(spool / "incoming")], check=True)
        # the operator's `rm -rf incoming && mkdir incoming`
        (spool / "incoming").mkdir(exist_ok=True)
        cleared = time.monotonic()
        await wait_until(lambda: not any(g.fault for g in svc.guards.values()), 5, "resumed")
        drop(spool / "incoming", "after", b"2")
        await wait_until(lambda: names(spool / "done") == {"before", "after"}, RECOVERY_S)
        assert time.monotonic() - cleared < RECOVERY_S + 0.5
    assert moto_s3.get("after") == b"2"
    lines = fault_lines(caplog)
    assert len(lines) == 2, lines  # one line each way
    assert "was deleted or unmounted (ENOENT)" in lines[0]
    assert "works again" in lines[1]
    no_tracebacks(caplog)


async def test_spool_root_deleted_and_recreated_while_another_spool_goes_on(
    moto_s3: S3Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3spool")
    gone, other = tmp_path / "gone", tmp_path / "other"
    gone.mkdir()
    other.mkdir()
    settings = settings_for([gone, other], moto_s3, key_format="{spool_dir}/{fname}")
    async with running(settings) as svc:
        subprocess.run(["rm", "-rf", str(gone)], check=True)
        await wait_until(lambda: svc.guards[svc.spools[0]].fault is not None, 3, "noticed")
        fault = svc.guards[svc.spools[0]].fault
        assert fault is not None
        assert fault.reason == "ENOENT"
        up = {"spool": str(gone)}
        assert svc.metrics.registry.get_sample_value("s3spool_spool_up", up) == 0
        from s3spool.web import readiness

        assert any(str(gone) in p for p in readiness(svc, {})), readiness(svc, {})
        # the other spool is not affected
        drop(other / "incoming", "meanwhile", b"other spool")
        await wait_until(lambda: names(other / "done") == {"meanwhile"}, 5)
        await_log = time.monotonic()
        gone.mkdir()  # its owner brings the root back: s3spool lays the spool out again
        await wait_until(lambda: (gone / "incoming").is_dir(), RECOVERY_S, "layout recreated")
        drop(gone / "incoming", "back", b"root is back")
        await wait_until(lambda: names(gone / "done") == {"back"}, RECOVERY_S + 1)
        assert time.monotonic() - await_log < RECOVERY_S + 1.5
        assert svc.metrics.registry.get_sample_value("s3spool_spool_up", up) == 1
    no_tracebacks(caplog)


@needs_root
async def test_spool_filesystem_unmounted_and_mounted_again(
    moto_s3: S3Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3spool")
    spool = tmp_path / "spool"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(spool)], check=True)
    try:
        async with running(settings_for(spool, moto_s3, rescan_interval=600)) as svc:
            drop(spool / "incoming", "first", b"on the first mount")
            await wait_until(lambda: names(spool / "done") == {"first"}, 5)
            # lazily: this instance still holds its directory open on the old mount
            subprocess.run(["umount", "-l", str(spool)], check=True)
            guard = svc.guards[svc.spools[0]]
            await wait_until(lambda: guard.fault is not None, 3, "the unmount is noticed")
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(spool)], check=True
            )
            cleared = time.monotonic()
            await wait_until(lambda: guard.fault is None, RECOVERY_S, "laid out again")
            drop(spool / "incoming", "second", b"on the new mount")
            await wait_until(lambda: names(spool / "done") == {"second"}, RECOVERY_S)
            assert time.monotonic() - cleared < RECOVERY_S + 1
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)
    assert moto_s3.get("second") == b"on the new mount"
    no_tracebacks(caplog)


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# --- full, read-only and unwritable filesystems ----------------------------------------------


@needs_root
def test_full_filesystem_at_startup_still_drains(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "fs"
    with tmpfs(root, size="1m"):
        spool = root / "spool"
        lay_out(spool)
        files = {f"f{i}": os.urandom(3000) for i in range(20)}
        for name, data in files.items():
            (spool / "incoming" / name).write_bytes(data)
        fill(root)
        with pytest.raises(OSError, match="No space"):
            (root / "probe").write_bytes(b"x" * 4096)
        env = {
            **moto_s3.env(),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_REMOVE_ON_SUCCESS": "true",  # uploads free the space
        }
        r = cli(["run", "--once"], env)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert names(spool / "incoming") == set()
        for name, data in files.items():
            assert moto_s3.get(name) == data


@needs_root
async def test_no_free_inode_for_the_instance_directory_then_one(
    moto_s3: S3Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3spool")
    other = tmp_path / "other"
    other.mkdir()
    with tmpfs(tmp_path / "fs", inodes=64) as fs:
        spool = fs / "spool"
        lay_out(spool)
        (spool / "incoming" / "waiting").write_bytes(b"since before the start")
        fillers = []
        with contextlib.suppress(OSError):
            for i in range(1000):
                (fs / f"inode-{i}").touch()
                fillers.append(fs / f"inode-{i}")
        async with running(
            settings_for([spool, other], moto_s3, key_format="{spool_dir}/{fname}")
        ) as svc:
            guard = svc.guards[svc.spools[0]]
            assert guard.fault is not None, "mkdir of working/<instance> needs an inode"
            assert guard.fault.reason == "ENOSPC"
            drop(other / "incoming", "elsewhere", b"the other spool starts")
            await wait_until(lambda: names(other / "done") == {"elsewhere"}, 5)
            await asyncio_sleep(1.0)
            assert names(spool / "incoming") == {"waiting"}
            for f in fillers[:8]:
                f.unlink()
            await wait_until(lambda: names(spool / "done") == {"waiting"}, RECOVERY_S + 1)
    lines = fault_lines(caplog)
    assert len(lines) == 2, lines
    assert "No space left on device (ENOSPC)" in lines[0]
    no_tracebacks(caplog)


@needs_root
def test_key_records_on_a_full_disk_exit_75_with_a_summary(
    moto_s3: S3Target, tmp_path: Path
) -> None:
    full, fine = tmp_path / "fs", tmp_path / "fine"
    with tmpfs(full, size="1m"):
        spool = full / "spool"
        lay_out(spool)
        waiting = {f"w{i}": b"needs a key record" for i in range(5)}
        for name, data in waiting.items():
            (spool / "incoming" / name).write_bytes(data)
        (fine / "incoming").mkdir(parents=True)
        (fine / "incoming" / "ok").write_bytes(b"other spool")
        fill(full)
        env = {
            **moto_s3.env(),
            "S3SPOOL_SPOOL_DIRS": f"{spool},{fine}",
            "S3SPOOL_KEY_FORMAT": "{uuid4}-{fname}",  # a key that must be written down
        }
        r = cli(["run", "--once"], env)
        left = names(spool / "incoming")
    assert r.returncode == 75, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert left == set(waiting), "every file is back in incoming/: nothing lost"
    summary = [ln for ln in r.stderr.splitlines() if "run --once:" in ln]
    assert len(summary) == 1, r.stderr
    assert re.search(
        r"1 delivered \(11 B\), 0 failed, 5 deferred, 5 left waiting in [\d.]+s; "
        r"deferred: 5 \(ENOSPC in \S+/keys\)",
        summary[0],
    )
    assert names(fine / "done") == {"ok"}


@needs_root
async def test_read_only_remount_and_back(
    moto_s3: S3Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3spool")
    with tmpfs(tmp_path / "fs") as fs:
        spool = fs / "spool"
        spool.mkdir()
        async with running(settings_for(spool, moto_s3, hold_for=1.0)) as svc:
            for i in range(3):
                drop(spool / "incoming", f"held-{i}", b"x")
            subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
            try:
                guard = svc.guards[svc.spools[0]]
                await wait_until(lambda: guard.fault is not None, 5, "the claim fails: EROFS")
                assert guard.fault is not None
                assert guard.fault.reason == "EROFS"
                await asyncio_sleep(1.0)  # probes go on, quietly
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
            await wait_until(
                lambda: names(spool / "done") == {"held-0", "held-1", "held-2"}, RECOVERY_S
            )
    lines = fault_lines(caplog)
    assert len(lines) == 2, lines
    assert "Read-only file system (EROFS)" in lines[0]
    no_tracebacks(caplog)


def _as_nobody(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.chown(p, 65534, 65534)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="s3spool-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_permissions_removed_and_restored(moto_s3: S3Target, public_dir: Path) -> None:
    tmp_path = public_dir
    spool = tmp_path / "spool"
    lay_out(spool)
    _as_nobody(spool)
    env = {**moto_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool), "S3SPOOL_FAIL_RATE": "0"}
    wrapper = as_user()
    incoming = spool / "incoming"
    with SpoolProc(["run"], env, cwd=tmp_path, wrapper=wrapper) as proc:
        proc.wait_for_log("watching 1 spool", 15)
        incoming.chmod(0o555)  # claims cannot take files out of incoming/
        drop(incoming, "locked-in", b"wait for me")
        proc.wait_for_log(
            r"cannot claim 'locked-in' in \S+/incoming: Permission denied "
            r"\(EACCES\); this spool takes no new files",
            10,
        )
        time.sleep(1.5)
        assert names(spool / "done") == set()
        incoming.chmod(0o755)
        proc.wait_until(lambda: names(spool / "done") == {"locked-in"}, RECOVERY_S + 0.5)
        proc.wait_for_log(r"/incoming works again after", 5)
        # failed/: a file that cannot be read fails, and failed/ will not take it
        failed = spool / "failed"
        failed.chmod(0o555)
        mark = proc.mark()
        producer = tmp_path / "producer"
        producer.mkdir()
        (producer / "unreadable").write_bytes(b"root only")
        (producer / "unreadable").chmod(0o600)  # before it arrives: s3spool is quick
        os.rename(producer / "unreadable", incoming / "unreadable")
        proc.wait_for_log(r"cannot move 'unreadable' in \S+/failed: Permission denied", 10, mark)
        assert "unreadable" in names(
            spool / "working" / next(iter(names(spool / "working"))) / "files"
        )
        failed.chmod(0o755)
        proc.wait_until(lambda: "unreadable" in names(failed), RECOVERY_S + 0.5)
        proc.signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    log_text = proc.log_text()
    assert "Traceback" not in log_text, log_text
    assert log_text.count("Permission denied (EACCES)") == 2, log_text  # one per fault
    assert moto_s3.get("locked-in") == b"wait for me"


# --- inotify queue overflow ------------------------------------------------------------------


@pytest.mark.slow
def test_inotify_overflow_rescans_and_delivers_everything(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_DESTINATION": "noop://",
        "S3SPOOL_HTTP_ADDR": "",
        "S3SPOOL_RESCAN_INTERVAL": "600",  # only the overflow can ask for a rescan
        "S3SPOOL_QUEUE_SIZE": "100000",  # never full: a full queue asks for a rescan too
        "S3SPOOL_LOG_LEVEL": "WARNING",
    }
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    count = limit + 4000
    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        proc.wait_until(lambda: (spool / "incoming").is_dir(), 15)
        time.sleep(1.0)  # watches set up
        staging = tmp_path / "staging"
        staging.mkdir()
        os.kill(proc.pid, signal.SIGSTOP)  # the reader cannot drain the kernel's queue
        try:
            for i in range(count):
                p = staging / f"f{i:06d}"
                p.write_bytes(b"x")
                os.rename(p, spool / "incoming" / p.name)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        proc.wait_for_log("inotify queue overflowed; rescanning", 20)
        proc.wait_until(lambda: not any((spool / "incoming").iterdir()), 120)
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert list((spool / "incoming").iterdir()) == []
    assert len(list((spool / "done").iterdir())) == count
    assert not any((spool / "failed").iterdir())


# --- restarts ---------------------------------------------------------------------------------


def test_resubmit_backoff_survives_a_restart(moto_s3: S3Target, tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    env = {
        **moto_s3.env(),
        "S3SPOOL_INCOMING_DIR": str(incoming),
        "S3SPOOL_WORKING_DIR": str(tmp_path / "work"),
        "S3SPOOL_DONE_DIR": str(tmp_path / "done"),
        "S3SPOOL_FAILED_DIR": str(incoming),  # resubmit mode
        "S3SPOOL_FAIL_RATE": "1",  # a poison file: every attempt fails
        "S3SPOOL_RETRY_BACKOFF": "6s",
        "S3SPOOL_RETRY_BACKOFF_MAX": "6s",  # each wait is 3-6 s
    }
    attempt = r"name=poison .*outcome=failed .*then=resubmitted"
    with SpoolProc(["run"], env, cwd=tmp_path) as first:
        first.wait_for_log("watching 1 spool", 15)
        drop(incoming, "poison", b"never goes up")
        first.wait_for_log(attempt, 10)
        first.signal(signal.SIGTERM)
        assert first.wait(20) == 0
    record = json.loads((tmp_path / "work" / ".resubmit" / "poison").read_text())
    assert record["attempts"] == 1
    assert record["not_before"] > time.time(), "the backoff was still running at the stop"
    with SpoolProc(["run"], env, cwd=tmp_path) as second:
        second.wait_for_log("watching 1 spool", 15)
        started = time.monotonic()
        second.wait_for_log(attempt, 10)
        waited = time.monotonic() - started
        second.signal(signal.SIGTERM)
        assert second.wait(20) == 0
    # not retried at once after the restart: the recorded backoff (3-6 s from the first
    # attempt, of which the restart took about 1 s) still ran
    assert waited > 1.0, waited
    record = json.loads((tmp_path / "work" / ".resubmit" / "poison").read_text())
    assert record["attempts"] == 2
    assert (incoming / "poison").read_bytes() == b"never goes up"


# --- clock steps ------------------------------------------------------------------------------

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


@pytest.fixture
def stepped_clock(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment that runs s3spool on a wall clock the test can step (libfaketime).

    Only the process's wall clock moves: its monotonic clock and the kernel's file times do
    not, which is exactly what a stepped system clock looks like to the timers and to files
    written before the step.
    """
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime; .ci/run does)")
    offset = tmp_path / "clock-offset"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_CACHE_DURATION": "1",  # re-read the offset every second
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "NO_FAKE_STAT": "1",  # file times stay the kernel's
    }
    return env, offset


def test_clock_stepped_forward_releases_and_deletes_nothing_early(
    moto_s3: S3Target, tmp_path: Path, stepped_clock: tuple[dict[str, str], Path]
) -> None:
    faked, offset = stepped_clock
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {
        **moto_s3.env(),
        **faked,
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_DELETE_AFTER": "60s",
        "S3SPOOL_CLEANUP_INTERVAL": "0.3s",
        "S3SPOOL_HOLD_FOR": "3s",
    }
    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        proc.wait_for_log("watching 1 spool", 15)
        drop(spool / "incoming", "delivered", b"old enough")
        proc.wait_until(lambda: names(spool / "done") == {"delivered"}, 10)
        drop(spool / "incoming", "fresh", b"written just now")
        written = time.monotonic()
        offset.write_text("+3600\n")  # an hour forward
        time.sleep(2.0)
        # HOLD_FOR=3s still holds the fresh file, and DELETE_AFTER=60s keeps the other
        assert names(spool / "done") == {"delivered"}, proc.log_tail()
        proc.wait_until(lambda: "fresh" in names(spool / "done"), written + 6 - time.monotonic())
        assert time.monotonic() - written >= 2.9
        time.sleep(1.0)  # three more cleanups
        assert names(spool / "done") == {"delivered", "fresh"}
        proc.signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_clock_stepped_back_delays_nothing_for_long(
    moto_s3: S3Target, tmp_path: Path, stepped_clock: tuple[dict[str, str], Path]
) -> None:
    faked, offset = stepped_clock
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {**moto_s3.env(), **faked, "S3SPOOL_SPOOL_DIRS": str(spool), "S3SPOOL_HOLD_FOR": "2s"}
    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        proc.wait_for_log("watching 1 spool", 15)
        offset.write_text("-3600\n")  # an hour back: new files look an hour in the future
        time.sleep(1.2)
        drop(spool / "incoming", "from-the-future", b"held 2 s, not an hour")
        written = time.monotonic()
        proc.wait_until(lambda: "from-the-future" in names(spool / "done"), 5)
        assert time.monotonic() - written >= 1.9
        proc.signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_a_host_clock_far_off_the_stores_is_named_and_signed_around(
    rclone_s3: S3Target, tmp_path: Path, stepped_clock: tuple[dict[str, str], Path]
) -> None:
    """rclone checks request times as S3 does: 30 min ahead, it refuses a PUT with
    RequestTimeTooSkewed and a HeadBucket with a bare 403.  s3spool reads the store's time
    from the answer's Date header, says so once, and signs with that time; when the host's
    clock is set right again, it follows."""
    faked, offset = stepped_clock
    offset.write_text("+1800\n")
    spool = tmp_path / "spool"
    env = {**rclone_s3.env("skew/"), **faked, "S3SPOOL_SPOOL_DIRS": str(spool)}
    ahead = "this host's clock is 30 min ahead of the store's"
    (spool / "incoming").mkdir(parents=True)
    drop(spool / "incoming", "once", b"sent by the store's time")
    once = cli(["run", "--once"], env)
    assert once.returncode == 0, once.stderr
    assert rclone_s3.get(f"{rclone_s3.prefix}skew/once") == b"sent by the store's time"
    warned = [line for line in once.stderr.splitlines() if " WARNING " in line]
    assert len(warned) == 1, once.stderr  # once, however many answers told it
    assert ahead in warned[0]

    check = cli(["check", "--read-only"], env)
    assert check.returncode == 0, check.stdout + check.stderr
    (store,) = [line for line in check.stdout.splitlines() if line.startswith("WARN store:")]
    assert ahead in store, check.stdout

    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        proc.wait_for_log(re.escape(ahead), 15)  # the start-up survey's HeadBucket
        offset.write_text("+0\n")  # NTP set the clock right: the offset must go
        for i in range(10):  # libfaketime takes the new offset within a second or two
            drop(spool / "incoming", f"after{i}", b"sent by the host's own time again")
            proc.wait_until(lambda i=i: f"after{i}" in names(spool / "done"), 15)
            if "agrees with the store's again" in proc.log_text():
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the correction was never undone\n{proc.log_tail()}")
        proc.signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert rclone_s3.get(f"{rclone_s3.prefix}skew/after{i}") == b"sent by the host's own time again"
