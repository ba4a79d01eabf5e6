"""The real `s3spool` process: settings errors, flags vs env, --once exit codes, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from proc import SpoolProc, as_user, clean_env
from s3servers import S3Target, free_port
from s3spool.config.catalog import env_name, flag_name
from s3spool.config.settings import Settings
from svc import drop, names

BASE_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "S3SPOOL_HTTP_ADDR": ""}


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    user: int | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "s3spool", *args]
    if user is not None:
        cmd = [*as_user(user), *cmd]
    return subprocess.run(
        cmd,
        env=clean_env({**BASE_ENV, **(env or {})}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def test_help_documents_every_setting_and_a_mistyped_flag_gets_a_suggestion() -> None:
    """`s3spool --help` names the commands; `run --help` every setting, once (the groups and
    widths: tests/unit/test_help.py).  A mistyped flag gets the flag it likely meant, in two
    lines, not the usage of every flag."""
    top = cli("--help").stdout
    assert all(f"\n    {c} " in top for c in ("run", "check", "status", "enqueue", "config"))
    assert top.count("\n  s3spool ") == 3, "three examples"
    out = cli("run", "--help", env={"COLUMNS": "80"}).stdout
    assert len(out.splitlines()) <= 220
    for field in Settings.model_fields:
        assert env_name(field) in out, field
        assert out.count(f"{flag_name(field)} ") + out.count(f"{flag_name(field)},") == 1, field
    typo = cli("run", "--once", "--remove-on-sucess")
    assert typo.returncode == 2, typo.stderr
    assert "did you mean --remove-on-success?" in typo.stderr
    assert typo.stderr.splitlines()[0] == "usage: s3spool run [options]"
    assert len(typo.stderr.splitlines()) <= 3, typo.stderr
    slip = cli("run", "--once", "--remove-on-success=true")
    assert slip.returncode == 2
    assert len(slip.stderr.splitlines()) <= 3, slip.stderr
    assert "ignored explicit argument 'true'" in slip.stderr


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"S3SPOOL_SPOOL_DIRS": "/tmp/x"}, "S3SPOOL_DESTINATION (--destination): required"),
        (
            {"S3SPOOL_SPOOL_DIRS": "/tmp/x", "S3SPOOL_DESTINATION": "ftp://b/p"},
            "S3SPOOL_DESTINATION (--destination): 'ftp://b/p' must start with s3:// or noop://",
        ),
        (
            {"S3SPOOL_SPOOL_DIRS": "/tmp/x", "S3SPOOL_DESTINATION": "s3://"},
            "has no valid bucket name",
        ),
        (
            {
                "S3SPOOL_SPOOL_DIRS": "/tmp/x",
                "S3SPOOL_DESTINATION": "noop://",
                "S3SPOOL_KEY_FORMAT": "{m_YYYY}/{colour}/{fname}",
            },
            "S3SPOOL_KEY_FORMAT (--key-format): unknown field {colour}",
        ),
        ({"S3SPOOL_DESTINATION": "noop://"}, "S3SPOOL_SPOOL_DIRS (--spool-dirs): required"),
        (
            {
                "S3SPOOL_SPOOL_DIRS": "/tmp/x",
                "S3SPOOL_DESTINATION": "noop://",
                "S3SPOOL_WORKERS": "many",
            },
            "S3SPOOL_WORKERS (--workers)",
        ),
        (
            {
                "S3SPOOL_SPOOL_DIRS": "/tmp/x",
                "S3SPOOL_DESTINATION": "noop://",
                "S3SPOOL_HOLD_FOR": "soon",
            },
            "S3SPOOL_HOLD_FOR (--hold-for): 'soon' is not a duration",
        ),
        (
            {
                "S3SPOOL_SPOOL_DIRS": "/tmp/x",
                "S3SPOOL_DESTINATION": "noop://",
                "S3SPOOL_PART_SIZE": "1MiB",
            },
            "S3SPOOL_PART_SIZE (--part-size): must be between 5MiB",
        ),
    ],
    ids=[
        "missing-destination",
        "bad-scheme",
        "no-bucket",
        "unknown-key-field",
        "no-spool",
        "bad-int",
        "bad-duration",
        "part-too-small",
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], needle: str) -> None:
    result = cli("run", "--once", env=env)
    assert result.returncode == 78, result.stderr
    assert needle in result.stderr


def test_flags_win_over_env(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    (spool / "incoming" / "a").write_bytes(b"1")
    env = {
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_DESTINATION": "s3://wrong-bucket/x",
        "S3SPOOL_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
    }
    result = cli("run", "--once", "--destination", "noop://", env=env)
    assert result.returncode == 0, result.stderr
    assert names(spool / "done") == {"a"}


def test_once_exit_codes(tmp_path: Path, moto_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    for i in range(5):
        (spool / "incoming" / f"f{i}").write_bytes(b"data %d" % i)
    ok = cli("run", "--once", env={**moto_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool)})
    assert ok.returncode == 0, ok.stderr
    assert len(names(spool / "done")) == 5
    assert sorted(moto_s3.keys()) == [f"f{i}" for i in range(5)]

    (spool / "incoming" / "bad").write_bytes(b"x")
    failed = cli(
        "run", "--once", "--fail-rate", "1", env={**moto_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool)}
    )
    assert failed.returncode == 1, failed.stderr
    assert names(spool / "failed") == {"bad", "bad.reason.json"}

    (spool / "incoming" / "later").write_bytes(b"y")
    down = cli(
        "run",
        "--once",
        env={
            **moto_s3.env(),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "S3SPOOL_CONNECT_TIMEOUT": "1",
        },
    )
    assert down.returncode == 3, down.stderr
    assert "store unavailable: the endpoint is unreachable (S3SPOOL_ENDPOINT_URL" in down.stderr
    assert "; run `s3spool check`" in down.stderr
    assert names(spool / "incoming") == {"later"}  # left where it was
    # no terminal (cron): the summary still has bytes, elapsed time and what is left waiting
    *_, summary, stopped = down.stderr.splitlines()
    assert re.search(
        r"run --once: 0 delivered \(0 B\), 0 failed, 0 deferred, 1 left waiting "
        r"in \d+\.\ds$",
        summary,
    ), down.stderr
    assert re.search(r"stopped: 0 delivered, 0 failed in \d+\.\ds; exit 3$", stopped), stopped

    # the cause named as `check` names it, and where to look
    missing = cli(
        "run",
        "--once",
        env={
            **moto_s3.env(),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_DESTINATION": "s3://no-such-bucket-here/",
        },
    )
    assert missing.returncode == 3, missing.stderr
    said = [line for line in missing.stderr.splitlines() if "store unavailable" in line]
    assert len(said) == 1, missing.stderr
    assert (
        "store unavailable: bucket 'no-such-bucket-here' does not exist (S3SPOOL_DESTINATION): "
    ) in said[0]
    assert said[0].endswith("; run `s3spool check`")
    assert names(spool / "incoming") == {"later"}


def test_once_bounded_by_max_files_and_max_duration(tmp_path: Path, moto_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    every = {f"f{i}" for i in range(10)}
    for name in every:
        (spool / "incoming" / name).write_bytes(name.encode())
    env = {**moto_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool)}
    service = cli("run", env={**env, "S3SPOOL_MAX_FILES": "3"})
    assert service.returncode == 78, service.stderr
    assert "S3SPOOL_MAX_FILES (--max-files): only with run --once" in service.stderr

    bounded = cli("run", "--once", "--max-files", "3", env=env)
    assert bounded.returncode == 75, bounded.stderr  # work left for the next run
    assert "0 failed, 7 deferred, 7 left waiting in " in bounded.stderr
    assert "; deferred: 7 (MAX_FILES 3 reached)" in bounded.stderr
    assert len(names(spool / "done")) == 3
    assert len(names(spool / "incoming")) == 7
    assert sorted(moto_s3.keys()) == sorted(names(spool / "done"))

    # each request takes 1 s: the upload in flight at the deadline finishes, the rest waits
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.latency_s = 1.0
        env = {**moto_s3.via(proxy.url).env(), "S3SPOOL_SPOOL_DIRS": str(spool)}
        timed = cli("run", "--once", "--max-duration", "1.5", "--workers", "1", env=env)
    assert timed.returncode == 75, timed.stderr
    assert "MAX_DURATION 1.5s reached" in timed.stderr
    assert "cancelling" not in timed.stderr
    done, left = names(spool / "done"), names(spool / "incoming")
    assert 3 < len(done) < 10, timed.stderr
    assert done | left == every
    assert sorted(moto_s3.keys()) == sorted(done)
    assert [p for p in (spool / "working").rglob("*") if p.is_file()] == []


def test_once_empty_spool_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    result = cli(
        "run",
        "--once",
        env={"S3SPOOL_SPOOL_DIRS": str(tmp_path / "s"), "S3SPOOL_DESTINATION": "noop://"},
    )
    assert result.returncode == 0, result.stderr
    for sub in ("incoming", "working", "done", "failed"):
        assert (tmp_path / "s" / sub).is_dir()


def test_first_contact_mistakes_exit_78_in_one_format(tmp_path: Path) -> None:
    """A spool root that is not there, an endpoint without a scheme, a directory as --config:
    exit 78, one `s3spool: what: why` format, no traceback, nothing created."""
    missing = tmp_path / "no" / "such" / "spool"
    noop = {"S3SPOOL_DESTINATION": "noop://"}
    for args in (["run", "--once"], ["run", "--dry-run"], ["check"]):
        r = cli(*args, "--spool-dirs", str(missing), env=noop)
        assert r.returncode == 78, (args, r.stdout, r.stderr)
        said = r.stderr + r.stdout  # check prints FAIL lines on stdout
        assert f"S3SPOOL_SPOOL_DIRS (--spool-dirs): spool root {missing} does not exist" in said
    assert not (tmp_path / "no").exists()

    (tmp_path / "empty").mkdir()
    env = {**noop, "S3SPOOL_SPOOL_DIRS": str(tmp_path / "empty")}
    r = cli("run", "--once", "--endpoint-url", "127.0.0.1:9000", env=env)
    assert r.returncode == 78, r.stderr
    assert "S3SPOOL_ENDPOINT_URL (--endpoint-url): '127.0.0.1:9000' has no scheme" in r.stderr
    assert "Traceback" not in r.stderr

    r = cli("run", "--once", "--config", str(tmp_path), env={})
    assert r.returncode == 78, r.stderr
    assert r.stderr == (
        f"s3spool: S3SPOOL_CONFIG (--config): {tmp_path} is a directory, not a TOML file\n"
    )

    # a directory fault found as the service starts: the same format, no log prefix
    (tmp_path / "empty" / "incoming").write_text("not a directory")
    r = cli("run", "--once", env=env)
    assert r.returncode == 78, r.stderr
    assert r.stderr.startswith(f"s3spool: spool {tmp_path / 'empty'}: incoming directory"), r.stderr


def test_relative_paths_follow_the_config_file_and_status_needs_no_destination(
    tmp_path: Path,
) -> None:
    """A relative spool_dirs in the file is taken from the file's directory, whatever the
    working directory (/ under systemd); a relative flag from the working directory."""
    (tmp_path / "cfg" / "rel" / "incoming").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "cfg" / "s3spool.toml"
    config.write_text('spool_dirs = ["rel"]\ndestination = "noop://"\n')
    drop(tmp_path / "cfg" / "rel" / "incoming", "a.txt", b"a")
    r = cli("run", "--once", "--config", "../cfg/s3spool.toml", cwd=tmp_path / "elsewhere")
    assert r.returncode == 0, r.stderr
    assert names(tmp_path / "cfg" / "rel" / "done") == {"a.txt"}
    assert list((tmp_path / "elsewhere").iterdir()) == []

    r = cli("status", "--json", "--spool-dirs", "rel", cwd=tmp_path / "cfg")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["spools"][0]["spool"] == str(tmp_path / "cfg" / "rel")


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    base = Path("/dev/shm")
    if not base.is_dir() or os.stat(base).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to test against")
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_dirs_on_two_filesystems_refused(tmp_path: Path, other_filesystem: Path) -> None:
    env = {
        "S3SPOOL_INCOMING_DIR": str(tmp_path / "in"),
        "S3SPOOL_WORKING_DIR": str(tmp_path / "w"),
        "S3SPOOL_DONE_DIR": str(other_filesystem / "done"),
        "S3SPOOL_FAILED_DIR": str(tmp_path / "f"),
        "S3SPOOL_DESTINATION": "noop://",
    }
    result = cli("run", "--once", env=env)
    assert result.returncode == 78
    assert "different filesystems" in result.stderr
    assert f"done={other_filesystem / 'done'}" in result.stderr


def test_unwritable_dir_refused(tmp_path: Path) -> None:
    # root may write anywhere, so run the process as nobody in a root-owned directory
    base = Path(tempfile.mkdtemp(prefix="s3spool-ro-"))
    try:
        base.chmod(0o755)
        (base / "spool" / "incoming").mkdir(parents=True)
        (base / "spool").chmod(0o755)
        env = {"S3SPOOL_SPOOL_DIRS": str(base / "spool"), "S3SPOOL_DESTINATION": "noop://"}
        if os.geteuid() == 0:
            result = cli("run", "--once", env=env, user=65534)
        else:
            (base / "spool").chmod(0o555)
            result = cli("run", "--once", env=env)
        assert result.returncode == 78, result.stderr
        assert str(base / "spool") in result.stderr
        assert "permission denied" in result.stderr or "not writable" in result.stderr
    finally:
        (base / "spool").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_sigterm_drains_in_flight_and_returns_the_rest(tmp_path: Path, moto_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.latency_s = 1.5
        env = {
            **moto_s3.via(proxy.url).env(),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_WORKERS": "2",
            "S3SPOOL_SHUTDOWN_GRACE": "20",
        }
        with SpoolProc(["run"], env, cwd=tmp_path) as proc:
            proc.wait_for_log(r"watching 1 spool", 15)
            for i in range(6):
                drop(spool / "incoming", f"f{i}", b"payload %d" % i)
            deadline = time.monotonic() + 10
            while proxy.in_flight < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proxy.in_flight == 2, "two uploads should be in flight"
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.log_tail()
            last = proc.log_tail(1)
            assert re.search(
                r"INFO +s3spool.service: stopped: 2 delivered, 0 failed in "
                r"\d+\.\ds; exit 0$",
                last,
            ), last
    done = names(spool / "done")
    back = names(spool / "incoming")
    assert len(done) == 2, proc.log_tail()
    assert len(back) == 4
    assert done | back == {f"f{i}" for i in range(6)}
    assert sorted(moto_s3.keys()) == sorted(done)
    assert list((spool / "working").iterdir()) == []  # instance dir removed on clean exit


@pytest.mark.slow
def test_two_thousand_files_dropped_while_running(tmp_path: Path, rclone_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    env = {**rclone_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool), "S3SPOOL_LOG_LEVEL": "WARNING"}
    payloads = {f"obj-{i:04d}.bin": os.urandom(64 + i % 3000) for i in range(2000)}
    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        time.sleep(0.5)
        for name, data in payloads.items():
            drop(spool / "incoming", name, data)
        deadline = time.monotonic() + 120
        while len(names(spool / "done")) < 2000 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.log_tail()
    assert names(spool / "done") == set(payloads)
    assert sorted(rclone_s3.keys()) == sorted(payloads)
    for name, data in payloads.items():
        assert rclone_s3.get(name) == data, name
        assert (spool / "done" / name).read_bytes() == data
    assert names(spool / "incoming") == set()


def test_once_on_an_empty_spool_asks_the_store_nothing(moto_s3: S3Target, tmp_path: Path) -> None:
    """A cron job's `run --once` every minute: no request (and no botocore) while there is
    nothing to take, a multipart sweep once per interval, and a file is still delivered."""
    spool = tmp_path / "spool"
    spool.mkdir()
    stamp = spool / ".s3spool-multipart-sweep"
    with FaultProxy(moto_s3.endpoint_url) as fp:
        env = {**moto_s3.via(fp.url).env(), "S3SPOOL_SPOOL_DIRS": str(spool)}
        first = cli("run", "--once", env=env)  # a new spool: its sweep clock starts now
        assert first.returncode == 0, first.stderr
        assert fp.snapshot()["counts"] == {}
        assert stamp.is_file()

        (spool / "incoming" / "partial.tmp").write_bytes(b"ignored by IGNORE")
        idle = cli("run", "--once", env=env)
        assert idle.returncode == 0, idle.stderr
        assert fp.snapshot()["counts"] == {}

        past = time.time() - 3600  # the last sweep an hour ago: one is due
        os.utime(stamp, (past, past))
        due = cli("run", "--once", env=env)
        assert due.returncode == 0, due.stderr
        assert fp.snapshot()["counts"].get("list_mpu", 0) >= 1
        assert stamp.stat().st_mtime > past + 3000

        fp.clear_counters()
        swept = stamp.stat().st_mtime_ns
        drop(spool / "incoming", "a", b"a")
        busy = cli("run", "--once", env=env)
        assert busy.returncode == 0, busy.stderr
        assert fp.snapshot()["counts"].get("put_object") == 1
        assert stamp.stat().st_mtime_ns == swept  # swept a moment ago: not due
        assert names(spool / "done") == {"a"}
