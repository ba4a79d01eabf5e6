"""System-wide CPU accounting, to flag runs disturbed by other work.

The machine is shared (e.g. test suites running next to the benchmark), so
each run records how much CPU *other* processes burnt meanwhile: all busy CPU
time from /proc/stat minus the tool, the S3 server and the harness itself.
/proc/stat is tick-sampled while rusage is exact, so small negative or
positive residues (tens of ms) are expected and meaningless.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnap:
    busy_s: float  # all CPUs: user+nice+system+irq+softirq (not idle/iowait/steal)
    steal_s: float  # time the hypervisor gave our vCPUs to someone else
    harness_s: float  # this process (all threads)


def snap() -> CpuSnap:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    me = resource.getrusage(resource.RUSAGE_SELF)
    return CpuSnap(
        busy_s=(user + nice + system + irq + softirq) / _CLK_TCK,
        steal_s=steal / _CLK_TCK,
        harness_s=me.ru_utime + me.ru_stime,
    )


def others(before: CpuSnap, after: CpuSnap, accounted_s: float) -> tuple[float, float]:
    """(CPU s used by unrelated processes, steal s) between two snapshots."""
    busy = after.busy_s - before.busy_s
    harness = after.harness_s - before.harness_s
    return busy - harness - accounted_s, after.steal_s - before.steal_s


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_for_quiet(max_wait_s: float, busy_share: float = 0.1, window_s: float = 0.5) -> float:
    """Wait (up to ``max_wait_s``) until other processes use < ``busy_share`` of a CPU.

    Returns the time waited. Gives up silently: the run then shows as NOISY.
    """
    waited = 0.0
    while waited < max_wait_s:
        before = snap()
        time.sleep(window_s)
        waited += window_s
        other, _ = others(before, snap(), 0.0)
        if other < busy_share * window_s:
            break
    return waited
