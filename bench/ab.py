"""A/B of s3spool builds: `run --once` over the same small backlog, builds alternating.

    python -m bench.ab [--files N | --case h3] [--rounds R] [--pause S] BUILD [BUILD ...]

A BUILD is a checkout (a directory with ``src/s3spool``, e.g. ``git worktree add /tmp/base
REV``; it runs as ``python -m s3spool`` with that ``src`` first on the path) or an
``s3spool`` executable. Every round runs each build once, in an order that rotates from
round to round, against one ``rclone serve s3``, each run under a key prefix of its own (so
no run meets a directory the others filled). Settings are the headline rows' defaults.
Prints the median and minimum wall time and client CPU per build: a change of a few per
cent shows here when one run of the full harness is within its noise.  ``--case``: a
batch case's files (h3: 400 files of 1 KiB to 48 MiB) instead of small ones; each run's
objects are deleted after it, and ``--pause`` lets the disk write back what a run wrote
before the next one starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.config import BUCKET, workloads
from bench.data import write_files
from bench.proc import run_measured
from bench.server import bench_server
from bench.tools import S3spool


def _command(build: Path) -> tuple[list[str], dict[str, str]]:
    if (build / "src" / "s3spool").is_dir():
        return [sys.executable, "-m", "s3spool"], {"PYTHONPATH": str((build / "src").resolve())}
    return [str(build)], {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("builds", nargs="+", type=Path, help="checkouts or s3spool executables")
    ap.add_argument("--files", type=int, default=3000, help="4 KiB files per run")
    ap.add_argument("--case", help="a batch case's files instead (h1..h4, 3a, ...)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between runs, after sync")
    ns = ap.parse_args(argv)
    files = [(f"f{k:06d}", 4096) for k in range(ns.files)]
    shape = f"{ns.files} x 4 KiB"
    if ns.case:
        cases = {w.key: w for ws in workloads(quick=False).values() for w in ws}
        if ns.case not in cases:
            ap.error(f"--case: no case {ns.case!r} (one of {', '.join(sorted(cases))})")
        files, shape = list(cases[ns.case].files), f"case {ns.case} ({cases[ns.case].title})"
    tool = S3spool("s3spool")
    walls: dict[int, list[float]] = {i: [] for i in range(len(ns.builds))}
    cpus: dict[int, list[float]] = {i: [] for i in range(len(ns.builds))}
    work = Path(tempfile.mkdtemp(prefix="s3spool-ab-"))
    try:
        with bench_server(work / "s3", work / "server.log") as server:
            for r in range(ns.rounds):
                order = list(range(len(ns.builds)))
                order = order[r % len(order) :] + order[: r % len(order)]
                for i in order:
                    rundir = work / f"r{r}-b{i}"
                    if ns.pause:
                        os.sync()
                        time.sleep(ns.pause)
                    write_files(tool.source_dir(rundir), files)
                    cmd, extra = _command(ns.builds[i])
                    env = {
                        **tool.env(rundir, server.url),
                        **extra,
                        "S3SPOOL_DESTINATION": f"s3://{BUCKET}/r{r}-b{i}/",
                    }
                    m = run_measured(
                        [*cmd, "run", "--once"], env=env, log_prefix=rundir, timeout_s=600.0
                    )
                    if m.returncode != 0:
                        print(f"{ns.builds[i]}: exit {m.returncode}, see {rundir}.err")
                        return 1
                    walls[i].append(m.wall_s)
                    cpus[i].append(m.user_s + m.sys_s)
                    shutil.rmtree(rundir)
                    shutil.rmtree(work / "s3" / BUCKET / f"r{r}-b{i}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{shape}, {ns.rounds} rounds")
    print("| build | wall s median | wall s min | client CPU s median | CPU ms/file |")
    print("|---|---|---|---|---|")
    for i, build in enumerate(ns.builds):
        cpu = statistics.median(cpus[i])
        print(
            f"| {build} | {statistics.median(walls[i]):.3f} | {min(walls[i]):.3f} "
            f"| {cpu:.3f} | {cpu / len(files) * 1000:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
