"""BATCH: small claims of a spool formed into batches, each sent as one tar: a bundle object and
then its index (bundle), or a tar the store unpacks, confirmed by a listing (extract); then the
members settle one by one (docs/architecture.md, Batching)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from s3spool import errors
from s3spool.config.codecs import CODECS
from s3spool.config.spools import DEFAULT_ROUTE
from s3spool.logs import log_fields
from s3spool.run.compress import compress_member, executor, level_of, rules_for
from s3spool.run.settle import NotStarted, Outcomes
from s3spool.spool.batches import Batch, batches_dir, drop_batch, forget_batch, save_batch
from s3spool.spool.keys import KeyInput, KeyTemplate, claim_input, spool_dir_field
from s3spool.spool.pieces import FilePart, Pieces
from s3spool.spool.spool import Claim, Spool, about
from s3spool.store.base import ByteBudget, Delivery, Store
from s3spool.store.digests import Checksummer, StreamDigest, digest_range
from s3spool.store.objectopts import object_options
from s3spool.store.tar import layout
from s3spool.store.verify import MD5_HEX

if TYPE_CHECKING:
    from s3spool.run.routes import RouteRun

log = logging.getLogger("s3spool.service")
batch_log = logging.getLogger("s3spool.batch")


@dataclass(slots=True, eq=False, kw_only=True)
class Bundle(Claim):
    """A body laid out from claimed files (the tar) or held in memory (its index), sent
    through the pipeline's upload as a claim is; ``record``: the batch whose multipart upload
    it records."""

    pieces: Pieces
    parts: list[FilePart] = field(default_factory=list)
    record: Batch | None = None

    def reader(self) -> Pieces:
        return self.pieces

    def changed(self) -> str | None:
        for part in self.parts:
            try:
                st = os.lstat(part.path)
            except OSError as exc:
                return f"{part.path}: {exc.strerror}"
            if st.st_size != part.size or st.st_mtime_ns != part.mtime_ns:
                return f"{part.path} changed during upload (size {part.size}->{st.st_size})"
        return None

    def restat(self) -> None:
        """Lay the tar out again from the files as they are now (same names, same key)."""
        if self.record is None:
            return
        found = _stat_members(self.record.members)
        if len(found) != len(self.record.members):
            raise errors.FileChanged("a member is gone", reason="changed")
        was, self.parts = self.parts, [part for _, part in found]
        packed = self.record.packed
        for m, part, old in zip(self.record.members, self.parts, was, strict=True):
            if m.name in packed and part != old:  # its compressed bytes are not the file's now
                raise errors.FileChanged(f"{part.path} changed", reason="changed")
        self.pieces = _tar(self.record, self.parts, self.pieces.digest)[0]
        self.size = self.pieces.length

    def uploading(self, upload_id: str | None, part_size: int) -> None:
        if (upload_id, part_size) == (self.upload_id, self.part_size):
            return
        self.upload_id, self.part_size = upload_id, part_size
        if self.record is None:
            return
        self.record.upload_id, self.record.part_size = upload_id, part_size
        try:
            save_batch(self.record)
        except errors.TransientError as exc:
            log.warning("%s", exc)  # the sweep still finds the upload if we crash


def _stat_members(members: list[Claim]) -> list[tuple[Claim, FilePart]]:
    """Each member that is still a regular file, with its size and mtime now."""
    found = []
    for m in members:
        try:
            st = os.lstat(m.path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            m.size, m.mtime, m.mtime_ns = st.st_size, st.st_mtime, st.st_mtime_ns
            found.append((m, FilePart(m.path, st.st_size, st.st_mtime_ns)))
    return found


def _tar_body(batch: Batch, pieces: Pieces, parts: list[FilePart], **more: Any) -> Bundle:
    """The batch's tar as a body the pipeline uploads (``more``: the mode's own fields)."""
    return Bundle(
        name=batch.key,
        spool=batch.spool,
        path=os.fspath(batches_dir(batch.spool) / batch.id),
        key=batch.key,
        size=pieces.length,
        mtime_ns=time.time_ns(),
        per_file_options=False,
        content_type="application/x-tar",
        pieces=pieces,
        parts=parts,
        record=batch,
        **more,
    )


def _tar(
    batch: Batch, parts: list[FilePart], digest: Callable[[], StreamDigest] | None = None
) -> tuple[Pieces, list[int]]:
    # member names are the keys the files would have had: `tar x` gives the store's tree
    held = [batch.packed.get(m.name) for m in batch.members] if batch.packed else ()
    members = [(m.key, part) for m, part in zip(batch.members, parts, strict=True)]
    return layout(members, held, digest)


def _compress_all(work: list[tuple[str, FilePart, str, int]]) -> dict[str, bytes]:
    """COMPRESS: (name, file, codec, level) compressed, by name (a thread); a file changed,
    gone or unreadable since it was batched is left out."""
    out = {}
    for name, part, codec, level in work:
        try:
            out[name] = compress_member(part, codec, level)
        except (errors.FileChanged, OSError):
            continue
    return out


def _md5s(packed: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    """Size and MD5 hex of the bytes a compressed member's object holds (a thread)."""
    return {
        name: (len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())
        for name, data in packed.items()
    }


