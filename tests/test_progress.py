"""Progress of `run --once`: a redrawn line on a terminal, a log line every interval otherwise."""

from __future__ import annotations

import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from proc import clean_env
from s3servers import S3Target
from s3spool.run.progress import Counts, describe
from s3spool.run.service import Service
from svc import config_of, settings_for

N_FILES = 150


@pytest.fixture
def slow_store(rclone_s3: S3Target) -> Iterator[S3Target]:
    """rclone behind a proxy that takes 0.2 s per request: a drain that lasts seconds."""
    with FaultProxy(rclone_s3.endpoint_url) as proxy:
        proxy.latency_s = 0.2
        yield rclone_s3.via(proxy.url)


def _backlog(spool: Path) -> None:
    (spool / "incoming").mkdir(parents=True)
    for i in range(N_FILES):
        (spool / "incoming" / f"f{i:03d}").write_bytes(b"p" * 1000)


def test_a_terminal_sees_a_redrawn_line_and_a_summary(slow_store: S3Target, spool: Path) -> None:
    _backlog(spool)
    env = clean_env({**slow_store.env(), "S3SPOOL_SPOOL_DIRS": str(spool), "S3SPOOL_WORKERS": "16"})
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3spool", "run", "--once"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(10) == 0, out.decode(errors="replace")[-2000:]
    text = out.decode(errors="replace")
    drawn = re.findall(r"\r\x1b\[K(\d[\d,]*)/150 files [^\r\n]* files/s [^\r\n]*ETA ", text)
    assert drawn, text[-2000:]
    assert len(set(drawn)) >= 2  # redrawn as files were delivered
    assert re.search(r"^150 delivered \(146\.5 KiB\), 0 failed in [\d.]+s: ", text, re.M), text[
        -800:
    ]
    # a log record never lands in the middle of the drawn line: it is cleared first
    assert not re.search(r"ETA \S+ *\d{4}-\d\d-\d\d ", text)


async def test_without_a_terminal_a_progress_line_is_logged(
    slow_store: S3Target, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _backlog(spool)
    svc = Service(config_of(settings_for(spool, slow_store, workers=16)), once=True)
    svc.progress.tty = False
    svc.progress.log_interval = 0.5  # 10 s in service: a test need not wait that long
    with caplog.at_level(logging.INFO, logger="s3spool.service"):
        assert await svc.run() == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert lines, "no progress line"
    # the "of" figure is counted while files move (incoming/ -> working/ -> done/): an estimate
    m = re.fullmatch(r"progress: [\d,]+/(\d+) files .* files/s .*", lines[0])
    assert m, lines[0]
    assert abs(int(m.group(1)) - N_FILES) <= 16, lines[0]
    assert any("ETA" in line for line in lines)


@pytest.mark.parametrize(
    ("counts", "total", "elapsed", "expected"),
    [
        (Counts(0, 0, 0), None, 0.0, "0 files  0 B  0 files/s  0 B/s"),
        (
            Counts(50, 0, 50 * 1024),
            (200, 200 * 1024),
            2.0,
            "50/200 files  50.0 KiB/200.0 KiB  25 files/s  25.0 KiB/s  ETA 6s",
        ),
        (
            Counts(10, 2, 0),
            (12, 0),
            1.0,
            "12/12 files  0 B/0 B  12 files/s  0 B/s  2 failed  ETA 0s",
        ),
        # more delivered than counted (files arrived during the run): never "12/10"
        (Counts(12, 0, 0), (10, 0), 1.0, "12/12 files  0 B/0 B  12 files/s  0 B/s  ETA 0s"),
    ],
)
def test_describe(
    counts: Counts, total: tuple[int, int] | None, elapsed: float, expected: str
) -> None:
    assert describe(counts, total, elapsed) == expected
