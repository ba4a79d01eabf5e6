"""Case 0: what a command costs before it does any work.

`s3spool --help`, and `s3spool run --once` on an empty spool against a fresh
`rclone serve s3` (settings as in the headline rows): a cron job that runs --once every
minute mostly finds nothing to do. Each is timed REPS times; the row holds the median.
Each --once run gets a new spool, so none profits from the one before it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.config import S3SPOOL
from bench.proc import run_measured
from bench.runner import RunRecord, log
from bench.server import bench_server
from bench.tools import S3spool, nondefault

REPS = 7


def run_cold(tool: S3spool, rep: int, work_dir: Path, log_dir: Path) -> list[RunRecord]:
    """One record per command and repetition ("0 help", "0 empty")."""
    records = []
    rundir = work_dir / f"0-cold-r{rep}"
    shutil.rmtree(rundir, ignore_errors=True)
    try:
        with bench_server(rundir / "s3", log_dir / f"0-cold-r{rep}.server.log") as server:
            for i in range(REPS):
                for case, argv in (("0 help", ["--help"]), ("0 empty", ["run", "--once"])):
                    spool = rundir / f"{i}"
                    shutil.rmtree(spool, ignore_errors=True)
                    tool.source_dir(spool).mkdir(parents=True)
                    env = tool.env(spool, server.url)
                    m = run_measured(
                        [str(S3SPOOL), *argv],
                        env=env,
                        log_prefix=log_dir / f"0-cold-r{rep}-{i}-{argv[0]}",
                        timeout_s=60.0,
                    )
                    rec = RunRecord(case, "s3spool", rep, ok=m.returncode == 0, files=0)
                    rec.settings = nondefault(env)
                    rec.wall_s, rec.user_s, rec.sys_s = m.wall_s, m.user_s, m.sys_s
                    rec.maxrss_kib, rec.returncode = m.maxrss_kib, m.returncode
                    rec.reason = "" if rec.ok else f"exit {m.returncode}"
                    records.append(rec)
    except Exception as e:  # report, do not abort the remaining cases
        log(f"case 0: harness error: {e.__class__.__name__}: {e}")
        records.append(RunRecord("0 empty", "s3spool", rep, ok=False, reason=f"harness error: {e}"))
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    return records
