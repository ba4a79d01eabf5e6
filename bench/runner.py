"""One measured tool run: fresh server, fresh data, run, verify, tear down."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import Workload
from bench.data import write_files
from bench.proc import Measured, run_measured
from bench.server import bench_server, check_stored, server_cpu_seconds
from bench.sysstat import others, snap, wait_for_quiet
from bench.tools import S3spool, S3spoolRun, Tool, nondefault


@dataclass
class RunRecord:
    case: str
    tool: str
    rep: int
    ok: bool
    reason: str = ""
    files: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    maxrss_kib: int = 0
    server_cpu_s: float = 0.0
    returncode: int | None = None
    other_cpu_s: float = 0.0  # CPU burnt by unrelated processes during the run
    steal_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    settings: str = ""  # s3spool's non-default settings (tools.nondefault), the row's label

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def conclude(self, problems: list[str]) -> RunRecord:
        """The verdict: ok when nothing went wrong, else every problem in ``reason``."""
        self.reason = "; ".join(problems)
        self.ok = not problems
        return self


@contextlib.contextmanager
def reported(rundir: Path, problems: list[str]) -> Iterator[None]:
    """The body of one measured run: an error of the harness becomes one of its problems
    (FAILED in the report, the remaining cases go on), and ``rundir`` goes however it ends."""
    try:
        yield
    except Exception as e:
        problems.append(f"harness error: {e.__class__.__name__}: {e}")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def fill_measured(rec: RunRecord, m: Measured) -> None:
    rec.wall_s = m.wall_s
    rec.user_s = m.user_s
    rec.sys_s = m.sys_s
    rec.maxrss_kib = m.maxrss_kib
    rec.returncode = m.returncode
    if not math.isnan(m.first_line_s):  # the tool wrote a per-file line
        rec.extra["first_line_s"] = m.first_line_s


def _free_space_reason(where: Path, need: int) -> str | None:
    free = shutil.disk_usage(where).free
    if free < need:
        return f"insufficient disk: need {need >> 30} GiB free, have {free >> 30} GiB"
    return None


# the `run --once` summary: "... (39.1 MiB, 10 batches, 22 requests), ..." (BATCH on)
_REQUESTS = re.compile(rb"batches, (\d+) requests\)")


def run_batch(
    work: Workload,
    tool: Tool,
    rep: int,
    work_dir: Path,
    log_dir: Path,
    quiet_wait_s: float,
    server_kind: str = "rclone",
) -> RunRecord:
    rec = RunRecord(
        work.key, tool.name, rep, ok=False, files=len(work.files), bytes=work.total_bytes
    )
    rundir = work_dir / f"{work.key}-{tool.name}-r{rep}"
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    tag = f"{work.key}-{tool.name}-r{rep}"
    problems: list[str] = []
    with reported(rundir, problems):
        # Source copy + bucket copy coexist while a run is in flight.
        reason = _free_space_reason(work_dir, 2 * work.total_bytes + (1 << 30))
        if reason:
            return rec.conclude([reason])
        datadir = rundir / "s3"
        with bench_server(datadir, log_dir / f"{tag}.server.log", server_kind) as server:
            write_files(tool.source_dir(rundir), work.files)
            # Flush the freshly written data now so its writeback does not
            # compete with the measured run (and leftovers from the last run).
            os.sync()
            done = None
            if isinstance(tool, S3spoolRun):
                n = len(work.files)

                def done() -> bool:
                    return tool.done_count(rundir) >= n

            waited = wait_for_quiet(quiet_wait_s)
            if waited >= quiet_wait_s > 0:
                log(f"machine still busy after {waited:.0f} s, measuring anyway")
            env = tool.env(rundir, server.url)
            rec.settings = nondefault(env)
            cpu0 = server_cpu_seconds(server)
            sys0 = snap()
            m = run_measured(
                tool.argv(rundir, server.url),
                env=env,
                log_prefix=log_dir / tag,
                timeout_s=work.timeout_s,
                marker=tool.marker,
                done=done,
            )
            rec.server_cpu_s = server_cpu_seconds(server) - cpu0
            rec.other_cpu_s, rec.steal_s = others(sys0, snap(), m.cpu_s + rec.server_cpu_s)
            delivered = check_stored(server, datadir, work.files)
        fill_measured(rec, m)
        if isinstance(tool, S3spool):
            found = _REQUESTS.search((log_dir / f"{tag}.err").read_bytes())
            if found:
                rec.extra["requests_per_1k"] = int(found[1]) * 1000 / len(work.files)
        problems += [x for x in (verdict(tool, m, rundir, delivered, work),) if x]
    return rec.conclude(problems)


def verdict(tool: Tool, m: Measured, rundir: Path, delivered: str | None, work: Workload) -> str:
    """Every problem of the run; ``delivered``: what check_stored found wrong in the bucket."""
    problems: list[str] = []
    if m.timed_out:
        problems.append(f"timed out after {work.timeout_s:.0f} s")
    if isinstance(tool, S3spoolRun):
        if m.killed_after_term:
            problems.append("ignored SIGTERM (killed)")
        elif m.returncode != 0:
            problems.append(f"exit {m.returncode} after SIGTERM")
    elif m.returncode != 0 and not m.timed_out:
        problems.append(f"exit {m.returncode}")
    if m.rusage_lost and not (m.timed_out or m.killed_after_term):
        problems.append("spawner reported no rusage")
    src = tool.check_source(rundir, len(work.files))
    if src:
        problems.append(src)
    if delivered:
        problems.append(delivered)
    return "; ".join(problems)
