"""The log on a pipe, as journald and container runtimes read it: every file's line, whole,
in order, soon (lines are written in batches), and all of it before the process exits."""

from __future__ import annotations

import io
import json
import logging
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from proc import clean_env
from s3servers import S3Target
from s3spool import logs
from svc import drop, names

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) +\S+: ")
FILE_LINE = re.compile(r".* INFO    s3spool\.file: file .*\bname=(\S+) .*\boutcome=delivered")


def _env(target: S3Target, spool: Path, **more: str) -> dict[str, str]:
    # true defaults (INFO, text), and no PYTHONUNBUFFERED: stderr is as in production
    return clean_env({**target.env(), "S3SPOOL_SPOOL_DIRS": str(spool), **more}, unbuffered=False)


class Piped:
    """``python -m s3spool ARGS`` with its stderr a pipe, read line by line as it arrives."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s3spool", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.all: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put((time.monotonic(), line))

    def next_match(self, pattern: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            at, line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            self.all.append(line)
            if re.search(pattern, line):
                return at, line

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        while not self.lines.empty():
            self.all.append(self.lines.get()[1])
        return code


def _whole_text_lines(text: list[str]) -> None:
    for line in text:
        assert line.endswith("\n"), repr(line)
        assert LINE.match(line), repr(line)
    stamps = [line[:23] for line in text]
    assert stamps == sorted(stamps), "lines out of order"


def test_once_writes_every_file_line_to_the_pipe_before_exit(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    files = {f"f{i:03d}" for i in range(300)}
    for name in files:
        (spool / "incoming" / name).write_bytes(name.encode())
    r = subprocess.run(
        [sys.executable, "-m", "s3spool", "run", "--once"],
        env=_env(rclone_s3, spool),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines(keepends=True)
    _whole_text_lines(lines)
    logged = [m.group(1) for line in lines if (m := FILE_LINE.match(line))]
    assert sorted(logged) == sorted(files)  # each exactly once
    assert "run --once: 300 delivered" in lines[-2]  # the summary, then
    assert re.search(r"stopped: 300 delivered, 0 failed in [\d.]+s; exit 0$", lines[-1])


def test_a_running_service_writes_a_file_line_soon(tmp_path: Path, rclone_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    p = Piped(["run"], _env(rclone_s3, spool))
    try:
        p.next_match(r"watching 1 spool", 20)
        for name in ("one", "two"):
            dropped = time.monotonic()
            drop(spool / "incoming", name, b"payload")
            at, _ = p.next_match(rf"s3spool\.file: file .*name={name} ", 10)
            # the upload itself takes a few ms; the batch is written within 0.1 s
            assert at - dropped < 2.0
    finally:
        p.proc.send_signal(signal.SIGTERM)
    assert p.finish() == 0
    _whole_text_lines(p.all)


def test_sigterm_during_a_drain_leaves_every_delivered_line(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    for i in range(2000):
        (spool / "incoming" / f"f{i:04d}").write_bytes(b"x")
    p = Piped(["run"], _env(rclone_s3, spool, S3SPOOL_LOG_FORMAT="json"))
    p.next_match(r'"logger": "s3spool\.file"', 30)
    p.proc.send_signal(signal.SIGTERM)
    assert p.finish() == 0
    records = [json.loads(line) for line in p.all]  # every line whole JSON
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    logged = [r["name"] for r in records if r["logger"] == "s3spool.file"]
    done = names(spool / "done")
    assert 0 < len(done) < 2000, "SIGTERM should come in the middle of the drain"
    assert sorted(logged) == sorted(done)


def test_error_exits_keep_their_lines(tmp_path: Path, rclone_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    with socket.socket() as busy:  # the HTTP endpoint cannot bind: exit 78 after start-up
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        r = subprocess.run(
            [sys.executable, "-m", "s3spool", "run"],
            env=_env(rclone_s3, spool, S3SPOOL_HTTP_ADDR=addr),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 78, r.stderr
    lines = r.stderr.splitlines(keepends=True)
    _whole_text_lines(lines[:-1])
    assert any(" INFO " in line for line in lines), r.stderr  # held lines, written at exit
    # the cause last, as every exit-78 error says it: no log prefix
    assert lines[-1].startswith("s3spool: S3SPOOL_HTTP_ADDR (--http-addr): cannot listen"), r.stderr

    # a store that is down: exit 3, with the files delivered before it counted in the log
    (spool / "incoming" / "later").write_bytes(b"y")
    r = subprocess.run(
        [sys.executable, "-m", "s3spool", "run", "--once"],
        env=_env(
            rclone_s3, spool, S3SPOOL_ENDPOINT_URL="http://127.0.0.1:9", S3SPOOL_CONNECT_TIMEOUT="1"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3, r.stderr
    lines = r.stderr.splitlines(keepends=True)
    _whole_text_lines(lines)
    assert any("store unavailable" in line for line in lines)
    assert names(spool / "incoming") == {"later"}

    # an exception out of main: every file's line, then the traceback
    crash = (
        'import sys; sys.argv[1:] = ["run", "--once"]; '
        "from s3spool.run.service import Service; "
        "Service._once_summary = lambda self: 1 / 0; "
        "from s3spool.__main__ import main; sys.exit(main())"
    )
    r = subprocess.run(
        [sys.executable, "-c", crash],
        env=_env(rclone_s3, spool),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    logs, _, traceback = r.stderr.partition("Traceback (most recent call last):\n")
    assert "ZeroDivisionError" in traceback, r.stderr
    assert not LINE.search(traceback), r.stderr
    _whole_text_lines(logs.splitlines(keepends=True))
    assert FILE_LINE.search(logs)
    assert "name=later " in logs


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_short_way_writes_what_logging_writes(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    writer = logs.LineWriter(out)
    writer.setFormatter(logs.JsonFormatter() if fmt == "json" else logs.TextFormatter())
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [writer])
    level = root.level
    root.setLevel(logging.INFO)
    try:
        _both_ways(monkeypatch)
    finally:
        root.setLevel(level)
    writer.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        for r in records:
            assert isinstance(r.pop("ts"), float)
        assert records[0] == records[1]
        assert records[2] == records[3]
        assert records[0]["error"] == "X-Amz-Signature=*** Authorization: *** k"
    else:
        assert lines[0][23:] == lines[1][23:]
        assert lines[2][23:] == lines[3][23:]
        assert " WARNING s3spool-test-logs: file name=" in lines[2]
        assert ' error="X-Amz-Signature=*** Authorization: *** k" ' in lines[0]


def _both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    file_log = logging.getLogger("s3spool-test-logs")  # a child of the root, as in the service
    odd = {
        "name": 'a b"c=\u3000\x01',
        "key": "",
        "size": 7,
        "duration": 0.12345,
        "error": "X-Amz-Signature=abc Authorization: AWS4 k",
        "none": None,
    }
    for level in (logging.INFO, logging.WARNING):
        with monkeypatch.context() as m:
            m.setattr(file_log, "log", None)  # the short way, to the one handler
            logs.log_fields(file_log, level, "file", odd)
        file_log.log(level, "file", extra={"fields": odd})
