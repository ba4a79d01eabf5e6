"""Medians over repetitions, s3spool/peer ratios against targets, markdown."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.config import MIB
from bench.runner import RunRecord
from bench.targets import (
    LIVE_BACKLOG_LAST_MAX,
    LIVE_P99_MAX_MS,
    RSS_ABS_MAX_MIB,
    RSS_GROWTH_MAX,
    TARGETS,
)

BASELINE = "s3spool"  # the row every peer is compared with
# Unrelated CPU use above this share of the run's own CPU marks a row NOISY.
NOISE_SHARE = 0.1


@dataclass
class Row:
    case: str
    title: str
    tool: str
    status: str
    all_ok: bool
    metrics: dict[str, float] = field(default_factory=dict)  # medians over ok reps
    ratios: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _median(runs: Sequence[RunRecord], f: Callable[[RunRecord], float]) -> float:
    return statistics.median(f(r) for r in runs)


def aggregate(case: str, title: str, tool: str, runs: Sequence[RunRecord]) -> Row:
    ok = [r for r in runs if r.ok]
    failed = [r for r in runs if not r.ok]
    if failed:
        status = f"FAILED {len(failed)}/{len(runs)}: {failed[0].reason}"
    else:
        status = f"ok {len(ok)}/{len(runs)}"
    row = Row(case, title, tool, status, all_ok=not failed and bool(runs))
    if not ok:
        return row
    row.metrics = {
        "wall_s": _median(ok, lambda r: r.wall_s),
        "files_s": _median(ok, lambda r: r.files / r.wall_s),
        "mib_s": _median(ok, lambda r: r.bytes / MIB / r.wall_s),
        "cpu_s": _median(ok, lambda r: r.cpu_s),
        "rss_mib": _median(ok, lambda r: r.maxrss_kib / 1024),
        "server_cpu_s": _median(ok, lambda r: r.server_cpu_s),
    }
    # Flag, do not hide, runs that shared the CPUs with unrelated work.
    other = _median(ok, lambda r: r.other_cpu_s)
    steal = _median(ok, lambda r: r.steal_s)
    mine = row.metrics["cpu_s"] + row.metrics["server_cpu_s"]
    if other > max(0.5, NOISE_SHARE * mine) or steal > max(0.5, NOISE_SHARE * mine):
        row.notes.append(f"NOISY: other processes {other:.1f} CPU-s, steal {steal:.1f} s")
    for key in ok[0].extra:
        vals = [r.extra[key] for r in ok if key in r.extra and not math.isnan(r.extra[key])]
        if vals:
            row.metrics[key] = statistics.median(vals)
    return row


def unavailable_row(case: str, title: str, tool: str, reason: str) -> Row:
    return Row(case, title, tool, reason, all_ok=False)


def _judge(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    op = ">=" if higher_is_better else "<="
    return f"{value:.2f} ({op}{target:.2f} {'met' if met else 'MISSED'})"


def add_ratios(rows: list[Row]) -> None:
    """Fill ratio cells of peer rows from the s3spool row of the same case."""
    by_case: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.tool] = r
    for case_rows in by_case.values():
        base = case_rows.get(BASELINE)
        for r in case_rows.values():
            target = TARGETS.get(r.tool)
            if target is None:
                continue
            if base is None or not base.all_ok or not r.all_ok:
                # The Status column of the two rows says why.
                r.ratios = {"thr": "n/a", "cpu": "n/a", "rss": "n/a"}
                continue
            b, p = base.metrics, r.metrics
            r.ratios = {
                "thr": _judge(b["files_s"] / p["files_s"], target.throughput_min, True),
                "cpu": _judge(b["cpu_s"] / p["cpu_s"], target.cpu_max, False),
                "rss": _judge(b["rss_mib"] / p["rss_mib"], target.rss_max, False),
            }
    _memory_growth(by_case)
    _live_notes(by_case)


def _memory_growth(by_case: dict[str, dict[str, Row]]) -> None:
    # The documented pod memory limit applies to every s3spool run, not only 3b.
    for case_rows in by_case.values():
        for name in (BASELINE, "s3spool-run"):
            row = case_rows.get(name)
            if row is not None and row.all_ok:
                rss = row.metrics["rss_mib"]
                met = "met" if rss <= RSS_ABS_MAX_MIB else "MISSED"
                row.notes.append(f"RSS vs pod limit (<={RSS_ABS_MAX_MIB:.0f} MiB {met})")
    small = by_case.get("3a", {}).get(BASELINE)
    big = by_case.get("3b", {}).get(BASELINE)
    if small is None or big is None:
        return
    if small.all_ok and big.all_ok:
        growth = big.metrics["rss_mib"] / small.metrics["rss_mib"]
        big.notes.append(f"RSS 3b/3a {_judge(growth, RSS_GROWTH_MAX, False)}")
    else:
        big.notes.append("RSS 3b/3a n/a")


def _live_notes(by_case: dict[str, dict[str, Row]]) -> None:
    row = by_case.get("4", {}).get("s3spool-run")
    if row is None or not row.metrics:
        return
    m = row.metrics
    row.notes.append(
        "latency p50/p95/p99 "
        f"{m.get('p50_ms', math.nan):.0f}/{m.get('p95_ms', math.nan):.0f}/"
        f"{m.get('p99_ms', math.nan):.0f} ms "
        f"(p99 {'<=' + format(LIVE_P99_MAX_MS, '.0f')} "
        f"{'met' if row.all_ok and m.get('p99_ms', math.inf) <= LIVE_P99_MAX_MS else 'MISSED'})"
    )
    last = m.get("backlog_last", math.nan)
    row.notes.append(
        f"backlog max {m.get('backlog_max', math.nan):.0f}, last {last:.0f} "
        f"(last <={LIVE_BACKLOG_LAST_MAX} "
        f"{'met' if row.all_ok and last <= LIVE_BACKLOG_LAST_MAX else 'MISSED'})"
    )
    row.notes.append(
        f"rate {m.get('rate_achieved', math.nan):.0f}/s, drain {m.get('drain_s', math.nan):.2f} s"
    )


def _fmt(row: Row, key: str, spec: str) -> str:
    v = row.metrics.get(key)
    return "-" if v is None else format(v, spec)


HEADER = (
    "| Case | Tool | Status | Wall s | Files/s | MiB/s | Client CPU s | Client RSS MiB "
    "| Server CPU s | Thr s3spool/peer | CPU s3spool/peer | RSS s3spool/peer | Notes |"
)


def markdown_table(rows: list[Row]) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in rows:
        cells = [
            f"{r.case} {r.title}",
            r.tool,
            r.status.replace("|", "/"),
            _fmt(r, "wall_s", ".2f"),
            _fmt(r, "files_s", ".1f"),
            _fmt(r, "mib_s", ".1f"),
            _fmt(r, "cpu_s", ".2f"),
            _fmt(r, "rss_mib", ".0f"),
            _fmt(r, "server_cpu_s", ".2f"),
            r.ratios.get("thr", ""),
            r.ratios.get("cpu", ""),
            r.ratios.get("rss", ""),
            "; ".join(r.notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
