"""Digests of bodies and files: Content-MD5, the configured ``x-amz-checksum-*``, and the
composite forms (``-N``) S3 reports for multipart objects."""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import crc32c

from s3spool.spool.pieces import Readable, read_chunks

#: algorithm → (request/response parameter suffix used by botocore, e.g. ChecksumCRC32C)
PARAM = {"crc32c": "CRC32C", "crc32": "CRC32", "sha256": "SHA256"}
_CRC: dict[str, Callable[[bytes | memoryview, int], int]] = {
    "crc32": zlib.crc32,
    "crc32c": crc32c.crc32c,
}


def _checksum_fn(algorithm: str) -> Callable[[bytes], bytes] | None:
    crc = _CRC.get(algorithm)
    if crc is not None:
        return lambda data: crc(data, 0).to_bytes(4, "big")
    if algorithm == "sha256":
        return lambda data: hashlib.sha256(data).digest()
    return None


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class BodyDigest:
    """Digests of one request body (a whole small file, or one part)."""

    md5: bytes | None
    checksum: bytes | None  # raw digest of the configured algorithm (None for md5/none)

    @property
    def md5_b64(self) -> str | None:
        return b64(self.md5) if self.md5 is not None else None

    @property
    def checksum_b64(self) -> str | None:
        return b64(self.checksum) if self.checksum is not None else None


class Checksummer:
    """Computes body digests for one configured algorithm."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._fn = _checksum_fn(algorithm)
        self.param = PARAM.get(algorithm)  # None: no x-amz-checksum header for it

    @property
    def enabled(self) -> bool:
        return self.algorithm != "none"

    def body(self, data: bytes) -> BodyDigest:
        if not self.enabled:
            return BodyDigest(None, None)
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        return BodyDigest(md5, self._fn(data) if self._fn else None)

    def composite(self, parts: list[BodyDigest]) -> tuple[str | None, str | None]:
        """(ETag without quotes, checksum) that S3 reports for these multipart parts."""
        if not self.enabled:
            return None, None
        md5s = b"".join(p.md5 or b"" for p in parts)
        etag = f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(parts)}"
        if self._fn is None:
            return etag, None
        joined = b"".join(p.checksum or b"" for p in parts)
        return etag, f"{b64(self._fn(joined))}-{len(parts)}"

    def label(self, value: str | None) -> str | None:
        """``crc32c:BASE64`` style value kept in object metadata."""
        return f"{self.algorithm}:{value}" if value else None


class StreamDigest:
    """The configured checksum, and the MD5 every body needs unless ``md5=False`` (bytes not
    sent as they are: it would cost CPU for nothing, bench/RESULTS.md), fed chunk by chunk."""

    def __init__(self, algorithm: str, *, md5: bool = True) -> None:
        self.algorithm = algorithm
        self._crc = 0
        self._crc_fn = _CRC.get(algorithm)
        self._sha = hashlib.sha256() if algorithm == "sha256" else None
        want_md5 = (md5 and algorithm != "none") or algorithm == "md5"
        self._md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None

    def update(self, data: bytes | memoryview) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        if self._crc_fn is not None:
            self._crc = self._crc_fn(data, self._crc)
        elif self._sha is not None:
            self._sha.update(data)

    def _checksum(self) -> bytes | None:
        if self._crc_fn is not None:
            return self._crc.to_bytes(4, "big")
        return self._sha.digest() if self._sha is not None else None

    def result(self) -> BodyDigest:
        """The same digests ``Checksummer.body`` gives for the whole data fed in."""
        return BodyDigest(self._md5.digest() if self._md5 else None, self._checksum())

    def label(self) -> str | None:
        """The configured checksum as a metadata label (``crc32c:BASE64``; md5: the MD5)."""
        raw = self._md5.digest() if self.algorithm == "md5" and self._md5 else self._checksum()
        return f"{self.algorithm}:{b64(raw)}" if raw is not None else None


def digest_range(
    fd: Readable,
    offset: int,
    length: int,
    ck: Checksummer,
    payload_sha256: bool = False,
    md5: bool = True,
) -> tuple[StreamDigest, str | None]:
    """The digests of a file range in one chunked pass, plus its SHA-256 hex if asked for.
    A change before the bytes are read again to be sent fails Content-MD5 at the store."""
    stream = StreamDigest(ck.algorithm, md5=md5)
    sha = hashlib.sha256() if payload_sha256 else None
    for chunk in read_chunks(fd, offset, length):
        stream.update(chunk)
        if sha is not None:
            sha.update(chunk)
    return stream, (sha.hexdigest() if sha is not None else None)


class FileDigest(NamedTuple):
    """A whole file's ETag (MD5 hex) and checksum (base64) as the store reports them."""

    etag: str | None
    checksum: str | None


def digest_file(
    fd: Readable, size: int, ck: Checksummer, part_size: int | None = None
) -> FileDigest:
    """A whole file's digests as one PUT has them, or (``part_size``) as the composite
    values (``-N``) of a multipart upload."""
    if not ck.enabled:
        return FileDigest(None, None)
    if part_size is None:
        d = digest_range(fd, 0, size, ck)[0].result()
        return FileDigest(d.md5.hex() if d.md5 else None, d.checksum_b64)
    parts = [
        digest_range(fd, off, min(part_size, size - off), ck)[0].result()
        for off in range(0, max(size, 1), part_size)
    ]
    return FileDigest(*ck.composite(parts))
