"""RECURSIVE spools: files in subdirectories of incoming/, with real inotify on real
directories and a real S3 server (moto in-process; the crash test runs the real process).

Each file keeps its relpath: in its key ({relpath}), under done/, and through a kill -9.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from proc import SpoolProc, cli
from s3servers import S3Target
from svc import drop, names, running, settings_for, wait_until

MIB = 1024 * 1024


def files_below(top: Path) -> dict[str, bytes]:
    """relpath -> content of every regular file below ``top`` (relpaths as str, surrogateescape)."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, top)] = Path(path).read_bytes()
    return out


def dirs_below(top: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, sub), top) for d, subs, _ in os.walk(top) for sub in subs
    }


def put_file(path: Path | bytes, data: bytes) -> None:
    """Write beside, then rename into place, as producers do (``path`` may be bytes)."""
    raw = os.fsencode(path)
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    tmp = raw + b".tmp-producer"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.rename(tmp, raw)


def _odd_dir(incoming: Path) -> bytes | None:
    """A directory name that is not UTF-8, where the filesystem allows one."""
    raw = os.fsencode(incoming) + b"/raw-\xff"
    try:
        os.mkdir(raw)
    except OSError:
        return None
    return raw


# --- present at start, run --once (the process) -----------------------------------------------


def test_tree_present_at_start_run_once(tmp_path: Path, moto_s3: S3Target) -> None:
    root = tmp_path / "spool"
    incoming = root / "incoming"
    files = {
        "top.txt": b"top",
        "a/f1": b"one",
        "a/b/f2": b"two",
        "a/b/c/f3": b"three",
        "with space/g.txt": b"space",
        "é x%/h": b"odd",
    }
    for rel, data in files.items():
        put_file(incoming / rel, data)
    expected_keys = {f"in/{rel}": data for rel, data in files.items()}
    odd = _odd_dir(incoming)
    if odd is not None:
        put_file(odd + b"/i", b"bytes")
        files[os.fsdecode(b"raw-\xff/i")] = b"bytes"
        expected_keys["in/raw-%FF/i"] = b"bytes"
    put_file(incoming / ".staging" / "not-yet", b"ignored directory")  # IGNORE matches .staging
    put_file(incoming / "a" / "b" / "x.tmp", b"ignored name")
    env = {
        **moto_s3.env("in/"),
        "S3SPOOL_SPOOL_DIRS": str(root),
        "S3SPOOL_RECURSIVE": "true",
        "S3SPOOL_KEY_FORMAT": "{relpath}",
    }

    # status and dry-run count and list the subdirectories' files, the same way
    status = cli(["status", "--json"], env)
    assert status.returncode == 0, status
    (spool,) = json.loads(status.stdout)["spools"]
    assert spool["incoming"]["files"] == len(files), spool
    assert spool["incoming"]["ignored"] == 2, spool  # .staging/ (not entered) and x.tmp
    dry = cli(["run", "--dry-run"], env)
    assert dry.returncode == 0, dry
    uploads = {
        row[3]
        for row in (line.split("\t") for line in dry.stdout.splitlines())
        if row[0] == "upload"
    }
    assert uploads == set(expected_keys), dry.stdout

    r = cli(["run", "--once"], env)
    assert r.returncode == 0, r.stderr
    assert f"{len(files)} delivered (" in r.stderr, r.stderr
    assert sorted(moto_s3.keys()) == sorted(expected_keys)
    for key, data in expected_keys.items():
        assert moto_s3.get(key) == data, key
    assert files_below(root / "done") == files  # same relative paths under done/
    assert files_below(incoming) == {
        ".staging/not-yet": b"ignored directory",
        "a/b/x.tmp": b"ignored name",
    }
    assert files_below(root / "working") == {}
    assert not any((root / "working").glob("*/files/*")), "empty claim subdirectories are removed"
    # the emptied subdirectories of incoming/ wait for RMDIR_AFTER (1h by default)
    assert {"a/b/c", "with space"} <= dirs_below(incoming)


# --- the long-running service: directories made while it runs (inotify) -----------------------


