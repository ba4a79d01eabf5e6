"""``python -m bench``: run the cases, print one markdown table, save it."""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from bench.bandwidth import bandwidth_table
from bench.bandwidth import run_case as run_bandwidth_case
from bench.cold import run_cold
from bench.compress import compress_table, run_compress
from bench.config import DEFAULT_OUT, RCLONE, live_spec, soak_spec, workloads
from bench.live import run_live
from bench.machine import machine_info
from bench.noop import TITLE as NOOP_TITLE
from bench.noop import run_noop
from bench.report import (
    Row,
    add_ratios,
    aggregate,
    legend,
    markdown_table,
    unavailable_row,
    versus_table,
)
from bench.runner import RunRecord, log, run_batch
from bench.server import SERVERS
from bench.soak import run_soak
from bench.sysstat import loadavg
from bench.tools import S3spool, S3spoolRun, Tool, make_tools

T = TypeVar("T", bound=Tool)

ALL_CASES = ("0", "n", "h", "1", "2", "3", "c", "4", "5", "6", "b")  # in the order they run
# Fixed order inside every repetition, so slow drift hits every tool alike.
TOOL_ORDER = ("s3spool", "s3spool-run", "s5cmd", "rclone", "aws")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument(
        "--cases",
        default=",".join(ALL_CASES),
        help="comma list of 0 (cold start), n (noop://), h (headline), 1, 2, 3, "
        "c (compression), 4, 5, 6 (soak), b (bandwidth limit); or one workload of a case "
        "(h1, h2, h3, h4, 3a, 3b)",
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions per case and tool")
    ap.add_argument("--quick", action="store_true", help="shrunken cases for a smoke run")
    ap.add_argument("--tools", default=",".join(TOOL_ORDER), help="comma list of tools")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument(
        "--server",
        choices=SERVERS,
        default="rclone",
        help="the store of the batch cases (1, 2, 3, 5, h): rclone serve s3, or the JuiceFS "
        "gateway (it unpacks BATCH=extract's tars)",
    )
    ap.add_argument(
        "--s3spool-env",
        action="append",
        default=[],
        metavar="S3SPOOL_X=VALUE",
        help="extra s3spool setting for every s3spool run (repeatable)",
    )
    ap.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="do not run: re-render a saved results-*.json with the current targets",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each run wait up to this many s for other processes to go idle "
        "(default 30, 0 with --quick)",
    )
    ns = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in ns.s3spool_env if "=" in kv)
    if len(env) != len(ns.s3spool_env) or any(not k.startswith("S3SPOOL_") for k in env):
        ap.error("--s3spool-env takes S3SPOOL_NAME=VALUE")
    ns.s3spool_env = env
    if ns.quiet_wait is None:
        ns.quiet_wait = 0.0 if ns.quick else 30.0
    ns.cases = [c.strip() for c in ns.cases.split(",") if c.strip()]
    # A batch workload's own key (h1, 3a, ...) runs that one alone of its case.
    groups = {w.key: case for case, ws in workloads(False).items() for w in ws}
    ns.works = {c for c in ns.cases if c not in ALL_CASES and c in groups}
    ns.groups = list(dict.fromkeys(groups.get(c, c) for c in ns.cases))
    ns.tools = {t.strip() for t in ns.tools.split(",") if t.strip()}
    bad = [c for c in ns.groups if c not in ALL_CASES] + sorted(ns.tools - set(TOOL_ORDER))
    if bad or ns.reps < 1:
        ap.error(f"unknown case/tool {bad}" if bad else "--reps must be >= 1")
    return ns


def _progress(rec: RunRecord) -> None:
    state = "ok" if rec.ok else f"FAILED: {rec.reason}"
    log(
        f"case {rec.case} {rec.tool} rep {rec.rep}: {state} | wall {rec.wall_s:.2f} s, "
        f"cpu {rec.cpu_s:.2f} s, rss {rec.maxrss_kib / 1024:.0f} MiB, "
        f"server cpu {rec.server_cpu_s:.2f} s, others {rec.other_cpu_s:.2f} s, "
        f"steal {rec.steal_s:.2f} s"
    )


@dataclass(frozen=True)
class Slot:
    """One table row to be: a case/tool pair, or why the tool could not run."""

    case: str
    title: str
    tool: str
    unavailable: str = ""


def live_title(quick: bool) -> str:
    spec = live_spec(quick)
    return f"live {spec.rate:.0f} files/s x {spec.duration_s:.0f} s, 4 KiB"


