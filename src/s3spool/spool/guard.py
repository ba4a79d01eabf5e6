"""Local faults: a spool whose directories fail pauses alone and resumes by itself.

Out of space, only files that must record a key wait (a rename or an unlink needs no space,
so a full spool still drains); any other fault stops new claims until ``heal`` says it works."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from s3spool.errors import LocalFault, TransientError
from s3spool.spool.spool import Claim, Spool, local_fault

log = logging.getLogger("s3spool.spoolguard")

#: probe delays: quick at first (a directory recreated at once), then once a second
FIRST_PROBE = 0.2
LAST_PROBE = 1.0


@dataclass(slots=True, eq=False)
class Guard:
    """The local-fault state of one spool."""

    spool: Spool
    fault: LocalFault | None = None
    since: float = 0.0
    #: claims a directory refused to take, with how to settle them once it works
    stranded: list[tuple[Claim, Callable[[], None]]] = field(default_factory=list)
    _healing: asyncio.Task[None] | None = None

    @property
    def paused(self) -> bool:
        """No new files from this spool: any fault but a lack of space, or no claim
        directory yet (it could not be made at startup)."""
        return self.fault is not None and (not self.fault.no_space or not self.spool.opened)

    def up(self) -> int:
        """1 while the spool works, 0 during a fault (the s3spool_spool_up gauge)."""
        return 0 if self.fault is not None else 1

    def trip(self, fault: LocalFault) -> None:
        """Record a fault; logs once per fault, and again if it gets worse."""
        if self.fault is not None and (fault.no_space or not self.fault.no_space):
            return  # already paused at least this much
        worse = self.fault is not None
        self.fault = fault
        self.since = time.monotonic()
        log.error(
            "spool=%s: %s; %s until it works again%s",
            self.spool.label,
            fault,
            "files that need space wait" if fault.no_space else "this spool takes no new files",
            " (now worse)" if worse else "",
        )

    def start_healing(self, on_healed: Callable[[Guard], None]) -> None:
        """Probe in the background until the spool works again (one task per fault)."""
        if self._healing is None or self._healing.done():
            self._healing = asyncio.get_running_loop().create_task(
                self._heal(on_healed), name=f"heal {self.spool.label}"
            )

    def stop_healing(self) -> None:
        if self._healing is not None:
            self._healing.cancel()

    async def _heal(self, on_healed: Callable[[Guard], None]) -> None:
        delay = FIRST_PROBE
        while self.fault is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_PROBE)
            try:
                still = await asyncio.to_thread(heal, self.spool, self.fault)
            except Exception:  # a bug must not end the probing: the spool would stay paused
                log.exception("spool=%s: probe failed; trying again", self.spool.label)
                continue
            if still is not None:
                if still.reason != self.fault.reason or still.path != self.fault.path:
                    self.fault = None
                    self.trip(still)  # a different problem now: say so
                continue
            if not self.settle_stranded():
                continue  # a move failed again: the guard tripped anew
            log.warning(
                "spool=%s: %s works again after %.1fs; resuming",
                self.spool.label,
                self.fault.path,
                time.monotonic() - self.since,
            )
            self.fault = None
            on_healed(self)

    def settle_stranded(self) -> bool:
        """Settle the stranded claims; False if a directory refused again."""
        stranded, self.stranded = self.stranded, []
        for i, (_claim, settle) in enumerate(stranded):
            try:
                settle()
            except LocalFault as exc:
                self.stranded.extend(stranded[i:])
                self.fault = None
                self.trip(exc)
                return False
        return True


def heal(spool: Spool, fault: LocalFault | None) -> LocalFault | None:
    """After a local fault: None once every directory works again, else what still fails.

    Recreates missing directories and relocks ours, as startup does, but never the spool root
    (that waits for whoever removed it); after ENOSPC also writes and removes a page."""
    d = spool.dirs
    root = d.root or d.incoming.parent
    if not root.is_dir():
        return LocalFault(
            f"the spool root {root} is gone (ENOENT)", reason="ENOENT", path=str(root)
        )
    try:
        spool.check_dirs()
        spool.relock()
        if fault is not None and fault.no_space:
            _write_probe(spool.me)
    except LocalFault as still:
        return still
    except TransientError:
        pass  # not a directory fault (another errno): nothing to wait for here
    return None


def _write_probe(directory: Path) -> None:
    probe = directory / f".probe.{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)  # a page, as a key record needs
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise local_fault(exc, "write", directory) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
