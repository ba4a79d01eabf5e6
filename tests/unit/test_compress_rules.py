"""COMPRESS's pure parts: levels, which files, suffixes and headers, the settings' errors,
the original's checksum label, and one compressing pass per codec (small, in memory)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import tempfile
import threading
import zlib

import crc32c
import pytest
import zstandard

from s3spool.config.codecs import CODECS, DEFAULT_SKIP, Rules, choose, resolve_level
from s3spool.config.load import load_settings
from s3spool.errors import ConfigError
from s3spool.run.compress import compress_pass, zstd_threads
from s3spool.store.digests import Checksummer, StreamDigest


@pytest.mark.parametrize(
    ("codec", "level", "want"),
    [
        ("zstd", None, 3),
        ("gzip", None, 6),
        ("zstd", 1, 1),
        ("zstd", 19, 19),
        ("gzip", 1, 1),
        ("gzip", 9, 9),
        ("none", None, None),
        ("none", 42, 42),  # nothing to check without a codec
    ],
)
def test_levels(codec: str, level: int | None, want: int | None) -> None:
    assert resolve_level(codec, level) == want


@pytest.mark.parametrize(("codec", "level"), [("zstd", 0), ("zstd", 20), ("gzip", 0), ("gzip", 10)])
def test_levels_out_of_range_name_the_setting(codec: str, level: int) -> None:
    with pytest.raises(ValueError, match=rf"compress_level: {level} is not a {codec} level"):
        resolve_level(codec, level)


def test_settings_errors_name_the_setting_both_ways() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(spool_dirs="/s", destination="noop://", compress="zstd", compress_level=22)
    assert "S3SPOOL_COMPRESS_LEVEL (--compress-level): 22 is not a zstd level" in str(err.value)
    with pytest.raises(ConfigError, match=r"S3SPOOL_COMPRESS \(--compress\)"):
        load_settings(spool_dirs="/s", destination="noop://", compress="brotli")
    with pytest.raises(ConfigError, match=r"S3SPOOL_COMPRESS_MODE \(--compress-mode\)"):
        load_settings(spool_dirs="/s", destination="noop://", compress_mode="inline")


def test_settings_defaults() -> None:
    s = load_settings(spool_dirs="/s", destination="noop://")
    assert (s.compress, s.compress_mode, s.compress_min_size) == ("none", "suffix", 1024)
    assert s.compress_skip == list(DEFAULT_SKIP)
    gz = load_settings(spool_dirs="/s", destination="noop://", compress="gzip")
    assert gz.compress_level == 6
    skip = load_settings(spool_dirs="/s", destination="noop://", compress_skip="")
    assert skip.compress_skip == []


def _rules(**kw: object) -> Rules:
    args: dict[str, object] = {
        "compress": "zstd",
        "level": None,
        "mode": "suffix",
        "min_size": 1024,
        "skip": DEFAULT_SKIP,
    }
    args.update(kw)
    rules = Rules.of(**args)  # type: ignore[arg-type]
    assert rules is not None
    return rules


@pytest.mark.parametrize(
    ("name", "size", "compressed"),
    [
        ("app.log", 5000, True),
        ("app.log", 1023, False),  # below COMPRESS_MIN_SIZE
        ("app.log", 1024, True),  # at it
        ("a.gz", 10**6, False),
        ("PHOTO.JPG", 10**6, False),  # any case
        ("x.tar.zst", 10**6, False),
        ("gz", 10**6, True),  # a pattern is a glob, not a substring
        ("dir.gz/app.log", 10**6, True),  # the name's last segment counts
        ("a/b/c.png", 10**6, False),
    ],
)
def test_which_files(name: str, size: int, compressed: bool) -> None:
    assert _rules().applies(name, size) is compressed


def test_an_empty_skip_list_compresses_everything() -> None:
    assert _rules(skip=[]).applies("a.gz", 10**6)
    assert _rules(skip=[], min_size=0).applies("empty", 0)


def test_none_means_no_rules() -> None:
    assert Rules.of("none", None, "suffix", 0, []) is None
    assert choose(None, "a.log", 10**6) == (None, "")


def test_suffix_and_headers() -> None:
    assert choose(_rules(), "a.log", 10**6) == ("zstd", ".zst")
    assert choose(_rules(compress="gzip"), "a.log", 10**6) == ("gzip", ".gz")
    assert choose(_rules(mode="content-encoding"), "a.log", 10**6) == ("zstd", "")
    assert choose(_rules(), "a.jpg", 10**6) == (None, "")
    gz, zst = CODECS["gzip"], CODECS["zstd"]
    assert Rules.headers_for(gz, "suffix", "text/csv") == ("application/gzip", None)
    assert Rules.headers_for(zst, "suffix", None) == ("application/zstd", None)
    assert Rules.headers_for(gz, "content-encoding", "text/csv") == ("text/csv", "gzip")
    assert Rules.headers_for(zst, "content-encoding", None) == (None, "zstd")


def test_zstd_threads_only_for_large_files() -> None:
    assert zstd_threads(10, 64 << 20) == 0
    big = zstd_threads(64 << 20, 64 << 20)
    assert big == (0 if (os.cpu_count() or 1) == 1 else min(os.cpu_count() or 1, 4))


@pytest.mark.parametrize("algorithm", ["crc32c", "crc32", "sha256", "md5", "none"])
def test_checksum_labels(algorithm: str) -> None:
    data = os.urandom(100_000)
    stream = StreamDigest(algorithm, md5=False)
    stream.update(data[:30_000])
    stream.update(memoryview(data)[30_000:])
    want = {
        "crc32c": crc32c.crc32c(data).to_bytes(4, "big"),
        "crc32": zlib.crc32(data).to_bytes(4, "big"),
        "sha256": hashlib.sha256(data).digest(),
        "md5": hashlib.md5(data).digest(),
    }.get(algorithm)
    assert stream.label() == (f"{algorithm}:{base64.b64encode(want).decode()}" if want else None)
    if algorithm in ("crc32c", "crc32", "sha256"):  # the label s3spool-checksum uses too
        assert stream.label() == Checksummer(algorithm).label(
            Checksummer(algorithm).body(data).checksum_b64
        )


@pytest.mark.parametrize(
    ("codec", "level", "threads"),
    [
        ("gzip", 1, 0),
        ("gzip", 6, 0),
        ("zstd", 3, 0),
        ("zstd", 3, 2),
    ],
)
def test_a_pass_round_trips(codec: str, level: int, threads: int) -> None:
    data = b"".join(b"line %d of a log, status 200\n" % (i % 977) for i in range(200_000))
    with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as out:
        src.write(data)
        src.flush()
        result = compress_pass(
            src.fileno(),
            len(data),
            out.fileno(),
            codec,
            level,
            threads,
            "crc32c",
            threading.Event(),
        )
        out.seek(0)
        stored = out.read()
    assert result.size == len(stored) < len(data) / 10
    plain = (
        gzip.decompress(stored)
        if codec == "gzip"
        else zstandard.ZstdDecompressor().stream_reader(stored).read()
    )
    assert plain == data
    label = StreamDigest("crc32c", md5=False)
    label.update(data)
    assert result.label == label.label()
