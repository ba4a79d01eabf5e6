"""Crash recovery: our own claims after a restart, the claims of dead instances (whose
directory can be locked), and the recorded multipart uploads."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Collection, Iterator
from pathlib import Path

from s3spool.spool.batches import (
    BATCHES,
    Batch,
    adopt_records,
    load_batches,
    member_names,
    recorded_upload,
)
from s3spool.spool.dirs import files_below, move_into, prune_empty
from s3spool.spool.outbox import OUTBOX, Outbox
from s3spool.spool.spool import Claim, Spool, about, rename_noreplace

log = logging.getLogger("s3spool.spool")


def dead_instances(spool: Spool) -> Iterator[Path]:
    """working/<id>/ directories whose lock nobody holds."""
    try:
        entries = list(os.scandir(spool.dirs.working))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name == spool.instance_id or not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith("."):
            continue  # .resubmit/: backoff records, not an instance
        if not instance_is_live(Path(entry.path)):
            yield Path(entry.path)


def adopt(spool: Spool, dead: Path, notifiers: Collection[str]) -> list[Claim | Batch]:
    """Move a dead instance's claims (and their keys) into ours, and its events for
    ``notifiers`` (the configured ones; the others stay in its directory)."""
    try:
        fd = os.open(dead, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("spool=%s: cannot open %s: %s", spool.label, dead, exc.strerror)
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # alive after all, or another instance is adopting it
        adopted = _adopt_locked(spool, dead)
        # its events not yet accepted by every notifier: ours to send now
        events = Outbox(spool.me / OUTBOX).adopt(dead / OUTBOX, notifiers)
        if events:
            # the usual sequel of a --once run whose summary warned of them: no alarm here
            msg = "spool=%s: adopted %d notification events of dead instance %s"
            log.info(msg, spool.label, events, dead.name)
        for sub in (dead / "keys", dead / "files", dead):
            with contextlib.suppress(OSError):
                for leftover in sub.glob(".tmp.*"):
                    leftover.unlink()
                prune_empty(sub)
                sub.rmdir()
        return adopted
    finally:
        os.close(fd)


def _adopt_locked(spool: Spool, dead: Path) -> list[Claim | Batch]:
    files, keys = dead / "files", dead / "keys"
    records, kept = adopt_records(spool, dead)  # records first, as keys before files
    adopted: list[Claim] = []
    for name in files_below(files):
        if name in kept:
            continue  # a member of a batch adopted later, whole: never alone
        claim = spool.recovered(keys, name)
        if claim.key:
            # Key first, file second: a crash in between leaves an orphan record
            # here (removed below on the next pass), never a file without its key.
            spool.save_key(claim)
        try:
            move_into(rename_noreplace, os.fspath(files / name), os.fspath(spool.files), name)
        except (FileExistsError, NotADirectoryError):
            msg = "a claim of this name is in flight here; adopting it later"
            about(log.warning, spool, name, msg)
            continue
        except FileNotFoundError:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(keys / name)
        adopted.append(claim)
    _remove_orphan_keys(keys, files)
    return _grouped(adopted, load_batches(spool, records) if records else [])


def _grouped(claims: list[Claim], batches: list[Batch]) -> list[Claim | Batch]:
    """Claims that are members of a batch go with it, the others alone."""
    names = member_names(batches)
    return [c for c in claims if c.name not in names] + batches


def recover_own(spool: Spool) -> list[Claim | Batch]:
    """Claims in our own directory (left by a cancelled upload) and the batches recorded
    there: deliver them again."""
    _remove_orphan_keys(spool.keys, spool.files)
    with contextlib.suppress(OSError):
        for leftover in spool.me.glob(".tmp.*"):  # a compressed copy's (compress.py)
            leftover.unlink()
    prune_empty(spool.files)  # left by a crash between a RECURSIVE claim's move and its tidy-up
    claims = [spool.recovered(spool.keys, name) for name in files_below(spool.files)]
    return _grouped(claims, load_batches(spool))


def open_uploads(spool: Spool) -> set[str]:
    """Upload ids recorded by every instance of this spool (ours and others)."""
    ids: set[str] = set()
    try:
        instances = list(os.scandir(spool.dirs.working))
    except FileNotFoundError:
        return ids
    for inst in instances:
        keys = Path(inst.path) / "keys"
        for name in files_below(keys):
            if name.startswith(".tmp."):
                continue
            record = spool.load_key(keys, name)
            if record and record.get("upload_id"):
                ids.add(str(record["upload_id"]))
        for name in files_below(Path(inst.path) / BATCHES):
            upload_id = recorded_upload(Path(inst.path) / BATCHES / name)
            if upload_id:
                ids.add(upload_id)
    return ids


def instance_is_live(path: Path) -> bool:
    """Does a live process hold the lock of the instance directory ``path``?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # gone: an adopter removed it, or it never existed
    except OSError:
        return True  # cannot tell: never adopt what may be alive
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _remove_orphan_keys(keys: Path, files: Path) -> None:
    """Key records whose file is gone (settled just before a crash) and stray temp files."""
    if not files.is_dir():
        return
    for name in files_below(keys):
        if name.startswith(".tmp.") or not os.path.lexists(files / name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(keys / name)
    prune_empty(keys)
