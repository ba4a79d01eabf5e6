"""COMPRESS: a file is compressed in one streaming pass (which also checksums the original for
the object's metadata) into an unnamed temporary copy (O_TMPFILE, freed by the kernel whatever
happens), and the copy goes through the ordinary PutObject or multipart path in its place.

Why a copy, not parts compressed in memory: every path that reads a body twice (digest pass,
send, part retries, whole-object checks) stays as it is, for a cost too small to matter
(bench/RESULTS.md "Compression").  After a crash the file is compressed again; a recorded
multipart upload reuses a stored part only if it holds exactly the new copy's bytes, which it
usually does: the codecs are deterministic for one level, library version and zstd threading."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import io
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from s3spool.config.codecs import CODECS, Codec, Rules
from s3spool.config.settings import Settings
from s3spool.errors import PermanentError
from s3spool.spool.pieces import FilePart, read_chunks
from s3spool.spool.spool import Claim, Source, about, local_fault
from s3spool.store.base import guess_type
from s3spool.store.digests import StreamDigest

log = logging.getLogger("s3spool.store")

#: bytes read, hashed and compressed at a time
CHUNK = 1024 * 1024
#: zstd worker threads for one large file: its own pool, beside ours
_MAX_ZSTD_THREADS = 4
#: input per zstd worker job (part of what a restart must repeat to make the same bytes)
ZSTD_JOB = 2 * 1024 * 1024


@functools.cache
def executor() -> ThreadPoolExecutor:
    """The process's compressing threads, one per core (the codecs release the GIL)."""
    return ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="s3spool-compress")


def rules_for(s: Settings) -> Rules | None:
    """The route's compression rules; None for COMPRESS=none."""
    return Rules.of(
        s.compress, s.compress_level, s.compress_mode, s.compress_min_size, s.compress_skip
    )


def level_of(codec: Codec, rules: Rules | None) -> int:
    """The level of a file fixed to ``codec``: the route's, or (COMPRESS changed since) the
    codec's default."""
    return rules.level if rules and rules.codec is codec else codec.default


def zstd_threads(size: int, threshold: int) -> int:
    """zstd worker threads for a file: none below ``threshold`` (many files share the cores),
    else up to 4 (zstd's output is the same for any number of workers)."""
    cores = os.cpu_count() or 1
    return min(cores, _MAX_ZSTD_THREADS) if cores > 1 and size >= threshold else 0


