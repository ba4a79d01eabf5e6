"""Operator commands as real processes: check, status, enqueue, run --dry-run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from asyncinotify import Inotify, Mask

from faultproxy import FaultProxy
from proc import CLI_TIMEOUT_S, SpoolProc, clean_env, cli
from s3servers import S3Target
from svc import names

UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1: any store call would fail


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def write(path: Path, data: bytes, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def tree(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under root (root included): mode, size, mtime_ns, inode."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- check -------------------------------------------------------------------------------------


def test_check_missing_destination_names_the_setting(tmp_path: Path) -> None:
    r = cli(["check"], {"S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool")})
    assert r.returncode == 78, r
    fail = lines_starting(r.stdout, "FAIL settings")
    assert fail, r.stdout
    assert "S3SPOOL_DESTINATION (--destination)" in r.stdout
    assert not (tmp_path / "spool").exists(), "a failed settings check must not go on"


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory uid 65534 can traverse (pytest's tmp_path is 0700 and root's)."""
    path = Path(tempfile.mkdtemp(prefix="s3spool-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(path)


def test_check_unwritable_directory_is_named(world_readable_dir: Path) -> None:
    root = world_readable_dir / "spool"
    for sub in ("incoming", "working", "done", "failed"):
        (root / sub).mkdir(parents=True)
    for p in (root, *root.iterdir()):
        p.chmod(0o755)
    env = {"S3SPOOL_SPOOL_DIRS": str(root), "S3SPOOL_DESTINATION": "noop://"}
    if os.geteuid() == 0:
        # root may write anywhere: run the check as an unprivileged user instead
        r = cli(["check"], env, as_nobody=True)
    else:
        (root / "incoming").chmod(0o555)
        r = cli(["check"], env)
    assert r.returncode == 1, r
    fail = lines_starting(r.stdout, "FAIL directories")
    assert len(fail) == 1, r.stdout
    assert str(root / "incoming") in fail[0]
    assert "not writable" in fail[0]
    assert lines_starting(r.stdout, "PASS settings")
    assert lines_starting(r.stdout, "PASS store"), "noop:// needs no store"


def test_check_directories_on_two_filesystems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on its own filesystem")
    done = Path(tempfile.mkdtemp(dir=shm, prefix="s3spool-done-"))
    try:
        env = {
            "S3SPOOL_INCOMING_DIR": str(tmp_path / "in"),
            "S3SPOOL_WORKING_DIR": str(tmp_path / "work"),
            "S3SPOOL_DONE_DIR": str(done),
            "S3SPOOL_FAILED_DIR": str(tmp_path / "failed"),
            "S3SPOOL_DESTINATION": "noop://",
        }
        r = cli(["check"], env)
    finally:
        shutil.rmtree(done)
    assert r.returncode == 1, r
    fail = lines_starting(r.stdout, "FAIL directories")
    assert len(fail) == 1, r.stdout
    assert "different filesystems" in fail[0]
    assert f"done={done}" in fail[0]


def test_check_missing_bucket(s3: S3Target, tmp_path: Path) -> None:
    missing = dataclasses.replace(s3, bucket=f"{s3.bucket}-missing")
    (tmp_path / "spool").mkdir()
    env = {**missing.env("p/"), "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool")}
    r = cli(["check"], env)
    assert r.returncode == 1, r
    fail = lines_starting(r.stdout, "FAIL store")
    assert len(fail) == 1, r.stdout
    assert f"bucket '{missing.bucket}' does not exist" in fail[0]
    assert lines_starting(r.stdout, "PASS directories"), r.stdout


def test_check_refused_credentials(rclone_s3: S3Target, tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    env = {
        **rclone_s3.env(),
        "AWS_SECRET_ACCESS_KEY": "not-the-secret",
        "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool"),
    }
    r = cli(["check"], env)
    assert r.returncode == 1, r
    fail = lines_starting(r.stdout, "FAIL store")
    assert len(fail) == 1, r.stdout
    assert "denied" in fail[0], r.stdout


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"AWS_CA_BUNDLE": "/nonexistent/ca.pem"}, "AWS_CA_BUNDLE (or the profile's ca_bundle)"),
        ({"S3SPOOL_PROFILE": "nosuch"}, "S3SPOOL_PROFILE (--profile): no profile 'nosuch'"),
    ],
    ids=["AWS_CA_BUNDLE", "PROFILE"],
)
def test_check_names_a_bad_client_setting(
    env: dict[str, str], says: str, rclone_tls_s3: S3Target, tmp_path: Path
) -> None:
    # found only when the client is made: a FAIL line for the store, naming the setting
    (tmp_path / "spool").mkdir()
    base = {**rclone_tls_s3.env(), "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool")}
    r = cli(["check"], {**base, **env})
    assert r.returncode == 1, r
    fail = lines_starting(r.stdout, "FAIL store")
    assert len(fail) == 1, r.stdout
    assert says in fail[0], r.stdout


