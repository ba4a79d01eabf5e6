"""BATCH=bundle below the service: the tar stream laid out from files (read back byte-exact
by tarfile), its reads by range, change detection, batch forming and the batch records."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import tarfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zstandard

from s3spool.config.settings import Settings
from s3spool.errors import FileChanged, PermanentError
from s3spool.run import batch as batch_mod
from s3spool.run.batch import Batches
from s3spool.run.compress import compress_member
from s3spool.spool.batches import batches_dir, load_batches, save_batch
from s3spool.spool.dirs import files_below
from s3spool.spool.pieces import FilePart, Pieces, read_chunks
from s3spool.spool.recovery import adopt, recover_own
from s3spool.spool.spool import Spool
from s3spool.spool.watch import Pending
from s3spool.store import tar
from s3spool.store.bodies import read_exact
from s3spool.store.digests import Checksummer, StreamDigest, digest_file, digest_range
from s3spool.store.tar import layout
from svc import open_spool

NAMES = [
    "a.txt",
    "dir/sub/b.log",
    "x" * 99,
    "y" * 100,
    "deep/" + "z" * 150 + "/long-name.bin",  # over 100 bytes: a PAX path= record
    "grüße/日本語.txt",  # not ASCII: a PAX path= record
    "odd name with spaces & %41 +.dat",
    "empty",
]
SIZES = [1, 511, 512, 513, 4096, 1023, 3, 0]


def _files(tmp_path: Path) -> list[tuple[str, FilePart, bytes]]:
    out = []
    for i, (name, size) in enumerate(zip(NAMES, SIZES, strict=True)):
        data = os.urandom(size)
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        st = os.stat(path)
        out.append((name, FilePart(str(path), size, st.st_mtime_ns), data))
    return out


def test_tar_stream_reads_back_byte_exact(tmp_path: Path) -> None:
    files = _files(tmp_path)
    pieces, offsets = layout([(name, part) for name, part, _ in files])
    whole = b"".join(read_chunks(pieces, 0, pieces.length, 4096))
    assert len(whole) == pieces.length
    assert pieces.length % 512 == 0
    assert whole.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(whole), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == NAMES
        for m, (_, part, data), offset in zip(members, files, offsets, strict=True):
            assert m.isreg()
            assert m.size == len(data)
            assert m.offset_data == offset
            assert m.mtime == part.mtime_ns // 10**9
            extracted = tar.extractfile(m)
            assert extracted is not None
            assert extracted.read() == data
            assert whole[offset : offset + len(data)] == data  # the index's offset, as a range GET
    # any range reads as the same slice of the whole: parts of a multipart upload
    for start, length in [(0, 1), (500, 700), (511, 2), (1000, 5000), (pieces.length - 3, 3)]:
        assert read_exact(pieces, start, length) == whole[start : start + length]
        assert b"".join(read_chunks(pieces, start, length, 100)) == whole[start : start + length]
    ck = Checksummer("crc32c")
    assert digest_file(pieces, pieces.length, ck) == digest_file(
        _fd_of(tmp_path, whole), len(whole), ck
    )


def test_the_digest_pass_gives_each_members_checksum(tmp_path: Path) -> None:
    """The members' own checksums (for the index) come from the body's one digest pass; a
    member read only in part (split by a multipart part) is not given one."""
    files = _files(tmp_path)
    pieces, offsets = layout(
        [(name, part) for name, part, _ in files], digest=partial(StreamDigest, "crc32c", md5=True)
    )
    ck = Checksummer("crc32c")
    digest_range(pieces, 0, pieces.length, ck)
    for _, part, data in files:
        found = pieces.sums[part].result()
        assert found == ck.body(data)
    split = offsets[4] + 100  # inside the 4096-byte member
    again, _ = layout(
        [(name, part) for name, part, _ in files], digest=partial(StreamDigest, "crc32c")
    )
    digest_range(again, 0, split, ck)
    digest_range(again, split, again.length - split, ck)
    assert files[4][1] not in again.sums
    assert again.sums[files[3][1]].label() == ck.label(ck.body(files[3][2]).checksum_b64)


def _fd_of(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "whole.tar"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize(
    "name",
    ["a", "pre/file-000123.log", "x" * 100, "x" * 99 + "\x7f", "sp ace %41+", "é", "y" * 101],
)
@pytest.mark.parametrize("size", [0, 1, 4096, 8**11 - 1, 8**11])
def test_the_hand_written_header_is_tarfiles(name: str, size: int) -> None:
    for mtime_ns in (0, 1_733_600_000_123_456_789, 8**11 * 10**9):
        assert tar.header(name, size, mtime_ns) == tar._tarfile_header(
            name, size, mtime_ns // 10**9
        )


def test_a_file_that_changed_after_the_layout_is_caught(tmp_path: Path) -> None:
    files = _files(tmp_path)
    pieces, _ = layout([(name, part) for name, part, _ in files])
    Path(files[4][1].path).write_bytes(b"other bytes")
    with pytest.raises(FileChanged):
        read_exact(pieces, 0, pieces.length)
    os.unlink(files[0][1].path)
    with pytest.raises(FileChanged):
        read_exact(pieces, 0, 600)
    assert read_exact(Pieces([b"abc", b"def"]), 2, 3) == b"cde"


_spool = open_spool


def _batches(spool: Spool, **settings: Any) -> tuple[Batches, Pending]:
    s = Settings(destination="s3://bucket/pre", spool_dirs=[spool.dirs.root], **settings)
    pending = Pending(10)
    host: Any = SimpleNamespace(s=s, once=True, pending=pending, stopping=False)

    async def never(claim: Any) -> Any:
        raise AssertionError("forming sends nothing")

    return Batches(host, None, upload=never, deliver=never), pending  # type: ignore[arg-type]


def _claim(spool: Spool, name: str, data: bytes) -> Any:
    (spool.dirs.incoming / name).parent.mkdir(parents=True, exist_ok=True)
    (spool.dirs.incoming / name).write_bytes(data)
    claim = spool.claim(name)
    assert claim is not None
    st = os.stat(claim.path)
    claim.size, claim.mtime, claim.mtime_ns = st.st_size, st.st_mtime, st.st_mtime_ns
    claim.key = "pre/" + name
    return claim


def test_batches_close_at_max_files_and_bytes_and_flush_the_rest(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    batches, pending = _batches(
        spool, batch="bundle", batch_max_files=3, batch_max_bytes=1000, batch_file_limit=600
    )
    assert batches.on
    closed = [batches.add(_claim(spool, f"f{i}", b"x" * 10)) for i in range(7)]
    full = [b for b in closed if b is not None]
    assert [len(b.members) for b in full] == [3, 3]  # BATCH_MAX_FILES
    assert full[0].key != full[1].key
    assert full[0].key.startswith("pre/bundles/")
    assert full[0].key.endswith(".tar")
    assert full[0].index_key == full[0].key + ".index.jsonl"
    assert batches.add(_claim(spool, "big1", b"x" * 500)) is None
    by_bytes = batches.add(_claim(spool, "big2", b"x" * 500))  # 1010 bytes: BATCH_MAX_BYTES
    assert by_bytes is not None
    assert [m.name for m in by_bytes.members] == ["f6", "big1", "big2"]
    assert batches.add(_claim(spool, "last", b"x")) is None
    assert batches.flush() == 1
    assert len(pending) == 1
    assert batches.flush() == 0
    batches.add(_claim(spool, "back", b"x"))
    batches.release()  # stopping: claims of batches forming or queued go back to incoming/
    assert (spool.dirs.incoming / "back").exists()
    assert (spool.dirs.incoming / "last").exists()
    off, _ = _batches(spool)
    assert not off.on  # BATCH=off, the default


def test_the_service_closes_a_batch_after_batch_max_wait(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    batches, pending = _batches(spool, batch="bundle", batch_max_wait=0.05)
    batches.once = False

    async def go() -> None:
        assert batches.add(_claim(spool, "a", b"1")) is None
        assert batches.add(_claim(spool, "b", b"2")) is None
        job = await asyncio.wait_for(pending.get(), 2)
        assert [m.name for m in job.members] == ["a", "b"]  # type: ignore[union-attr]

    asyncio.run(go())


def test_batch_records_are_recovered_and_adopted_as_batches(tmp_path: Path) -> None:
    dead = _spool(tmp_path, "dead")
    batches, _ = _batches(dead, batch="bundle", batch_max_files=2)
    batches.add(_claim(dead, "m1", b"1"))
    batch = batches.add(_claim(dead, "m2", b"2"))
    assert batch is not None
    save_batch(batch)
    single = _claim(dead, "single", b"3")
    mine = recover_own(dead)
    assert [getattr(j, "name", None) for j in mine] == ["single", None]
    (found,) = load_batches(dead)
    assert found.key == batch.key
    assert [(m.name, m.key) for m in found.members] == [
        ("m1", "pre/m1"),
        ("m2", "pre/m2"),
    ]
    assert found.recovered
    assert not found.complete
    assert found.mode == "bundle"
    del single
    os.close(dead._lock_fd or -1)  # dies without tidying up
    dead._lock_fd = None
    live = _spool(tmp_path, "live")
    adopted = adopt(live, dead.me, ())
    names = sorted(getattr(j, "name", "<batch>") for j in adopted)
    assert names == ["<batch>", "single"]
    (moved,) = load_batches(live)
    assert moved.key == batch.key
    assert len(moved.members) == 2
    assert all(os.path.exists(m.path) for m in moved.members)
    assert not dead.me.exists()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"batch": "extract", "cache_control": "no-cache"}, "CACHE_CONTROL apply to each file"),
        ({"batch": "extract", "overwrite": "never"}, "OVERWRITE=never needs a conditional"),
        ({"batch": "bundle", "batch_key_format": "b/{now}.tar"}, "needs {batch_seq} or {uuid4}"),
        ({"batch": "bundle", "batch_key_format": "{fname}-{uuid4}"}, "unknown field {fname}"),
        *(
            ({"batch": mode, "compress": "zstd", "compress_mode": "content-encoding"}, why)
            for mode in ("bundle", "extract")
            for why in ["COMPRESS_MODE=content-encoding needs a Content-Encoding header"]
        ),
        ({"batch": "extract", "tags": "a=b", "acl": "private"}, "TAGS, ACL apply"),
        ({"batch": "bundle", "batch_file_limit": "2MiB", "batch_max_bytes": "1MiB"}, "exceed"),
    ],
)
def test_combinations_that_cannot_apply_are_refused(
    tmp_path: Path, settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        Settings(destination="s3://bucket/p", spool_dirs=[tmp_path], **settings)


def test_a_batch_is_recovered_in_the_mode_it_was_formed_in(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    batches, _ = _batches(spool, batch="extract", batch_max_files=1)
    batch = batches.add(_claim(spool, "x", b"1"))
    assert batch is not None
    assert batch.mode == "extract"
    save_batch(batch)
    (found,) = load_batches(spool)  # a restart with BATCH=bundle, or off, sends it the same way
    assert found.mode == "extract"


def _dead_with_batch(tmp_path: Path, names: list[str], *, complete: bool) -> tuple[Spool, Any]:
    """A dead instance holding one recorded batch of ``names`` (each file's bytes: its name)."""
    dead = _spool(tmp_path, "dead")
    batches, _ = _batches(dead, batch="bundle", batch_max_files=len(names))
    batch = None
    for name in names:
        batch = batches.add(_claim(dead, name, b"dead " + name.encode()))
    assert batch is not None
    batch.complete = complete
    save_batch(batch)
    os.close(dead._lock_fd or -1)  # dies without tidying up
    dead._lock_fd = None
    return dead, batch


def _jobs(jobs: list[Any]) -> tuple[list[str], list[list[str]]]:
    lone = sorted(j.name for j in jobs if not hasattr(j, "members"))
    return lone, sorted(sorted(m.name for m in j.members) for j in jobs if hasattr(j, "members"))


@pytest.mark.parametrize(
    ("member", "ours"),
    [("m1", "m1"), ("d/m1", "d"), ("m1", "m1/x")],  # RECURSIVE: a file where a directory goes
)
def test_a_batch_whose_member_collides_with_a_claim_in_flight_is_adopted_whole_later(
    tmp_path: Path, member: str, ours: str
) -> None:
    dead, batch = _dead_with_batch(tmp_path, ["m2", member], complete=True)
    live = _spool(tmp_path, "live")
    if member.startswith(ours + "/"):
        (live.dirs.incoming / ours).rmdir()  # left by the dead one's claim of d/m1
    mine = _claim(live, ours, b"mine, in flight")  # a new file, claimed here
    assert adopt(live, dead.me, ()) == []  # the record stays whole, with both members
    assert Path(mine.path).read_bytes() == b"mine, in flight"
    assert load_batches(live) == []
    assert sorted(files_below(dead.me / "files")) == sorted([member, "m2"])
    live.settle_done(mine)
    (again,) = adopt(live, dead.me, ())  # a later pass: the whole batch, its own files
    assert isinstance(again, type(batch))
    assert again.key == batch.key
    assert again.complete
    for m in again.members:
        assert Path(m.path).read_bytes() == b"dead " + m.name.encode()
    assert sorted(m.name for m in again.members) == sorted([member, "m2"])
    assert not dead.me.exists()


class _Crash(BaseException):
    """The process dies here."""


@pytest.mark.parametrize("complete", [False, True])
@pytest.mark.parametrize("after", ["restart", "other", "other-dead-first", "dead-restarts"])
def test_a_crash_between_a_record_and_its_files_leaves_each_member_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, complete: bool, after: str
) -> None:
    from s3spool.spool import dirs

    dead, batch = _dead_with_batch(tmp_path, ["m1", "m2", "m3"], complete=complete)
    live = _spool(tmp_path, "live")
    move, moves = dirs.move_into, []

    def dies_at_the_second(*args: Any) -> None:
        if "/files/" in args[1]:  # a member's, not a record's write
            moves.append(args[3])
            if len(moves) == 2:
                raise _Crash
        move(*args)

    monkeypatch.setattr(dirs, "move_into", dies_at_the_second)
    with pytest.raises(_Crash):
        adopt(live, dead.me, ())  # its record copied here, m1 moved, m2 and m3 not yet
    monkeypatch.setattr(dirs, "move_into", move)
    os.close(live._lock_fd or -1)
    live._lock_fd = None
    assert sorted(os.listdir(live.files)) == ["m1"], moves
    if after == "restart":
        live = _spool(tmp_path, "live")
        jobs = recover_own(live) + adopt(live, dead.me, ())
    elif after == "dead-restarts":
        dead = _spool(tmp_path, "dead")
        jobs = recover_own(dead) + adopt(dead, live.me, ())
    else:
        other = _spool(tmp_path, "other")
        order = [live.me, dead.me] if after == "other" else [dead.me, live.me]
        jobs = adopt(other, order[0], ()) + adopt(other, order[1], ())
    lone, batched = _jobs(jobs)
    if complete:  # all three are in the bundle: none goes alone
        assert lone == []
        assert sorted(n for ms in batched for n in ms) == ["m1", "m2", "m3"]
        assert all(j.key == batch.key and j.complete for j in jobs)
    else:  # the batch went on with m1 (its bundle is sent again without the others)
        assert batched == [["m1"]]
        assert lone == ["m2", "m3"]
    for job in jobs:
        for m in getattr(job, "members", [job]):
            assert Path(m.path).read_bytes() == b"dead " + m.name.encode()
    # what is left on disk names each member once: a restart loads the same
    survivor = jobs[0].spool
    os.close(survivor._lock_fd or -1)
    survivor._lock_fd = None
    again = _spool(tmp_path, survivor.instance_id)
    assert _jobs(recover_own(again)) == (lone, batched)


