"""Run a tool as a child process and measure wall time, CPU and peak RSS.

CPU and RSS come from ``os.wait4`` on the tool, called by a small spawner
process (bench/_spawn.py, see there for why). On Linux that rusage covers the
tool *plus* every descendant the tool itself waited for (threads are always
included); ru_maxrss is the largest single process of that tree, not a sum.
A descendant the tool never reaps is not counted; none of the benchmarked
tools fork workers.

The tool's stdout and stderr are pipes, each drained by a reader thread of the harness into
a log file, as journald or a container runtime reads a service's output: a tool that writes
a line per file pays for a pipe and a reader that may lag, not for a file in the page cache.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SPAWN = Path(__file__).with_name("_spawn.py")


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    timed_out: bool
    killed_after_term: bool
    rusage_lost: bool  # tool killed with its spawner: no CPU/RSS numbers
    # From the tool's start to the first output chunk holding its ``marker`` (see Drain).
    first_line_s: float = math.nan

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class Drain(threading.Thread):
    """Reads one output pipe of the tool to its end into ``path``, in chunks as they come.

    Notes the time of the first chunk holding ``marker`` (a tool's per-file line), which
    costs one ``in`` per chunk until it is found.
    """

    def __init__(self, fd: int, path: Path, marker: bytes) -> None:
        super().__init__(daemon=True)
        self.fd, self.path, self.marker = fd, path, marker
        self.first_at = math.nan

    def run(self) -> None:
        try:
            with open(self.path, "wb") as out:
                while chunk := os.read(self.fd, 1 << 16):
                    if self.marker and math.isnan(self.first_at) and self.marker in chunk:
                        self.first_at = time.monotonic()
                    out.write(chunk)
        finally:
            # A reader that failed must not leave the tool blocked on a full pipe.
            os.close(self.fd)


class MeasuredProcess:
    """A tool under the spawner; its exit is awaited through the spawner's pidfd.

    Its stdout and stderr go through pipes to ``log_prefix``.out and .err (Drain);
    ``marker``: the bytes of a per-file output line, for Measured.first_line_s.
    """

    def __init__(
        self,
        argv: Sequence[str | Path],
        *,
        env: dict[str, str],
        log_prefix: Path,
        marker: bytes = b"",
        cwd: Path | None = None,
    ) -> None:
        self.start = time.monotonic()
        self._result_r, result_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._drains = [
            Drain(out_r, log_prefix.with_suffix(".out"), marker),
            Drain(err_r, log_prefix.with_suffix(".err"), marker),
        ]
        for d in self._drains:
            d.start()
        # Own session so a timeout can kill spawner and tool via the group.
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_SPAWN), str(result_w), *map(str, argv)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                start_new_session=True,
                pass_fds=(result_w,),
            )
        finally:
            # The readers see the end once the spawner and the tool closed theirs.
            for fd in (result_w, out_w, err_w):
                os.close(fd)
        self.pid = self._proc.pid
        # A pidfd wakes us the instant the child exits: no polling interval in
        # the timing and no CPU burnt while waiting.
        self._pidfd = os.pidfd_open(self.pid)
        self._poll = select.poll()
        self._poll.register(self._pidfd, select.POLLIN)
        self._exited = False
        self._result: Measured | None = None
        self.term_sent = False
        self.timed_out = False
        self.killed_after_term = False

    def wait_exit(self, timeout_s: float) -> bool:
        """True once the child has exited (not yet reaped)."""
        if not self._exited and self._poll.poll(max(0.0, timeout_s) * 1000.0):
            self._exited = True
        return self._exited

    def terminate(self) -> None:
        self.term_sent = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)  # the spawner forwards it

    def send_signal(self, sig: int) -> None:
        """``sig`` to the tool (the spawner forwards SIGTERM, SIGINT and SIGHUP)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill_tree(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def reap(self, end: float | None = None) -> Measured:
        """Block until exit and collect rusage; ``end`` (monotonic) overrides the wall end."""
        if self._result is not None:
            return self._result
        _, status, _ = os.wait4(self.pid, 0)
        spawner_end = time.monotonic()
        os.close(self._pidfd)
        # Tell Popen the child is gone so it never waits for it again.
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        with os.fdopen(self._result_r, "rb") as f:
            raw = f.read()
        for d in self._drains:
            d.join(30.0)  # a descendant holding the pipe open must not hang the harness
        first = min((d.first_at for d in self._drains), key=lambda t: (math.isnan(t), t))
        if raw:
            r = json.loads(raw)
            start, stop = float(r["start"]), float(r["end"])
            code, user, sys_ = int(r["returncode"]), float(r["user_s"]), float(r["sys_s"])
            rss = int(r["maxrss_kib"])
        else:
            start, stop = self.start, spawner_end
            code, user, sys_, rss = self._proc.returncode, 0.0, 0.0, 0
        self._result = Measured(
            returncode=code,
            wall_s=(end if end is not None else stop) - start,
            user_s=user,
            sys_s=sys_,
            maxrss_kib=rss,
            timed_out=self.timed_out,
            killed_after_term=self.killed_after_term,
            rusage_lost=not raw,
            first_line_s=first - start,
        )
        return self._result

    def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL the group if it ignores us for ``grace_s``."""
        self.terminate()
        if not self.wait_exit(grace_s):
            self.killed_after_term = True
            self.kill_tree()
            self.wait_exit(30.0)

    def __enter__(self) -> MeasuredProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        # On any harness error (or Ctrl-C) never leave the tool running.
        if self._result is None:
            if not self.wait_exit(0):
                self.kill_tree()
            self.reap()


def run_measured(
    argv: Sequence[str | Path],
    *,
    env: dict[str, str],
    log_prefix: Path,
    timeout_s: float,
    marker: bytes = b"",
    done: Callable[[], bool] | None = None,
    done_interval_s: float = 0.05,
    term_grace_s: float = 30.0,
) -> Measured:
    """Run to completion, or - with ``done`` - until ``done()`` turns true.

    With ``done`` the child is a long-running service: the wall time ends when
    ``done()`` first returns true, then it gets SIGTERM and ``term_grace_s`` to
    exit (CPU/RSS include that shutdown).
    """
    with MeasuredProcess(argv, env=env, log_prefix=log_prefix, marker=marker) as p:
        deadline = p.start + timeout_s
        end: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                p.timed_out = True
                p.kill_tree()
                break
            step = remaining if done is None else min(remaining, done_interval_s)
            if p.wait_exit(step):
                break
            if done is not None and done():
                end = time.monotonic()
                p.stop(term_grace_s)
                break
        return p.reap(end)


@contextlib.contextmanager
def helper_process(argv: Sequence[str], what: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """A helper server in a process of its own (bench/relay.py): it
    prints its URL on stdout, stops when its stdin closes and then prints one JSON line of
    counters.  Yields the URL, its pid and a dict that holds the counters once it stopped."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    stats: dict[str, Any] = {}
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the {what} did not start")
        yield url, proc.pid, stats
    finally:
        proc.stdin.close()
        line = proc.stdout.readline()
        if line:
            stats.update(json.loads(line))
        proc.wait(30)


@contextlib.contextmanager
def relay(
    upstream: str, fail_share: float = 0.0, seed: int = 0
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """bench/relay.py in front of ``upstream`` (``http://HOST:PORT``), answering
    ``fail_share`` of the requests with 500; yields as ``helper_process``."""
    host, port = upstream.removeprefix("http://").rsplit(":", 1)
    script = os.path.join(os.path.dirname(__file__), "relay.py")
    argv = [sys.executable, script, host, port]
    if fail_share:
        argv += [str(fail_share), str(seed)]
    with helper_process(argv, "relay") as started:
        yield started
