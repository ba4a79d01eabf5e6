"""Case 4: end-to-end latency of a running s3spool under a steady producer.

The producer writes each file in a scratch dir on the same filesystem and
renames it into incoming/ (atomic appearance, as a real spool writer must).
s3spool, run with S3SPOOL_LOG_FORMAT=json (the case's one setting, shown on its row), logs
one line per file:

    {"ts": <unix time of commit>, "level": "INFO", "event": "file", "spool": ...,
     "name": "<file name>", "key": ..., "size": ..., "duration": ...,
     "outcome": "delivered"}

Latency = ts - rename time, joined on name.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from bench.config import BUCKET, LiveSpec
from bench.data import check_delivery, count_entries, payload
from bench.proc import Measured, MeasuredProcess
from bench.runner import RunRecord, fill_measured, log, reported
from bench.server import bench_server, server_cpu_seconds
from bench.sysstat import others, snap, wait_for_quiet
from bench.tools import S3spool, nondefault

PROBE = "probe-000000.bin"


def parse_file_events(lines: Iterable[str]) -> tuple[dict[str, float], int]:
    """Map file name -> commit ts from s3spool's JSON log; also count repeats.

    Non-JSON lines and other events are skipped, so stderr noise (warnings,
    tracebacks) does not break the join. The first "delivered" per name wins.
    """
    done: dict[str, float] = {}
    repeats = 0
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or obj.get("event") != "file":
            continue
        if obj.get("outcome") != "delivered":
            continue
        name, ts = obj.get("name"), obj.get("ts")
        if not isinstance(name, str) or not isinstance(ts, int | float):
            continue
        if name in done:
            repeats += 1
        else:
            done[name] = float(ts)
    return done, repeats


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without floats
    return sorted_values[int(rank) - 1]


class _BacklogSampler(threading.Thread):
    """Counts incoming/ once per second, as an operator's `ls | wc -l` would."""

    def __init__(self, incoming: Path) -> None:
        super().__init__(daemon=True)
        self.incoming = incoming
        self.samples: list[tuple[float, int]] = []
        self._stop_evt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._stop_evt.is_set():
            self.samples.append((time.monotonic() - t0, count_entries(self.incoming)))
            self._stop_evt.wait(1.0)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