def _decompress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)  # no size in the frame


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_members_are_laid_out_as_their_stored_bytes(tmp_path: Path, codec: str) -> None:
    files = _files(tmp_path)
    # every other member compressed (COMPRESS): its bytes held in memory in the file's place
    held = [
        compress_member(part, codec, 1) if i % 2 else None for i, (_, part, _) in enumerate(files)
    ]
    again = [
        compress_member(part, codec, 1) if i % 2 else None for i, (_, part, _) in enumerate(files)
    ]
    assert held == again, "a restart sends the same bytes"
    pieces, offsets = layout([(name, part) for name, part, _ in files], held)
    whole = b"".join(read_chunks(pieces, 0, pieces.length, 4096))
    with tarfile.open(fileobj=io.BytesIO(whole), mode="r:") as archive:
        for m, (_, part, data), stored, offset in zip(
            archive.getmembers(), files, held, offsets, strict=True
        ):
            assert m.offset_data == offset
            assert m.mtime == part.mtime_ns // 10**9
            got = whole[offset : offset + m.size]  # a ranged GET of the index's offset and size
            if stored is None:
                assert got == data
                continue
            assert got == stored
            assert m.size == len(stored)
            assert _decompress(codec, got) == data
    Path(files[1][1].path).write_bytes(b"other bytes")
    with pytest.raises(FileChanged):  # compressed from a file as it was batched, or not at all
        compress_member(files[1][1], codec, 1)


