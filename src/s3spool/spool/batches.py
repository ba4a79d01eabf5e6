"""Batch records: ``working/<instance>/batches/<id>.json`` names a batch's bundle key and its
members (name, key) before the first byte is sent, later its multipart upload and that it is
complete.  A record goes only once none of its members is left in ``files/``; a claim without a
record was never sent in a bundle (docs/architecture.md, Batching)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3spool.config.codecs import CODECS
from s3spool.errors import TransientError
from s3spool.spool import dirs as tree
from s3spool.spool.spool import Claim, Spool, about, local_fault, rename_noreplace

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
    #: bundle: each member's METADATA, TAGS and CONTENT_DISPOSITION as rendered when it was
    #: batched, by name, for its index line (never recorded: a restart renders them again)
    options: dict[str, dict[str, object]] = field(default_factory=dict)
    #: complete: where each member's bytes start in the stored bundle, by name
    offsets: dict[str, int] = field(default_factory=dict)

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
    record: dict[str, Any] = {
        "key": batch.key,
        "mode": batch.mode,
        # a member's codec (COMPRESS) is fixed with its key, as in a claim's key record; its
        # size and mtime tell it from a later file of the same name (load_batches)
        "members": [[m.name, m.key, m.codec, m.size, m.mtime_ns] for m in batch.members],
        "upload_id": batch.upload_id,
        "part_size": batch.part_size,
        "complete": batch.complete,
    }
    if batch.offsets:
        names = {m.name for m in batch.members}
        record["offsets"] = {n: o for n, o in batch.offsets.items() if n in names}
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
        ids = [n[:-5] for n in _record_names(where)]
    found = []
    for bid in sorted(ids):
        path = where / (bid + ".json")
        try:
            data = json.loads(path.read_bytes())
            mode = "extract" if data.get("mode") == "extract" else "bundle"
            batch = Batch(spool, bid, str(data["key"]), mode, recovered=True, saved=True)
            batch.upload_id, batch.part_size = data.get("upload_id"), data.get("part_size")
            batch.complete = bool(data.get("complete"))
            batch.offsets = {str(n): int(o) for n, o in (data.get("offsets") or {}).items()}
            members = [_member(m) for m in data["members"]]
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # its members are recovered one by one (a HEAD each): nothing is lost
            log.warning(
                "spool=%s: unreadable batch record %s (%s); ignored", spool.label, path, exc
            )
            continue
        if data.get("left") and not batch.complete:
            members = []  # its batch went on in an adopter without these: they go alone
        for name, key, codec, seen in members:
            claim = spool.recovered(spool.keys, name)
            try:
                st = os.lstat(claim.path)
            except OSError:
                continue
            if seen is not None and seen != (st.st_size, st.st_mtime_ns):
                continue  # a later file of the name (its member settled): a claim of its own
            claim.key, claim.codec = key, codec
            claim.size, claim.mtime, claim.mtime_ns = st.st_size, st.st_mtime, st.st_mtime_ns
            batch.members.append(claim)
        if not batch.members:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        found.append(batch)
        if len(batch.members) < len(members):
            try:  # a claim of a name that left may come later: it is no member
                save_batch(batch)
            except TransientError as exc:
                log.warning("%s", exc)
    return found


def _member(entry: list[Any]) -> tuple[str, str, str | None, tuple[int, int] | None]:
    """(name, key, codec, (size, mtime_ns)) of a record's member (a record of an earlier
    version has no codec or size); ``ValueError`` for a codec we do not know."""
    name, key, *more = entry
    codec = more[0] if more else None
    if codec is not None and codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    seen = (int(more[1]), int(more[2])) if len(more) >= 3 else None
    return str(name), str(key), codec, seen


def member_names(batches: Iterable[Batch]) -> set[str]:
    return {m.name for b in batches for m in b.members}


def adopt_records(spool: Spool, dead: Path) -> tuple[list[str], set[str]]:
    """Move a dead instance's batch records into ours, each with its members (the ids), and
    the names of members left in ``dead`` with their record, never to go alone: a batch of
    which one member's name is a claim in flight here is adopted whole on a later pass."""
    src, where = dead / BATCHES, batches_dir(spool)
    names = _record_names(src)
    if not names:
        return [], set()
    where.mkdir(exist_ok=True)
    moved = []
    for name in names:
        try:
            data = json.loads((src / name).read_bytes())
            members = [list(m) for m in data["members"]]
            for m in members:
                _member(m)  # as load_batches will read it
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            # load_batches says so and ignores it: its members are adopted one by one
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                rename_noreplace(src / name, where / name)
            continue
        bid = _adopt_record(spool, dead, name[:-5], data, members)
        if bid:
            moved.append(bid)
    kept: set[str] = set()
    for name in _record_names(src):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            kept.update(str(m[0]) for m in json.loads((src / name).read_bytes())["members"])
    with contextlib.suppress(OSError):
        for leftover in src.glob(".tmp.*"):  # a record cut short by the crash
            leftover.unlink()
        src.rmdir()
    return moved, kept


