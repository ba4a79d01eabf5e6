"""Medians over repetitions, s3spool/peer ratios, target verdicts, markdown."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.config import MIB
from bench.runner import RunRecord
from bench.targets import (
    COLD_MAX_S,
    CPU_MS_PER_FILE_CASES,
    CPU_MS_PER_FILE_MAX,
    CPU_RATIO_MAX,
    LIVE_BACKLOG_END_MAX_S,
    LIVE_DRAIN_MAX_S,
    LIVE_P99_MAX_MS,
    LIVE_RATE_MIN_SHARE,
    PAIRED_CASES,
    RSS_MAX_MIB,
    SOAK_BACKLOG_MAX_S,
    SOAK_DRAIN_MAX_S,
    SOAK_FD_GROWTH_MAX,
    SOAK_P99_MAX_MS,
    SOAK_RSS_GROWTH_MAX_MIB,
    THROUGHPUT_MIN,
)

BASELINE = "s3spool"  # the row every peer is compared with
S3SPOOL_ROWS = (BASELINE, "s3spool-run")
# Unrelated CPU use above this share of the run's own CPU marks a row NOISY.
NOISE_SHARE = 0.1
# Case 4's producer rate when an old results file did not record it.
_DEFAULT_LIVE_RATE = 200.0


@dataclass
class Row:
    case: str
    title: str
    tool: str
    status: str
    all_ok: bool
    metrics: dict[str, float] = field(default_factory=dict)  # medians over ok reps
    ratios: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # absolute verdicts (s3spool rows)
    notes: list[str] = field(default_factory=list)
    settings: str = ""  # s3spool's non-default settings, shown with the tool

    @property
    def label(self) -> str:
        return f"{self.tool} ({self.settings})" if self.settings else self.tool


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
    row.settings = runs[0].settings if runs else ""
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
    if case in CPU_MS_PER_FILE_CASES:
        row.metrics["cpu_ms_file"] = _median(ok, lambda r: r.cpu_s / r.files * 1000.0)
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
    if "first_line_s" in row.metrics:
        row.notes.append(f"first per-file line {row.metrics['first_line_s']:.3f} s")
    if "requests_per_1k" in row.metrics:  # BATCH: the `run --once` summary's count
        row.notes.append(f"{row.metrics['requests_per_1k']:.1f} requests per 1,000 files")
    return row


def unavailable_row(case: str, title: str, tool: str, reason: str) -> Row:
    return Row(case, title, tool, reason, all_ok=False)


def judge(
    value: float, target: float, higher_is_better: bool, unit: str = "", digits: int = 2
) -> str:
    """``value (>=target met)`` or ``... MISSED by <gap>, <gap % of target>)``."""
    met = value >= target if higher_is_better else value <= target
    op = ">=" if higher_is_better else "<="
    head = f"{value:.{digits}f}{unit} ({op}{target:g}{unit}"
    if met:
        return f"{head} met)"
    gap = abs(value - target)
    share = f", {gap / target:.0%}" if target else ""
    return f"{head} MISSED by {gap:.{digits}f}{unit}{share})"


def paired_ratio(
    records: Sequence[RunRecord],
    case: str,
    peer: str,
    f: Callable[[RunRecord, RunRecord], float] = lambda base, peer: peer.wall_s / base.wall_s,
) -> float | None:
    """Median over repetitions of ``f(s3spool run, peer run)`` (default: peer wall /
    s3spool wall), both runs from the same repetition."""
    runs = {(r.tool, r.rep): r for r in records if r.case == case and r.ok}
    ratios = [
        f(base, runs[(peer, rep)])
        for (tool, rep), base in runs.items()
        if tool == BASELINE and (peer, rep) in runs
    ]
    return statistics.median(ratios) if ratios else None


def add_ratios(rows: list[Row], records: Sequence[RunRecord] = ()) -> None:
    """Ratio cells of peer rows (vs the s3spool row of the same case), then targets."""
    by_case: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.tool] = r
    for case, case_rows in by_case.items():
        base = case_rows.get(BASELINE)
        for r in case_rows.values():
            if r.tool in S3SPOOL_ROWS:
                continue
            target = THROUGHPUT_MIN.get((case, r.tool))
            if base is None or not base.all_ok or not r.all_ok:
                # The Status column of the two rows says why.
                why = "s3spool failed" if base is None or not base.all_ok else "peer failed"
                cell = f"n/a: {why}" + (" (target not judged)" if target else "")
                cpu_cell = "n/a" + (
                    " (target not judged)" if (case, r.tool) in CPU_RATIO_MAX else ""
                )
                r.ratios = {"thr": cell, "cpu": cpu_cell, "rss": "n/a"}
                continue
            b, p = base.metrics, r.metrics
            # files/s of one workload: the same ratio as MiB/s.
            thr = b["files_s"] / p["files_s"]
            paired = paired_ratio(records, case, r.tool) if case in PAIRED_CASES else None
            if paired is not None:
                thr = paired
                r.notes.append("ratios: medians of per-pair ratios")
            # for one workload client CPU s is the same ratio as CPU per file
            cpu = b["cpu_s"] / p["cpu_s"]
            paired = (
                paired_ratio(records, case, r.tool, lambda s3, pr: s3.cpu_s / pr.cpu_s)
                if case in PAIRED_CASES
                else None
            )
            cpu = cpu if paired is None else paired
            cpu_max = CPU_RATIO_MAX.get((case, r.tool))
            r.ratios = {
                "thr": f"{thr:.2f}" if target is None else judge(thr, target, True),
                "cpu": f"{cpu:.2f}" if cpu_max is None else judge(cpu, cpu_max, False),
                "rss": f"{b['rss_mib'] / p['rss_mib']:.2f}",
            }
    _absolute_targets(by_case)
    _run_mode_note(by_case)
    _memory_growth(by_case)
    _live(by_case)
    _soak(by_case)


def _absolute_targets(by_case: dict[str, dict[str, Row]]) -> None:
    for case, case_rows in by_case.items():
        for name in S3SPOOL_ROWS:
            row = case_rows.get(name)
            if row is None:
                continue
            cpu_max = CPU_MS_PER_FILE_MAX.get(case)
            rss_max = RSS_MAX_MIB.get(case)
            wall_max = COLD_MAX_S.get(case)
            if wall_max is not None:
                row.targets.append(_abs(row, "wall_s", "wall", wall_max, " s", 3))
            if cpu_max is not None:
                row.targets.append(_abs(row, "cpu_ms_file", "CPU/file", cpu_max, " ms", 2))
            if rss_max is not None:
                row.targets.append(_abs(row, "rss_mib", "RSS", rss_max, " MiB", 0))


def _abs(row: Row, key: str, label: str, limit: float, unit: str, digits: int) -> str:
    """An upper-limit verdict on one of the row's own medians."""
    if not row.all_ok:
        # A run that did not deliver everything does not meet any target.
        return f"{label} <={limit:g}{unit} MISSED: failed run"
    return f"{label} {judge(row.metrics[key], limit, False, unit, digits)}"


