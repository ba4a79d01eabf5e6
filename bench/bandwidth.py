"""Case b: BANDWIDTH_LIMIT holds on a backlog drain, and follows SIGHUP and a schedule.

One `s3spool run` drains a ~1.1 GiB backlog (256 KiB bodies sent from memory, 3 MiB
streamed single PUTs, 80 MiB files in 16 MiB parts) into a fresh `rclone serve s3`, with a
config file that it re-reads on SIGHUP. The timeline is laid around the next minute
boundary T of the local clock (the harness waits for one far enough ahead):

    T-46 s  start, config file: bandwidth_limit = "20MiB"
    T-42 s  six 5 s windows of throughput (T-42 .. T-12), each judged against 20 MiB/s
    T-10 s  config file: "<T-1min>-<T>=10MiB,<T>-<T-1min>=20MiB"; SIGHUP (20 -> 10 MiB/s)
    T       the schedule's window ends (10 -> 20 MiB/s), no signal
    T+8 s   config file: "off"; SIGHUP; the rest drains at full speed; then SIGTERM

Throughput is what reaches the store: a relay in front of it (bench/relay.py) counts the
bytes s3spool sends in 0.1 s bins. Each change's latency is measured twice: until /metrics
shows the new limit (polled every 20 ms), and where the cumulative bytes bend (the
intersection of straight lines fitted to the seconds before and after the change; the
first 2.5 s after it are left out of the fit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.config import BUCKET, KIB, MIB
from bench.data import check_delivery, write_files
from bench.live import wait_until
from bench.proc import MeasuredProcess, relay
from bench.report import judge
from bench.runner import RunRecord, fill_measured, log, reported
from bench.server import bench_server, server_cpu_seconds
from bench.sysstat import others, snap, wait_for_quiet
from bench.targets import BANDWIDTH_CHANGE_MAX_S, BANDWIDTH_WINDOW_MAX_PCT
from bench.tools import S3spool, Tool, nondefault

GAUGE = "s3spool_bandwidth_limit_bytes"
START_S = 4.0  # start-up and warm-up before the first window
GAP_S = 2.0  # after the last window, before the SIGHUP
HUP_S = 10.0  # the SIGHUP, this long before the schedule's boundary
AFTER_S = 8.0  # at the schedule's rate, after the boundary
SKIP_S = 2.5  # left out of the line fits after a change


@dataclass(frozen=True)
class BandwidthSpec:
    rate: int  # BANDWIDTH_LIMIT, bytes/s
    low: int  # the rate SIGHUP sets, before the schedule restores ``rate``
    windows: int  # judged windows at ``rate``
    window_s: float
    files: tuple[tuple[str, int], ...]

    @property
    def lead_s(self) -> float:
        """From start to the schedule's boundary."""
        return START_S + self.windows * self.window_s + GAP_S + HUP_S


def bandwidth_spec(quick: bool) -> BandwidthSpec:
    windows = 2 if quick else 6
    rate, low = 20 * MIB, 10 * MIB
    # enough for the whole timeline with a tenth to spare, in three kinds of body
    need = rate * (START_S + windows * 5.0 + GAP_S + AFTER_S) + low * HUP_S
    scale = need * 1.1 / (1110 * MIB)
    files = (
        [(f"s-{i:04d}.bin", 256 * KIB) for i in range(round(400 * scale))]
        + [(f"m-{i:04d}.bin", 3 * MIB) for i in range(round(150 * scale))]
        + [(f"l-{i:02d}.bin", 80 * MIB) for i in range(max(1, round(7 * scale)))]
    )
    return BandwidthSpec(rate, low, windows, 5.0, tuple(files))


def title(quick: bool) -> str:
    spec = bandwidth_spec(quick)
    total = sum(size for _, size in spec.files)
    return (
        f"bandwidth {spec.rate // MIB} MiB/s: {spec.windows} x {spec.window_s:g} s windows, "
        f"SIGHUP and schedule changes ({total / MIB:.0f} MiB backlog)"
    )