def wait_until(directory: Path, want: int, proc: MeasuredProcess, timeout_s: float) -> float | None:
    """Poll done/ every 50 ms; the time it reached ``want``, None on timeout/exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if count_entries(directory) >= want:
            return time.monotonic()
        if proc.wait_exit(0.05):
            return time.monotonic() if count_entries(directory) >= want else None
    return None


def run_live(
    spec: LiveSpec, tool: S3spool, rep: int, work_dir: Path, log_dir: Path, quiet_wait_s: float
) -> RunRecord:
    rec = RunRecord(
        "4", "s3spool-run", rep, ok=False, files=spec.count, bytes=spec.count * spec.size
    )
    tag = f"4-live-r{rep}"
    rundir = work_dir / tag
    shutil.rmtree(rundir, ignore_errors=True)
    incoming = tool.source_dir(rundir)
    done_dir = tool.spool_root(rundir) / "done"
    scratch = rundir / "producer-tmp"  # same filesystem, so rename is atomic
    incoming.mkdir(parents=True)
    scratch.mkdir()
    renamed: dict[str, float] = {}
    names = [f"live-{i:06d}.bin" for i in range(spec.count)]
    problems: list[str] = []
    t_start = end = 0.0
    with reported(rundir, problems):
        with bench_server(rundir / "s3", log_dir / f"{tag}.server.log") as server:
            env = tool.env(rundir, server.url, {"S3SPOOL_LOG_FORMAT": "json"})
            rec.settings = nondefault(env)
            if wait_for_quiet(quiet_wait_s) >= quiet_wait_s > 0:
                log(f"machine still busy after {quiet_wait_s:.0f} s, measuring anyway")
            cpu0 = server_cpu_seconds(server)
            sys0 = snap()
            with MeasuredProcess(
                tool.argv(rundir, server.url), env=env, log_prefix=log_dir / tag
            ) as p:
                # Readiness: one probe file must make it through before the clock
                # starts, so service start-up is not billed as latency.
                (scratch / PROBE).write_bytes(payload(0, spec.size))
                os.rename(scratch / PROBE, incoming / PROBE)
                if wait_until(done_dir, 1, p, 60.0) is None:
                    problems.append("probe file not delivered within 60 s of start")
                else:
                    sampler = _BacklogSampler(incoming)
                    sampler.start()
                    sizes = [spec.size] * spec.count
                    t_start = produce(spec.rate, names, sizes, scratch, incoming, renamed)
                    t_produced = time.monotonic()
                    # Exactly at the end of producing (the sampler's last tick
                    # can be up to 1 s earlier): what is not yet claimed.
                    rec.extra["backlog_end"] = float(count_entries(incoming))
                    t_end = wait_until(done_dir, spec.count + 1, p, spec.drain_timeout_s)
                    sampler.stop()
                    end = t_end if t_end is not None else time.monotonic()
                    if t_end is None:
                        problems.append(f"not drained {spec.drain_timeout_s:.0f} s after producing")
                    rec.extra.update(_backlog_stats(sampler.samples, t_produced - t_start))
                    rec.extra["drain_s"] = end - t_produced
                    rec.extra["rate_achieved"] = spec.count / (t_produced - t_start)
                    rec.extra["rate_nominal"] = spec.rate
                if not p.wait_exit(0):
                    p.stop(30.0)
                m = p.reap()
            rec.server_cpu_s = server_cpu_seconds(server) - cpu0
            rec.other_cpu_s, rec.steal_s = others(sys0, snap(), m.cpu_s + rec.server_cpu_s)
        expected = [(PROBE, spec.size)] + [(n, spec.size) for n in names]
        problems += service_problems(m, p, tool, rundir, log_dir / tag, renamed, expected, rec)
        if "drain_s" in rec.extra:
            rec.wall_s = end - t_start
    return rec.conclude(problems)


def produce(
    rate: float,
    names: list[str],
    sizes: list[int],
    scratch: Path,
    incoming: Path,
    renamed: dict[str, float],
) -> float:
    """Rename files into incoming/ on a fixed schedule; returns the start time.

    Each slot is scheduled from t0 (not from the previous rename) so a late
    rename does not shift all later ones; the actual rename time is recorded.
    """
    interval = 1.0 / rate
    t0 = time.monotonic() + 0.05
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        tmp = scratch / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, payload(i + 1, size))
        finally:
            os.close(fd)
        delay = t0 + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        os.rename(tmp, incoming / name)
        # Wall-clock time to match the service's unix "ts".
        renamed[name] = time.time()
    return t0


def service_problems(
    m: Measured,
    p: MeasuredProcess,
    tool: S3spool,
    rundir: Path,
    log_prefix: Path,
    renamed: dict[str, float],
    expected: list[tuple[str, int]],
    rec: RunRecord,
) -> list[str]:
    """What went wrong with a running service fed by the producer: its exit, the latency
    join (into ``rec``), files left in the spool, objects missing from the bucket.

    Fills ``rec`` from the process's measurement first; the caller then sets its wall time
    to first rename -> last file in done/ (not the process's lifetime)."""
    fill_measured(rec, m)
    problems: list[str] = []
    if m.killed_after_term:
        problems.append("ignored SIGTERM (killed)")
    elif p.term_sent and m.returncode != 0:
        problems.append(f"exit {m.returncode} after SIGTERM")
    elif not p.term_sent:
        problems.append(f"exited on its own with {m.returncode}")
    problems += latency_stats(rec, log_prefix, renamed)
    src = tool.check_source(rundir, len(expected))
    if src:
        problems.append(src)
    dst = check_delivery(rundir / "s3" / BUCKET, expected)
    if dst:
        problems.append(dst)
    return problems


def _backlog_stats(samples: list[tuple[float, int]], produce_s: float) -> dict[str, float]:
    during = [n for t, n in samples if t <= produce_s] or [0]
    return {
        "backlog_max": float(max(n for _, n in samples) if samples else 0),
        # The last sample taken while still producing: growing = not keeping up.
        "backlog_last": float(during[-1]),
    }


def latency_stats(rec: RunRecord, log_prefix: Path, renamed: dict[str, float]) -> list[str]:
    """p50/p95/p99/max rename -> commit into ``rec.extra``; problems if lines are missing."""
    lines: list[str] = []
    for suffix in (".err", ".out"):
        path = log_prefix.with_suffix(suffix)
        if path.exists():
            lines += path.read_text(errors="replace").splitlines()
    events, repeats = parse_file_events(lines)
    lat = sorted((events[n] - t) * 1000.0 for n, t in renamed.items() if n in events)
    missing = sum(1 for n in renamed if n not in events)
    for q in (50, 95, 99):
        rec.extra[f"p{q}_ms"] = percentile(lat, q)
    rec.extra["max_ms"] = lat[-1] if lat else float("nan")
    rec.extra["log_missing"] = float(missing)
    rec.extra["log_repeats"] = float(repeats)
    if missing:
        return [f"{missing}/{len(renamed)} files have no 'delivered' log line"]
    return []
