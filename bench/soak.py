"""Case 6: a long soak of a running s3spool behind a store that fails some requests.

A producer renames mixed 1-64 KiB files into incoming/ at a fixed rate while s3spool
(`run`, default settings) uploads them through a relay (bench/relay.py) that answers a
share of all requests with 500 InternalError, in front of a fresh `rclone serve s3`.
Every 5 s the harness samples the service's RSS, its open file descriptors and
incoming/; latency is rename -> commit from the service's JSON log (bench/live.py).
What it judges: memory and descriptors do not grow after the first minute, p99 latency,
and a backlog that stays bounded.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from pathlib import Path

from bench.config import KIB, SEED, SoakSpec
from bench.data import count_entries, payload
from bench.live import PROBE, produce, service_problems, wait_until
from bench.proc import MeasuredProcess, relay
from bench.runner import RunRecord, log, reported
from bench.server import bench_server, proc_cpu_seconds, server_cpu_seconds
from bench.sysstat import others, snap, wait_for_quiet
from bench.tools import S3spool, nondefault

SAMPLE_S = 5.0
KEY_FORMAT = "{m_mm}{m_ss}/{fname}"


def service_pid(spawner: int) -> int | None:
    """The tool's pid: the only child of bench/_spawn.py."""
    try:
        children = Path(f"/proc/{spawner}/task/{spawner}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class _Sampler(threading.Thread):
    """(seconds since start, RSS MiB, open fds, files in incoming/) every SAMPLE_S."""

    def __init__(self, spawner: int, incoming: Path) -> None:
        super().__init__(daemon=True)
        self.spawner = spawner
        self.incoming = incoming
        self.samples: list[tuple[float, float, int, int]] = []
        self._stop_evt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        pid = None
        while not self._stop_evt.is_set():
            pid = pid or service_pid(self.spawner)
            if pid is not None:
                rss, fds = rss_mib(pid), open_fds(pid)
                if rss is not None and fds is not None:
                    backlog = count_entries(self.incoming)
                    self.samples.append((time.monotonic() - t0, rss, fds, backlog))
            self._stop_evt.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


def sample_stats(samples: list[tuple[float, float, int, int]], warmup_s: float) -> dict[str, float]:
    """Growth after the warm-up: last-minute peak over the first post-warm-up sample."""
    after = [s for s in samples if s[0] >= warmup_s]
    if len(after) < 2:
        return {}
    last_min = [s for s in after if s[0] >= after[-1][0] - 60.0]
    return {
        "rss_at_warmup": after[0][1],
        "rss_max": max(s[1] for s in samples),
        "rss_growth": max(s[1] for s in last_min) - after[0][1],
        "fds_at_warmup": float(after[0][2]),
        "fds_max": float(max(s[2] for s in after)),
        "fds_growth": float(max(s[2] for s in last_min) - max(s[2] for s in after[:12])),
        "backlog_max": float(max(s[3] for s in samples)),
    }


def write_samples(path: Path, samples: list[tuple[float, float, int, int]]) -> None:
    """The sampler's series, for a look at how RSS and descriptors moved over the run."""
    lines = ["seconds,rss_mib,open_fds,incoming"]
    lines += [f"{t:.1f},{rss:.1f},{fds},{backlog}" for t, rss, fds, backlog in samples]
    path.write_text("\n".join(lines) + "\n")


def run_soak(
    spec: SoakSpec, tool: S3spool, rep: int, work_dir: Path, log_dir: Path, quiet_wait_s: float
) -> RunRecord:
    rng = random.Random(SEED)
    sizes = [rng.randint(KIB, 64 * KIB) for _ in range(spec.count)]
    rec = RunRecord("6", "s3spool-run", rep, ok=False, files=spec.count, bytes=sum(sizes))
    tag = f"6-soak-r{rep}"
    rundir = work_dir / tag
    shutil.rmtree(rundir, ignore_errors=True)
    incoming = tool.source_dir(rundir)
    done_dir = tool.spool_root(rundir) / "done"
    scratch = rundir / "producer-tmp"
    incoming.mkdir(parents=True)
    scratch.mkdir()
    names = [f"soak-{i:07d}.bin" for i in range(spec.count)]
    renamed: dict[str, float] = {}
    problems: list[str] = []
    t_start = end = 0.0
    with reported(rundir, problems):
        with (
            bench_server(rundir / "s3", log_dir / f"{tag}.server.log") as server,
            relay(server.url, spec.fail_share, SEED) as (url, proxy_pid, proxy_stats),
        ):
            # JSON lines for the latency join; one prefix per second of mtime: rclone's
            # local backend slows down with the size of a directory (100,000 objects in
            # one: ~7 ms of server CPU each, case 5), and this case is about s3spool's long
            # run, not the test store's directories.
            env = tool.env(
                rundir, url, {"S3SPOOL_LOG_FORMAT": "json", "S3SPOOL_KEY_FORMAT": KEY_FORMAT}
            )
            rec.settings = nondefault(env)
            if wait_for_quiet(quiet_wait_s) >= quiet_wait_s > 0:
                log(f"machine still busy after {quiet_wait_s:.0f} s, measuring anyway")
            cpu0 = server_cpu_seconds(server)
            proxy0 = proc_cpu_seconds(proxy_pid)
            sys0 = snap()
            with MeasuredProcess(tool.argv(rundir, url), env=env, log_prefix=log_dir / tag) as p:
                (scratch / PROBE).write_bytes(payload(0, KIB))
                os.rename(scratch / PROBE, incoming / PROBE)
                if wait_until(done_dir, 1, p, 60.0) is None:
                    problems.append("probe file not delivered within 60 s of start")
                else:
                    sampler = _Sampler(p.pid, incoming)
                    sampler.start()
                    t_start = produce(spec.rate, names, sizes, scratch, incoming, renamed)
                    t_produced = time.monotonic()
                    drained = wait_until(done_dir, spec.count + 1, p, spec.drain_timeout_s)
                    sampler.stop()
                    end = time.monotonic()
                    if drained is None:
                        problems.append(f"not drained {spec.drain_timeout_s:.0f} s after producing")
                    rec.extra.update(sample_stats(sampler.samples, 60.0))
                    write_samples(log_dir / f"{tag}.samples.csv", sampler.samples)
                    rec.extra["drain_s"] = end - t_produced
                    rec.extra["rate_achieved"] = spec.count / (t_produced - t_start)
                    rec.extra["rate_nominal"] = spec.rate
                    rec.extra["duration_s"] = t_produced - t_start
                if not p.wait_exit(0):
                    p.stop(30.0)
                m = p.reap()
            rec.server_cpu_s = server_cpu_seconds(server) - cpu0
            proxy_cpu = proc_cpu_seconds(proxy_pid) - proxy0
            rec.extra["proxy_cpu_s"] = proxy_cpu  # the harness's, not "other processes"
            rec.other_cpu_s, rec.steal_s = others(
                sys0, snap(), m.cpu_s + rec.server_cpu_s + proxy_cpu
            )
        rec.extra["injected_500"] = float(proxy_stats.get("injected", {}).get("error500", 0))
        expected = [(PROBE, KIB), *zip(names, sizes, strict=True)]
        problems += service_problems(m, p, tool, rundir, log_dir / tag, renamed, expected, rec)
        if "drain_s" in rec.extra:
            rec.wall_s = end - t_start
    return rec.conclude(problems)