def gauge(url: str) -> float | None:
    """The global limit /metrics shows (None while it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == GAUGE and sample.labels.get("scope") == "global":
                return float(sample.value)
    return None


def _until(pred: Callable[[], bool], deadline: float, step: float = 0.02) -> float | None:
    """When ``pred`` first held (polled every ``step``; the end of the poll that saw it, so
    a latency is never under-stated); None at ``deadline``."""
    while True:
        if pred():
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(step)


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def _limit_text(rate: int) -> str:
    return f"{rate // MIB}MiB"


class Bytes:
    """The relay's bins as a cumulative curve on the harness's monotonic clock."""

    def __init__(self, counts: dict[str, Any]) -> None:
        self.t0 = float(counts.get("t0", 0.0))
        self.bin_s = float(counts.get("bin_s", 0.1))
        raw = {int(k): int(v) for k, v in counts.get("bins", {}).items()}
        self.bins = [raw.get(i, 0) for i in range(max(raw, default=-1) + 1)]

    def between(self, a: float, b: float) -> int:
        """Bytes that arrived in [a, b) (to a bin)."""
        lo = max(0, round((a - self.t0) / self.bin_s))
        hi = max(lo, round((b - self.t0) / self.bin_s))
        return sum(self.bins[lo:hi])

    def line(self, a: float, b: float) -> tuple[float, float]:
        """(intercept, slope in bytes/s) of the cumulative bytes over [a, b], least squares."""
        points: list[tuple[float, float]] = []
        total = 0
        for i, n in enumerate(self.bins):
            total += n
            t = self.t0 + (i + 1) * self.bin_s
            if a <= t <= b:
                points.append((t, float(total)))
        if len(points) < 2:
            return 0.0, float("nan")
        mt = sum(t for t, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        var = sum((t - mt) ** 2 for t, _ in points)
        slope = sum((t - mt) * (y - my) for t, y in points) / var
        return my - slope * mt, slope

    def knee(self, event: float, before: float, after: float) -> tuple[float, float, float]:
        """(latency s, rate before, rate after): where lines fitted to [before, event] and
        [event + SKIP_S, after] meet, relative to ``event``."""
        a1, b1 = self.line(before, event)
        a2, b2 = self.line(event + SKIP_S, after)
        if math.isnan(b1) or math.isnan(b2) or abs(b1 - b2) < 1.0:
            return float("nan"), b1, b2
        return (a2 - a1) / (b1 - b2) - event, b1, b2


def run_case(
    ns: argparse.Namespace, tools: dict[str, Tool], work_dir: Path, log_dir: Path
) -> list[RunRecord]:
    """Case b's repetitions (its own table: ``bandwidth_table``)."""
    tool = tools.get("s3spool-run")
    if not isinstance(tool, S3spool) or tool.unavailable:
        log("case b: needs the s3spool-run tool (--tools)")
        return []
    spec = bandwidth_spec(ns.quick)
    records = []
    for rep in range(1, ns.reps + 1):
        log(f"case b ({title(ns.quick)}) rep {rep}/{ns.reps} ...")
        rec = run_bandwidth(spec, tool, rep, work_dir, log_dir, ns.quiet_wait)
        state = "ok" if rec.ok else f"FAILED: {rec.reason}"
        log(f"case b rep {rep}: {state} | {json.dumps(rec.extra)}")
        records.append(rec)
    return records


