"""A tar stream laid out from files without reading them: ``tarfile`` builds each header (PAX
``path=`` for a long or non-ASCII name), the files' bytes are read only when the body is."""

from __future__ import annotations

import tarfile

from s3spool.spool.pieces import FilePart, Pieces

BLOCK = 512
#: the end of an archive: two zero blocks
END = bytes(2 * BLOCK)


def header(name: str, size: int, mtime_ns: int) -> bytes:
    """The header block(s) of a regular file: ustar, with a PAX record where it must."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime_ns // 1_000_000_000  # whole seconds: no PAX record for the mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def layout(members: list[tuple[str, FilePart]]) -> tuple[Pieces, list[int]]:
    """The tar of ``members`` (member name, file), and the offset of each member's data."""
    parts: list[bytes | FilePart] = []
    offsets: list[int] = []
    pos = 0
    gap = b""  # the previous member's padding goes out with the next header
    for name, part in members:
        head = gap + header(name, part.size, part.mtime_ns)
        parts.append(head)
        pos += len(head)
        offsets.append(pos)
        parts.append(part)
        pos += part.size
        gap = bytes(-part.size % BLOCK)  # counted with the next header
    parts.append(gap + END)
    return Pieces(parts), offsets
