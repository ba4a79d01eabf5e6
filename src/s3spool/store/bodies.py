"""Bodies read from an open file: exact reads, streamed ranges and their digests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from s3spool.errors import FileChanged
from s3spool.store.base import INLINE_READ_MAX

#: Streamed bodies are read, hashed and sent in chunks: a chunk or two in memory per request.
STREAM_CHUNK = 2 * 1024 * 1024


def held_bytes(streams: bool, length: int) -> int:
    """What a body holds of the byte budget: all of it in memory, the chunks in flight when
    streamed (so memory stays within BUFFER_LIMIT however many WORKERS there are)."""
    if streams and length > INLINE_READ_MAX:
        return min(length, 2 * STREAM_CHUNK)
    return length


def read_chunks(fd: int, offset: int, length: int, size: int = STREAM_CHUNK) -> Iterator[bytes]:
    """``length`` bytes at ``offset``, ``size`` at a time; ``FileChanged`` if the file shrank."""
    pos, end = offset, offset + length
    while pos < end:
        chunk = os.pread(fd, min(size, end - pos), pos)
        if not chunk:
            raise FileChanged("file shrank while it was being read", reason="changed")
        yield chunk
        pos += len(chunk)


def read_exact(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``; ``FileChanged`` if the file is shorter."""
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

    fd: int
    offset: int
    length: int

    async def chunks(self) -> AsyncIterator[bytes]:
        # inline, not in a thread: the digest pass just read these bytes into the page cache
        for chunk in read_chunks(self.fd, self.offset, self.length):
            yield chunk

    def read(self) -> bytes:
        """The whole range in memory (for senders that cannot stream)."""
        return read_exact(self.fd, self.offset, self.length)