async def test_directories_created_while_running(spool: Path, moto_s3: S3Target) -> None:
    # a rescan would find everything too: make it too rare to matter, so inotify must
    settings = settings_for(
        spool, moto_s3, recursive=True, key_format="{relpath}", rescan_interval=600
    )
    incoming = spool / "incoming"
    async with running(settings) as svc:
        # mkdir -p, then a file renamed into the deepest directory
        (incoming / "x" / "y" / "z").mkdir(parents=True)
        await asyncio.sleep(0.2)
        drop(incoming / "x" / "y" / "z", "f1", b"deep")
        # a directory made and filled at once: the file may arrive before its watch
        os.makedirs(incoming / "r" / "s" / "t")
        drop(incoming / "r" / "s" / "t", "f2", b"raced")
        # a whole tree prepared elsewhere and moved in with one rename
        prepared = spool / "prepared" / "batch"
        for rel in ("p1", "u/p2", "u/v/p3", "u/v/w/p4"):
            put_file(prepared / rel, rel.encode())
        os.rename(prepared, incoming / "batch")
        await wait_until(lambda: svc.counts.delivered == 6, 10, "six delivered by inotify")
        # a watched directory renamed within incoming/: files after it land at its new name
        os.rename(incoming / "x", incoming / "x2")
        await asyncio.sleep(0.3)
        drop(incoming / "x2" / "y" / "z", "f3", b"after the rename")
        drop(incoming / "batch" / "u" / "v" / "w", "p5", b"still watched")
        await wait_until(lambda: svc.counts.delivered == 8, 10, "two more after a rename")
    expected = {
        "x/y/z/f1": b"deep",
        "r/s/t/f2": b"raced",
        "batch/p1": b"p1",
        "batch/u/p2": b"u/p2",
        "batch/u/v/p3": b"u/v/p3",
        "batch/u/v/w/p4": b"u/v/w/p4",
        "x2/y/z/f3": b"after the rename",
        "batch/u/v/w/p5": b"still watched",
    }
    stored = moto_s3.keys()
    assert {k: moto_s3.get(k) for k in stored} == expected
    assert files_below(spool / "done") == expected
    assert files_below(incoming) == {}


# --- emptied subdirectories: removed after the grace, never a fresh or busy one ---------------


async def test_emptied_subdirectories_go_after_the_grace(spool: Path, moto_s3: S3Target) -> None:
    grace = 3.0
    settings = settings_for(
        spool, moto_s3, recursive=True, key_format="{relpath}", rmdir_after=grace
    )
    incoming = spool / "incoming"
    async with running(settings) as svc:
        drop_at = time.monotonic()
        put_file(incoming / "e1" / "e2" / "f", b"x")
        put_file(incoming / "busy" / ".being-written.tmp", b"a producer's file, ignored")
        (incoming / ".staging" / "empty").mkdir(parents=True)  # ignored: the producer's own
        await wait_until(lambda: svc.counts.delivered == 1, 10)
        assert (incoming / "e1" / "e2").is_dir()
        # claims leave no empty directories behind in working/
        assert [p for p in (spool / "working").glob("*/files/**/*")] == []
        await wait_until(lambda: not (incoming / "e1").exists(), 15, "e1/ removed")
        assert time.monotonic() - drop_at >= grace * 0.9, "removed before the grace"
        (incoming / "fresh").mkdir()
        await asyncio.sleep(grace / 2)  # a cleanup pass or more ran (CLEANUP_INTERVAL=1)
        assert (incoming / "fresh").is_dir(), "a directory younger than the grace stays"
        await wait_until(lambda: not (incoming / "fresh").exists(), 15, "fresh/ removed later")
        await asyncio.sleep(1.5)
    assert incoming.is_dir()
    assert (incoming / "busy" / ".being-written.tmp").exists(), "a non-empty directory stays"
    assert (incoming / ".staging" / "empty").is_dir(), "ignored directories are not entered"
    assert files_below(spool / "done") == {"e1/e2/f": b"x"}
    assert moto_s3.keys() == ["e1/e2/f"]


# --- RECURSIVE off: subdirectories are left alone, as always ----------------------------------


