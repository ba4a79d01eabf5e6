"""Case n: the local path alone, ``run --once`` into ``noop://`` (no store, no server).

20,000 files of 100 bytes in incoming/, s3spool with true defaults (INFO, one line per file
to a pipe) and ``S3SPOOL_DESTINATION=noop://``: client CPU per file and peak RSS are what the
spool machinery costs a file (claim, read, log, move to done/) without any request.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.config import NOOP_FILES
from bench.data import write_files
from bench.proc import run_measured
from bench.runner import RunRecord, fill_measured, log, reported
from bench.sysstat import others, snap, wait_for_quiet
from bench.tools import S3spool, nondefault

TITLE = f"noop:// {NOOP_FILES:,} x 100 B, `run --once`"


def run_noop(
    tool: S3spool, rep: int, work_dir: Path, log_dir: Path, quiet_wait_s: float
) -> RunRecord:
    files = [(f"noop-{i:06d}.bin", 100) for i in range(NOOP_FILES)]
    rec = RunRecord("n", "s3spool", rep, ok=False, files=len(files), bytes=100 * len(files))
    tag = f"n-noop-r{rep}"
    rundir = work_dir / tag
    shutil.rmtree(rundir, ignore_errors=True)
    problems: list[str] = []
    with reported(rundir, problems):
        write_files(tool.source_dir(rundir), files)
        os.sync()
        if wait_for_quiet(quiet_wait_s) >= quiet_wait_s > 0:
            log(f"machine still busy after {quiet_wait_s:.0f} s, measuring anyway")
        env = tool.env(rundir, "")  # "": noop://, no endpoint
        rec.settings = nondefault(env)
        sys0 = snap()
        m = run_measured(
            tool.argv(rundir, ""),
            env=env,
            log_prefix=log_dir / tag,
            timeout_s=600.0,
            marker=tool.marker,
        )
        rec.other_cpu_s, rec.steal_s = others(sys0, snap(), m.cpu_s)
        fill_measured(rec, m)
        if m.timed_out or m.returncode != 0:
            problems.append("timed out" if m.timed_out else f"exit {m.returncode}")
        problems += [x for x in (tool.check_source(rundir, len(files)),) if x]
    return rec.conclude(problems)
