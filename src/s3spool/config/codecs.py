"""Compression rules: which files are compressed, how, and what the object says about itself.
A file's compression depends only on its name, its size when claimed and the settings, so a
key with the suffix is as recomputable as the template it was rendered from."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

CodecName = Literal["none", "gzip", "zstd"]
ModeName = Literal["suffix", "content-encoding"]


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    suffix: str  # appended to the key in suffix mode
    content_type: str  # Content-Type of the object in suffix mode
    encoding: str  # Content-Encoding in content-encoding mode
    lowest: int
    highest: int
    default: int
    levels_note: str


#: gzip: levels 1-3 run on ISA-L (isal), 4-9 on zlib; zstd: 20-22 need 160-640 MiB a
#: compression ("ultra" windows), more than the memory bound allows.
CODECS = {
    "gzip": Codec("gzip", ".gz", "application/gzip", "gzip", 1, 9, 6, "1 to 9, as with gzip(1)"),
    "zstd": Codec(
        "zstd", ".zst", "application/zstd", "zstd", 1, 19, 3, "1 to 19 (20-22 need too much memory)"
    ),
}

#: Names of data that is compressed already: recompressing them costs CPU and saves nothing.
DEFAULT_SKIP = (
    *("*.gz", "*.tgz", "*.zst", "*.zip", "*.bz2", "*.xz", "*.7z", "*.br", "*.lz4"),
    *("*.jpg", "*.jpeg", "*.png", "*.gif", "*.webp", "*.avif", "*.heic"),
    *("*.mp4", "*.mkv", "*.mp3"),
)


def resolve_level(codec: str, level: int | None) -> int | None:
    """The level to use (the codec's default when unset); ``ValueError`` naming the setting."""
    spec = CODECS.get(codec)
    if spec is None:
        return level  # COMPRESS=none: nothing to check
    if level is None:
        level = spec.default
    elif not spec.lowest <= level <= spec.highest:
        raise ValueError(
            f"compress_level: {level} is not a {codec} level; {codec} takes {spec.levels_note}"
        )
    library = "zstandard" if codec == "zstd" else "isal" if level <= 3 else None  # else zlib
    if library is not None and importlib.util.find_spec(library) is None:
        raise ValueError(
            f"compress: {codec} (level {level}) needs the {library} package, which is not "
            "installed: pip install 's3spool[compress]'"
        )
    return level


def compile_globs(patterns: Sequence[str], *, ignore_case: bool = False) -> re.Pattern[str] | None:
    """One regex for glob patterns (IGNORE, COMPRESS_SKIP); None when there are none."""
    if not patterns:
        return None
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), flags)


@dataclass(frozen=True, slots=True)
class Rules:
    """The compression of one route (``COMPRESS`` is not ``none``)."""

    codec: Codec
    level: int
    mode: ModeName
    min_size: int
    skip: re.Pattern[str] | None

    @classmethod
    def of(
        cls, compress: str, level: int | None, mode: ModeName, min_size: int, skip: Sequence[str]
    ) -> Rules | None:
        """The rules of these settings, or None when nothing is compressed."""
        if compress not in CODECS:
            return None
        resolved = resolve_level(compress, level)
        assert resolved is not None
        # case-insensitive: photo.JPG is compressed data too
        skip_rx = compile_globs(skip, ignore_case=True)
        return cls(CODECS[compress], resolved, mode, min_size, skip_rx)

    def applies(self, name: str, size: int) -> bool:
        """Is a file of this name (a relpath: its last segment counts) and size compressed?"""
        if size < self.min_size:
            return False
        base = name.rpartition("/")[2]
        return self.skip is None or self.skip.match(base) is None

    @staticmethod
    def headers_for(
        codec: Codec, mode: ModeName, original_type: str | None
    ) -> tuple[str | None, str | None]:
        """(Content-Type, Content-Encoding) of a compressed object: suffix mode says what the
        object is, content-encoding mode what it decodes to (``original_type``)."""
        if mode == "suffix":
            return codec.content_type, None
        return original_type, codec.encoding


def choose(rules: Rules | None, name: str, size: int) -> tuple[str | None, str]:
    """(codec or None, key suffix) of a file whose key is rendered now."""
    if rules is None or not rules.applies(name, size):
        return None, ""
    return rules.codec.name, rules.codec.suffix if rules.mode == "suffix" else ""
