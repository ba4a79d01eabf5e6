"""A fresh ``rclone serve s3`` per tool run, with its CPU time read from /proc.

A fresh server per run because rclone's per-request CPU grows over the
server's lifetime; reusing one would penalise whichever tool runs last.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.config import ACCESS_KEY, BUCKET, RCLONE, SECRET_KEY, clean_env

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of all threads of ``pid`` (not its children)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces/parens; fields resume after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11, 12.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class RcloneServer:
    def __init__(self, datadir: Path, log_path: Path) -> None:
        self.datadir = datadir
        self.log_path = log_path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        # The local backend maps top-level directories to buckets. Create the
        # bucket before the server starts so its directory cache sees it.
        (self.datadir / BUCKET).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    str(RCLONE),
                    "serve",
                    "s3",
                    "--addr",
                    f"127.0.0.1:{self.port}",
                    "--auth-key",
                    f"{ACCESS_KEY},{SECRET_KEY}",
                    str(self.datadir),
                ],
                env=clean_env({}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_listening(20.0)
        except BaseException:
            # __exit__ does not run when __enter__ fails: do not leak the server.
            self.stop()
            raise

    def _wait_listening(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited early, see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(
            f"rclone serve s3 not listening after {timeout_s} s, see {self.log_path}"
        )

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(10.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10.0)

    def __enter__(self) -> RcloneServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