async def test_not_recursive_leaves_subdirectories_alone(
    spool: Path, moto_s3: S3Target, caplog: pytest.LogCaptureFixture
) -> None:
    incoming = spool / "incoming"
    put_file(incoming / "old" / "f", b"present at start")
    (incoming / "empty").mkdir()
    settings = settings_for(spool, moto_s3, key_format="{dirname}/{fname}", rmdir_after=0.1)
    async with running(settings) as svc:
        (incoming / "new").mkdir()
        drop(incoming / "new", "g", b"made while running")
        drop(incoming, "top", b"top")
        await wait_until(lambda: svc.counts.delivered == 1, 10)
        svc.routes[0].discovery.request_rescan()
        await asyncio.sleep(1.5)  # a rescan and cleanup passes
    assert moto_s3.keys() == ["top"]  # {dirname} is empty: {dirname}/{fname} is {fname}
    assert names(spool / "done") == {"top"}
    assert files_below(incoming) == {"old/f": b"present at start", "new/g": b"made while running"}
    assert (incoming / "empty").is_dir()
    assert any("skipped, directory (left in place)" in r.getMessage() for r in caplog.records)


# --- kill -9 mid-run, then a restart: each nested file exactly once, at its key ---------------


def _make_tree(incoming: Path, count: int, big: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(count):
        depth = rng.randrange(0, 4)
        rel = "/".join([f"d{rng.randrange(3)}" for _ in range(depth)] + [f"f{i:04d}"])
        size = 6 * MIB + rng.randrange(MIB) if i < big else rng.randrange(0, 20000)
        files[rel] = rng.randbytes(size)
    for rel, data in files.items():
        put_file(incoming / rel, data)
    return files


@pytest.mark.slow
def test_kill9_then_restart_delivers_nested_files_once(tmp_path: Path, moto_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    files = _make_tree(spool / "incoming", 300, big=4, seed=5)
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        # spread the drain over the three runs (4 workers, 0.05 s a request: ~80 files a run),
        # so the kills land mid-upload and mid-route, however fast the client
        proxy.latency_s = 0.05
        env = {
            **moto_s3.via(proxy.url).env(),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_RECURSIVE": "true",
            # {uuid4}: a second upload of one file would show as a second object
            "S3SPOOL_KEY_FORMAT": "{uuid4}/{relpath}",
            "S3SPOOL_MULTIPART_THRESHOLD": "5MiB",
            "S3SPOOL_PART_SIZE": "5MiB",
            "S3SPOOL_WORKERS": "4",
            "S3SPOOL_CLEANUP_INTERVAL": "1",
        }
        rng = random.Random(9)
        progress = []
        for round_ in range(3):
            log = tmp_path / f"run-{round_}.log"
            with SpoolProc(["run"], env, cwd=tmp_path, log_path=log) as p:
                time.sleep(rng.uniform(1.0, 2.0))
                assert p.alive(), p.log_tail()
                p.kill()
            progress.append(len(files_below(spool / "done")))
        assert progress[-1] < len(files), f"drained before the last kill: {progress}"
        with SpoolProc(["run"], env, cwd=tmp_path, log_path=tmp_path / "final.log") as p:
            p.wait_until(lambda: len(files_below(spool / "done")) == len(files), 120, "drained")
            p.signal(signal.SIGTERM)
            assert p.wait(30) == 0, p.log_tail()
    by_rel: dict[str, list[str]] = {}
    stored = moto_s3.keys()
    for key in stored:
        by_rel.setdefault(key.split("/", 1)[1], []).append(key)
    dupes = {rel: keys for rel, keys in by_rel.items() if len(keys) > 1}
    assert not dupes, f"stored more than once: {list(dupes.items())[:3]}"
    assert set(by_rel) == set(files)
    for rel, data in files.items():
        assert hashlib.md5(moto_s3.get(by_rel[rel][0])).digest() == hashlib.md5(data).digest()
    assert files_below(spool / "done") == files
    assert files_below(spool / "incoming") == {}
    assert files_below(spool / "working") == {}, "claims left in working/"
    logs = "".join(log.read_text() for log in tmp_path.glob("*.log"))
    assert re.search(r"recovered \d+ claims of dead instance", logs), "no claim was in flight"