def run_bandwidth(
    spec: BandwidthSpec,
    tool: S3spool,
    rep: int,
    work_dir: Path,
    log_dir: Path,
    quiet_wait_s: float,
) -> RunRecord:
    total = sum(size for _, size in spec.files)
    rec = RunRecord("b", "s3spool-run", rep, ok=False, files=len(spec.files), bytes=total)
    tag = f"b-bandwidth-r{rep}"
    rundir = work_dir / tag
    shutil.rmtree(rundir, ignore_errors=True)
    done_dir = tool.spool_root(rundir) / "done"
    config = rundir / "s3spool.toml"
    problems: list[str] = []
    counts: dict[str, Any] = {}
    marks: dict[str, float] = {}
    with reported(rundir, problems):
        write_files(tool.source_dir(rundir), spec.files)
        os.sync()
        config.write_text(f'bandwidth_limit = "{_limit_text(spec.rate)}"\n')
        with (
            bench_server(rundir / "s3", log_dir / f"{tag}.server.log") as server,
            relay(server.url) as (url, _, counts),
        ):
            env = tool.env(rundir, url, {"S3SPOOL_CONFIG": str(config)})
            rec.settings = nondefault(env)
            metrics_url = f"http://{env['S3SPOOL_HTTP_ADDR']}/metrics"
            if wait_for_quiet(quiet_wait_s) >= quiet_wait_s > 0:
                log(f"machine still busy after {quiet_wait_s:.0f} s, measuring anyway")
            # the next minute boundary of the local clock far enough ahead
            wall_t = (int(time.time() + spec.lead_s + 1.0) // 60 + 1) * 60
            log(f"case b: waiting {wall_t - spec.lead_s - time.time():.0f} s for the timeline")
            time.sleep(max(0.0, wall_t - spec.lead_s - time.time()))
            mono_t = time.monotonic() + (wall_t - time.time())
            w0 = mono_t - HUP_S - GAP_S - spec.windows * spec.window_s
            cpu0 = server_cpu_seconds(server)
            sys0 = snap()
            with MeasuredProcess(tool.argv(rundir, url), env=env, log_prefix=log_dir / tag) as p:
                up = _until(lambda: gauge(metrics_url) == spec.rate, time.monotonic() + 30, 0.05)
                if up is None or up > w0 - 1.0:
                    problems.append("the service was not up 1 s before the first window")
                # SIGHUP: the schedule, whose current window holds the lower rate
                _sleep_until(mono_t - HUP_S)
                start, end = (time.strftime("%H:%M", time.localtime(wall_t + d)) for d in (-60, 0))
                low, high = _limit_text(spec.low), _limit_text(spec.rate)
                config.write_text(f'bandwidth_limit = "{start}-{end}={low},{end}-{start}={high}"\n')
                marks["hup"] = time.monotonic()
                p.send_signal(signal.SIGHUP)
                seen = _until(lambda: gauge(metrics_url) == spec.low, marks["hup"] + 10)
                marks["hup_gauge"] = seen if seen is not None else float("nan")
                # the schedule's boundary: back to the full rate without a signal
                _sleep_until(mono_t - 1.0)
                seen = _until(lambda: gauge(metrics_url) == spec.rate, mono_t + 10)
                marks["sched_gauge"] = seen if seen is not None else float("nan")
                _sleep_until(mono_t + AFTER_S)
                config.write_text('bandwidth_limit = "off"\n')
                marks["off"] = time.monotonic()
                p.send_signal(signal.SIGHUP)
                drained = wait_until(done_dir, len(spec.files), p, 300.0)
                if drained is None:
                    problems.append("not drained within 300 s of lifting the limit")
                marks["drained"] = drained or time.monotonic()
                p.stop(30.0)
                m = p.reap()
            rec.server_cpu_s = server_cpu_seconds(server) - cpu0
            rec.other_cpu_s, rec.steal_s = others(sys0, snap(), m.cpu_s + rec.server_cpu_s)
        fill_measured(rec, m)
        if m.killed_after_term or m.returncode != 0:
            problems.append(f"exit {m.returncode} after SIGTERM")
        problems += [x for x in (tool.check_source(rundir, len(spec.files)),) if x]
        problems += [x for x in (check_delivery(rundir / "s3" / BUCKET, spec.files),) if x]
        rec.extra.update(_measure(spec, Bytes(counts), w0, mono_t, marks))
    return rec.conclude(problems)


def _measure(
    spec: BandwidthSpec, got: Bytes, w0: float, mono_t: float, marks: dict[str, float]
) -> dict[str, float]:
    out: dict[str, float] = {"rate_mib_s": spec.rate / MIB, "low_mib_s": spec.low / MIB}
    worst = 0.0
    for i in range(spec.windows):
        a = w0 + i * spec.window_s
        rate = got.between(a, a + spec.window_s) / spec.window_s
        out[f"w{i + 1}_mib_s"] = rate / MIB
        worst = max(worst, abs(rate - spec.rate) / spec.rate * 100.0)
    out["win_worst_pct"] = worst
    hup = marks["hup"]
    out["hup_gauge_s"] = marks["hup_gauge"] - hup
    out["hup_knee_s"], before, after = got.knee(hup, hup - 8.0, mono_t)
    out["hup_before_mib_s"], out["hup_after_mib_s"] = before / MIB, after / MIB
    out["sched_gauge_s"] = marks["sched_gauge"] - mono_t
    out["sched_knee_s"], _, after = got.knee(mono_t, hup + SKIP_S, mono_t + AFTER_S)
    out["sched_after_mib_s"] = after / MIB
    off, drained = marks["off"], marks["drained"]
    out["off_mib_s"] = got.between(off, drained) / max(0.1, drained - off) / MIB
    return out


def bandwidth_table(records: list[RunRecord]) -> str:
    """Case b's own table, the windows and both changes per repetition, and its verdicts
    (an empty string without case b)."""
    runs = [r for r in records if r.case == "b"]
    if not runs:
        return ""
    ok = [r for r in runs if r.ok and r.extra]
    windows = [k for k in (ok[0].extra if ok else {}) if k[0] == "w" and k.endswith("_mib_s")]
    lines = [
        "",
        "Case b, bandwidth limit: MiB/s at the store side per 5 s window, and how long a "
        "change took until /metrics showed it and until the bytes' rate bent (fits before "
        "and after it):",
        "",
        f"s3spool settings: {runs[0].settings or 'defaults'} (the file: `bandwidth_limit`, "
        "as above)",
        "",
        "| Rep | Status | "
        + " | ".join(f"w{i + 1} MiB/s" for i in range(len(windows)))
        + " | Worst window | SIGHUP 20->10: gauge, bytes | Schedule 10->20: gauge, bytes"
        " | Fitted MiB/s before / after SIGHUP / after boundary | After off MiB/s |",
        "|" + "---|" * (len(windows) + 7),
    ]
    for r in runs:
        e = r.extra
        if not (r.ok and e):
            lines.append(f"| {r.rep} | FAILED: {r.reason} |" + " |" * (len(windows) + 5))
            continue
        lines.append(
            f"| {r.rep} | ok | "
            + " | ".join(f"{e[k]:.2f}" for k in windows)
            + f" | {e['win_worst_pct']:.1f} % | {e['hup_gauge_s']:.2f} s, {e['hup_knee_s']:.2f} s"
            f" | {e['sched_gauge_s']:.2f} s, {e['sched_knee_s']:.2f} s"
            f" | {e['hup_before_mib_s']:.2f} / {e['hup_after_mib_s']:.2f} /"
            f" {e['sched_after_mib_s']:.2f} | {e['off_mib_s']:.0f} |"
        )
    lines += ["", "Targets (issue 13):"]
    checks = (
        ("every 5 s window within", "win_worst_pct", BANDWIDTH_WINDOW_MAX_PCT, " %", 1),
        ("SIGHUP: /metrics", "hup_gauge_s", BANDWIDTH_CHANGE_MAX_S, " s", 2),
        ("SIGHUP: bytes", "hup_knee_s", BANDWIDTH_CHANGE_MAX_S, " s", 2),
        ("schedule: /metrics", "sched_gauge_s", BANDWIDTH_CHANGE_MAX_S, " s", 2),
        ("schedule: bytes", "sched_knee_s", BANDWIDTH_CHANGE_MAX_S, " s", 2),
    )
    for label, key, limit, unit, digits in checks:
        if len(ok) < len(runs):
            lines.append(f"- {label} <={limit:g}{unit}: MISSED: failed run")
            continue
        # the worst repetition; a bend the fits could not find counts as missed
        worst = max((abs(r.extra[key]) for r in ok), key=lambda v: (math.isnan(v), v))
        lines.append(f"- {label} {judge(worst, limit, False, unit, digits)}")
    return "\n".join(lines) + "\n"
