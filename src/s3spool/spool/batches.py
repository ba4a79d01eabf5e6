"""Batch records: ``working/<instance>/batches/<id>.json`` names a batch's bundle key and its
members (name, key) before the first byte is sent, later its multipart upload and that it is
complete.  A record goes only once none of its members is left in ``files/``; a claim without a
record was never sent in a bundle (docs/architecture.md, Batching)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from s3spool.config.codecs import CODECS
from s3spool.spool import dirs as tree
from s3spool.spool.spool import Claim, Spool, local_fault, rename_noreplace

log = logging.getLogger("s3spool.spool")

BATCHES = "batches"
#: the index object's key is the bundle's plus this
INDEX_SUFFIX = ".index.jsonl"


@dataclass(eq=False)
class Batch:
    """Claims of one spool sent as one bundle; ``key`` fixed when the batch is formed."""

    spool: Spool
    id: str
    key: str
    #: bundle or extract, as BATCH was when it was formed: a restart sends it the same way
    mode: str = "bundle"
    members: list[Claim] = field(default_factory=list)
    upload_id: str | None = None
    part_size: int | None = None
    complete: bool = False  # bundle and index confirmed: members may move to done/
    recovered: bool = False  # from a record of an earlier life: ask the store first
    saved: bool = False
    #: COMPRESS: the compressed bytes of the members that have a codec, by name, held in memory
    #: while the batch is sent (run/batch.py); never recorded: a restart compresses again
    packed: dict[str, bytes] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)  # their sizes, kept for settling

    @property
    def index_key(self) -> str:
        return self.key + INDEX_SUFFIX


def batches_dir(spool: Spool) -> Path:
    return spool.me / BATCHES


def recorded_upload(path: Path) -> str | None:
    """The open multipart upload a record names (the sweep leaves it alone)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    upload_id = data.get("upload_id") if isinstance(data, dict) else None
    return str(upload_id) if upload_id else None


def save_batch(batch: Batch) -> None:
    """Write the record whole or not at all; ``LocalFault`` (or ``TransientError``) if not."""
    record = {
        "key": batch.key,
        "mode": batch.mode,
        # a member's codec (COMPRESS) is fixed with its key, as in a claim's key record
        "members": [
            [m.name, m.key, m.codec] if m.codec else [m.name, m.key] for m in batch.members
        ],
        "upload_id": batch.upload_id,
        "part_size": batch.part_size,
        "complete": batch.complete,
    }
    where = batches_dir(batch.spool)
    try:
        where.mkdir(exist_ok=True)
        tree.write_atomic(where, batch.id + ".json", json.dumps(record).encode())
    except OSError as exc:
        raise local_fault(exc, f"record batch {batch.id}", where) from None
    batch.saved = True


def forget_batch(batch: Batch) -> None:
    """Remove the record once no member is left in ``files/``."""
    if batch.saved and not any(os.path.lexists(m.path) for m in batch.members):
        drop_batch(batch)


def drop_batch(batch: Batch) -> None:
    """Remove the record: nothing of the batch was sent, or its members go one by one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(batches_dir(batch.spool) / (batch.id + ".json"))
    batch.saved = False


def load_batches(spool: Spool, ids: Iterable[str] | None = None) -> list[Batch]:
    """Our records (``ids``: only these), each with its members still in ``files/`` as
    recovered claims; a record none of whose members is left is removed."""
    where = batches_dir(spool)
    if ids is None:
        try:
            ids = [n[:-5] for n in os.listdir(where) if n.endswith(".json")]
        except FileNotFoundError:
            return []
    found = []
    for bid in sorted(ids):
        path = where / (bid + ".json")
        try:
            data = json.loads(path.read_bytes())
            mode = "extract" if data.get("mode") == "extract" else "bundle"
            batch = Batch(spool, bid, str(data["key"]), mode, recovered=True, saved=True)
            batch.upload_id, batch.part_size = data.get("upload_id"), data.get("part_size")
            batch.complete = bool(data.get("complete"))
            members = [_member(m) for m in data["members"]]
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # its members are recovered one by one (a HEAD each): nothing is lost
            log.warning(
                "spool=%s: unreadable batch record %s (%s); ignored", spool.label, path, exc
            )
            continue
        for name, key, codec in members:
            claim = spool.recovered(spool.keys, name)
            if os.path.lexists(claim.path):
                claim.key, claim.codec = key, codec
                batch.members.append(claim)
        if batch.members:
            found.append(batch)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return found


def _member(entry: list[str]) -> tuple[str, str, str | None]:
    """(name, key, codec) of a record's member; ``ValueError`` for a codec we do not know."""
    name, key, *more = entry
    codec = more[0] if more else None
    if codec is not None and codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    return str(name), str(key), codec


def member_names(batches: Iterable[Batch]) -> set[str]:
    return {m.name for b in batches for m in b.members}


def adopt_records(spool: Spool, dead: Path) -> list[str]:
    """Move a dead instance's batch records into ours (before its files: a crash in between
    leaves a record whose members are adopted on the next pass); their ids."""
    src = dead / BATCHES
    try:
        names = [n for n in os.listdir(src) if n.endswith(".json") and not n.startswith(".")]
    except FileNotFoundError:
        return []
    where = batches_dir(spool)
    where.mkdir(exist_ok=True)
    moved = []
    for name in names:
        try:
            rename_noreplace(src / name, where / name)
        except (FileExistsError, FileNotFoundError):
            continue
        moved.append(name[:-5])
    with contextlib.suppress(OSError):
        for leftover in src.glob(".tmp.*"):  # a record cut short by the crash
            leftover.unlink()
        src.rmdir()
    return moved