def _run_mode_note(by_case: dict[str, dict[str, Row]]) -> None:
    # The service mode should not be slower than --once on the same backlog.
    for case_rows in by_case.values():
        once, run = case_rows.get(BASELINE), case_rows.get("s3spool-run")
        if once is None or run is None or not (once.all_ok and run.all_ok):
            continue
        share = run.metrics["files_s"] / once.metrics["files_s"]
        run.notes.append(f"files/s vs `--once` {share:.2f}x")


def _memory_growth(by_case: dict[str, dict[str, Row]]) -> None:
    # Bounded memory means RSS does not grow with file size (4x from 3a to 3b).
    small = by_case.get("3a", {}).get(BASELINE)
    big = by_case.get("3b", {}).get(BASELINE)
    if small is None or big is None:
        return
    if small.all_ok and big.all_ok:
        growth = big.metrics["rss_mib"] / small.metrics["rss_mib"]
        big.notes.append(f"RSS 3b/3a {growth:.2f}")
    else:
        big.notes.append("RSS 3b/3a n/a")


def _live(by_case: dict[str, dict[str, Row]]) -> None:
    row = by_case.get("4", {}).get("s3spool-run")
    if row is None or not row.metrics:
        if row is not None and not row.all_ok:
            row.targets.append("p99, backlog, drain: MISSED: failed run")
        return
    m = row.metrics
    nan = math.nan
    rate = m.get("rate_nominal", _DEFAULT_LIVE_RATE)
    # Older results files only have the last once-a-second sample.
    end = m.get("backlog_end", m.get("backlog_last", nan))
    checks: tuple[tuple[str, float, float, str, int], ...] = (
        ("p99", m.get("p99_ms", nan), LIVE_P99_MAX_MS, " ms", 0),
        ("backlog at end", end, LIVE_BACKLOG_END_MAX_S * rate, "", 0),
        ("drain", m.get("drain_s", nan), LIVE_DRAIN_MAX_S, " s", 2),
    )
    for label, value, limit, unit, digits in checks:
        if not row.all_ok:
            row.targets.append(f"{label} <={limit:g}{unit} MISSED: failed run")
        elif math.isnan(value):
            row.targets.append(f"{label} <={limit:g}{unit} MISSED: not measured")
        else:
            row.targets.append(f"{label} {judge(value, limit, False, unit, digits)}")
    latency = (
        f"latency p50/p95/p99 {m.get('p50_ms', nan):.0f}/{m.get('p95_ms', nan):.0f}/"
        f"{m.get('p99_ms', nan):.0f} ms"
    )
    if "max_ms" in m:  # not in older results files
        latency += f", max {m['max_ms']:.0f} ms"
    row.notes.append(latency)
    row.notes.append(f"backlog max {m.get('backlog_max', nan):.0f}")
    achieved = m.get("rate_achieved", nan)
    row.notes.append(f"producer {achieved:.0f}/s")
    if not achieved >= LIVE_RATE_MIN_SHARE * rate:
        # The harness could not offer the load: the verdicts are not about s3spool.
        row.notes.append(f"PRODUCER BEHIND: {achieved:.0f} of {rate:.0f} files/s")


