"""Checksums computed while a file is read.

Every body carries ``Content-MD5`` (all S3-compatible stores verify it and
reject a corrupted body with BadDigest) and, unless ``CHECKSUM_COMPAT`` is set,
the configured ``x-amz-checksum-*`` header.  After the upload, the store's
answer (echoed checksum, ETag) is compared with what was computed locally.

Multipart objects use the composite form S3 uses: the checksum of the
concatenated part checksums, suffixed ``-N``; their ETag is the MD5 of the
concatenated part MD5s, suffixed ``-N``.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_crc32c: Any
try:
    import crc32c as _crc32c
except ImportError:  # pragma: no cover - a dependency, but keep crc32 usable without it
    _crc32c = None

#: algorithm → (request/response parameter suffix used by botocore, e.g. ChecksumCRC32C)
PARAM = {"crc32c": "CRC32C", "crc32": "CRC32", "sha256": "SHA256"}


def _crc(fn: Callable[[bytes, int], int]) -> Callable[[bytes], bytes]:
    def digest(data: bytes) -> bytes:
        return fn(data, 0).to_bytes(4, "big")

    return digest


def _digest_fn(algorithm: str) -> Callable[[bytes], bytes] | None:
    if algorithm == "crc32":
        return _crc(zlib.crc32)
    if algorithm == "crc32c":
        if _crc32c is None:
            raise RuntimeError("CHECKSUM=crc32c needs the crc32c package")
        return _crc(_crc32c.crc32c)
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
        self._fn = _digest_fn(algorithm)
        self.param = PARAM.get(algorithm)  # None: no x-amz-checksum header for it

    @property
    def enabled(self) -> bool:
        return self.algorithm != "none"

    def body(self, data: bytes) -> BodyDigest:
        if not self.enabled:
            return BodyDigest(None, None)
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        return BodyDigest(md5, self._fn(data) if self._fn else None)

    def stream(self) -> StreamDigest:
        """An incremental digest of the same algorithm (for whole-file checks)."""
        return StreamDigest(self.algorithm)

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
    """MD5 plus the configured checksum, fed chunk by chunk (bounded memory)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._crc = 0
        self._sha = hashlib.sha256() if algorithm == "sha256" else None

    def update(self, data: bytes) -> None:
        self._md5.update(data)
        if self.algorithm == "crc32":
            self._crc = zlib.crc32(data, self._crc)
        elif self.algorithm == "crc32c" and _crc32c is not None:
            self._crc = _crc32c.crc32c(data, self._crc)
        elif self._sha is not None:
            self._sha.update(data)

    def md5_hex(self) -> str:
        return self._md5.hexdigest()

    def result(self) -> BodyDigest:
        """The same digests ``Checksummer.body`` gives for the whole data fed in."""
        if self.algorithm == "none":
            return BodyDigest(None, None)
        if self.algorithm in ("crc32", "crc32c"):
            return BodyDigest(self._md5.digest(), self._crc.to_bytes(4, "big"))
        return BodyDigest(self._md5.digest(), self._sha.digest() if self._sha else None)

    def checksum_b64(self) -> str | None:
        if self.algorithm in ("crc32", "crc32c"):
            return b64(self._crc.to_bytes(4, "big"))
        if self._sha is not None:
            return b64(self._sha.digest())
        return None


class ChecksumStream:
    """Only the configured checksum of a stream, fed chunk by chunk, as a metadata label
    (``crc32c:BASE64``); ``md5`` gives the MD5 (it is that setting's checksum), ``none`` None.

    For bytes that are not sent as they are (the original of a compressed object): the MD5
    that every body needs would cost 1.4 s of CPU per GiB here for nothing.
    """

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._crc = 0
        self._hash = (
            hashlib.sha256()
            if algorithm == "sha256"
            else hashlib.md5(usedforsecurity=False)
            if algorithm == "md5"
            else None
        )
        if algorithm == "crc32c" and _crc32c is None:
            raise RuntimeError("CHECKSUM=crc32c needs the crc32c package")

    def update(self, data: bytes | memoryview) -> None:
        if self.algorithm == "crc32c":
            self._crc = _crc32c.crc32c(data, self._crc)
        elif self.algorithm == "crc32":
            self._crc = zlib.crc32(data, self._crc)
        elif self._hash is not None:
            self._hash.update(data)

    def label(self) -> str | None:
        if self.algorithm in ("crc32", "crc32c"):
            return f"{self.algorithm}:{b64(self._crc.to_bytes(4, 'big'))}"
        if self._hash is not None:
            return f"{self.algorithm}:{b64(self._hash.digest())}"
        return None
