"""Constants and workload definitions shared by the harness."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from tests.proc import clean_env as tests_clean_env

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
# Explicit venv binaries: /usr/bin/rclone is 1.60, which has no `serve s3`.
RCLONE = VENV_BIN / "rclone"
S5CMD = VENV_BIN / "s5cmd"
# Overridable to benchmark another build of the service.
S3SPOOL = Path(os.environ.get("BENCH_S3SPOOL", str(VENV_BIN / "s3spool")))
DEFAULT_OUT = REPO / "bench" / "out"

BUCKET = "bench"
PREFIX = "p/"

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

SEED = 42


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The harness's environment plus ``extra``, for every child (tools and server).

    Without the variables that would change a tool's behaviour behind our back (profiles,
    credentials, rclone remotes, s3spool settings): the tests' scrubber, plus RCLONE_*, and
    no PYTHONUNBUFFERED (the tools run as they would from a shell).
    """
    return tests_clean_env(extra, also=("RCLONE_",), unbuffered=False)


@dataclass(frozen=True)
class Workload:
    """A batch case: a fixed set of files handed to each tool in turn."""

    key: str
    title: str
    files: tuple[tuple[str, int], ...]  # (name, size in bytes)
    tools: tuple[str, ...]
    timeout_s: float

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class LiveSpec:
    """Case 4: a producer feeding a running s3spool at a fixed rate."""

    rate: float  # files per second
    duration_s: float
    size: int
    drain_timeout_s: float

    @property
    def count(self) -> int:
        return int(self.rate * self.duration_s)


@dataclass(frozen=True)
class SoakSpec:
    """Case 6: a running s3spool fed at a fixed rate for a long time, some requests failing."""

    rate: float  # files per second
    duration_s: float
    fail_share: float  # of all requests, answered 500 InternalError by bench/relay.py
    drain_timeout_s: float

    @property
    def count(self) -> int:
        return int(self.rate * self.duration_s)


def soak_spec(quick: bool) -> SoakSpec:
    return SoakSpec(
        rate=300.0, duration_s=90.0 if quick else 1200.0, fail_share=0.02, drain_timeout_s=60.0
    )


ALL_PEERS = ("s5cmd", "rclone", "aws")

# Case n: files of 100 bytes into noop:// (the same with --quick: it takes seconds).
NOOP_FILES = 20_000

# Case 5 backlog sizes (full, --quick).
BACKLOG_FULL = 100_000
BACKLOG_QUICK = 20_000


def _small_files(n: int, size: int = 4 * KIB, stem: str = "small") -> tuple[tuple[str, int], ...]:
    return tuple((f"{stem}-{i:06d}.bin", size) for i in range(n))


def _mixed_files(n: int, hi: int, skew: float = 1.0) -> tuple[tuple[str, int], ...]:
    # Log-uniform sizes (skew 1) so every order of magnitude is equally represented; a
    # larger skew makes most files small and a few large. Fixed seed: each tool and
    # each run sees exactly the same set.
    rng = random.Random(SEED)
    lo_l, hi_l = math.log(KIB), math.log(hi)
    return tuple(
        (f"mixed-{i:05d}.bin", int(math.exp(lo_l + (hi_l - lo_l) * rng.random() ** skew)))
        for i in range(n)
    )


def workloads(quick: bool) -> dict[str, list[Workload]]:
    """Batch workloads per case number ("3" has two parts)."""
    all_tools = ("s3spool", *ALL_PEERS)
    t = 600.0 if quick else 3600.0
    pair = ("s3spool", "s5cmd")
    return {
        # The headline: s3spool `run --once` with default settings against `s5cmd mv`
        # with its defaults, judged by the median of per-pair time ratios (report.py).
        # Mixed: 400 files of 1 KiB..48 MiB, half under 1.1 KiB, 9 over 16 MiB, 391 MiB.
        "h": [
            Workload(
                "h1",
                f"{500 if quick else 2000} x 4 KiB",
                _small_files(500 if quick else 2000),
                pair,
                t,
            ),
            Workload(
                "h2",
                f"{2000 if quick else 10000} x 4 KiB",
                _small_files(2000 if quick else 10000),
                pair,
                t,
            ),
            Workload(
                "h3",
                f"{100 if quick else 400} mixed 1 KiB..{8 if quick else 48} MiB",
                _mixed_files(100, 8 * MIB, 8) if quick else _mixed_files(400, 48 * MIB, 8),
                pair,
                t,
            ),
            Workload(
                "h4",
                f"1 x {'128 MiB' if quick else '1 GiB'}",
                (("big-1.bin", 128 * MIB if quick else GIB),),
                pair,
                t,
            ),
        ],
        "1": [
            Workload(
                "1",
                f"{1000 if quick else 10000} x 4 KiB",
                _small_files(1000 if quick else 10000),
                # s3spool-run is the long-running mode, stopped once done/ is full.
                ("s3spool", "s3spool-run", *ALL_PEERS),
                t,
            )
        ],
        "2": [
            Workload(
                "2",
                f"{100 if quick else 1000} mixed 1 KiB..{8 if quick else 64} MiB",
                _mixed_files(100, 8 * MIB) if quick else _mixed_files(1000, 64 * MIB),
                all_tools,
                t,
            )
        ],
        "3": [
            Workload(
                "3a",
                f"1 x {'128 MiB' if quick else '1 GiB'}",
                (("big-1.bin", 128 * MIB if quick else GIB),),
                all_tools,
                t,
            ),
            # Memory check: 4x the size of 3a; bounded memory means RSS must not
            # grow with it.
            Workload(
                "3b",
                f"1 x {'512 MiB' if quick else '4 GiB'} (memory check)",
                (("big-4.bin", 512 * MIB if quick else 4 * GIB),),
                ("s3spool", "s5cmd"),
                t,
            ),
        ],
        # Memory with a big backlog: 1 KiB files (size is irrelevant to the
        # per-file state this checks, and small files keep preparation and
        # disk use low). s3spool only: the target is its own peak RSS, and
        # the peers would add ~10 minutes per repetition.
        "5": [
            Workload(
                "5",
                f"{BACKLOG_QUICK if quick else BACKLOG_FULL} x 1 KiB backlog (memory)",
                _small_files(BACKLOG_QUICK if quick else BACKLOG_FULL, KIB, "backlog"),
                ("s3spool",),
                t,
            )
        ],
    }


def live_spec(quick: bool) -> LiveSpec:
    return LiveSpec(
        rate=200.0, duration_s=5.0 if quick else 30.0, size=4 * KIB, drain_timeout_s=60.0
    )