def _soak(by_case: dict[str, dict[str, Row]]) -> None:
    row = by_case.get("6", {}).get("s3spool-run")
    if row is None:
        return
    m = row.metrics
    nan = math.nan
    rate = m.get("rate_nominal", nan)
    checks: tuple[tuple[str, str, float, str, int], ...] = (
        ("RSS growth", "rss_growth", SOAK_RSS_GROWTH_MAX_MIB, " MiB", 1),
        ("fd growth", "fds_growth", SOAK_FD_GROWTH_MAX, "", 0),
        ("p99", "p99_ms", SOAK_P99_MAX_MS, " ms", 0),
        ("backlog max", "backlog_max", SOAK_BACKLOG_MAX_S * rate, "", 0),
        ("drain", "drain_s", SOAK_DRAIN_MAX_S, " s", 2),
    )
    for label, key, limit, unit, digits in checks:
        if not row.all_ok:
            row.targets.append(f"{label} <={limit:g}{unit} MISSED: failed run")
        elif math.isnan(m.get(key, nan)):
            row.targets.append(f"{label} <={limit:g}{unit} MISSED: not measured")
        else:
            row.targets.append(f"{label} {judge(m[key], limit, False, unit, digits)}")
    if m:
        g = m.get
        row.notes.append(
            f"{g('duration_s', nan) / 60:.0f} min at {g('rate_achieved', nan):.0f} files/s; "
            f"RSS {g('rss_at_warmup', nan):.0f} MiB at 1 min, peak {g('rss_max', nan):.0f}; "
            f"fds {g('fds_at_warmup', nan):.0f} at 1 min, peak {g('fds_max', nan):.0f}; "
            f"latency p50/p99/max {g('p50_ms', nan):.0f}/{g('p99_ms', nan):.0f}/"
            f"{g('max_ms', nan):.0f} ms; {g('injected_500', nan):.0f} requests answered 500; "
            f"fault relay {g('proxy_cpu_s', nan):.0f} CPU-s"
        )


