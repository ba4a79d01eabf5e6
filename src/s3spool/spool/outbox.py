"""The outbox: delivery events on disk (``working/<instance>/outbox/<notifier>/<id>.json``)
until each notifier has accepted them; ``OSError`` becomes ``LocalFault`` here.

One file per event and notifier, so notifiers acknowledge independently (an unlink each).
``put`` makes every copy durable (file and directory fsync) before it returns, and runs before
the file leaves working/: after a kill -9 at any moment either the file is still in working/
(recovery delivers it again, with the same event id) or its event is on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from s3spool.errors import LocalFault
from s3spool.spool.dirs import fsync_dir, write_atomic
from s3spool.spool.spool import local_fault, rename_noreplace

OUTBOX = "outbox"


class Outbox:
    """The outbox of one spool for this instance (``root`` = ``working/<instance>/outbox``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, event: dict[str, Any], notifiers: Sequence[str]) -> None:
        """Write ``event`` durably for each of ``notifiers``; ``LocalFault`` if it cannot."""
        if not notifiers:
            return
        body = json.dumps(event, ensure_ascii=False, sort_keys=True).encode() + b"\n"
        name = f"{event['id']}.json"
        try:
            for notifier in notifiers:
                directory = self.root / notifier
                directory.mkdir(parents=True, exist_ok=True)
                # the same id again (a recovered claim delivered twice): one copy is enough
                write_atomic(directory, name, body, sync=True, mode=0o640)
        except OSError as exc:
            fault = local_fault(exc, "write a notification event", self.root)
            if isinstance(fault, LocalFault):
                raise fault from None
            raise LocalFault(str(fault), reason=fault.reason, path=str(self.root)) from None

    def load(self, notifier: str, event_id: str) -> dict[str, Any] | None:
        try:
            raw = (self.root / notifier / f"{event_id}.json").read_bytes()
            data: dict[str, Any] = json.loads(raw)
        except (OSError, ValueError):
            return None
        return data

    def done(self, notifier: str, event_id: str) -> None:
        """``notifier`` accepted the event: forget it (idempotent)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / notifier / f"{event_id}.json")

    def waiting(self, notifier: str) -> Iterator[tuple[str, float]]:
        """(event id, mtime) of each event ``notifier`` has not accepted yet."""
        try:
            it = os.scandir(self.root / notifier)
        except OSError:
            return
        with it:
            for entry in it:
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                try:
                    mtime = entry.stat().st_mtime
                except OSError:
                    continue
                yield entry.name[: -len(".json")], mtime

    def depth(self, notifier: str) -> tuple[int, float]:
        """Events waiting for ``notifier`` and the age of the oldest (seconds, 0 if none)."""
        n, oldest = 0, None
        for _id, mtime in self.waiting(notifier):
            n += 1
            oldest = mtime if oldest is None else min(oldest, mtime)
        return n, (max(time.time() - oldest, 0.0) if oldest is not None else 0.0)

    def notifiers(self) -> list[str]:
        """The notifiers this outbox holds a directory for."""
        try:
            with os.scandir(self.root) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def adopt(self, dead_root: Path, notifiers: Collection[str]) -> int:
        """Move a dead instance's waiting events for ``notifiers`` into this outbox (those of
        other notifiers stay where they are); how many moved."""
        moved = 0
        for notifier in Outbox(dead_root).notifiers():
            if notifier not in notifiers:
                continue
            src_dir = dead_root / notifier
            dst_dir = self.root / notifier
            dst_dir.mkdir(parents=True, exist_ok=True)
            for entry in list(os.scandir(src_dir)):
                if entry.name.startswith("."):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)  # a write cut short: its claim is redelivered
                    continue
                try:
                    rename_noreplace(entry.path, dst_dir / entry.name)
                    moved += 1
                except FileExistsError:
                    os.unlink(entry.path)  # same event id already waiting here
                except OSError:
                    continue
            with contextlib.suppress(OSError):
                fsync_dir(dst_dir)
                os.rmdir(src_dir)
        with contextlib.suppress(OSError):
            os.rmdir(dead_root)
        return moved