def run_all(
    ns: argparse.Namespace, tools: dict[str, Tool], log_dir: Path
) -> tuple[list[Slot], list[RunRecord]]:
    work_dir = ns.out / "work"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    slots: list[Slot] = []
    records: list[RunRecord] = []
    specs = workloads(ns.quick)
    for case in sorted(ns.groups, key=ALL_CASES.index):
        if case in ("4", "6"):
            title = live_title(ns.quick) if case == "4" else soak_title(ns.quick)
            run = (
                functools.partial(run_live, live_spec(ns.quick))
                if case == "4"
                else functools.partial(run_soak, soak_spec(ns.quick))
            )
            slots.append(_run_service_case(case, title, run, ns, tools, work_dir, log_dir, records))
            continue
        if case == "0":
            slots += _run_cold_case(ns, tools, work_dir, log_dir, records)
            continue
        if case == "n":
            slots.append(_run_noop_case(ns, tools, work_dir, log_dir, records))
            continue
        if case == "b":  # its own table (bandwidth_table), like case c
            records += run_bandwidth_case(ns, tools, work_dir, log_dir)
            continue
        if case == "c":  # its own table (compress_table), not slots of the main one
            tool = tools.get("s3spool")
            if isinstance(tool, S3spool) and not tool.unavailable:
                records += run_compress(ns, tool, work_dir, log_dir)
            else:
                log("case c: needs the s3spool tool (--tools)")
            continue
        for work in specs[case]:
            if case not in ns.cases and work.key not in ns.works:
                continue
            order = [t for t in TOOL_ORDER if t in work.tools and t in tools]
            for rep in range(1, ns.reps + 1):
                for name in order:
                    if tools[name].unavailable:
                        continue
                    log(f"case {work.key} ({work.title}) {name} rep {rep}/{ns.reps} ...")
                    rec = run_batch(
                        work, tools[name], rep, work_dir, log_dir, ns.quiet_wait, ns.server
                    )
                    _progress(rec)
                    records.append(rec)
            slots += [Slot(work.key, work.title, n, tools[n].unavailable or "") for n in order]
    shutil.rmtree(work_dir, ignore_errors=True)
    return slots, records


def _run_service_case(
    case: str,
    title: str,
    run: Callable[[S3spoolRun, int, Path, Path, float], RunRecord],
    ns: argparse.Namespace,
    tools: dict[str, Tool],
    work_dir: Path,
    log_dir: Path,
    records: list[RunRecord],
) -> Slot:
    """Case 4 or 6: repetitions of a running s3spool fed by a producer."""
    tool = tools.get("s3spool-run")
    if not isinstance(tool, S3spoolRun):
        return Slot(case, title, "s3spool-run", "not selected (--tools)")
    if tool.unavailable:
        return Slot(case, title, "s3spool-run", tool.unavailable)
    _repeat(case, title, run, tool, ns, work_dir, log_dir, records)
    return Slot(case, title, "s3spool-run")


def _repeat(
    case: str,
    title: str,
    run: Callable[[T, int, Path, Path, float], RunRecord],
    tool: T,
    ns: argparse.Namespace,
    work_dir: Path,
    log_dir: Path,
    records: list[RunRecord],
) -> None:
    """``ns.reps`` repetitions of a case that makes one record each."""
    for rep in range(1, ns.reps + 1):
        log(f"case {case} ({title}) rep {rep}/{ns.reps} ...")
        rec = run(tool, rep, work_dir, log_dir, ns.quiet_wait)
        _progress(rec)
        records.append(rec)


COLD_TITLES = {
    "0 help": "cold start: `s3spool --help`",
    "0 empty": "cold start: `run --once`, empty spool",
}


def _once_tool(tools: dict[str, Tool]) -> tuple[S3spool | None, str]:
    """The `run --once` tool, or None and why it cannot run."""
    tool = tools.get("s3spool")
    if not isinstance(tool, S3spool) or tool.unavailable:
        return None, "not selected (--tools)" if tool is None else tool.unavailable or "?"
    return tool, ""


def _run_cold_case(
    ns: argparse.Namespace,
    tools: dict[str, Tool],
    work_dir: Path,
    log_dir: Path,
    records: list[RunRecord],
) -> list[Slot]:
    tool, why = _once_tool(tools)
    if tool is None:
        return [Slot(c, t, "s3spool", why) for c, t in COLD_TITLES.items()]
    for rep in range(1, ns.reps + 1):
        log(f"case 0 (cold start) rep {rep}/{ns.reps} ...")
        for rec in run_cold(tool, rep, work_dir, log_dir):
            _progress(rec)
            records.append(rec)
    return [Slot(c, t, "s3spool") for c, t in COLD_TITLES.items()]


def _run_noop_case(
    ns: argparse.Namespace,
    tools: dict[str, Tool],
    work_dir: Path,
    log_dir: Path,
    records: list[RunRecord],
) -> Slot:
    tool, why = _once_tool(tools)
    if tool is None:
        return Slot("n", NOOP_TITLE, "s3spool", why)
    _repeat("n", NOOP_TITLE, run_noop, tool, ns, work_dir, log_dir, records)
    return Slot("n", NOOP_TITLE, "s3spool")


def soak_title(quick: bool) -> str:
    spec = soak_spec(quick)
    return (
        f"soak {spec.rate:.0f} files/s x {spec.duration_s / 60:g} min, 1-64 KiB, "
        f"{spec.fail_share:.0%} of requests fail"
    )