def test_check_good_config_passes_and_leaves_nothing(s3: S3Target, tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    with FaultProxy(s3.endpoint_url, seed=1) as proxy:
        env = {**s3.via(proxy.url).env("in/"), "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool")}
        r = cli(["check"], env)
        counts = proxy.snapshot()["counts"]
    assert r.returncode == 0, r
    verdicts = {
        line.split(" ", 2)[1].rstrip(":"): line.split(" ", 1)[0] for line in r.stdout.splitlines()
    }
    assert verdicts["settings"] == "PASS"
    assert verdicts["directories"] == "PASS"
    assert verdicts["inotify"] in ("PASS", "WARN")  # WARN only for low kernel limits
    assert verdicts["store"] == "PASS", r.stdout
    assert not lines_starting(r.stdout, "FAIL")
    # a PUT, the same PUT with If-None-Match (conditional writes), a one-part multipart upload
    assert counts.get("put_object") == 2, counts
    # ... and one more multipart upload, aborted
    assert counts.get("create_mpu") == 2, counts
    assert counts.get("upload_part") == 1, counts
    assert counts.get("abort_mpu") == 1, counts
    assert counts.get("complete_mpu") == 1, counts
    assert counts.get("delete_object") == 2, counts
    assert s3.keys() == [], "the test objects must be gone"
    found = dict(
        line.strip().split(": ", 1) for line in r.stdout.splitlines() if line.startswith("  ")
    )
    assert found["conditional writes"] == (
        "honoured" if s3.kind == "moto" else "ignored (OVERWRITE=never is unsafe)"
    ), r.stdout
    assert found["ListMultipartUploads"] == found["AbortMultipartUpload"] == "yes", r.stdout
    assert found["verification"].startswith(("checksum", "md5")), r.stdout
    # the directories were created the way the service would create them
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == [
        "done",
        "failed",
        "incoming",
        "working",
    ]


def test_check_read_only_writes_nothing(moto_s3: S3Target, tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    with FaultProxy(moto_s3.endpoint_url, seed=1) as proxy:
        env = {**moto_s3.via(proxy.url).env(), "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool")}
        r = cli(["check", "--read-only"], env)
        counts = proxy.snapshot()["counts"]
    assert r.returncode == 0, r
    store = lines_starting(r.stdout, "PASS store")
    assert store, r.stdout
    assert "--read-only" in store[0], r.stdout
    assert counts.get("other", 0) >= 1, counts  # HeadBucket
    assert "put_object" not in counts, counts
    assert "delete_object" not in counts, counts


# -- status ------------------------------------------------------------------------------------


