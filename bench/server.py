"""A fresh ``rclone serve s3`` (or, ``--server juicefs``, JuiceFS gateway) per tool run, with
its CPU time read from /proc, and what its bucket holds.

The servers are the tests' (tests/s3servers.py); only the CPU accounting is the bench's own.
A fresh server per run because rclone's per-request CPU grows over the
server's lifetime; reusing one would penalise whichever tool runs last.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.s3servers import ProcServer, juicefs_server, rclone_server

from bench.config import BUCKET, clean_env
from bench.data import check_delivery, check_objects

#: ``--server``: the default, and the JuiceFS gateway (SQLite metadata, ``--keep-etag``; it
#: unpacks BATCH=extract's tars)
SERVERS = ("rclone", "juicefs")

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of all threads of ``pid`` (not its children)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces/parens; fields resume after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11, 12.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def server_cpu_seconds(server: ProcServer) -> float:
    """CPU time the running server has used so far."""
    assert server.proc is not None, f"the {server.kind} server is not running"
    return proc_cpu_seconds(server.proc.pid)


@contextlib.contextmanager
def bench_server(datadir: Path, log_path: Path, kind: str = "rclone") -> Iterator[ProcServer]:
    """``kind`` over ``datadir``, holding the empty bucket BUCKET; its output goes to log_path."""
    if kind == "juicefs":
        with juicefs_server(datadir, log_file=log_path) as server:
            server.client().create_bucket(Bucket=BUCKET)
            yield server
        return
    # The local backend maps top-level directories to buckets. Create the
    # bucket before the server starts so its directory cache sees it.
    (datadir / BUCKET).mkdir(parents=True, exist_ok=True)
    with rclone_server(datadir, log_file=log_path, environ=clean_env({})) as server:
        yield server


def check_stored(
    server: ProcServer, datadir: Path, expected: Iterable[tuple[str, int]]
) -> str | None:
    """check_delivery on the running server's bucket: rclone's data directory, or listed
    through the gateway's API (its data is JuiceFS chunks)."""
    if server.kind == "rclone":
        return check_delivery(datadir / BUCKET, expected)
    client = server.client()
    objects = {
        obj["Key"]: int(obj["Size"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for obj in page.get("Contents", [])
    }
    return check_objects(
        objects, lambda key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read(), expected
    )