class Sink:
    """Where an encoder writes: the copy's fd.  A failed write is the working directory's
    fault (ENOSPC, EDQUOT, EIO), told apart from a failed read of the file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as exc:
            raise _WriteError(exc) from None
        self.size += done
        return done


class Encoder(NamedTuple):
    write: Callable[[bytes], object]
    finish: Callable[[], object]


def encoder(codec: str, level: int, threads: int, sink: Sink | io.BytesIO) -> Encoder:
    """A streaming encoder writing into ``sink``."""
    if codec == "zstd":
        import zstandard

        # 2 MiB jobs, not 8: far smaller worker buffers at the same speed (bench/RESULTS.md)
        jobs = {"job_size": ZSTD_JOB} if threads else {}
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, write_checksum=True, **jobs
        )
        comp = zstandard.ZstdCompressor(compression_params=params)
        out: Any = sink  # a file as far as zstd is concerned: it only calls write()
        # a stream_writer writes as it goes; compressobj would hand back MiBs at once
        writer = comp.stream_writer(out, closefd=False)
        return Encoder(writer.write, functools.partial(writer.flush, zstandard.FLUSH_FRAME))
    if level <= 3:  # ISA-L: much faster than zlib at these levels (bench/RESULTS.md)
        from isal import isal_zlib

        deflate: Any = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)
    else:
        deflate = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: the gzip format
    return Encoder(
        lambda data: sink.write(deflate.compress(data)), lambda: sink.write(deflate.flush())
    )


class _Stopped(Exception):
    """The upload was cancelled: the pass stopped at a chunk boundary."""


class _WriteError(Exception):
    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


@dataclass(frozen=True, slots=True)
class PassResult:
    size: int  # compressed bytes written
    label: str | None  # the original's configured checksum, ``crc32c:BASE64``


def compress_pass(
    src_fd: int,
    size: int,
    out_fd: int,
    codec: str,
    level: int,
    threads: int,
    algorithm: str,
    stop: threading.Event,
) -> PassResult:
    """Compress ``size`` bytes of ``src_fd`` into ``out_fd`` and checksum them (a thread)."""
    digest = StreamDigest(algorithm, md5=False)
    sink = Sink(out_fd)
    enc = encoder(codec, level, threads, sink)
    for chunk in read_chunks(src_fd, 0, size, CHUNK):  # an OSError here is a read's
        if stop.is_set():
            raise _Stopped
        digest.update(chunk)
        enc.write(chunk)
    enc.finish()
    return PassResult(sink.size, digest.label())


def compress_member(part: FilePart, codec: str, level: int) -> bytes:
    """A batch member's compressed bytes, held in memory for its tar (a thread): the frame the
    per-file path writes, the same bytes on every run (no time or name in a gzip header)."""
    out = io.BytesIO()
    enc = encoder(codec, level, 0, out)
    for chunk in part.chunks(0, part.size, CHUNK):  # FileChanged if it is not as batched
        enc.write(chunk)
    enc.finish()
    return out.getvalue()


def open_scratch(directory: Path) -> int:
    """An unnamed file in ``directory``: O_TMPFILE, else a file unlinked at once (a crash in
    between leaves ``.tmp.compress.*``, which recovery removes)."""
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        return os.open(directory, flags | os.O_TMPFILE, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    path = directory / f".tmp.compress.{secrets.token_hex(6)}"
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    return fd


async def run_pass(
    src_fd: int, size: int, out_fd: int, codec: str, level: int, threads: int, algorithm: str
) -> PassResult:
    """``compress_pass`` in the pool.  Cancelled, it waits for the thread to stop at its next
    chunk: the files it reads and writes must stay open until it has."""
    stop = threading.Event()
    work = functools.partial(
        compress_pass, src_fd, size, out_fd, codec, level, threads, algorithm, stop
    )
    fut = asyncio.get_running_loop().run_in_executor(executor(), work)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        stop.set()
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what goes on
        raise


@dataclass(slots=True, eq=False, kw_only=True)
class Encoded(Source):
    """The compressed copy of ``original``, uploaded in its place: its ``fd`` and ``size`` are
    the copy's; its headers and metadata say what it holds."""

    original: Claim

    def uploading(self, upload_id: str | None, part_size: int) -> None:
        # the upload id belongs to the claim: its key record keeps it for a restart
        self.upload_id, self.part_size = upload_id, part_size
        self.original.uploading(upload_id, part_size)

    def file(self) -> Source:
        return self.original


@contextlib.asynccontextmanager
async def compressed(claim: Claim, rules: Rules | None, s: Settings) -> AsyncIterator[Encoded]:
    """The compressed copy of ``claim``, open while the body is uploaded.  The codec was fixed
    with the key: a claim recorded before COMPRESS changed is still stored as its key says."""
    codec = CODECS[claim.codec or ""]
    level = level_of(codec, rules)
    mode = rules.mode if rules else "suffix"
    where = claim.spool.me
    try:
        fd = open_scratch(where)
    except OSError as exc:
        raise local_fault(exc, f"make the compressed copy of {claim.name!r}", where) from None
    try:
        threads = zstd_threads(claim.size, s.multipart_from)
        started = time.monotonic()
        try:
            done = await run_pass(claim.fd, claim.size, fd, codec.name, level, threads, s.checksum)
        except _WriteError as exc:
            what = f"write the compressed copy of {claim.name!r}"
            raise local_fault(exc.exc, what, where) from None
        except OSError as exc:
            raise PermanentError(f"cannot read: {exc.strerror}", reason="unreadable") from None
        how = f"{codec.name} {level}, {threads} zstd threads"
        took = time.monotonic() - started
        msg = "compressed (%s): %d -> %d bytes in %.3fs"
        about(log.debug, claim.spool, claim.name, msg, how, claim.size, done.size, took)
        ctype, encoding = Rules.headers_for(codec, mode, s.content_type or guess_type(claim.name))
        meta = {"s3spool-original-size": str(claim.size)}
        if done.label:
            meta["s3spool-original-checksum"] = done.label
        yield Encoded(
            claim.name,
            fd=fd,
            size=done.size,
            mtime_ns=claim.mtime_ns,
            key=claim.key,
            upload_id=claim.upload_id,
            part_size=claim.part_size,
            codec=codec.name,
            original=claim,
            content_type=ctype,
            content_encoding=encoding,
            metadata=meta,
        )
    finally:
        os.close(fd)