def _sizes(stored: int | None, size: int) -> dict[str, int]:
    """An index line's sizes: of the bytes in the bundle, and (COMPRESS) of the file."""
    return {"size": size} if stored is None else {"size": stored, "file_size": size}


@dataclass(slots=True, eq=False)
class _Forming:
    batch: Batch
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class Batches:
    """One route's batches: formed per spool, sent by a worker, recovered from their records."""

    def __init__(
        self,
        host: RouteRun,
        outcomes: Outcomes,
        *,
        upload: Callable[[Claim], Awaitable[Delivery]],
        deliver: Callable[[Claim], Awaitable[None]],
    ) -> None:
        """``upload``: the pipeline's (retries, pauses, verification); ``deliver``: a file's
        whole per-file way."""
        self.host, self.outcomes = host, outcomes
        self._upload, self._deliver = upload, deliver
        s = self.s = host.s
        self.once = host.once
        self.on = s.batch != "off"
        self.extract = s.batch == "extract"
        self._unpacks: bool | None = None  # extract: does the store unpack? (the first batch)
        self._probing = asyncio.Lock()
        self.template = KeyTemplate(s.batch_key_format, s.prefix, s.hostname_field)
        self._forming: dict[Spool, _Forming] = {}
        self._queued: set[Batch] = set()  # closed, waiting for a worker
        self._seq = itertools.count(1)
        # a fixed INSTANCE_ID restarted within a second must not draw the same {batch_seq}
        self._instance = f"{s.resolved_instance_id}-{secrets.token_hex(3)}"
        self.ck = Checksummer(s.checksum)
        # bundle: METADATA, TAGS and CONTENT_DISPOSITION rendered per member, in its index line
        opts = object_options(s) if s.batch == "bundle" else None
        per_member = opts is not None and (opts.metadata or opts.tags or opts.content_disposition)
        self.options = opts if per_member else None
        # each member's checksum (extract: and MD5) from the body's digest pass
        self._digest = partial(StreamDigest, s.checksum, md5=self.extract)
        self.compression = rules_for(s)
        # COMPRESS: the compressed members of the route's batches being sent, held in memory
        self._held = ByteBudget(s.buffer_limit)

    def add(self, claim: Claim) -> Batch | None:
        """Take a claim (its key rendered, its stat filled); the batch this closed, if any.
        ``PermanentError`` if its object options cannot be rendered (it goes alone, and fails
        as it would)."""
        options = self._member_options(claim) if self.options is not None else None
        spool = claim.spool
        forming = self._forming.get(spool)
        if forming is None:
            forming = self._forming[spool] = _Forming(self._new(claim))
            if not self.once:
                loop = asyncio.get_running_loop()
                forming.timer = loop.call_later(self.s.batch_max_wait, self._expire, forming)
        forming.batch.members.append(claim)
        if options:
            forming.batch.options[claim.name] = options
        forming.size += claim.size
        if (
            len(forming.batch.members) >= self.s.batch_max_files
            or forming.size >= self.s.batch_max_bytes
        ):
            return self._close(spool)
        return None

    def _new(self, first: Claim) -> Batch:
        now = datetime.now(UTC)
        seq = f"{now:%Y%m%dT%H%M%S}-{self._instance}-{next(self._seq):06d}"
        dirs = first.spool.dirs
        item = KeyInput(b"", spool_dir_field(dirs.root or dirs.incoming), first.mtime, first.ctime)
        key = self.template.render(item, extra={"batch_seq": seq})
        return Batch(first.spool, seq, key, "extract" if self.extract else "bundle")

    def _close(self, spool: Spool) -> Batch:
        forming = self._forming.pop(spool)
        if forming.timer is not None:
            forming.timer.cancel()
        return forming.batch

    def _expire(self, forming: _Forming) -> None:
        spool = forming.batch.spool
        if self._forming.get(spool) is forming and not self.host.stopping:
            self._queue(self._close(spool))  # a worker sends it

    def flush(self) -> int:
        """Queue every batch being formed (run --once, once all else is handled)."""
        spools = list(self._forming)
        for spool in spools:
            self._queue(self._close(spool))
        return len(spools)

    def _queue(self, batch: Batch) -> None:
        self._queued.add(batch)
        self.host.pending.put_claim(batch)

    def release(self) -> None:
        """Stopping: claims of batches still forming, or queued and not taken, go back to
        incoming/ (nothing of them was sent, and no record was written)."""
        batches = [self._close(spool) for spool in list(self._forming)] + list(self._queued)
        self._queued.clear()
        for batch in batches:
            members, batch.members = batch.members, []
            for claim in members:
                batch.spool.unclaim(claim)

    async def deliver(self, batch: Batch) -> None:
        started = time.monotonic()
        self._queued.discard(batch)
        if batch.recovered:
            found = _stat_members(batch.members)
        else:  # as take() found them before the claim; a change since fails the read
            found = [(m, FilePart(m.path, m.size, m.mtime_ns)) for m in batch.members]
        kept = {id(m) for m, _ in found}
        alone = [m for m in batch.members if id(m) not in kept]  # gone or swapped: one by one
        batch.members = [m for m, _ in found]
        held = 0 if batch.complete else sum(m.size for m in batch.members if m.codec)
        async with self._held.hold(held) if held else contextlib.nullcontext():
            if held:
                found, unread = await self._pack(batch, found)
                alone += unread
                batch.members = [m for m, _ in found]
            if not batch.members:
                drop_batch(batch)
            else:
                try:
                    if alone or not batch.saved:
                        save_batch(batch)  # before the first byte
                except errors.TransientError as exc:
                    self._not_sent(batch, exc if isinstance(exc, errors.LocalFault) else None)
                else:
                    await self._send(batch, [part for _, part in found], started)
            batch.packed = {}
        await self._alone(alone)

    async def _pack(
        self, batch: Batch, found: list[tuple[Claim, FilePart]]
    ) -> tuple[list[tuple[Claim, FilePart]], list[Claim]]:
        """COMPRESS: the members with a codec (fixed with their keys) compressed into memory,
        in the compressing threads; the members kept, and those that could not be read (they
        go alone)."""
        work = [
            (m.name, part, codec, level_of(CODECS[codec], self.compression))
            for m, part in found
            if (codec := m.codec)
        ]
        loop = asyncio.get_running_loop()
        batch.packed = await loop.run_in_executor(executor(), _compress_all, work)
        batch.stored = {name: len(data) for name, data in batch.packed.items()}
        kept = [(m, part) for m, part in found if not m.codec or m.name in batch.packed]
        return kept, [m for m, _ in found if m.codec and m.name not in batch.packed]

    async def _send(self, batch: Batch, parts: list[FilePart], started: float) -> None:
        if batch.mode == "extract":  # as when it was formed, whatever BATCH is now
            await self._send_extract(batch, parts, started)
            return
        spool = batch.spool
        pieces, offsets = _tar(batch, parts, self._digest)
        bundle = _tar_body(
            batch,
            pieces,
            parts,
            upload_id=batch.upload_id,
            part_size=batch.part_size,
            recovered=batch.recovered,
        )
        sent = False
        note = "already in store" if batch.complete else None
        try:
            if not batch.complete:
                done = await self._upload(bundle)
                sent = True
                if bundle.parts is not parts:  # laid out again (a file changed)
                    parts, offsets = bundle.parts, _tar(batch, bundle.parts)[1]
                body, sums = await asyncio.to_thread(
                    self._index, batch, parts, offsets, bundle.pieces
                )
                index = Bundle(
                    name=batch.index_key,
                    spool=spool,
                    path=bundle.path,
                    key=batch.index_key,
                    size=len(body),
                    mtime_ns=bundle.mtime_ns,
                    content_type="application/x-ndjson",
                    recovered=batch.recovered,
                    per_file_options=False,
                    pieces=Pieces([body]),
                )
                await self._upload(index)
                note = "already in store" if done.already_there else None
            else:
                sums = [label for label, _ in await asyncio.to_thread(self._sums, parts)]
        except NotStarted as why:
            if sent or batch.recovered:
                msg = "batch %s left in working/ for the next start"
                about(log.info, spool, batch.key, msg, batch.id)
                return
            self._not_sent(batch, why.local)
            return
        except errors.UploadError as exc:
            await self._give_up(batch, "bundle", exc)
            return

        if batch.complete:  # a restart after a partial settle lays out fewer members
            offsets = [
                batch.offsets.get(m.name, off)
                for m, off in zip(batch.members, offsets, strict=True)
            ]
        else:  # recorded with `complete`, for such a restart
            batch.offsets = {m.name: off for m, off in zip(batch.members, offsets, strict=True)}
        deliveries = [
            Delivery(m.key, part.size, checksum=checksum, bundle=batch.key, offset=offset)
            for m, part, offset, checksum in zip(batch.members, parts, offsets, sums, strict=True)
        ]

        def finish() -> None:
            self._finish(batch, deliveries, bundle.size, started, note)

        try:
            finish()
        except errors.LocalFault as fault:  # the record cannot say complete: settle later
            self.outcomes.strand(bundle, fault, finish)
        except errors.TransientError as exc:
            about(log.error, spool, batch.key, "%s; batch left in working/", exc)

    def _finish(
        self,
        batch: Batch,
        deliveries: list[Delivery],
        size: int,
        started: float,
        note: str | None = None,
    ) -> None:
        """The batch confirmed (bundle and index, or the listing of the unpacked objects): the
        record says so, then the members (each with its delivery) move to done/."""
        if not batch.complete:
            batch.complete = True
            try:
                save_batch(batch)  # members may move to done/ only after this
            except errors.TransientError:
                batch.complete = False
                raise
        self.outcomes.counts.bundles += 1
        for claim, delivery in zip(batch.members, deliveries, strict=True):
            delivery.stored = batch.stored.get(claim.name)  # COMPRESS: the stored bytes
            self.outcomes.settle(claim, delivery, started)
        forget_batch(batch)
        spool = batch.spool
        self.host.metrics.batches.labels(spool.label).inc()
        self.host.metrics.batch_bytes.observe(size)
        if batch_log.isEnabledFor(logging.INFO):
            fields: dict[str, object] = {
                "spool": spool.label,
                "extracted" if batch.mode == "extract" else "bundle": batch.key,
                "files": len(batch.members),
                "bytes": size,
                "duration": round(time.monotonic() - started, 4),
            }
            if spool.dirs.route != DEFAULT_ROUTE:
                fields = {"route": spool.dirs.route, **fields}
            if note:
                fields["note"] = note
            log_fields(batch_log, logging.INFO, "batch", fields)

    async def _send_extract(self, batch: Batch, parts: list[FilePart], started: float) -> None:
        """BATCH=extract: the tar goes to the store, which unpacks it into the members' own
        keys; a listing of those keys confirms each member (size, and MD5 where the ETag is
        one). A member that did not appear goes alone; a store that kept the tar as one
        object is told once, and the route goes on file by file."""
        spool = batch.spool
        store = self.host.store
        assert store is not None
        if not batch.complete:
            pieces, _ = _tar(batch, parts, self._digest)
            tar = _tar_body(
                batch,
                pieces,
                parts,
                metadata={"snowball-auto-extract": "true"},
                unpacked=True,
            )
            try:
                if self._unpacks is False:  # an earlier tar told: the route goes file by file
                    await self._all_alone(batch)
                    return
                # not one tar alone first: the store unpacks tars side by side faster
                await self._upload(tar)
                async with self._probing:  # the first tar back tells
                    if self._unpacks is None:
                        await self._check_unpacks(store, batch)
                if not self._unpacks:  # kept as one object: it goes, its files alone
                    await self._discard(batch)
                    await self._all_alone(batch)
                    return
                parts = tar.parts  # (laid out again if a file changed)
                found = await store.listed(sorted(m.key for m in batch.members))
            except NotStarted as why:
                if not batch.recovered:
                    self._not_sent(batch, why.local)
                return
            except errors.UploadError as exc:
                await self._give_up(batch, "tar", exc)
                return
            sums = await asyncio.to_thread(self._sums, parts, tar.pieces, md5=True)
            held = await asyncio.to_thread(_md5s, batch.packed) if batch.packed else {}
            kept: list[tuple[Claim, FilePart, str | None, str | None]] = []
            alone: list[tuple[Claim, FilePart, str | None, str | None]] = []
            for claim, part, (label, md5) in zip(batch.members, parts, sums, strict=True):
                size, etag = found.get(claim.key, (-1, None))
                want, md5 = held.get(claim.name, (part.size, md5))  # COMPRESS: the stored bytes
                ok = size == want and (etag is None or not MD5_HEX.match(etag) or etag == md5)
                (kept if ok else alone).append((claim, part, label, etag))
            if alone:
                msg = "%d of %d files did not appear where the store unpacks them; they go alone"
                about(log.warning, spool, batch.key, msg, len(alone), len(batch.members))
            batch.members = [claim for claim, *_ in kept]
            parts = [part for _, part, *_ in kept]
            done = [(label, etag) for *_, label, etag in kept]
        else:
            done = [(label, None) for label, _ in await asyncio.to_thread(self._sums, parts)]
            alone = []

        deliveries = [
            Delivery(claim.key, part.size, etag, label)
            for claim, part, (label, etag) in zip(batch.members, parts, done, strict=True)
        ]

        def finish() -> None:
            self._finish(batch, deliveries, sum(p.size for p in parts), started)

        if batch.members:
            try:
                finish()
            except errors.LocalFault as fault:
                self.outcomes.strand(batch.members[0], fault, finish)
            except errors.TransientError as exc:
                about(log.error, spool, batch.key, "%s; batch left in working/", exc)
        else:
            drop_batch(batch)
        await self._alone([claim for claim, *_ in alone])

    async def _check_unpacks(self, store: Store, batch: Batch) -> None:
        """The first tar of the route back: a store that kept it as one object does not unpack
        (the caller deletes it, and any other tar sent meanwhile)."""
        self._unpacks = batch.key not in await store.listed([batch.key])
        if self._unpacks:
            return
        log.error(
            "route %s: the store kept a tar as one object (%s) instead of unpacking it (no "
            "Snowball auto-extract): deleted; BATCH=extract falls back to one upload per file",
            batch.spool.dirs.route,
            batch.key,
        )
        self.on = False

    async def _give_up(self, batch: Batch, what: str, exc: errors.UploadError) -> None:
        """A bundle or tar not delivered after its retries: what an attempt stored goes, then
        its files go one by one."""
        msg = "%s not delivered (%s); its %d files go one by one"
        about(log.warning, batch.spool, batch.key, msg, what, exc, len(batch.members))
        await self._discard(batch)
        await self._all_alone(batch)

    async def _discard(self, batch: Batch) -> None:
        """A bundle given up: what an attempt may have stored goes, before its files go alone
        (a crash before the record goes repeats this)."""
        store = self.host.store
        if store is None:
            return
        for key in (batch.index_key, batch.key):
            try:
                await store.delete(key)
            except errors.UploadError as exc:
                about(log.warning, batch.spool, key, "could not delete: %s", exc)

    async def _all_alone(self, batch: Batch) -> None:
        members, batch.members = batch.members, []
        drop_batch(batch)
        await self._alone(members)

    async def _alone(self, claims: list[Claim]) -> None:
        """The per-file path, its key rendered (and recorded if it must be) as for any file."""
        for claim in claims:
            claim.key = ""
            await self._deliver(claim)

    def _sums(
        self, parts: list[FilePart], pieces: Pieces | None = None, *, md5: bool = False
    ) -> list[tuple[str | None, str]]:
        """Each member's configured checksum (``crc32c:BASE64``) and (``md5``) its MD5 hex:
        as the body's digest pass found it in ``pieces``, else read again."""
        out = []
        known = pieces.sums if pieces is not None else {}
        for p in parts:
            found = known.get(p) or digest_range(Pieces([p]), 0, p.size, self.ck, md5=md5)[0]
            digest = found.result().md5
            out.append((found.label(), digest.hex() if md5 and digest else ""))
        return out

    def _index(
        self,
        batch: Batch,
        parts: list[FilePart],
        offsets: list[int],
        pieces: Pieces | None = None,
    ) -> tuple[bytes, list[str | None]]:
        """The index object's body, one JSON line per member, and the members' checksums."""
        sums = [label for label, _ in self._sums(parts, pieces)]
        lines = [
            json.dumps(
                {
                    "name": m.name,
                    "key": m.key,
                    "offset": offset,
                    **_sizes(batch.stored.get(m.name), part.size),
                    "checksum": checksum,
                    "mtime": part.mtime_ns / 1e9,
                    **self._index_options(batch, m),
                }
            )
            for m, part, offset, checksum in zip(batch.members, parts, offsets, sums, strict=True)
        ]
        return ("\n".join(lines) + "\n").encode(), sums

    def _index_options(self, batch: Batch, member: Claim) -> dict[str, object]:
        """A member's options for its index line: as rendered when it was batched (a
        recovered batch's: rendered again)."""
        if self.options is None:
            return {}
        found = batch.options.get(member.name)
        if found is not None:
            return found
        try:
            return self._member_options(member)
        except errors.PermanentError as exc:  # it rendered when it was batched: not now
            about(log.warning, member.spool, member.name, "no options in the index: %s", exc)
            return {}

    def _member_options(self, member: Claim) -> dict[str, object]:
        """A member's METADATA, TAGS and CONTENT_DISPOSITION (``self.options`` set);
        ``PermanentError`` if a value cannot be sent."""
        assert self.options is not None
        params = self.options.params(claim_input(member))
        out: dict[str, object] = {}
        if "Metadata" in params:
            out["metadata"] = params["Metadata"]
        if "Tagging" in params:
            out["tags"] = dict(parse_qsl(params["Tagging"], keep_blank_values=True))
        if "ContentDisposition" in params:
            out["content_disposition"] = params["ContentDisposition"]
        return out

    def _not_sent(self, batch: Batch, local: errors.LocalFault | None) -> None:
        """Nothing of the batch was sent: its record goes, its claims back to incoming/."""
        spool = batch.spool
        if batch.recovered:
            return  # its record and members stay: the next start sends them
        members, batch.members = batch.members, []
        drop_batch(batch)
        for claim in members:
            spool.unclaim(claim)
            if local is not None:
                self.outcomes.left_behind(local)
        if local is not None:
            self.host.trip(spool, local)
