"""Progress of ``run --once`` and ``enqueue``: a line redrawn on a terminal, else a log line
every ``LOG_INTERVAL`` seconds once the drain lasts that long."""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from s3spool.spool.scan import claimed, human_age, human_size, survey

if TYPE_CHECKING:
    from s3spool.spool.spool import Spool

log = logging.getLogger("s3spool.service")

LOG_INTERVAL = 10.0
DRAW_INTERVAL = 0.25


@dataclass(slots=True)
class Counts:
    delivered: int = 0
    failed: int = 0
    bytes: int = 0  # delivered
    bundles: int = 0  # BATCH: batches delivered (their files count in delivered)
    requests: int = 0  # BATCH, --once: requests sent, for the summary
    #: --once: files left behind by local faults, by "ERRNO in DIRECTORY"
    deferred: collections.Counter[str] = field(default_factory=collections.Counter)
    #: --once: claims left before MAX_FILES stops intake (None: no bound), and the bound
    #: that stopped it ("": none)
    claims_left: int | None = None
    bounded: str = ""


def count_waiting(
    spools: Iterable[tuple[Spool, Callable[[str], bool]]],
) -> tuple[int, int]:
    """Files and bytes waiting in incoming/ (regular, not ignored) and claimed in working/."""
    files = size = 0
    for spool, is_ignored in spools:
        waiting = survey(spool.dirs.incoming, is_ignored, recursive=spool.recursive)
        claims = claimed(spool.dirs)
        files += waiting.files + claims.files
        size += waiting.bytes + claims.bytes
    return files, size


def took(seconds: float) -> str:
    """A run's length: ``0.9s`` under a minute, else ``3m12s``, ``2h05m``."""
    return f"{seconds:.1f}s" if seconds < 60 else human_age(seconds)


def describe(counts: Counts, total: tuple[int, int] | None, elapsed: float) -> str:
    """``1,234/2,000 files  12.3 MiB/20.0 MiB  456 files/s  3.2 MiB/s  ETA 2s``."""
    done = counts.delivered + counts.failed
    rate = done / elapsed if elapsed > 0 else 0.0
    byte_rate = counts.bytes / elapsed if elapsed > 0 else 0.0
    files_part = f"{done:,}" + (f"/{max(total[0], done):,}" if total else "") + " files"
    bytes_part = human_size(counts.bytes) + (
        f"/{human_size(max(total[1], counts.bytes))}" if total else ""
    )
    line = f"{files_part}  {bytes_part}  {rate:,.0f} files/s  {human_size(int(byte_rate))}/s"
    if counts.failed:
        line += f"  {counts.failed:,} failed"
    if total and rate > 0:
        left = max(total[0] - done, 0)
        line += f"  ETA {human_age(left / rate)}"
    return line


class Progress:
    """Draws (terminal) or logs (otherwise) the progress of ``counts`` until cancelled."""

    def __init__(
        self,
        counts: Counts,
        spools: list[tuple[Spool, Callable[[str], bool]]],
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.counts = counts
        self.spools = spools
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_interval = log_interval
        self.total: tuple[int, int] | None = None
        self.started = time.monotonic()
        self._drawn = False

    async def run(self) -> None:
        if self.tty:  # log records clear the line first, so they never land in its middle
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._clear_for)
        try:
            if self.tty:
                counting = asyncio.create_task(asyncio.to_thread(count_waiting, self.spools))
                counting.add_done_callback(self._counted)
            while True:
                await asyncio.sleep(DRAW_INTERVAL if self.tty else self.log_interval)
                if not self.tty:
                    # what is left, counted now: a log line every 10 s can afford the walk
                    files, size = await asyncio.to_thread(count_waiting, self.spools)
                    c = self.counts
                    self.total = (c.delivered + c.failed + files, c.bytes + size)
                self.tick()
        finally:
            if self.tty:
                self.clear()
                for handler in logging.getLogger().handlers:
                    handler.removeFilter(self._clear_for)

    def _counted(self, task: asyncio.Task[tuple[int, int]]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.total = task.result()

    def tick(self) -> None:
        line = describe(self.counts, self.total, time.monotonic() - self.started)
        if self.tty:
            self.stream.write(f"\r\x1b[K{line}")
            self.stream.flush()
            self._drawn = True
        else:
            log.info("progress: %s", line)

    def _clear_for(self, record: logging.LogRecord) -> bool:
        self.clear()
        return True

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def summary(self) -> None:
        """The closing line on a terminal: totals and mean rates."""
        if not self.tty:
            return
        elapsed = time.monotonic() - self.started
        c = self.counts
        rate = (c.delivered + c.failed) / elapsed if elapsed > 0 else 0.0
        byte_rate = int(c.bytes / max(elapsed, 1e-9))
        print(
            f"{c.delivered:,} delivered ({human_size(c.bytes)}), {c.failed:,} failed in "
            f"{elapsed:.1f}s: {rate:,.0f} files/s, {human_size(byte_rate)}/s",
            file=self.stream,
            flush=True,
        )
