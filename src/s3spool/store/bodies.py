"""Bodies read from an open file or laid out (``spool/pieces.py``): exact reads, streamed
ranges and their digests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from s3spool.errors import FileChanged
from s3spool.spool.pieces import STREAM_CHUNK, Readable, read_chunks
from s3spool.store.base import INLINE_READ_MAX


def held_bytes(streams: bool, length: int) -> int:
    """What a body holds of the byte budget: all of it in memory, the chunks in flight when
    streamed (so memory stays within BUFFER_LIMIT however many WORKERS there are)."""
    if streams and length > INLINE_READ_MAX:
        return min(length, 2 * STREAM_CHUNK)
    return length


def read_exact(fd: Readable, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``; ``FileChanged`` if the file is shorter."""
    if not isinstance(fd, int):
        return b"".join(fd.chunks(offset, length, max(length, 1)))
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got != length:
        raise FileChanged("file shrank while it was being read", reason="changed")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass(frozen=True, slots=True)
class FileRange:
    """A body streamed from an open file: ``length`` bytes at ``offset``."""

    fd: Readable
    offset: int
    length: int

    async def chunks(self) -> AsyncIterator[bytes]:
        # inline, not in a thread: the digest pass just read these bytes into the page cache
        # (a laid-out body too: a thread per chunk measured slower, with 30 MiB more RSS)
        for chunk in read_chunks(self.fd, self.offset, self.length):
            yield chunk

    def read(self) -> bytes:
        """The whole range in memory (for senders that cannot stream)."""
        return read_exact(self.fd, self.offset, self.length)
