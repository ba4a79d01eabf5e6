"""Hostile and odd input, table-driven (issue 3 point 8; docs/guarantees.md, guarantee 13).

The table is ``CASES`` in inputs_cases.py: each row says how its entry is set up, the log
record it must produce, where the entry must end up and, if uploaded, its object.

The real process runs (``python -m s3spool run [--once]``) against moto on 127.0.0.1, with
``S3SPOOL_LOG_FORMAT=json`` so records are matched by field.  When the tests run as root, the
service runs as uid 65534 (nobody) through setpriv, so permission cases are real; its spools live
under a fresh 0755 ``tempfile.mkdtemp()`` directory (pytest's tmp_path is under a 0700 one).

Cases are grouped into a few runs (``RUNS``) that do not interfere; each run is a module-scoped
fixture here (``run_<run>``), executed once, and ``test_case`` (one test per row) checks the run's
outcome for its row, so each case passes or fails on its own.  ``test_run`` checks each run as a
whole: exit code, no crash, every output line valid JSON (one line per record, whatever the
names), no unexpected object, and no credential or signature anywhere in the output.  How a run
is set up, run and checked is in inputs_runs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultproxy import FaultProxy
from inputs_cases import AS_ROOT, CASES, FUTURE, GID, LONG, OWNER, PREFIX, RUNS, UID, Case, own
from inputs_runs import (
    Result,
    check_case,
    check_run,
    files_in_working,
    give_back,
    lock_out,
    make_entries,
    new_run,
    new_spot,
    recording,
    run_once,
    service,
    watch_opens,
)
from proc import cli
from s3servers import RcloneServer, S3Server
from s3spool.run.service import Service
from s3spool.spool.spool import Claim
from s3spool.store.open import NoopStore
from svc import config_of, drop, settings_for


# --- fixtures: one per run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="s3spool-inputs-"))
    path.chmod(0o755)
    if AS_ROOT:
        check = cli(["--version"], {}, as_nobody=True)  # as the service user (UID)
        if check.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            pytest.skip(f"the venv cannot run as uid {UID}: {check.stderr.strip()[-300:]}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def run_main(base: Path, moto_srv: S3Server) -> Result:
    """One ``run --once`` over every "main" row at once."""
    res = new_run(base, "main")
    spot = res.spot
    watched = [spot.outside / "decoy.txt", spot.spool / "private.txt"]
    run_once(res, moto_srv.new_target(), watched=watched)
    shared = spot.outside / "shared.dat"
    if not shared.exists() or shared.read_bytes() != b"hard-linked from outside the spool":
        res.note("19-hard-link-outside", "the file outside the spool was changed or removed")
    elif shared.stat().st_nlink != 2:
        res.note("19-hard-link-outside", f"outside file has {shared.stat().st_nlink} links")
    return res


@pytest.fixture(scope="module")
def run_text(base: Path, moto_srv: S3Server) -> Result:
    """``run --once``, LOG_FORMAT=text, LOG_LEVEL=DEBUG, a 400-byte literal KEY_FORMAT prefix,
    and IGNORE without ``.*`` (so that ``...`` is a candidate)."""
    return run_once(
        new_run(base, "text"),
        moto_srv.new_target(),
        log_format="text",
        log_level="DEBUG",
        key_format=LONG + "/{fname}",
        ignore="*.tmp,*.part",
    )


@pytest.fixture(scope="module")
def run_badsecret(base: Path, rclone_srv: RcloneServer) -> Result:
    """rclone checks SigV4: a wrong secret is refused (SignatureDoesNotMatch)."""
    target = rclone_srv.new_target()
    right_key_id = {"AWS_ACCESS_KEY_ID": target.access_key}  # and the wrong secret
    return run_once(new_run(base, "badsecret"), target, env=right_key_id, log_level="DEBUG")


@pytest.fixture(scope="module")
def run_done_ro(base: Path, moto_srv: S3Server) -> Result:
    """``run`` at DEBUG behind a FaultProxy: case 24c (failing PUTs), case 23 (slow PUT,
    growing file), then case 21."""
    target = moto_srv.new_target()
    res = new_run(base, "done_ro")
    spot = res.spot
    done = spot.spool / "done"
    with (
        FaultProxy(target.endpoint_url) as proxy,
        service(
            res,
            target,
            via=proxy.url,
            log_level="DEBUG",
            cleanup_interval="1",
            rescan_interval="2",
            shutdown_grace="5",
        ) as proc,
    ):
        try:
            # 24c: error paths at DEBUG: a reset, then a 500, then success
            # (botocore reports a reset PUT as "could not connect": a pause, not a retry)
            proxy.fault_kinds = frozenset({"put_object"})
            proxy.reset = 1.0
            drop(spot.incoming, "flaky.dat", b"retried twice", owner=OWNER)
            proc.wait_for_log(r"'flaky\.dat': .+; retry 1/|store unavailable: .*PutObject", 15)
            mark = proc.mark()
            proxy.reset, proxy.error500 = 0.0, 1.0
            proc.wait_for_log(r"'flaky\.dat': .+; retry \d+/", 15, since=mark)
            proxy.clear_faults()
            if not proc.wait_until(lambda: (done / "flaky.dat").exists(), 15, check=False):
                res.note("24c-errors-do-not-leak", "not in done/ within 15s")
            # 23: the producer keeps its fd and appends while the PUT is held by the proxy
            proxy.latency_s = 1.0
            tmp = spot.producer / "growing.log"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, b"A" * 1000)
                own(tmp)
                os.rename(tmp, spot.incoming / "growing.log")
                if not proc.wait_until(lambda: proxy.in_flight >= 1, 15, check=False):
                    res.note("23-growing-during-upload", "no PUT in flight within 15s")
                os.write(fd, b"B" * 500)
            finally:
                os.close(fd)
            if not proc.wait_until(lambda: (done / "growing.log").exists(), 20, check=False):
                res.note("23-growing-during-upload", "not in done/ within 20s")
            proxy.latency_s = 0.0
            # 21: done/ unwritable while the file is uploaded
            lock_out(done)
            mark = proc.mark()
            drop(spot.incoming, "stuck-done", b"settled late", owner=OWNER)
            stuck = r"cannot move 'stuck-done' in \S+/done"
            proc.wait_for_log(stuck, 15, since=mark)
            if "stuck-done" not in files_in_working(spot):
                res.note(
                    "21-done-unwritable",
                    "not in working/<instance>/files/ while done/ was unwritable",
                )
            if target.get(PREFIX + "stuck-done") != b"settled late":
                res.note("21-done-unwritable", "object missing while done/ was unwritable")
            time.sleep(2)  # probes of the fault go on meanwhile, without a line each
            if len(re.findall('"ERROR".*' + stuck, proc.log_text()[mark:])) != 1:
                res.note("21-done-unwritable", "the fault was not logged exactly once")
            give_back(done)
            if not proc.wait_until(lambda: (done / "stuck-done").exists(), 2.5, check=False):
                res.note("21-done-unwritable", "not in done/ 2s after done/ was writable")
            proc.wait_for_log(r"/done works again after [0-9.]+s; resuming", 5, since=mark)
        finally:
            give_back(done)
    return res


@pytest.fixture(scope="module")
def run_failed_ro(base: Path, moto_srv: S3Server) -> Result:
    """``run`` with HOLD_FOR=1s and FAIL_RATE=1: case 20, case 19d, then case 22."""
    res = new_run(base, "failed_ro")
    spot = res.spot
    failed = spot.spool / "failed"
    with service(
        res,
        moto_srv.new_target(),
        hold_for="1",
        fail_rate="1",
        cleanup_interval="1",
        rescan_interval="2",
        shutdown_grace="5",
    ) as proc:
        try:
            # 20: deferred by HOLD_FOR, then gone before it is eligible
            drop(spot.incoming, "vanishes", b"here for 0.3s", owner=OWNER)
            time.sleep(0.3)
            os.unlink(spot.incoming / "vanishes")
            time.sleep(2.5)  # past HOLD_FOR, the defer timer and one rescan
            if not proc.alive():
                res.note("20-vanish-before-claim", "the service died")
            # 19d: a future mtime must not hold a file until that future
            drop(spot.incoming, "future-held", b"held, not for 75 years", FUTURE, owner=OWNER)
            proc.wait_until(lambda: (failed / "future-held").exists(), 8, check=False)
            # 22: a failure that cannot be moved to failed/
            lock_out(failed)
            drop(spot.incoming, "stuck-failed", b"kept in working", owner=OWNER)
            proc.wait_for_log(r"cannot move 'stuck-failed' in \S+/failed", 15)
        finally:
            give_back(failed)
    return res


@pytest.fixture(scope="module")
def run_enospc(base: Path, moto_srv: S3Server) -> Iterator[Result]:
    """A spool on its own tmpfs (64 inodes), every inode used before ``run --once`` starts."""
    if not AS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    spot = new_spot(base, "enospc")
    shutil.rmtree(spot.spool)
    spot.spool.mkdir()
    options = f"size=1m,nr_inodes=64,mode=0755,uid={UID},gid={GID}"
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(spot.spool)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        target = moto_srv.new_target()
        instance = "inputs-enospc"
        working = f"working/{instance}"
        subs = ("incoming", "working", "done", "failed", spot.producer.name)
        for sub in (*subs, working, f"{working}/files", f"{working}/keys"):
            (spot.spool / sub).mkdir()
            own(spot.spool / sub)
        make_entries(spot, "enospc")
        filler = spot.spool / "filler"
        filler.mkdir()
        n = 0
        with contextlib.suppress(OSError):
            while n < 10_000:
                (filler / str(n)).touch()
                n += 1
        res = Result("enospc", spot)
        try:
            (filler / "one-more").touch()
            res.note("25-enospc-key-record", f"the tmpfs still has free inodes after {n}")
        except OSError:
            pass
        yield run_once(res, target, key_format="{now}/{fname}", instance_id=instance)
    finally:
        for umount in (["umount"], ["umount", "-l"]):  # lazily if it is still busy
            unmounted = subprocess.run(
                [*umount, str(spot.spool)], capture_output=True, timeout=30, check=False
            )
            if unmounted.returncode == 0:
                break


@pytest.fixture(scope="module")
def run_unit(base: Path) -> Result:
    """In-process: races after the claim, arranged by hand around ``Pipeline.deliver``."""
    res = new_run(base, "unit")
    with recording(res), watch_opens([res.spot.outside / "decoy.txt"], res):
        asyncio.run(_unit_races(res))
    return res


async def _unit_races(res: Result) -> None:
    spot = res.spot
    settings = settings_for(spot.spool, None)
    svc = Service(config_of(settings))
    svc.prepare()
    (sp,) = svc.spools
    sp.open()
    # a regression that reads on must not crash the fixture: "upload" to noop:// and let the
    # case's place / opened-file checks say what went wrong
    svc.routes[0].store = NoopStore()

    async def deliver(cid: str, claim: Claim, timeout: float = 10) -> None:
        try:
            await asyncio.wait_for(svc.pipelines[0].deliver(claim), timeout)
        except TimeoutError:
            res.note(cid, f"deliver did not return within {timeout}s")
        except Exception as exc:
            res.note(cid, f"deliver raised {exc!r}")

    def claimed(name: str) -> Claim:
        drop(spot.incoming, name, b"regular when claimed", owner=OWNER)
        claim = sp.claim(name)
        assert claim is not None
        return claim

    try:
        # 20b: claimed, then removed (with its key record) before it is opened
        claim = claimed("gone")
        claim.key = PREFIX + "gone"
        sp.save_key(claim)
        os.unlink(claim.path)
        await deliver("20b-vanish-after-claim", claim)
        if (sp.keys / "gone").exists():
            res.note("20b-vanish-after-claim", "its key record was left in working/")
        # 20c: regular at lstat and claim time, a symlink at open time
        claim = claimed("swapped-link")
        os.unlink(claim.path)
        os.symlink(spot.outside / "decoy.txt", claim.path)
        await deliver("20c-symlink-swapped-in", claim)
        # 20d: a fifo with no writer at open time
        claim = claimed("swapped-fifo")
        os.unlink(claim.path)
        os.mkfifo(claim.path)
        fifo_path = claim.path

        def unblock() -> None:
            # a blocking open(2) would freeze the event loop, which wait_for cannot interrupt:
            # a writer's open releases it, so the test fails instead of hanging
            with contextlib.suppress(OSError):
                os.close(os.open(fifo_path, os.O_WRONLY | os.O_NONBLOCK))

        watchdog = threading.Timer(5.0, unblock)
        watchdog.start()
        started = time.monotonic()
        try:
            await deliver("20d-fifo-swapped-in", claim)
        finally:
            watchdog.cancel()
        if time.monotonic() - started > 4:
            res.note("20d-fifo-swapped-in", "deliver blocked on the fifo (released by a writer)")
    finally:
        sp.close()


# --- tests ----------------------------------------------------------------------------------
def _param(case: Case) -> Any:
    marks: list[Any] = []
    if case.bug:
        marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
    return pytest.param(case, id=case.id, marks=marks)


def _report(head: str, problems: list[str], res: Result) -> str:
    tail = "\n".join(res.log.splitlines()[-25:])
    return f"{head}\n  " + "\n  ".join(problems) + f"\n--- {res.run} log tail ---\n{tail}"


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(case: Case, request: pytest.FixtureRequest) -> None:
    if case.needs_root and not AS_ROOT:
        pytest.skip("needs root (mknod, a root-owned file)")
    res: Result = request.getfixturevalue(f"run_{case.run}")
    problems = check_case(case, res)
    assert not problems, _report(f"{case.id}: {case.setup}", problems, res)


@pytest.mark.parametrize("run", list(RUNS))
def test_run(run: str, request: pytest.FixtureRequest) -> None:
    res: Result = request.getfixturevalue(f"run_{run}")
    problems = check_run(res)
    assert not problems, _report(f"run {run}:", problems, res)


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 22
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.run for c in CASES} <= set(RUNS)
    for c in CASES:
        assert c.log is not None or c.note, f"{c.id}: a silent case must say why"
        assert (c.key is None) == (c.place != "done"), c.id
