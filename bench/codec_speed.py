"""Which compression library: MiB/s of input and CPU per GiB of each candidate, in-process.

The rows are written as they are measured; zstd rows carry zstd's frame checksum, as s3spool
writes it. ``--only`` picks rows by a substring of their label.

``python -m bench.codec_speed [--mib 1024]``: every candidate compresses the same stream
(compressible web-server logs, about 10:1, and random bytes) fed in 1 MiB chunks, as
s3spool's compression pass feeds it; the output is counted and dropped. No store, no disk.
Candidates: stdlib ``zlib``, ``zlib_ng`` and ``isal.isal_zlib`` for gzip; ``zstandard`` for
zstd, single-threaded and with 2 worker threads. A library that is not installed is skipped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import MIB
from bench.data import _pool, log_pool

CHUNK = MIB


@dataclass(frozen=True)
class Candidate:
    label: str
    module: str
    make: Callable[[object], Callable[[bytes], int]]  # module -> feed(chunk) -> bytes out


def _feeder(comp: Any) -> Callable[[bytes], int]:
    """feed(chunk) -> compressed bytes so far; an empty chunk flushes the end."""
    out = 0

    def feed(chunk: bytes) -> int:
        nonlocal out
        out += len(comp.compress(chunk)) if chunk else len(comp.flush())
        return out

    return feed


def _deflate(level: int) -> Callable[[object], Callable[[bytes], int]]:
    def make(mod: object) -> Callable[[bytes], int]:
        comp = mod.compressobj(level, mod.DEFLATED, 31)  # type: ignore[attr-defined]
        return _feeder(comp)

    return make


def _zstd(level: int, threads: int, job: int = 0) -> Callable[[object], Callable[[bytes], int]]:
    def make(mod: object) -> Callable[[bytes], int]:
        extra = {"job_size": job} if job else {}
        params = mod.ZstdCompressionParameters.from_level(  # type: ignore[attr-defined]
            level, threads=threads, write_checksum=True, **extra
        )
        comp = mod.ZstdCompressor(compression_params=params).compressobj()  # type: ignore[attr-defined]
        return _feeder(comp)

    return make


CANDIDATES = [
    Candidate("gzip zlib -1", "zlib", _deflate(1)),
    Candidate("gzip zlib -6 (gzip's default)", "zlib", _deflate(6)),
    Candidate("gzip zlib-ng -1", "zlib_ng.zlib_ng", _deflate(1)),
    Candidate("gzip zlib-ng -6", "zlib_ng.zlib_ng", _deflate(6)),
    Candidate("gzip isal -1", "isal.isal_zlib", _deflate(1)),
    Candidate("gzip isal -2", "isal.isal_zlib", _deflate(2)),
    Candidate("gzip isal -3", "isal.isal_zlib", _deflate(3)),
    Candidate("zstd -1", "zstandard", _zstd(1, 0)),
    Candidate("zstd -3", "zstandard", _zstd(3, 0)),
    Candidate("zstd -3, 2 threads", "zstandard", _zstd(3, 2)),
    Candidate("zstd -3, 2 threads, 2 MiB jobs (s3spool)", "zstandard", _zstd(3, 2, 2 * MIB)),
    Candidate("zstd -6", "zstandard", _zstd(6, 0)),
    Candidate("zstd -6, 2 threads, 2 MiB jobs", "zstandard", _zstd(6, 2, 2 * MIB)),
]


def measure(feed: Callable[[bytes], int], pool: bytes, size: int) -> tuple[float, float, int]:
    """(wall s, CPU s of the process, bytes out) for ``size`` bytes of ``pool``."""
    view = memoryview(pool)
    half = len(pool) // 2
    wall0, cpu0 = time.perf_counter(), time.process_time()
    offset, left = 0, size
    while left:
        n = min(left, CHUNK)
        feed(bytes(view[offset : offset + n]))
        left -= n
        offset = (offset + n) % half
    out = feed(b"")
    return time.perf_counter() - wall0, time.process_time() - cpu0, out


class _Counter:
    """A sink that keeps nothing: what compressing into memory costs at least."""

    size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def _rss_mib() -> float:
    text = Path("/proc/self/status").read_text()
    return int(text.split("VmRSS:")[1].split()[0]) / 1024


def _sampled(work: Callable[[], None]) -> tuple[float, float]:
    """(wall s, peak RSS growth in MiB, sampled every 2 ms) of ``work()``."""
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib() - base)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    wall = time.perf_counter()
    work()
    wall = time.perf_counter() - wall
    done.set()
    sampler.join()
    return wall, peak[0]


def design(size: int, directory: Path) -> None:
    """The two measurements behind compress.py's design, with s3spool's own encoder."""
    from s3spool.run import compress

    pools = {"logs": log_pool(), "random": _pool()}
    print("Compressed copy on disk against output dropped (zstd -3, 2 threads, 2 MiB jobs):\n")
    print("| data | output to | wall s | CPU s | compressed MiB |")
    print("|---|---|---|---|---|")
    for kind, pool in pools.items():
        for target in ("memory", "temporary file"):
            fd = -1
            sink: Any = _Counter()
            if target != "memory":
                fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
                sink = compress.Sink(fd)
            enc = compress.encoder("zstd", 3, 2, sink)
            cpu = time.process_time()

            def run(enc: Any = enc, pool: bytes = pool, fd: int = fd, sink: Any = sink) -> None:
                _feed(enc.write, pool, size)
                enc.finish()
                pos = 0
                while fd >= 0 and pos < sink.size:  # read back, as the upload's digest pass
                    pos += len(os.pread(fd, 2 * MIB, pos))

            wall, _ = _sampled(run)
            cpu = time.process_time() - cpu
            if fd >= 0:
                os.close(fd)
            print(f"| {kind} | {target} | {wall:.2f} | {cpu:.2f} | {sink.size / MIB:.1f} |")
    print("\nzstd -3, 2 threads: job size against memory (peak RSS growth while compressing;")
    print("each row a fresh process, so no row reuses memory another freed)")
    print("\n| data | job size | MiB/s of input | RSS growth MiB | ratio |")
    print("|---|---|---|---|---|")
    for kind in pools:
        for job in (0, 1, 2, 4):
            argv = [sys.executable, "-m", "bench.codec_speed", "--mib", str(size // MIB)]
            subprocess.run([*argv, "--job", f"{kind}:{job}"], check=True)


def one_job(kind: str, job: int, size: int) -> None:
    """One row of the job-size table (in a process of its own)."""
    import zstandard

    pool = log_pool() if kind == "logs" else _pool()
    extra = {"job_size": job * MIB} if job else {}
    params = zstandard.ZstdCompressionParameters.from_level(
        3, threads=2, write_checksum=True, **extra
    )
    counter = _Counter()
    out: Any = counter
    writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(out)

    def jobs() -> None:
        _feed(writer.write, pool, size)
        writer.flush(zstandard.FLUSH_FRAME)

    wall, grew = _sampled(jobs)
    label = f"{job} MiB" if job else "zstd's default"
    print(
        f"| {kind} | {label} | {size / MIB / wall:.0f} | {grew:.0f} | {size / counter.size:.2f} |"
    )


def _feed(write: Callable[[bytes], object], pool: bytes, size: int) -> None:
    view, half = memoryview(pool), len(pool) // 2
    offset, left = 0, size
    while left:
        n = min(left, CHUNK)
        write(bytes(view[offset : offset + n]))  # a copy, as os.pread gives
        left -= n
        offset = (offset + n) % half


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.codec_speed", description=__doc__)
    ap.add_argument("--mib", type=int, default=1024, help="input per candidate and data kind")
    ap.add_argument("--only", default="", help="comma list of label substrings to run")
    ap.add_argument(
        "--design",
        type=Path,
        metavar="DIR",
        help="instead: the copy-on-disk and zstd job-size measurements, the copy in DIR",
    )
    ap.add_argument("--job", help=argparse.SUPPRESS)  # KIND:MIB, one row of --design's
    ns = ap.parse_args(argv)
    size = ns.mib * MIB
    if ns.job:
        kind, job = ns.job.split(":")
        one_job(kind, int(job), size)
        return 0
    if ns.design:
        design(size, ns.design)
        return 0
    pools = {"logs": log_pool(), "random": _pool()}
    print(f"input: {ns.mib} MiB per row, fed in {CHUNK // MIB} MiB chunks\n")
    print("| codec | data | MiB/s of input | CPU s per GiB | ratio |")
    print("|---|---|---|---|---|")
    wanted = [w for w in ns.only.split(",") if w]
    for cand in CANDIDATES:
        if wanted and not any(w in cand.label for w in wanted):
            continue
        try:
            mod = importlib.import_module(cand.module)
        except ImportError:
            print(f"| {cand.label} | - | not installed | | |")
            continue
        for kind, pool in pools.items():
            wall, cpu, out = measure(cand.make(mod), pool, size)
            print(
                f"| {cand.label} | {kind} | {size / MIB / wall:.0f} | "
                f"{cpu / (size / (1024 * MIB)):.2f} | {size / max(out, 1):.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
