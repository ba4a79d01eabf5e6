"""Case c: COMPRESS on one 1 GiB file, zstd level 3 against no compression.

Two files, each 1 GiB (128 MiB with ``--quick``): web-server log lines that compress about
10:1 (``data.log_pool``) and random bytes (the batch cases' pool, incompressible). For each,
``s3spool run --once`` with default settings plus ``COMPRESS=zstd`` (level 3, the default)
and without it, back to back in every repetition, each against a fresh ``rclone serve s3``
and measured as the batch cases are (wall, client CPU and peak RSS through the spawner,
server CPU from /proc). Then the bucket must hold exactly the one object; a compressed one is
decompressed and its MD5 compared with the file's, an uncompressed one checked by size.

The table: MiB/s of *input* (the file's size / wall time), client CPU per MiB of input,
what was stored, and the target (issue 13: zstd-3 on the logs >= 300 MiB/s).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
from collections.abc import Callable
from functools import cache
from pathlib import Path

from bench.config import BUCKET, MIB, S3SPOOL
from bench.data import _pool, bucket_objects, log_pool, write_stream
from bench.proc import run_measured
from bench.report import NOISE_SHARE, judge
from bench.runner import RunRecord, fill_measured, log, reported
from bench.server import bench_server, server_cpu_seconds
from bench.sysstat import others, snap, wait_for_quiet
from bench.targets import COMPRESS_MIN_MIB_S
from bench.tools import S3spool, nondefault

#: (case, file name, pool): names that COMPRESS_SKIP does not match
DATA: tuple[tuple[str, str, Callable[[], bytes]], ...] = (
    ("c logs", "access.log", log_pool),
    ("c random", "blob.bin", _pool),
)
#: tool label -> extra settings (zstd first in each repetition: it runs on the fresher machine
#: no more often than the baseline, since the order is the same every time)
MODES: dict[str, dict[str, str]] = {
    "s3spool zstd-3": {"S3SPOOL_COMPRESS": "zstd"},
    "s3spool none": {},
}


@cache
def _md5_of(pool_name: str, size: int) -> str:
    pool = log_pool() if pool_name == "access.log" else _pool()
    md5 = hashlib.md5(usedforsecurity=False)
    view, half = memoryview(pool), len(pool) // 2
    offset, left = 0, size
    while left:  # the bytes write_stream writes
        n = min(left, half)
        md5.update(view[offset : offset + n])
        left -= n
        offset = (offset + 4_099) % half
    return md5.hexdigest()


def _check(objects: dict[str, int], datadir: Path, name: str, mode: str, size: int) -> str:
    """'' if the bucket holds exactly the expected object with the file's bytes."""
    compressed = mode != "s3spool none"
    want = f"p/{name}.zst" if compressed else f"p/{name}"
    if list(objects) != [want]:
        return f"bucket holds {sorted(objects)[:3]}, want [{want!r}]"
    if not compressed:
        return "" if objects[want] == size else f"size {objects[want]} != {size}"
    import zstandard

    md5 = hashlib.md5(usedforsecurity=False)
    got = 0
    with open(datadir / BUCKET / want, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        while chunk := reader.read(8 * MIB):
            md5.update(chunk)
            got += len(chunk)
    if got != size or md5.hexdigest() != _md5_of(name, size):
        return f"decompressed object differs from the file ({got} bytes)"
    return ""


def run_compress(
    ns: argparse.Namespace, tool: S3spool, work_dir: Path, log_dir: Path
) -> list[RunRecord]:
    size = 128 * MIB if ns.quick else 1024 * MIB
    records = []
    for rep in range(1, ns.reps + 1):
        for case, name, pool in DATA:
            for mode, extra in MODES.items():
                log(f"case {case} ({mode}) rep {rep}/{ns.reps} ...")
                rec = _one(ns, tool, work_dir, log_dir, rep, case, name, pool, mode, extra, size)
                log(
                    f"case {case} {mode} rep {rep}: {'ok' if rec.ok else rec.reason} | wall "
                    f"{rec.wall_s:.2f} s, cpu {rec.cpu_s:.2f} s, rss "
                    f"{rec.maxrss_kib / 1024:.0f} MiB, server cpu {rec.server_cpu_s:.2f} s, "
                    f"stored {rec.extra.get('stored_mib', 0):.1f} MiB"
                )
                records.append(rec)
    return records


def _one(
    ns: argparse.Namespace,
    tool: S3spool,
    work_dir: Path,
    log_dir: Path,
    rep: int,
    case: str,
    name: str,
    pool: Callable[[], bytes],
    mode: str,
    extra: dict[str, str],
    size: int,
) -> RunRecord:
    rec = RunRecord(case, mode, rep, ok=False, files=1, bytes=size)
    tag = f"{case.replace(' ', '-')}-{mode.split()[-1]}-r{rep}"
    rundir = work_dir / tag
    shutil.rmtree(rundir, ignore_errors=True)
    problems: list[str] = []
    with reported(rundir, problems):
        datadir = rundir / "s3"
        with bench_server(datadir, log_dir / f"{tag}.server.log") as server:
            source = tool.source_dir(rundir)
            source.mkdir(parents=True)
            write_stream(source / name, size, pool())
            os.sync()
            waited = wait_for_quiet(ns.quiet_wait)
            if waited >= ns.quiet_wait > 0:
                log(f"machine still busy after {waited:.0f} s, measuring anyway")
            env = tool.env(rundir, server.url, extra)
            rec.settings = nondefault(env)
            cpu0, sys0 = server_cpu_seconds(server), snap()
            m = run_measured(
                [str(S3SPOOL), "run", "--once"],
                env=env,
                log_prefix=log_dir / tag,
                timeout_s=600.0,
                marker=tool.marker,
            )
            rec.server_cpu_s = server_cpu_seconds(server) - cpu0
            rec.other_cpu_s, rec.steal_s = others(sys0, snap(), m.cpu_s + rec.server_cpu_s)
        fill_measured(rec, m)
        objects = bucket_objects(datadir / BUCKET)
        rec.extra["stored_mib"] = sum(objects.values()) / MIB
        problems += [f"exit {m.returncode}"] if m.returncode != 0 else []
        problems += [p for p in (_check(objects, datadir, name, mode, size),) if p]
    return rec.conclude(problems)


def _medians(runs: list[RunRecord]) -> dict[str, float]:
    def med(f: Callable[[RunRecord], float]) -> float:
        return statistics.median(f(r) for r in runs)

    return {
        "wall": med(lambda r: r.wall_s),
        "speed": med(lambda r: r.bytes / MIB / r.wall_s),
        "cpu": med(lambda r: r.cpu_s),
        "cpu_ms_mib": med(lambda r: r.cpu_s / (r.bytes / MIB) * 1000),
        "rss": med(lambda r: r.maxrss_kib / 1024),
        "server": med(lambda r: r.server_cpu_s),
        "stored": med(lambda r: r.extra.get("stored_mib", 0.0)),
        "mib": runs[0].bytes / MIB,
        "other": med(lambda r: r.other_cpu_s),
        "steal": med(lambda r: r.steal_s),
    }


def compress_table(records: list[RunRecord]) -> str:
    """The case's markdown table (medians over the successful repetitions), or ''."""
    mine = [r for r in records if r.case.startswith("c ")]
    if not mine:
        return ""
    lines = [
        "Case c (COMPRESS, one file): MiB/s of input = file size / wall time; CPU ms/MiB = "
        "client user+sys per MiB of input; stored = bytes in the bucket (ratio input/stored); "
        "vs none = wall time without compression / with it (>1: compression is faster).",
        "",
        "| Case | Tool | Status | Wall s | MiB/s of input | Client CPU s | CPU ms/MiB "
        "| Client RSS MiB | Server CPU s | Stored MiB (ratio) | vs none | Target | Notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, _, _ in DATA:
        rows: dict[str, tuple[str, dict[str, float] | None]] = {}
        labels: dict[str, str] = {}  # the mode and its non-default settings
        for mode in MODES:
            runs = [r for r in mine if r.case == case and r.tool == mode]
            ok = [r for r in runs if r.ok]
            bad = [r for r in runs if not r.ok]
            status = f"ok {len(ok)}/{len(runs)}"
            if bad:
                status = f"FAILED {len(bad)}/{len(runs)}: {bad[0].reason}"
            rows[mode] = (status, _medians(ok) if ok else None)
            labels[mode] = f"{mode} ({runs[0].settings})" if runs and runs[0].settings else mode
        base = rows["s3spool none"][1]
        for mode, (status, m) in rows.items():
            if m is None:
                lines.append(f"| {case} | {labels[mode]} | {status} |" + " |" * 10)
                continue
            versus = f"{base['wall'] / m['wall']:.2f}x" if base and mode != "s3spool none" else ""
            target = COMPRESS_MIN_MIB_S.get((case, mode))
            verdict = judge(m["speed"], target, True, " MiB/s", 0) if target else ""
            # as report.aggregate: unrelated CPU use above 10 % of the run's own marks the row
            own = m["cpu"] + m["server"]
            noisy = max(m["other"], m["steal"]) > max(0.5, NOISE_SHARE * own)
            note = f"NOISY: other {m['other']:.1f} CPU-s, steal {m['steal']:.1f} s" if noisy else ""
            lines.append(
                f"| {case} | {labels[mode]} | {status} | {m['wall']:.2f} | {m['speed']:.0f} | "
                f"{m['cpu']:.2f} | {m['cpu_ms_mib']:.2f} | {m['rss']:.0f} | {m['server']:.2f} | "
                f"{m['stored']:.1f} ({m['mib'] / m['stored']:.2f}) | {versus} | {verdict} "
                f"| {note} |"
            )
    return "\n".join(lines) + "\n"