def test_status_matches_disk(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    now = time.time()
    write(root / "incoming" / "a", b"x" * 10, now - 100)
    write(root / "incoming" / "b", b"x" * 20, now - 50)
    write(root / "incoming" / "c", b"x" * 30, now - 10)
    write(root / "incoming" / ".partial", b"x" * 99)
    (root / "incoming" / "link").symlink_to("a")
    write(root / "working" / "live-1" / "files" / "w1", b"y" * 5)
    write(root / "working" / "live-1" / "files" / "w2", b"y" * 6)
    write(root / "working" / "dead-1" / "files" / "w3", b"y" * 7)
    for i in range(4):
        write(root / "done" / f"d{i}", b"z" * 100)
    write(root / "failed" / "f1", b"q" * 40)
    write(root / "failed" / "f1.reason.json", b'{"reason": "x"}')
    env = {
        "S3SPOOL_SPOOL_DIRS": str(root),
        "S3SPOOL_DESTINATION": "s3://never-contacted/x",
        "S3SPOOL_ENDPOINT_URL": UNREACHABLE,
    }
    lock_fd = os.open(root / "working" / "live-1", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live instance holds
        before = tree(root)
        r = cli(["status", "--json"], env)
        text = cli(["status"], env)
        after = tree(root)
    finally:
        os.close(lock_fd)
    assert r.returncode == 0, r
    assert before == after, "status must only read"
    (spool,) = json.loads(r.stdout)["spools"]
    assert spool["spool"] == str(root)
    inc = spool["incoming"]
    assert (inc["files"], inc["bytes"], inc["ignored"], inc["not_regular"]) == (3, 60, 1, 1)
    assert 95 <= inc["oldest_age_seconds"] <= 100 + CLI_TIMEOUT_S
    assert (spool["working"]["files"], spool["working"]["bytes"]) == (3, 18)
    assert (spool["done"]["files"], spool["done"]["bytes"]) == (4, 400)
    assert (spool["failed"]["files"], spool["failed"]["bytes"]) == (1, 40)
    assert spool["instances"] == [
        {"id": "dead-1", "live": False, "files": 1, "bytes": 7},
        {"id": "live-1", "live": True, "files": 2, "bytes": 11},
    ]
    assert text.returncode == 0, text
    out = text.stdout
    assert f"spool {root}" in out
    assert any(
        line.split()[:3] == ["incoming", "3", "files"] and "(1 ignored, 1 not regular)" in line
        for line in out.splitlines()
    ), out
    assert any(line.split()[:3] == ["done", "4", "files"] for line in out.splitlines()), out
    assert any(line.split()[:3] == ["failed", "1", "file"] for line in out.splitlines()), out
    assert "live-1  live  2 files" in out
    assert "dead-1  dead" in out


def test_status_sees_a_running_service(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    env = {
        "S3SPOOL_SPOOL_DIRS": str(root),
        "S3SPOOL_DESTINATION": "noop://",
        "S3SPOOL_INSTANCE_ID": "svc-a",
        "S3SPOOL_HTTP_ADDR": "",
    }
    with SpoolProc(["run"], env, cwd=tmp_path) as proc:
        proc.wait_for_log(r"watching 1 spool", timeout=30)
        r = cli(["status", "--json"], env)
        proc.signal()
        assert proc.wait(30) == 0
    assert r.returncode == 0, r
    (spool,) = json.loads(r.stdout)["spools"]
    assert spool["instances"] == [{"id": "svc-a", "live": True, "files": 0, "bytes": 0}]
    after = cli(["status", "--json"], env)
    assert json.loads(after.stdout)["spools"][0]["instances"] == []


# -- enqueue -----------------------------------------------------------------------------------


async def _watch_while(
    cmd: list[str], env: dict[str, str], watched: dict[Path, Mask], on_event: object = None
) -> tuple[int, str, list[tuple[Path, Mask, str]]]:
    """Run cmd while recording inotify events on `watched`; (rc, stderr, events)."""
    events: list[tuple[Path, Mask, str]] = []
    with Inotify() as inotify:
        for path, mask in watched.items():
            inotify.add_watch(path, mask)

        async def reader() -> None:
            async for ev in inotify:
                assert ev.watch is not None
                assert ev.name is not None
                events.append((ev.watch.path, ev.mask, str(ev.name)))
                if callable(on_event):
                    on_event(ev.watch.path, ev.mask, str(ev.name))

        task = asyncio.create_task(reader())
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            env=clean_env(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(CLI_TIMEOUT_S):
            _, err = await proc.communicate()
        await asyncio.sleep(0.5)  # let the last events of the finished process arrive
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert proc.returncode is not None
    return proc.returncode, err.decode(), events


async def test_enqueue_watcher_only_ever_sees_complete_files(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    src_dir = tmp_path / "src"
    big = write(src_dir / "big.bin", os.urandom(64 * 1024 * 1024), time.time() - 3600)
    small = [write(src_dir / f"s{i}.txt", os.urandom(1000 + i)) for i in range(3)]
    sources = [big, *small]
    want = {p.name: (p.stat().st_size, sha256(p)) for p in sources}
    seen: dict[str, tuple[int, str]] = {}

    def on_event(path: Path, mask: Mask, name: str) -> None:
        # read the file at the very moment its event arrives, as a naive watcher would
        p = incoming / name
        if p.exists():
            seen[name] = (p.stat().st_size, sha256(p))

    rc, err, events = await _watch_while(
        [sys.executable, "-m", "s3spool", "enqueue", "--spool", str(root), *map(str, sources)],
        {},
        {incoming: Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.CREATE},
        on_event,
    )
    assert rc == 0, err
    assert {name for _, _, name in events} == set(want), "only final names ever appear"
    assert all(mask & Mask.MOVED_TO for _, mask, _ in events), events
    assert seen == want
    assert all(p.exists() for p in sources), "without --move the sources stay"
    assert (incoming / "big.bin").stat().st_mtime_ns == big.stat().st_mtime_ns
    assert list((root / ".s3spool-enqueue").iterdir()) == [], "no staging leftovers"


async def test_enqueue_move_across_filesystems_removes_source_last(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on its own filesystem")
    root = tmp_path / "spool"
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    src_dir = Path(tempfile.mkdtemp(dir=shm, prefix="s3spool-src-"))
    try:
        src = write(src_dir / "moved.bin", os.urandom(8 * 1024 * 1024 + 3))
        digest = sha256(src)
        seen: dict[str, str] = {}

        def on_event(path: Path, mask: Mask, name: str) -> None:
            if path == incoming:
                seen[name] = sha256(incoming / name)

        rc, err, events = await _watch_while(
            [sys.executable, "-m", "s3spool", "enqueue", "--move", "--spool", str(root), str(src)],
            {},
            {incoming: Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.CREATE, src_dir: Mask.DELETE},
            on_event,
        )
        assert rc == 0, err
        order = [(path, name) for path, _, name in events]
        assert order == [(incoming, "moved.bin"), (src_dir, "moved.bin")], events
        assert seen == {"moved.bin": digest}
        assert not src.exists()
    finally:
        shutil.rmtree(src_dir)


def test_enqueue_move_same_filesystem_is_a_rename(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "incoming").mkdir(parents=True)
    src = write(tmp_path / "src" / "r.dat", b"rename me")
    ino = src.stat().st_ino
    r = cli(["enqueue", "--move", "--spool", str(root), str(src)], {})
    assert r.returncode == 0, r
    assert not src.exists()
    moved = root / "incoming" / "r.dat"
    assert moved.read_bytes() == b"rename me"
    assert moved.stat().st_ino == ino


def test_enqueue_name_clash_fails_and_keeps_both(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    existing = write(root / "incoming" / "same.txt", b"already waiting")
    src = write(tmp_path / "src" / "same.txt", b"new data")
    other = write(tmp_path / "src" / "other.txt", b"fine")
    for extra in ([], ["--move"]):
        r = cli(["enqueue", *extra, "--spool", str(root), str(src), str(other)], {})
        assert r.returncode == 1, r
        assert f"{existing} already exists; not replaced" in r.stderr
        assert existing.read_bytes() == b"already waiting"
        assert src.read_bytes() == b"new data"
        if not extra:
            assert (root / "incoming" / "other.txt").read_bytes() == b"fine"
            (root / "incoming" / "other.txt").unlink()
    assert not other.exists(), "the second run moved the file that did not clash"
    staged = root / ".s3spool-enqueue"
    assert not staged.exists() or list(staged.iterdir()) == []


def test_enqueue_refuses_ignored_names(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "incoming").mkdir(parents=True)
    src = write(tmp_path / "x.tmp", b"never picked up")
    r = cli(["enqueue", "--spool", str(root), str(src)], {})
    assert r.returncode == 1, r
    assert "matches S3SPOOL_IGNORE" in r.stderr
    assert list((root / "incoming").iterdir()) == []


def test_enqueue_chooses_the_spool(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        (root / "incoming").mkdir(parents=True)
    src = write(tmp_path / "f.txt", b"data")
    both = {"S3SPOOL_SPOOL_DIRS": f"{one},{two}", "S3SPOOL_DESTINATION": "noop://"}
    r = cli(["enqueue", str(src)], both)
    assert r.returncode == 78, r
    assert "--spool" in r.stderr
    assert f"the settings name 2 spools ({one}, {two})" in r.stderr
    r = cli(["enqueue", "--spool", str(two), str(src)], both)
    assert r.returncode == 0, r
    assert (two / "incoming" / "f.txt").read_bytes() == b"data"
    single = {"S3SPOOL_SPOOL_DIRS": str(one)}  # a producer needs no DESTINATION
    assert cli(["enqueue", str(src)], single).returncode == 0
    assert (one / "incoming" / "f.txt").read_bytes() == b"data"
    r = cli(["enqueue", str(src)], {})
    assert r.returncode == 78, r
    assert "no spool" in r.stderr, r
    r = cli(["enqueue", "--spool", str(tmp_path / "nope"), str(src)], {})
    assert r.returncode == 78, r
    assert "has no incoming/" in r.stderr, r
    (tmp_path / "fresh").mkdir()  # a root the service has not started on yet: the same answer
    r = cli(["enqueue", str(src)], {"S3SPOOL_SPOOL_DIRS": str(tmp_path / "fresh")})
    assert r.returncode == 78, r
    assert f"{tmp_path / 'fresh'}: has no incoming/" in r.stderr, r


# -- requeue ------------------------------------------------------------------------------------


def test_requeue_by_pattern_reason_and_all(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    env = {
        "S3SPOOL_SPOOL_DIRS": str(root),
        "S3SPOOL_DESTINATION": "noop://",
        "S3SPOOL_RECURSIVE": "true",
        "S3SPOOL_KEY_FORMAT": "{relpath}",
        "S3SPOOL_HTTP_ADDR": "",
    }
    incoming, failed = root / "incoming", root / "failed"
    for rel in ("a.csv", "b.txt", "sub/dir/c.csv"):
        write(incoming / rel, rel.encode())
    assert cli(["run", "--once", "--fail-rate", "1"], env).returncode == 1  # reason "injected"
    long = "L" * 210  # five times over 1024 bytes; with .reason.json under NAME_MAX
    write(incoming / long, b"long")
    r = cli(["run", "--once", "--key-format", "{relpath}/" * 4 + "{relpath}"], env)
    assert r.returncode == 1, r
    assert json.loads((failed / f"{long}.reason.json").read_text())["reason"] == "key_too_long"
    before = tree(root)

    r = cli(["requeue"], env)
    assert r.returncode == 2, r
    assert "--all" in r.stderr
    r = cli(["requeue", "--all", "--dry-run"], env)
    assert r.returncode == 0, r
    assert len(lines_starting(r.stdout, "would requeue")) == 4, r.stdout
    assert "4 files would be requeued" in r.stdout
    assert tree(root) == before, "--dry-run moved something"

    # a name waiting in incoming/ is never replaced: that file stays in failed/
    write(incoming / "b.txt", b"newer")
    r = cli(["requeue", "b.txt"], env)
    assert r.returncode == 1, r
    assert f"{incoming}/b.txt already exists" in r.stderr
    assert (incoming / "b.txt").read_bytes() == b"newer"
    assert names(failed) >= {"b.txt", "b.txt.reason.json"}

    r = cli(["requeue", "--reason", "key_too_long"], env)
    assert r.returncode == 0, r
    assert r.stdout.splitlines() == [
        f"requeued {failed}/{long} -> {incoming}/{long}",
        "1 file requeued",
    ]
    r = cli(["requeue", "*.csv"], env)  # the path below failed/, or the name
    assert r.returncode == 0, r
    assert (incoming / "sub/dir/c.csv").read_bytes() == b"sub/dir/c.csv"
    assert (incoming / "a.csv").is_file()
    assert names(failed) == {"b.txt", "b.txt.reason.json"}, "emptied directories are pruned"

    (incoming / "b.txt").unlink()
    r = cli(["requeue", "--all", "--spool", str(root)], {})  # no settings: the plain layout
    assert r.returncode == 0, r
    assert "1 file requeued" in r.stdout
    assert names(failed) == set()
    assert cli(["run", "--once"], env).returncode == 0
    assert names(root / "done") == {"a.csv", "b.txt", "sub", long}


# -- run --dry-run -----------------------------------------------------------------------------


def test_dry_run_lists_keys_and_changes_nothing(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    incoming = root / "incoming"
    t2021 = time.mktime((2021, 3, 4, 12, 0, 0, 0, 0, 0))
    t2019 = time.mktime((2019, 7, 1, 12, 0, 0, 0, 0, 0))
    write(incoming / "a.csv", b"a" * 11, t2021)
    write(incoming / "b.log", b"b" * 22, t2019)
    write(incoming / "fresh.dat", b"c")
    write(incoming / ".hidden", b"d", t2019)
    write(incoming / "50% é.csv", b"e", t2019)  # shown, and keyed, by its real name
    (incoming / "link").symlink_to("a.csv")
    (incoming / "sub").mkdir()
    os.mkfifo(incoming / "pipe")
    before = tree(root)
    with FaultProxy(moto_s3.endpoint_url, seed=1) as proxy:
        env = {
            **moto_s3.via(proxy.url).env("pfx/"),
            "S3SPOOL_SPOOL_DIRS": str(root),
            "S3SPOOL_KEY_FORMAT": "{m_YYYY}/{hostname}/{fname}",
            "S3SPOOL_HOLD_FOR": "1h",
        }
        r = cli(["run", "--dry-run"], env)
        drawn = cli(["run", "--dry-run"], {**env, "S3SPOOL_KEY_FORMAT": "{uuid4}-{now}"})
        counts = proxy.snapshot()["counts"]
    assert r.returncode == 0, r
    rows = [line.split("\t") for line in r.stdout.splitlines() if not line.startswith("#")]
    host = socket.gethostname()
    assert rows == [
        ["skip", ".hidden", "ignored (matches IGNORE)"],
        ["upload", "50% é.csv", "1", f"pfx/2019/{host}/50% é.csv"],
        ["upload", "a.csv", "11", f"pfx/2021/{host}/a.csv"],
        ["upload", "b.log", "22", f"pfx/2019/{host}/b.log"],
        ["skip", "fresh.dat", rows[4][2]],
        ["skip", "link", "symlink (never followed)"],
        ["skip", "pipe", "fifo (left in place)"],  # the words of the service's log
        ["skip", "sub", "directory (left in place)"],
    ], r.stdout
    assert rows[4][2].startswith("held by HOLD_FOR")
    # {hostname} is fixed per host: no note; {now} and the UUIDs are drawn at the claim
    assert "# note" not in r.stdout
    assert "# note: KEY_FORMAT uses {now}, {uuid4}, drawn anew" in drawn.stdout, drawn
    assert tree(root) == before, "dry run must not touch the spool"
    assert not any((root / d).exists() for d in ("working", "done", "failed"))
    assert counts == {}, f"dry run must not talk to the store: {counts}"
    assert moto_s3.keys() == []


def test_hostname_sets_the_hostname_field(tmp_path: Path) -> None:
    """A DaemonSet sets HOSTNAME to the node's name: keys keep it across pod rollouts."""
    write(tmp_path / "spool" / "incoming" / "f.log", b"x")
    env = {
        "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool"),
        "S3SPOOL_DESTINATION": "noop://",
        "S3SPOOL_KEY_FORMAT": "{hostname}/{fname}",
    }
    r = cli(["run", "--dry-run"], {**env, "S3SPOOL_HOSTNAME": "node-7.example"})
    assert r.returncode == 0, r
    assert "upload\tf.log\t1\tnode-7.example/f.log" in r.stdout
    r = cli(["run", "--dry-run"], {**env, "S3SPOOL_HOSTNAME": "a/b"})
    assert r.returncode == 78, r
    assert "S3SPOOL_HOSTNAME (--hostname): only letters" in r.stderr


def test_dry_run_of_a_spool_never_started(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    env = {"S3SPOOL_SPOOL_DIRS": str(root), "S3SPOOL_DESTINATION": "noop://"}
    r = cli(["run", "--dry-run"], env)
    assert r.returncode == 0, r
    assert "does not exist yet" in r.stdout
    assert list(root.iterdir()) == []


def test_enqueue_keeps_the_file_mode(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "incoming").mkdir(parents=True)
    src = write(tmp_path / "m.txt", b"mode")
    src.chmod(0o640)
    assert cli(["enqueue", "--spool", str(root), str(src)], {}).returncode == 0
    staged = root / ".s3spool-enqueue"
    assert stat.S_ISDIR(staged.stat().st_mode)
    assert stat.S_IMODE((root / "incoming" / "m.txt").stat().st_mode) == 0o640


def test_dry_run_gauges_and_pipeline_agree_on_eligibility(
    moto_s3: S3Target, tmp_path: Path
) -> None:
    """One rule (survey.hold_left): a file inside HOLD_FOR and a future-dated one wait."""
    from s3spool.config.load import load_settings
    from s3spool.config.spools import spool_layouts
    from s3spool.spool.scan import spool_gauges
    from s3spool.spool.watch import compile_ignore

    root = tmp_path / "spool"
    now = time.time()
    write(root / "incoming" / "old", b"o", now - 3600)
    write(root / "incoming" / "fresh", b"f", now - 5)
    write(root / "incoming" / "future", b"u", now + 86400)
    env = {**moto_s3.env(), "S3SPOOL_SPOOL_DIRS": str(root), "S3SPOOL_HOLD_FOR": "60s"}
    planned = cli(["run", "--dry-run"], env)
    assert planned.returncode == 0, planned
    uploads = {ln.split("\t")[1] for ln in planned.stdout.splitlines() if ln.startswith("upload")}
    held = {
        ln.split("\t")[1]
        for ln in planned.stdout.splitlines()
        if ln.startswith("skip") and "HOLD_FOR" in ln
    }
    settings = load_settings(spool_dirs=[root], destination="noop://", hold_for=60)
    (layout,) = spool_layouts(settings)
    gauges = spool_gauges(layout, compile_ignore(settings.ignore), 60.0, time.time())
    ran = cli(["run", "--once"], env)
    assert ran.returncode == 0, ran
    assert uploads == {"old"}
    assert held == {"fresh", "future"}
    assert 3500 < gauges.lag < 3700  # the oldest eligible file is "old"; the others wait
    assert sorted(p.name for p in (root / "done").iterdir()) == ["old"]
    assert sorted(p.name for p in (root / "incoming").iterdir()) == ["fresh", "future"]
