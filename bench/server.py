"""A fresh ``rclone serve s3`` per tool run, with its CPU time read from /proc.

The server is the tests' (tests/s3servers.py); only the CPU accounting is the bench's own.
A fresh server per run because rclone's per-request CPU grows over the
server's lifetime; reusing one would penalise whichever tool runs last.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.s3servers import RcloneServer, rclone_server

from bench.config import BUCKET, clean_env

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of all threads of ``pid`` (not its children)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces/parens; fields resume after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11, 12.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def server_cpu_seconds(server: RcloneServer) -> float:
    """CPU time the running server has used so far."""
    assert server.proc is not None, "the rclone server is not running"
    return proc_cpu_seconds(server.proc.pid)


@contextlib.contextmanager
def bench_server(datadir: Path, log_path: Path) -> Iterator[RcloneServer]:
    """rclone over ``datadir``, holding the empty bucket BUCKET; its output goes to log_path."""
    # The local backend maps top-level directories to buckets. Create the
    # bucket before the server starts so its directory cache sees it.
    (datadir / BUCKET).mkdir(parents=True, exist_ok=True)
    with rclone_server(datadir, log_file=log_path, environ=clean_env({})) as server:
        yield server