def build_rows(slots: list[Slot], records: list[RunRecord]) -> list[Row]:
    rows = []
    for slot in slots:
        if slot.unavailable:
            rows.append(unavailable_row(slot.case, slot.title, slot.tool, slot.unavailable))
        else:
            runs = [r for r in records if r.case == slot.case and r.tool == slot.tool]
            rows.append(aggregate(slot.case, slot.title, slot.tool, runs))
    add_ratios(rows, records)
    return rows


def render(path: Path) -> int:
    """Re-render a saved results JSON with the current targets and report code."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        # First format: only the runs, always from a full (non --quick) run.
        head = f"# s3spool benchmark (re-rendered from {path.name})"
        records = [RunRecord(**r) for r in data]
        titles = {w.key: w.title for ws in workloads(False).values() for w in ws}
        titles["4"] = live_title(False)
        titles["6"] = soak_title(False)
        titles.update(COLD_TITLES)
        titles["n"] = NOOP_TITLE
        seen = dict.fromkeys((r.case, r.tool) for r in records)
        order = sorted(seen, key=lambda ct: (ct[0], TOOL_ORDER.index(ct[1])))
        slots = [Slot(c, titles[c], t) for c, t in order]
    else:
        head = data["header"] + f"\n- re-rendered from {path.name} with the current targets"
        records = [RunRecord(**r) for r in data["runs"]]
        slots = [Slot(**s) for s in data["slots"]]
    rows = build_rows(slots, records)
    report = f"{head}\n\n{legend()}\n\n{markdown_table(rows)}\n{versus_table(rows)}"
    report += _compress_part(records)
    report += bandwidth_table(records)
    print(report)
    out = path.with_name(path.stem + ".rerendered.md")
    out.write_text(report)
    log(f"wrote {out}")
    return 0


def _compress_part(records: list[RunRecord]) -> str:
    table = compress_table(records)
    return f"\n{table}" if table else ""


def header(ns: argparse.Namespace, stamp: str, tools: dict[str, Tool]) -> str:
    m = machine_info()
    args = f"--cases {','.join(ns.cases)} --reps {ns.reps}" + (" --quick" if ns.quick else "")
    args += f" --quiet-wait {ns.quiet_wait:g}"
    if ns.server != "rclone":
        args += f" --server {ns.server}"
    args += "".join(f" --s3spool-env {k}={v}" for k, v in ns.s3spool_env.items())
    if ns.tools != set(TOOL_ORDER):
        args += f" --tools {','.join(t for t in TOOL_ORDER if t in ns.tools)}"
    lines = [
        f"# s3spool benchmark {stamp}",
        "",
        f"- run: `python -m bench {args}`; medians over {ns.reps} rep(s)",
        f"- machine: nproc {m['nproc']}, {m['cpu']}, {m['memory']} RAM, {m['kernel']}, "
        f"Python {m['python']}; load average at start {loadavg()}",
        f"- server: `{RCLONE} serve s3` on 127.0.0.1, local backend, fresh per run "
        "(server CPU = its utime+stime during the tool run)"
        if ns.server == "rclone"
        else "- server (batch cases): the JuiceFS gateway (`juicefs gateway`, SQLite metadata, "
        "local blobs, `--keep-etag`; tests/s3servers.py) on 127.0.0.1, fresh per run "
        "(server CPU = its utime+stime during the tool run)",
        "- output: each tool's stdout and stderr are pipes, drained by a reader thread of the "
        "harness into the log directory (as journald or a container runtime reads them); "
        "s3spool runs with true defaults (INFO, one line per file), s5cmd and aws print their "
        "per-file lines as by default",
        "- versions:",
    ]
    for name, tool in tools.items():
        if name == "s3spool-run":
            continue
        lines.append(f"  - {name}: {tool.unavailable or tool.version()}")
    lines.append("- commands (`<RUN>` = per-run dir, `<URL>` = server):")
    for name, tool in tools.items():
        if not tool.unavailable:
            lines.append(f"  - {name}: `{tool.command_template()}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ns = _parse_args(argv)
    if ns.render:
        return render(ns.render)
    ns.out = ns.out.resolve()
    ns.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = ns.out / f"logs-{stamp}"
    log_dir.mkdir()
    tools = make_tools(ns.out, ns.tools, ns.s3spool_env)
    for name, tool in tools.items():
        if tool.unavailable:
            log(f"{name}: {tool.unavailable}")
    head = header(ns, stamp, tools)
    slots, records = run_all(ns, tools, log_dir)
    # The legend is not part of the saved header: --render prints the
    # current one, matching the current targets.
    rows = build_rows(slots, records)
    report = f"{head}\n\n{legend()}\n\n{markdown_table(rows)}\n{versus_table(rows)}"
    report += _compress_part(records)
    report += bandwidth_table(records)
    print(report)
    out_md = ns.out / f"results-{stamp}.md"
    out_md.write_text(report)
    # Raw per-run numbers: for more than medians, and for --render with new targets.
    raw = {
        "header": head,
        "slots": [asdict(s) for s in slots],
        "runs": [asdict(r) for r in records],
    }
    (ns.out / f"results-{stamp}.json").write_text(json.dumps(raw, indent=1))
    log(f"wrote {out_md} (tool logs in {log_dir})")
    return 0 if all(r.ok for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
