"""Reading claimed files for a body: chunked reads of an open file, and ``Pieces``, a body laid
out from byte strings and whole files (a tar of claimed files) that is read like one file."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from s3spool.errors import FileChanged

#: Streamed bodies are read, hashed and sent in chunks: a chunk or two in memory per request.
STREAM_CHUNK = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FilePart:
    """A whole file of a laid-out body, read when the body is: opened per read (no fd held
    while it waits) and checked against the size and mtime it was laid out with."""

    path: str
    size: int
    mtime_ns: int

    def chunks(self, offset: int, length: int, size: int) -> Iterator[bytes]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise FileChanged(f"{self.path}: {exc.strerror}", reason="changed") from None
        try:
            st = os.fstat(fd)
            if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
                raise FileChanged(f"{self.path} changed after it was batched", reason="changed")
            yield from read_chunks(fd, offset, length, size)
        finally:
            os.close(fd)


class Pieces:
    """A body made of byte strings and ``FilePart``s, read like a file (a tar stream of
    claimed files, ``tar.py``): only the byte strings are in memory."""

    def __init__(
        self, parts: list[bytes | FilePart], digest: Callable[[], Any] | None = None
    ) -> None:
        """``digest``: makes a digest (``update(bytes)``) for each file the first time it is
        read whole, kept in ``sums``: a member's own checksum without a read of its own."""
        self.parts = parts
        self.digest = digest
        self.sums: dict[FilePart, Any] = {}
        self.starts: list[int] = []
        pos = 0
        for part in parts:
            self.starts.append(pos)
            pos += part.size if isinstance(part, FilePart) else len(part)
        self.length = pos

    def chunks(self, offset: int, length: int, size: int = STREAM_CHUNK) -> Iterator[bytes]:
        """``length`` bytes at ``offset``, joined into chunks of about ``size``."""
        held: list[bytes] = []
        n = 0
        for piece in self._pieces(offset, length, size):
            held.append(piece)
            n += len(piece)
            if n >= size:
                yield b"".join(held)
                held, n = [], 0
        if held:
            yield b"".join(held)

    def _pieces(self, offset: int, length: int, size: int) -> Iterator[bytes]:
        end = offset + length
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        while offset < end and i < len(self.parts):
            part, start = self.parts[i], self.starts[i]
            within = offset - start
            if isinstance(part, FilePart):
                take = min(part.size - within, end - offset)
                if take == part.size and self.digest is not None and part not in self.sums:
                    d = self.digest()
                    for chunk in part.chunks(0, take, size):
                        d.update(chunk)
                        yield chunk
                    self.sums[part] = d
                elif take > 0:
                    yield from part.chunks(within, take, size)
            else:
                take = min(len(part) - within, end - offset)
                if take > 0:
                    yield part[within : within + take]
            offset += max(take, 0)
            i += 1
        if offset < end:
            raise FileChanged("body shorter than its layout", reason="changed")


#: what a body is read from: an open file's fd, or a laid-out body
Readable = int | Pieces


def read_chunks(
    fd: Readable, offset: int, length: int, size: int = STREAM_CHUNK
) -> Iterator[bytes]:
    """``length`` bytes at ``offset``, ``size`` at a time; ``FileChanged`` if the file shrank."""
    if not isinstance(fd, int):
        yield from fd.chunks(offset, length, size)
        return
    pos, end = offset, offset + length
    while pos < end:
        chunk = os.pread(fd, min(size, end - pos), pos)
        if not chunk:
            raise FileChanged("file shrank while it was being read", reason="changed")
        yield chunk
        pos += len(chunk)
