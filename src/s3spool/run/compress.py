"""COMPRESS: the pipeline's step that compresses a file into a temporary copy for the store.

A file that the rules (``config/codecs.py``) pick is compressed in one streaming pass, in a
thread of a pool as large as the machine's cores (zlib, ISA-L and zstd release the GIL; a
file of ``MULTIPART_THRESHOLD`` or more is compressed by zstd's own worker threads too),
into an unnamed temporary file (``O_TMPFILE``) in the instance's working directory.  That
copy is handed to the store in the file's place (``Encoded``), through the ordinary PutObject
or multipart path: Content-MD5 and the configured checksum of the bytes the store receives, the
store's answer verified against them.  The same pass computes the original's checksum, which
the object's metadata records with the original's size.  Memory per pass: one 1 MiB chunk in
and its output, plus the codec's state; disk: one compressed copy per upload in flight,
freed when the upload ends, and by the kernel if the process dies (it never had a name).

Why a copy and not parts compressed in memory: the copy keeps every path that reads a body
twice (digest pass, send, retries of a part, whole-object checks) unchanged; its cost, a
write and a read of the compressed bytes through the page cache, was nothing measurable on
logs and 0.3 s per GiB of incompressible data (bench/RESULTS.md "Compression").

Crash safety: the key (with its suffix) and the codec are fixed at claim time and recorded
like any key; a restart compresses again.  A recorded multipart upload is resumed: the
stored parts are compared with the new copy's parts (size and MD5 or checksum) as always,
so a part is reused only if it holds exactly those bytes.  The codecs are deterministic for
one level, one library version and one choice of zstd threading (which depends only on the
size), so after a crash the parts usually match.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import importlib
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3spool.config.codecs import CODECS, Rules
from s3spool.config.settings import Settings
from s3spool.errors import ConfigError, FileChanged, PermanentError
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

_pool: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """One pool of compressing threads per process, as many as cores: compression uses every
    core when several files are compressed at once, and never more passes than cores."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="s3spool-compress")
    return _pool


def rules_for(s: Settings) -> Rules | None:
    """The route's compression rules; None for COMPRESS=none."""
    return Rules.of(
        s.compress, s.compress_level, s.compress_mode, s.compress_min_size, s.compress_skip
    )


def zstd_threads(size: int, threshold: int) -> int:
    """zstd worker threads for a file: 0 (inline) below ``threshold``, where many files
    share the cores anyway; above it one file must use them all (and zstd's output is the
    same for any number of workers, so a restart on another machine resumes the same parts)."""
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


class _Deflate:
    """gzip through a zlib-style ``compressobj`` (zlib or ISA-L's ``isal_zlib``)."""

    def __init__(self, comp: Any, sink: Sink) -> None:
        self._comp = comp
        self._sink = sink

    def write(self, data: bytes) -> None:
        self._sink.write(self._comp.compress(data))

    def finish(self) -> None:
        self._sink.write(self._comp.flush())


class _Zstd:
    """zstd through a ``stream_writer``: it writes its output as it goes, in pieces of at most
    128 KiB (``compressobj`` hands back everything its worker threads made since the last
    call: several MiB at once on incompressible data)."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def finish(self) -> None:
        import zstandard

        self._writer.flush(zstandard.FLUSH_FRAME)


def encoder(codec: str, level: int, threads: int, sink: Sink) -> _Deflate | _Zstd:
    """A streaming encoder writing into ``sink``: ``write(data)``, then ``finish()``."""
    if codec == "zstd":
        import zstandard

        # 2 MiB jobs, not zstd's default 8 MiB at level 3: its worker buffers take 14 MiB
        # instead of 46 on logs, for the same speed and 0.2 % less ratio (bench/RESULTS.md)
        jobs = {"job_size": ZSTD_JOB} if threads else {}
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, write_checksum=True, **jobs
        )
        comp = zstandard.ZstdCompressor(compression_params=params)
        out: Any = sink  # a file as far as zstd is concerned: it only calls write()
        return _Zstd(comp.stream_writer(out, closefd=False))
    if level <= 3:  # ISA-L: several times zlib's speed at these levels (bench/RESULTS.md)
        from isal import isal_zlib

        return _Deflate(isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31), sink)
    return _Deflate(zlib.compressobj(level, zlib.DEFLATED, 31), sink)  # 31: the gzip format


class _Stopped(Exception):
    """The upload was cancelled: the pass stopped at a chunk boundary."""


class _ReadError(Exception):
    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


class _WriteError(_ReadError):
    pass


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
    pos = 0
    while pos < size:
        if stop.is_set():
            raise _Stopped
        try:
            chunk = os.pread(src_fd, min(CHUNK, size - pos), pos)
        except OSError as exc:
            raise _ReadError(exc) from None
        if not chunk:
            raise FileChanged("file shrank while it was being compressed", reason="changed")
        digest.update(chunk)
        enc.write(chunk)
        pos += len(chunk)
    enc.finish()
    return PassResult(sink.size, digest.label())


def open_scratch(directory: Path) -> int:
    """An unnamed file in ``directory`` (O_TMPFILE: the kernel frees it when it is closed,
    whatever kills the process); where the filesystem lacks O_TMPFILE, a file unlinked right
    after it is made (a crash in between leaves ``.tmp.compress.*``, which recovery removes)."""
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


def need_library(codec: str, level: int) -> None:
    """``ConfigError`` at startup, not a failed upload, where the codec's library is missing."""
    module, package = {"zstd": ("zstandard", "zstandard")}.get(codec, ("isal", "isal"))
    if codec == "gzip" and level > 3:
        return  # zlib: the standard library
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"S3SPOOL_COMPRESS (--compress): {codec} needs the {package} package ({exc})"
        ) from None


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
    level = rules.level if rules and rules.codec is codec else codec.default
    mode = rules.mode if rules else "suffix"
    where = claim.spool.me
    try:
        fd = open_scratch(where)
    except OSError as exc:
        raise local_fault(exc, f"make the compressed copy of {claim.name!r}", where) from None
    try:
        threads = zstd_threads(claim.size, s.multipart_threshold)
        started = time.monotonic()
        try:
            done = await run_pass(claim.fd, claim.size, fd, codec.name, level, threads, s.checksum)
        except _WriteError as exc:
            what = f"write the compressed copy of {claim.name!r}"
            raise local_fault(exc.exc, what, where) from None
        except _ReadError as exc:
            raise PermanentError(f"cannot read: {exc.exc.strerror}", reason="unreadable") from None
        about(
            log.debug,
            claim.spool,
            claim.name,
            "compressed (%s %d, %d zstd threads): %d -> %d bytes in %.3fs",
            codec.name,
            level,
            threads,
            claim.size,
            done.size,
            time.monotonic() - started,
        )
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
