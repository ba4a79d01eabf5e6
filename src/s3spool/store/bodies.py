"""Bodies read from an open file: exact reads, streamed ranges and their digests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from s3spool.errors import FileChanged
from s3spool.store.base import INLINE_READ_MAX

#: Streamed bodies are read, hashed and sent in chunks of this size: memory per request
#: in flight is a chunk or two, whatever the part size.
STREAM_CHUNK = 2 * 1024 * 1024


def held_bytes(streams: bool, length: int) -> int:
    """Bytes of the byte budget a body holds while it is read and sent: all of them when
    it is read into memory, the chunks in flight (digest pass, send) when it is streamed.
    Counting streams too keeps memory within BUFFER_LIMIT however many WORKERS there are."""
    if streams and length > INLINE_READ_MAX:
        return min(length, 2 * STREAM_CHUNK)
    return length


def read_exact(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only if the file is shorter)."""
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass(frozen=True, slots=True)
class FileRange:
    """A body streamed from an open file: ``length`` bytes at ``offset``."""

    fd: int
    offset: int
    length: int

    async def chunks(self) -> AsyncIterator[bytes]:
        # Read inline, not in a thread: the digest pass has just read these bytes, so
        # they come from the page cache, and a thread hop per chunk costs more CPU.
        pos, end = self.offset, self.offset + self.length
        while pos < end:
            chunk = os.pread(self.fd, min(STREAM_CHUNK, end - pos), pos)
            if not chunk:
                raise FileChanged("file shrank while it was being sent", reason="changed")
            yield chunk
            pos += len(chunk)

    def read(self) -> bytes:
        """The whole range in memory (for senders that cannot stream)."""
        data = read_exact(self.fd, self.offset, self.length)
        if len(data) != self.length:
            raise FileChanged("file shrank while it was being read", reason="changed")
        return data