def _record_names(where: Path) -> list[str]:
    try:
        return [n for n in os.listdir(where) if n.endswith(".json") and not n.startswith(".")]
    except FileNotFoundError:
        return []


def _adopt_record(
    spool: Spool, dead: Path, bid: str, data: dict[str, Any], members: list[list[str]]
) -> str:
    """Our copy of the record first, the dead one's marked ``left`` (its batch went on), then
    the files, then the dead one's record goes. A crash in between leaves each file beside a
    record naming it: ours loads what moved, the dead one's the rest (``left``: see
    load_batches). Returns the id adopted, or ``""``."""
    src, files = dead / BATCHES / (bid + ".json"), dead / "files"
    present = [m for m in members if os.path.lexists(files / m[0])]  # [name, key, ...]
    if not present or (data.get("left") and not data.get("complete")):
        with contextlib.suppress(OSError):  # else on the next pass
            src.unlink()  # nothing left, or its batch went on without these: they go alone
        return ""
    busy = next((m[0] for m in present if _in_the_way(spool, m[0])), None)
    if busy is not None:
        msg = "a claim of this name is in flight here; its batch %s is adopted later, whole"
        about(log.warning, spool, busy, msg, bid)
        return ""
    where = batches_dir(spool)
    if os.path.lexists(where / (bid + ".json")):  # a part of it that moved in before
        bid = f"{bid}-{secrets.token_hex(3)}"
    ours = {k: v for k, v in data.items() if k != "left"}
    try:
        tree.write_atomic(where, bid + ".json", json.dumps(ours | {"members": present}).encode())
        if not data.get("left"):
            tree.write_atomic(src.parent, src.name, json.dumps(data | {"left": True}).encode())
    except OSError as exc:
        log.warning("spool=%s: cannot adopt batch %s now: %s", spool.label, bid, exc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where / (bid + ".json"))
        return ""
    taken = []
    for member in present:
        n = member[0]
        try:
            tree.move_into(rename_noreplace, os.fspath(files / n), os.fspath(spool.files), n)
        except FileNotFoundError:
            continue
        except OSError as exc:
            about(log.warning, spool, n, "cannot adopt: %s; its batch is adopted in part", exc)
            break
        taken.append(member)
    if len(taken) < len(present):  # our record names only what moved in (load_batches too)
        with contextlib.suppress(OSError):
            tree.write_atomic(where, bid + ".json", json.dumps(ours | {"members": taken}).encode())
        return bid
    with contextlib.suppress(OSError):  # else on the next pass: none of its members is left
        src.unlink()
    return bid


def _in_the_way(spool: Spool, name: str) -> bool:
    """Would a claim of ours keep ``name`` from moving into our ``files/``?"""
    path, parts = spool.files, name.split("/")
    for part in parts[:-1]:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return True
        except FileNotFoundError:
            return False
    return os.path.lexists(path / parts[-1])
