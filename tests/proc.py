"""Run the real s3spool service as a subprocess, with its output in a log file."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal as signal_mod
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

_ids = itertools.count(1)
POLL_S = 0.05
CLI_TIMEOUT_S = 60.0


NOBODY = 65534


def as_user(uid: int = NOBODY, gid: int | None = None) -> list[str]:
    """A command prefix that runs the rest as ``uid`` (tests run as root to use it). The
    checkout must be one ``uid`` can enter (a clone under ``mktemp -d``, mode 0700, is not):
    the test is skipped, naming the directory, rather than failing with an ImportError."""
    here = Path(__file__).resolve().parent
    for d in (here, *here.parents):
        if d.stat().st_uid != uid and not d.stat().st_mode & 0o001:
            import pytest

            pytest.skip(
                f"uid {uid} cannot enter {d} (mode {d.stat().st_mode & 0o777:o}), so it cannot "
                "import this checkout: clone it under a directory others can enter (chmod o+x)"
            )
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", "--clear-groups"]


def clean_env(
    extra: dict[str, str], *, also: tuple[str, ...] = (), unbuffered: bool = True
) -> dict[str, str]:
    """The test process's environment without AWS_*/S3SPOOL_*, plus ``extra``.

    The developer's shell must not leak credentials or settings into a test. ``also``: more
    prefixes to drop (bench/ drops RCLONE_* too); ``unbuffered``: set PYTHONUNBUFFERED=1, so
    a Python child's output reaches its log at once.
    """
    drop = ("AWS_", "S3SPOOL_", *also)
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    if unbuffered:
        base["PYTHONUNBUFFERED"] = "1"
    return {**base, **extra}


def cli(
    args: list[str], env: dict[str, str], *, as_nobody: bool = False, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``s3spool ARGS`` to completion with ``env`` (on top of a clean environment)."""
    cmd = [sys.executable, "-m", "s3spool", *args]
    if as_nobody:
        cmd = [*as_user(), *cmd]
    return subprocess.run(
        cmd,
        env=clean_env(env),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class SpoolProc:
    """`python -m s3spool *args`, started on construction.

    stdout+stderr go to a file rather than a pipe so a chatty process can never block on a
    full pipe, and the whole log stays available for assertions.
    Inherited AWS_* and S3SPOOL_* variables are dropped so the developer's shell cannot leak
    credentials or settings into a test; pass everything the test needs in `env`.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        cwd: Path | str,
        log_path: Path | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        """``wrapper``: a command prefix, e.g. setpriv to run as another user."""
        self.args = args
        self.cwd = Path(cwd)
        self.log_path = log_path or self.cwd / f"s3spool-{next(_ids)}.log"
        full_env = clean_env(env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*(wrapper or []), sys.executable, "-m", "s3spool", *args],
                env=full_env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def mark(self) -> int:
        """Current log length; pass as `since` to match only output produced after now."""
        return len(self.log_text())

    def _check(self, regex: re.Pattern[str], since: int) -> re.Match[str] | None:
        return regex.search(self.log_text(), since)

    def _fail(self, pattern: str, timeout: float, exited: bool) -> AssertionError:
        why = f"process exited with {self.proc.returncode}" if exited else f"{timeout}s passed"
        return AssertionError(
            f"log never matched {pattern!r} ({why}); args={self.args}\n"
            f"--- log tail ---\n{self.log_tail()}"
        )

    def wait_for_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """Poll the log for a regex; fail early (with the log tail) if the process exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive()  # read before the log so its final output is seen
            if m := self._check(regex, since):
                return m
            if exited or time.monotonic() > deadline:
                raise self._fail(pattern, timeout, exited)
            time.sleep(POLL_S)

    async def await_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """wait_for_log for async tests: yields to the event loop while polling."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive()
            if m := self._check(regex, since):
                return m
            if exited or time.monotonic() > deadline:
                raise self._fail(pattern, timeout, exited)
            await asyncio.sleep(POLL_S)

    def wait_until(
        self, pred: Callable[[], object], timeout: float, what: str = "", *, check: bool = True
    ) -> bool:
        """Poll ``pred`` while the process runs; True once it holds.

        After ``timeout`` fail with the log tail, or with ``check=False`` return False (for a
        caller that notes the miss and carries on).
        """
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                if not check:
                    return False
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or pred}; args={self.args}\n"
                    f"--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(POLL_S)
        return True

    def signal(self, sig: int = signal_mod.SIGTERM) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def wait(self, timeout: float = 30.0) -> int:
        """Exit code; fails (leaving the process running for __exit__) if it outlives timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"s3spool still running after {timeout}s; args={self.args}\n"
                f"--- log tail ---\n{self.log_tail()}"
            ) from None

    def __enter__(self) -> SpoolProc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
