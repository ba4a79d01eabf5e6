"""RECURSIVE spools below the service: walking, making and pruning subdirectories, claims
that keep their relpath through settling and recovery, the key fields, the watch fallback."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from s3spool.errors import PermanentError
from s3spool.spool import watch
from s3spool.spool.dirs import (
    files_below,
    make_dirs,
    move_from_below,
    move_into,
    prune_empty,
    prune_parents,
    walk,
)
from s3spool.spool.keys import STABLE_FIELDS, KeyInput, KeyTemplate, claim_input
from s3spool.spool.recovery import adopt, recover_own
from s3spool.spool.resubmit import expire_records, forget_record, load_record, save_record
from s3spool.spool.spool import Spool
from s3spool.spool.watch import Discovery, Pending
from svc import open_spool


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- tree.py -----------------------------------------------------------------------------------


def test_walk_yields_files_below_and_never_follows_symlinks(tmp_path: Path) -> None:
    for rel in ("f", "a/g", "a/b/h", ".hidden/i"):
        touch(tmp_path / rel)
    (tmp_path / "elsewhere").mkdir()
    touch(tmp_path / "elsewhere" / "outside")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    entered: list[str] = []
    found = {
        rel for rel, _ in walk(tmp_path, skip_dir=lambda n: n.startswith("."), enter=entered.append)
    }
    assert found == {"f", "a/g", "a/b/h", "a/link", ".hidden", "elsewhere/outside"}
    assert sorted(entered) == ["", "a", "a/b", "elsewhere"]
    assert entered[0] == ""  # each directory is entered before it is read, parents first
    assert entered.index("a") < entered.index("a/b")
    flat = {rel for rel, _ in walk(tmp_path, recursive=False)}
    assert flat == {"f", "a", ".hidden", "elsewhere"}


def test_walk_skips_a_subdirectory_gone_meanwhile_but_not_a_missing_top(tmp_path: Path) -> None:
    touch(tmp_path / "gone" / "f")
    touch(tmp_path / "kept" / "g")
    errors: list[tuple[str, int | None]] = []

    def enter(reldir: str) -> None:
        if reldir == "gone":  # removed between its listing and its reading
            os.unlink(tmp_path / "gone" / "f")
            os.rmdir(tmp_path / "gone")

    found = [
        rel
        for rel, _ in walk(tmp_path, enter=enter, onerror=lambda r, e: errors.append((r, e.errno)))
    ]
    assert found == ["kept/g"]
    assert errors == [("gone", errno.ENOENT)]
    with pytest.raises(FileNotFoundError):
        list(walk(tmp_path / "missing"))
    assert files_below(tmp_path / "missing") == []


def test_make_dirs_below_top_only_and_sidestepping(tmp_path: Path) -> None:
    top = str(tmp_path)
    assert make_dirs(top, "a/b/c") == f"{top}/a/b/c"
    assert make_dirs(top, "a/b/c") == f"{top}/a/b/c"  # already there
    touch(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        make_dirs(top, "file/x")
    assert make_dirs(top, "file/x", sidestep=True) == f"{top}/file~1/x"
    assert make_dirs(top, "file/y", sidestep=True) == f"{top}/file~1/y"
    with pytest.raises(FileNotFoundError):
        make_dirs(str(tmp_path / "gone"), "a")  # a vanished top is never made again
    assert not (tmp_path / "gone").exists()


def test_move_into_makes_the_directories_it_needs(tmp_path: Path) -> None:
    src = touch(tmp_path / "src")
    (tmp_path / "top").mkdir()
    move_into(os.rename, str(src), str(tmp_path / "top"), "a/b/name")
    assert (tmp_path / "top" / "a" / "b" / "name").read_bytes() == b"x"
    with pytest.raises(FileNotFoundError):  # the source is gone: nothing is made
        move_into(os.rename, str(src), str(tmp_path / "top"), "c/name")
    assert not (tmp_path / "top" / "c").exists()


def test_a_claim_never_goes_through_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    outside = touch(tmp_path / "outside" / "secret", b"not the spool's")
    touch(tmp_path / "incoming" / "a" / "secret")  # listed by a scan as a/secret ...
    os.unlink(tmp_path / "incoming" / "a" / "secret")
    os.rmdir(tmp_path / "incoming" / "a")
    (tmp_path / "incoming" / "a").symlink_to(outside.parent)  # ... then a/ became a symlink
    assert spool.claim("a/secret") is None
    assert outside.read_bytes() == b"not the spool's"
    assert tree_files(spool.files) == []
    with pytest.raises(FileNotFoundError):
        move_from_below(os.rename, str(tmp_path / "incoming"), "a/secret", str(tmp_path / "x"))


def tree_files(top: Path) -> list[str]:
    return sorted(files_below(top))


def test_prune_parents_and_prune_empty(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    touch(tmp_path / "a" / "keep")
    prune_parents(str(tmp_path), "a/b/c/gone")
    assert sorted(files_below(tmp_path)) == ["a/keep"]
    assert (tmp_path / "a").is_dir()  # not empty: stays
    for rel in ("x/y/z", "x/w", ".own/empty", "busy/d"):
        (tmp_path / rel).mkdir(parents=True)
    touch(tmp_path / "busy" / "f")
    now = time.time()
    assert prune_empty(tmp_path, unchanged_since=now - 60) == 0  # all younger than the grace
    skip = lambda n: n.startswith(".")  # noqa: E731
    assert prune_empty(tmp_path, unchanged_since=now + 60, skip_dir=skip) == 5
    assert sorted(files_below(tmp_path)) == ["a/keep", "busy/f"]
    assert (tmp_path / ".own" / "empty").is_dir()
    assert tmp_path.is_dir()  # never the top itself
    assert prune_empty(tmp_path / "missing") == 0


# --- key fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dirname", "name", "template", "key"),
    [
        (b"", b"f.txt", "{relpath}", "f.txt"),
        (b"", b"f.txt", "{dirname}/{fname}", "f.txt"),  # the empty segment is dropped
        (b"a/b", b"f.txt", "{relpath}", "a/b/f.txt"),
        (b"a/b", b"f.txt", "{dirname}--{fname}", "a/b--f.txt"),
        (b"\xc3\xa9 x%", b"h", "{relpath}", "é x%/h"),
        (b"raw-\xff/d", b"n\nl", "x/{relpath}", "x/raw-%FF/d/n%0Al"),
    ],
)
def test_relpath_and_dirname_fields(dirname: bytes, name: bytes, template: str, key: str) -> None:
    t = KeyTemplate(template, "", "host")
    assert t.render(KeyInput(name, "spool", 0.0, 0.0, dirname)) == key
    assert t.stable  # recomputable after a crash: a claim keeps its relpath


@pytest.mark.parametrize(
    "name",
    [
        b"f.txt",
        b"a b",
        b"100%",
        b"n\nl",
        b"raw-\xff",
        "é.log".encode(),
        b"...",
        b".x",
        b"",
        b".",
        b"..",
        b"a/b",
        b"/lead",
        b"a//b",
        b"./a",
        b"a/../b",
        b"x" * 1100,
    ],
)
@pytest.mark.parametrize("prefix", ["", "p/"])
def test_default_key_format_renders_as_the_formatter_does(name: bytes, prefix: str) -> None:
    """``{fname}`` skips the formatter; ``{fname}{fname:.0}`` renders the same through it."""
    fast, slow = KeyTemplate("{fname}", prefix, "h"), KeyTemplate("{fname}{fname:.0}", prefix, "h")
    item = KeyInput(name, "spool", 0.0, 0.0)

    def outcome(t: KeyTemplate) -> str:
        try:
            return t.render(item, ".zst")
        except PermanentError as exc:
            return f"refused: {exc.reason}"

    assert outcome(fast) == outcome(slow)


def test_stable_fields_include_the_path_fields() -> None:
    assert {"relpath", "dirname"} <= STABLE_FIELDS


# --- claims keep their relpath -----------------------------------------------------------------


def _spool(root: Path, instance: str = "me") -> Spool:
    return open_spool(root, instance, recursive=True)


def test_claim_settle_and_unclaim_keep_the_relpath(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    touch(tmp_path / "incoming" / "a" / "b" / "f", b"data")
    claim = spool.claim("a/b/f")
    assert claim is not None
    assert claim.path == f"{spool.files}/a/b/f"
    assert claim_input(claim).dirname == b"a/b"
    assert claim_input(claim).name == b"f"
    claim.key = "k"
    spool.save_key(claim)
    assert json.loads((spool.keys / "a" / "b" / "f").read_text())["key"] == "k"
    assert spool.unclaim(claim)
    assert (tmp_path / "incoming" / "a" / "b" / "f").read_bytes() == b"data"
    assert list(spool.files.iterdir()) == []
    assert list(spool.keys.iterdir()) == []
    claim = spool.claim("a/b/f")
    assert claim is not None
    touch(tmp_path / "done" / "a" / "b" / "f", b"another file of that name")
    assert spool.settle_done(claim) == tmp_path / "done" / "a" / "b" / "f~1"
    assert list(spool.files.iterdir()) == []
    touch(tmp_path / "incoming" / "c" / "g")
    touch(tmp_path / "failed" / "c", b"a file where the directory goes")
    claim = spool.claim("c/g")
    assert claim is not None
    dest = spool.settle_failed(claim, {"reason": "test"})
    assert dest == tmp_path / "failed" / "c~1" / "g"
    assert json.loads((tmp_path / "failed" / "c~1" / "g.reason.json").read_text())
    spool.close()
    assert not spool.me.exists()


def test_a_name_in_flight_in_the_way_of_a_directory_is_busy(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    touch(tmp_path / "incoming" / "a")
    first = spool.claim("a")
    assert first is not None
    os.mkdir(tmp_path / "incoming" / "a")
    touch(tmp_path / "incoming" / "a" / "f")
    with pytest.raises(Exception, match="still in flight") as info:
        spool.claim("a/f")
    assert getattr(info.value, "reason", None) == "busy"
    assert spool.claim("a/gone") is None


def test_recovery_and_adoption_find_nested_claims_with_their_keys(tmp_path: Path) -> None:
    dead = _spool(tmp_path, "dead")
    for rel in ("top", "a/f", "a/b/g"):
        touch(tmp_path / "incoming" / rel, rel.encode())
        claim = dead.claim(rel)
        assert claim is not None
        claim.key = f"key/{rel}"
        dead.save_key(claim)
    touch(dead.keys / "x" / "orphan", b"{}")  # its file was settled just before a crash
    mine = recover_own(dead)
    assert sorted(c.name for c in mine) == ["a/b/g", "a/f", "top"]
    assert {c.name: c.key for c in mine}["a/b/g"] == "key/a/b/g"
    assert not (dead.keys / "x").exists()
    os.close(dead._lock_fd or -1)  # dies without tidying up
    dead._lock_fd = None
    live = _spool(tmp_path, "live")
    adopted = adopt(live, dead.me, ())
    assert sorted(c.name for c in adopted) == ["a/b/g", "a/f", "top"]
    assert all(c.recovered and c.key == f"key/{c.name}" for c in adopted)
    assert (live.files / "a" / "b" / "g").read_bytes() == b"a/b/g"
    assert (live.keys / "a" / "b" / "g").exists()
    assert not dead.me.exists()


def test_events_of_a_notifier_no_longer_configured_stay_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from s3spool.spool.cleanup import adopt_dead
    from s3spool.spool.guard import Guard

    dead = _spool(tmp_path, "dead")
    for notifier in ("hook", "gone"):
        touch(dead.me / "outbox" / notifier / "ev1.json", b"{}")
    os.close(dead._lock_fd or -1)  # dies without tidying up
    dead._lock_fd = None
    live = _spool(tmp_path, "live")
    guards = {live: Guard(live)}
    for _ in range(3):  # the service's cleanup, every CLEANUP_INTERVAL
        adopt_dead([live], guards, lambda claim: None, {"hook"})
    assert (live.me / "outbox" / "hook" / "ev1.json").exists()
    assert (dead.me / "outbox" / "gone" / "ev1.json").exists()
    assert sorted(os.listdir(tmp_path / "working")) == ["dead", "live"]
    warned = [r for r in caplog.records if "which is not configured" in r.message]
    assert len(warned) == 1
    assert str(dead.me / "outbox" / "gone") in warned[0].message


# --- the watch fallback when inotify runs out of watches ---------------------------------------


class _Watch:
    def __init__(self, wd: int, path: str, mask: Any) -> None:
        self.wd, self.path, self.mask = wd, path, mask


class _Inotify:
    """add_watch fails like the kernel at fs.inotify.max_user_watches while ``full``."""

    def __init__(self) -> None:
        self.full = True
        self.watched: dict[str, _Watch] = {}

    def add_watch(self, path: str, mask: Any) -> _Watch:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.watched.setdefault(path, _Watch(len(self.watched) + 1, path, mask))


def test_out_of_watches_logs_the_sysctl_and_falls_back_to_rescans(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = _spool(tmp_path)
    touch(tmp_path / "incoming" / "a" / "b" / "f")
    pending = Pending(100)
    discovery = Discovery([spool], pending, ignore=[], rescan_interval=60.0)
    fake = _Inotify()
    discovery._inotify = fake
    discovery._watches[spool] = object()  # incoming/ itself is watched
    discovery.watching = True
    with caplog.at_level(logging.INFO):
        asyncio.run(discovery.scan(spool))
    assert (spool, "a/b/f") in pending
    assert discovery.tree.degraded == {spool}
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1, lines
    assert "fs.inotify.max_user_watches" in lines[0]
    assert "falling back to scanning every 5s" in lines[0]
    fake.full = False
    asyncio.run(discovery.scan(spool))
    assert discovery.tree.degraded == set()
    assert sorted(fake.watched) == [f"{spool.dirs.incoming}/a", f"{spool.dirs.incoming}/a/b"]
    assert len(discovery.tree) == 2
    assert any("every subdirectory is watched again" in r.getMessage() for r in caplog.records)


def test_a_scan_in_order_offers_names_sorted_and_ignores_as_before(tmp_path: Path) -> None:
    """BATCH=extract's scan: the directory's order (tmpfs: newest first) becomes name order,
    so batches hold neighbouring keys."""
    spool = _spool(tmp_path)
    names = [f"f{i:03d}" for i in range(40)] + ["a/b/f", "a/c", "z.tmp"]
    for name in reversed(names):  # created in reverse name order
        touch(tmp_path / "incoming" / name)
    offered = []
    for in_order in (False, True):
        pending = Pending(100)
        discovery = Discovery(
            [spool], pending, ignore=["*.tmp"], rescan_interval=60.0, in_order=in_order
        )
        asyncio.run(discovery.scan(spool))
        offered.append([pending.get_nowait()[1] for _ in range(len(pending))])  # type: ignore[index]
    plain, ordered = offered
    assert ordered == sorted(n for n in names if n != "z.tmp")
    assert sorted(plain) == ordered


def test_an_in_order_scan_sorts_a_run_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog larger than ORDER_RUN is offered in sorted runs: memory stays bounded."""
    monkeypatch.setattr(watch, "ORDER_RUN", 10)
    spool = _spool(tmp_path)
    names = [f"f{i:03d}" for i in range(35)]
    for name in reversed(names):
        touch(tmp_path / "incoming" / name)
    pending = Pending(100)
    discovery = Discovery([spool], pending, ignore=[], rescan_interval=60.0, in_order=True)
    asyncio.run(discovery.scan(spool))
    offered = [pending.get_nowait()[1] for _ in range(len(pending))]  # type: ignore[index]
    assert sorted(offered) == names
    runs = [offered[i : i + 10] for i in range(0, len(offered), 10)]
    assert all(run == sorted(run) for run in runs)
    assert offered != names  # the directory's order across runs: not one sort of everything


def test_resubmit_records_of_nested_files(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    records = tmp_path / "working" / ".resubmit"
    save_record(spool, "a/b/f", 2, 1234.5)
    assert load_record(spool, "a/b/f") == (2, 1234.5)
    forget_record(spool, "a/b/f")
    assert list(records.iterdir()) == []
    save_record(spool, "c/d/g", 1, time.time() - 10)  # its file is gone, its time passed
    touch(tmp_path / "incoming" / "c" / "h")
    save_record(spool, "c/h", 1, time.time() - 10)  # its file is still there
    assert expire_records(spool, before=time.time() + 60) == 1
    assert files_below(records) == ["c/h"]
