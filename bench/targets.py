"""Targets printed next to each s3spool/peer ratio.

PLACEHOLDERS: no numbers were specified when the harness was written. They
encode "at least as good as the Python peer (aws cli), within 2x of the Go
peers". Change them here; the report prints whatever is set.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    throughput_min: float  # s3spool files/s / peer files/s >= this (>1 = s3spool faster)
    cpu_max: float  # s3spool client CPU s / peer client CPU s <= this
    rss_max: float  # s3spool peak RSS / peer peak RSS <= this


TARGETS: dict[str, Target] = {
    "aws": Target(throughput_min=1.0, cpu_max=1.0, rss_max=1.0),
    "rclone": Target(throughput_min=0.5, cpu_max=2.0, rss_max=2.0),
    "s5cmd": Target(throughput_min=0.5, cpu_max=2.0, rss_max=2.0),
}

# Memory check (case 3b vs 3a): streaming upload means RSS must not grow with
# file size; allow a little allocator noise.
RSS_GROWTH_MAX = 1.25
# Absolute ceiling for s3spool in the memory check: the memory limit that
# docs/kubernetes.md recommends for the default settings.
RSS_ABS_MAX_MIB = 512.0

# Case 4 (live, 200 files/s).
LIVE_P99_MAX_MS = 1000.0
# Backlog at the end of producing: at most one second's worth of files.
LIVE_BACKLOG_LAST_MAX = 200