def _fmt(row: Row, key: str, spec: str) -> str:
    v = row.metrics.get(key)
    return "-" if v is None else format(v, spec)


COLUMNS = (
    "Case",
    "Tool",
    "Status",
    "Wall s",
    "Files/s",
    "MiB/s",
    "Client CPU s",
    "CPU ms/file",
    "Client RSS MiB",
    "Server CPU s",
    "Thr s3spool/peer",
    "CPU s3spool/peer",
    "RSS s3spool/peer",
    "s3spool targets",
    "Notes",
)


def legend() -> str:
    """One line per column and per target, printed above the table."""
    thr = ", ".join(f"case {c} vs {p} >={v:g}" for (c, p), v in THROUGHPUT_MIN.items())
    cpu = ", ".join(f"case {c} <={v:g} ms" for c, v in CPU_MS_PER_FILE_MAX.items())
    cpu_ratio = ", ".join(f"case {c} vs {p} <={v:g}" for (c, p), v in CPU_RATIO_MAX.items())
    rss = ", ".join(f"case {c} <={v:g} MiB" for c, v in RSS_MAX_MIB.items())
    lines = [
        "Columns (each a median over the row's successful repetitions):",
        "- Status: `ok n/n`, or FAILED with the first failure's reason (never dropped)",
        "- Wall s: tool start to exit (`s3spool-run`: to done/ full; case 4: first "
        "rename to last file in done/)",
        "- Files/s, MiB/s: workload files and bytes / wall time",
        "- Client CPU s: user+sys of the tool and the children it reaped (`wait4` rusage)",
        "- CPU ms/file: client CPU s / files x 1000 (small-file cases only)",
        "- Client RSS MiB: peak resident set of the tool's largest process (`ru_maxrss`)",
        "- Server CPU s: user+sys of the fresh server (`rclone serve s3`, or `--server`'s) "
        "during the run (same 2 CPUs)",
        "- Thr s3spool/peer: s3spool `--once` files/s / peer files/s (= MiB/s ratio); "
        ">1 = s3spool faster",
        "- CPU, RSS s3spool/peer: client CPU s (= CPU per file) and RSS ratios; <1 = s3spool "
        "leaner",
        "- s3spool targets: absolute targets of the row, `met` or `MISSED by` gap, % of target",
        "- Tool: s3spool runs with true defaults (INFO, one line per file); a setting beyond "
        "the spool, destination, endpoint and metrics port is shown in brackets",
        "- Notes: NOISY = other processes or steal used >10% of the run's CPU; first per-file "
        "line = tool start to the first output line about a file (through the pipe); case 4 "
        "latency/backlog; case 3b RSS growth over 3a",
        "",
        "Targets (issues 4, 11 and 22, bench/targets.py; ratios within this one run; cases "
        f"{', '.join(PAIRED_CASES)}: median of per-repetition ratios peer wall / s3spool wall "
        "and s3spool CPU / peer CPU):",
        f"- throughput s3spool/peer (= peer wall / s3spool wall): {thr}; no target for rclone "
        "and case 2",
        f"- client CPU per small file s3spool/peer: {cpu_ratio}",
        f"- s3spool client CPU per file: {cpu}",
        f"- s3spool peak RSS: {rss}",
        f"- case 4: p99 rename->committed <={LIVE_P99_MAX_MS:g} ms; no growing backlog = "
        f"incoming/ at end of producing <={LIVE_BACKLOG_END_MAX_S:g} s of production, "
        f"all in done/ <={LIVE_DRAIN_MAX_S:g} s after the last rename",
        f"- case 0 (cold start, median of its runs): wall `--help` <={COLD_MAX_S['0 help']:g} s, "
        f"`run --once` on an empty spool <={COLD_MAX_S['0 empty']:g} s",
        f"- case 6 (soak): after the first minute RSS growth <={SOAK_RSS_GROWTH_MAX_MIB:g} MiB "
        f"and open fds growth <={SOAK_FD_GROWTH_MAX:g}; p99 rename->committed "
        f"<={SOAK_P99_MAX_MS:g} ms; incoming/ never above {SOAK_BACKLOG_MAX_S:g} s of "
        f"production, drained <={SOAK_DRAIN_MAX_S:g} s after it stops",
    ]
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = [
            f"{r.case} {r.title}",
            r.label,
            r.status.replace("|", "/"),
            _fmt(r, "wall_s", ".2f"),
            _fmt(r, "files_s", ".1f"),
            _fmt(r, "mib_s", ".1f"),
            _fmt(r, "cpu_s", ".2f"),
            _fmt(r, "cpu_ms_file", ".3f"),
            _fmt(r, "rss_mib", ".0f"),
            _fmt(r, "server_cpu_s", ".2f"),
            r.ratios.get("thr", ""),
            r.ratios.get("cpu", ""),
            r.ratios.get("rss", ""),
            "; ".join(r.targets),
            "; ".join(r.notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The rows of issue 22's targets, in the order it lists them.
_VERSUS_CASES = ("h1", "h2", "h3", "h4", "1")


def versus_table(rows: list[Row]) -> str:
    """s3spool against s5cmd in this run, one line per target of issue 22, or ''."""
    by_case: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.tool] = r
    lines = []
    for case in _VERSUS_CASES:
        s3, s5 = by_case.get(case, {}).get(BASELINE), by_case.get(case, {}).get("s5cmd")
        if s3 is None or s5 is None:
            continue
        what = f"{case} {s3.title}"
        lines.append(
            f"| {what} | wall, s5cmd / s3spool | {_fmt(s3, 'wall_s', '.2f')} s | "
            f"{_fmt(s5, 'wall_s', '.2f')} s | {s5.ratios.get('thr', '')} |"
        )
        if "cpu_ms_file" in s3.metrics:
            lines.append(
                f"| {what} | client CPU per file, s3spool / s5cmd | "
                f"{_fmt(s3, 'cpu_ms_file', '.3f')} ms | {_fmt(s5, 'cpu_ms_file', '.3f')} ms | "
                f"{s5.ratios.get('cpu', '')} |"
            )
        if case == "h1":
            lines.append(
                f"| {what} | first per-file line (no target) | "
                f"{_fmt(s3, 'first_line_s', '.3f')} s | {_fmt(s5, 'first_line_s', '.3f')} s | |"
            )
    for case, measure, value in (
        ("n", "client CPU per file; peak RSS", "{cpu_ms_file:.3f} ms; {rss_mib:.0f} MiB"),
        ("0 help", "wall", "{wall_s:.3f} s"),
        ("0 empty", "wall", "{wall_s:.3f} s"),
    ):
        row = by_case.get(case, {}).get(BASELINE)
        if row is not None:
            shown = value.format(**row.metrics) if row.metrics else row.status
            lines.append(
                f"| {case} {row.title} | {measure} | {shown} | | {'; '.join(row.targets)} |"
            )
    if not lines:
        return ""
    head = [
        "",
        "Issue 22's targets, s3spool (true defaults) against s5cmd (its defaults), this run:",
        "",
        "| Case | Measure | s3spool | s5cmd | Ratio and target |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n"