def test_a_members_codec_is_recorded_with_its_key(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    batches, _ = _batches(spool, batch="bundle", batch_max_files=2)
    first = _claim(spool, "a.log", b"1" * 2000)
    first.codec, first.key = "zstd", "pre/a.log.zst"
    batches.add(first)
    batch = batches.add(_claim(spool, "b.jpg", b"2"))
    assert batch is not None
    save_batch(batch)
    (found,) = load_batches(spool)  # a restart: the same codec, whatever COMPRESS is now
    assert [(m.name, m.key, m.codec) for m in found.members] == [
        ("a.log", "pre/a.log.zst", "zstd"),
        ("b.jpg", "pre/b.jpg", None),
    ]
    record = batches_dir(spool) / f"{batch.id}.json"
    data = json.loads(record.read_text())
    data["members"][0][2] = "lz4"
    record.write_text(json.dumps(data))
    assert load_batches(spool) == []  # a codec we do not know: the record is not trusted


def test_a_batch_with_compressed_members_its_tar_index_and_a_change(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    batches, _ = _batches(spool, batch="bundle", batch_max_files=2, compress="zstd")
    text = b"a line of a log\n" * 200
    packed = _claim(spool, "a.log", text)
    packed.codec, packed.key = "zstd", "pre/a.log.zst"
    batches.add(packed)
    batch = batches.add(_claim(spool, "b.jpg", b"2"))
    assert batch is not None
    found = [(m, FilePart(m.path, m.size, m.mtime_ns)) for m in batch.members]
    kept, alone = asyncio.run(batches._pack(batch, found))
    assert (kept, alone) == (found, [])
    assert batch.stored == {"a.log": len(batch.packed["a.log"])}
    assert batch.stored["a.log"] < 100
    parts = [part for _, part in kept]
    pieces, offsets = batch_mod._tar(batch, parts)
    whole = read_exact(pieces, 0, pieces.length)
    body, _ = batches._index(batch, parts, offsets)
    first, second = (json.loads(line) for line in body.decode().splitlines())
    assert first["key"] == "pre/a.log.zst"
    assert (first["size"], first["file_size"]) == (batch.stored["a.log"], len(text))
    stored = whole[first["offset"] : first["offset"] + first["size"]]
    assert _decompress("zstd", stored) == text
    assert "file_size" not in second
    assert whole[second["offset"] : second["offset"] + second["size"]] == b"2"
    bundle = batch_mod._tar_body(batch, pieces, parts)
    os.utime(packed.path, ns=(0, 0))  # changed during the upload: its bytes are not the file's
    with pytest.raises(FileChanged):
        bundle.restat()


def test_a_later_file_of_a_settled_members_name_is_no_member(tmp_path: Path) -> None:
    """A complete batch half settled (a directory refused the rest), then a new file of a
    settled member's name claimed, then a crash: the restart settles the member left, and
    the new file goes on its own, never as a member of a bundle that does not hold it."""
    spool = _spool(tmp_path)
    batches, _ = _batches(spool, batch="bundle", batch_max_files=2)
    batches.add(_claim(spool, "a", b"first a"))
    batch = batches.add(_claim(spool, "b", b"b"))
    assert batch is not None
    batch.complete, batch.offsets = True, {"a": 512, "b": 1536}
    save_batch(batch)
    os.rename(batch.members[0].path, spool.dirs.done / "a")  # a settled, b stranded
    later = _claim(spool, "a", b"a later file of that name")
    assert later.mtime_ns != batch.members[0].mtime_ns or later.size != batch.members[0].size
    jobs = recover_own(spool)
    [again] = [j for j in jobs if hasattr(j, "members")]
    assert [m.name for m in again.members] == ["b"]
    assert again.complete
    assert again.offsets == {"a": 512, "b": 1536}
    assert [j.name for j in jobs if not hasattr(j, "members")] == ["a"]  # on its own
    # the narrowed record keeps b's offset in the stored bundle, and only b
    [reloaded] = load_batches(spool)
    assert [m.name for m in reloaded.members] == ["b"]
    assert reloaded.offsets == {"b": 1536}


def test_a_member_whose_options_cannot_be_sent_goes_alone(tmp_path: Path) -> None:
    """Bundle: METADATA renders per member (for its index line) when it is batched; one that
    breaks a limit is refused there, and take() sends that file the per-file way, which fails
    it with the reason a per-file run gives."""
    spool = _spool(tmp_path)
    meta = ",".join(f"{c}={{fname}}" for c in "abcdefgh")
    batches, _ = _batches(spool, batch="bundle", batch_max_files=2, metadata=meta)
    assert batches.add(_claim(spool, "short", b"x")) is None
    with pytest.raises(PermanentError) as refused:
        batches.add(_claim(spool, "n" * 250, b"y"))
    assert refused.value.reason == "metadata_too_large"
    assert [m.name for m in batches._forming[spool].batch.members] == ["short"]
