"""COMPRESS end to end: every codec and mode on both servers, read back and decompressed;
COMPRESS_SKIP and COMPRESS_MIN_SIZE; the memory bound on a 200 MiB file; kill -9 during a
compressed multipart upload; a working directory too full for the compressed copy.

Every object is fetched, decompressed and compared with its file byte for byte; the
metadata must name the original's size and checksum (``crc32c`` by default).
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import crc32c
import pytest
import zstandard

from faultproxy import FaultProxy
from proc import SpoolProc, clean_env
from s3servers import S3Target
from s3spool.store.base import guess_type
from svc import drop, names, running, settings_for, wait_until
from test_localfaults import needs_root, tmpfs

MIB = 1024 * 1024
SMALL = {"threshold": "5MiB", "part": "5MiB"}


def log_lines(size: int, seed: int = 1) -> bytes:
    """Web-server-like log lines that compress about 5:1 (an 8 MiB pool, cut at shifting
    offsets so that repeats lie beyond zstd's and gzip's windows)."""
    rng = random.Random(seed)
    pool_lines = []
    n = 0
    while n < 8 * MIB:
        line = (
            f"2026-11-30T06:{rng.randrange(60):02d}:{rng.randrange(60):02d}."
            f"{rng.randrange(1000):03d}Z "
            f"INFO web-{rng.randrange(8)} nginx: 10.0.{rng.randrange(256)}.{rng.randrange(256)} "
            f'"GET /api/v1/items/{rng.randrange(500)} HTTP/1.1" {rng.choice((200, 304, 404))} '
            f"{rng.randrange(200, 260) * 64} rt={rng.randrange(100)}ms\n"
        )
        pool_lines.append(line)
        n += len(line)
    pool = "".join(pool_lines).encode()
    out = bytearray()
    offset = 0
    while len(out) < size:
        out += pool[offset:]
        offset = (offset + 4099) % len(pool)
    return bytes(out[:size])


def decompress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.decompress(data)
    return zstandard.ZstdDecompressor().stream_reader(data).read()


def crc_label(data: bytes) -> str:
    return "crc32c:" + base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def meta_of(head: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in head["Metadata"].items()}  # rclone capitalises names


FILES = {
    "app.txt": log_lines(300_000),  # compressible, one PUT
    "big.csv": log_lines(12 * MIB, seed=2),  # compresses to ~2.2 MiB: one PUT
    "noise.bin": os.urandom(11 * MIB),  # incompressible: 3 parts of 5 MiB, compressed
    "photo.JPG": os.urandom(3000),  # COMPRESS_SKIP (*.jpg, any case): as it is
    "sub.gz": gzip.compress(b"already compressed" * 100),  # COMPRESS_SKIP: as it is
    "tiny.txt": b"below COMPRESS_MIN_SIZE",  # as it is
}
COMPRESSED = {"app.txt", "big.csv", "noise.bin"}
SUFFIX = {"gzip": ".gz", "zstd": ".zst"}
CTYPE = {"gzip": "application/gzip", "zstd": "application/zstd"}

CASES = [
    # (codec, level, mode): gzip levels 1-3 run on ISA-L, 4-9 on zlib
    ("gzip", None, "suffix"),
    ("gzip", 2, "content-encoding"),
    ("zstd", None, "suffix"),
    ("zstd", 7, "content-encoding"),
]


@pytest.mark.parametrize(("codec", "level", "mode"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
async def test_each_codec_and_mode_round_trips(
    s3: S3Target, spool: Path, codec: str, level: int | None, mode: str
) -> None:
    settings = settings_for(
        spool,
        s3,
        compress=codec,
        compress_level=level,
        compress_mode=mode,
        multipart_threshold=SMALL["threshold"],
        part_size=SMALL["part"],
        content_type=None,
    )
    async with running(settings):
        for name, data in FILES.items():
            drop(spool / "incoming", name, data)
        await wait_until(lambda: names(spool / "done") == set(FILES), 60, "all files in done/")
    suffix = SUFFIX[codec] if mode == "suffix" else ""
    want_keys = {n + suffix if n in COMPRESSED else n for n in FILES}
    assert set(s3.keys()) == want_keys
    for name, data in FILES.items():
        if name not in COMPRESSED:
            assert s3.get(name) == data, name
            meta = meta_of(s3.head(name))
            assert "s3spool-original-size" not in meta, name
            continue
        key = name + suffix
        stored = s3.get(key)
        assert decompress(codec, stored) == data, name
        head = s3.head(key)
        meta = meta_of(head)
        assert meta["s3spool-original-size"] == str(len(data))
        assert meta["s3spool-original-checksum"] == crc_label(data)
        assert head["ContentLength"] == len(stored)
        if mode == "suffix":
            assert head["ContentType"] == CTYPE[codec]
            assert not head.get("ContentEncoding")
        else:
            assert head["ContentEncoding"] == codec
            assert head["ContentType"] == guess_type(name)  # the file's, as without COMPRESS
        if name == "noise.bin":
            assert meta["s3spool-part-size"] == str(5 * MIB)  # compressed, still multipart
    if codec == "zstd" and mode == "suffix":
        # the logs really were compressed (about 5:1)
        assert len(s3.get("big.csv.zst")) < 12 * MIB / 4


async def test_botocore_sender_and_the_log_line(
    moto_s3: S3Target, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DIRECT_PUT=false: Content-Encoding through botocore too; the file line says stored=."""
    caplog.set_level(logging.INFO, "s3spool.file")
    data = log_lines(200_000, seed=3)
    settings = settings_for(
        spool, moto_s3, compress="gzip", compress_mode="content-encoding", direct_put=False
    )
    async with running(settings):
        drop(spool / "incoming", "a.log", data)
        await wait_until(lambda: names(spool / "done") == {"a.log"})
    head = moto_s3.head("a.log")
    assert head["ContentEncoding"] == "gzip"
    assert gzip.decompress(moto_s3.get("a.log")) == data
    fields = [r.fields for r in caplog.records if r.name == "s3spool.file"]  # type: ignore[attr-defined]
    assert fields[0]["size"] == len(data)
    assert fields[0]["stored"] == head["ContentLength"] < len(data) / 4


async def test_noop_destination_compresses_and_reports_the_stored_size(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "s3spool.file")
    data = log_lines(100_000, seed=4)
    async with running(settings_for(spool, None, compress="zstd")):
        drop(spool / "incoming", "n.log", data)
        await wait_until(lambda: names(spool / "done") == {"n.log"})
    fields = [r.fields for r in caplog.records if r.name == "s3spool.file"]  # type: ignore[attr-defined]
    assert fields[0]["key"] == "n.log.zst"
    assert fields[0]["size"] == len(data) > 4 * fields[0]["stored"]


async def test_an_adopted_claim_already_stored_compressed_is_not_sent_again(
    rclone_s3: S3Target, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead instance's claim whose object is in the store (compressed): recovery's HEAD
    compares the metadata's original size and checksum with the file, and settles it."""
    caplog.set_level(logging.INFO, "s3spool.file")
    data = log_lines(300_000, seed=7)
    settings = settings_for(spool, rclone_s3, compress="zstd")
    async with running(settings):
        drop(spool / "incoming", "r.log", data)
        await wait_until(lambda: names(spool / "done") == {"r.log"})
    stored = rclone_s3.get("r.log.zst")
    # the same file, left claimed by an instance that died after its upload
    dead = spool / "working" / "dead-instance" / "files"
    dead.mkdir(parents=True)
    (dead / "r.log").write_bytes(data)
    caplog.clear()
    async with running(settings_for(spool, rclone_s3, compress="zstd")):
        await wait_until(lambda: not (spool / "working" / "dead-instance").exists(), 20)
        await wait_until(lambda: any(r.name == "s3spool.file" for r in caplog.records), 20)
    fields = [r.fields for r in caplog.records if r.name == "s3spool.file"]  # type: ignore[attr-defined]
    assert fields[0]["key"] == "r.log.zst"
    assert fields[0]["note"] == "already in store"
    assert rclone_s3.get("r.log.zst") == stored
    assert rclone_s3.keys() == ["r.log.zst"]


def test_skip_and_min_size_settings(moto_s3: S3Target, spool: Path) -> None:
    """COMPRESS_SKIP replaces the default list (an empty one compresses .jpg too);
    COMPRESS_MIN_SIZE=0 compresses every file, even an empty one."""
    (spool / "incoming").mkdir(parents=True)
    files = {"p.jpg": os.urandom(4000), "keep.csv": b"a,b\n" * 1000, "empty": b""}
    for name, data in files.items():
        (spool / "incoming" / name).write_bytes(data)
    env = {
        **moto_s3.env(),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_COMPRESS": "zstd",
        "S3SPOOL_COMPRESS_SKIP": "*.csv",
        "S3SPOOL_COMPRESS_MIN_SIZE": "0",
    }
    r = subprocess.run(
        [sys.executable, "-m", "s3spool", "run", "--once"],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert set(moto_s3.keys()) == {"p.jpg.zst", "keep.csv", "empty.zst"}
    assert decompress("zstd", moto_s3.get("p.jpg.zst")) == files["p.jpg"]
    assert decompress("zstd", moto_s3.get("empty.zst")) == b""
    assert moto_s3.get("keep.csv") == files["keep.csv"]


def test_a_bad_level_is_named() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "s3spool", "run", "--once"],
        env=clean_env(
            {
                "S3SPOOL_SPOOL_DIRS": "/nonexistent-spool",
                "S3SPOOL_DESTINATION": "noop://",
                "S3SPOOL_COMPRESS": "gzip",
                "S3SPOOL_COMPRESS_LEVEL": "12",
            }
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 78
    assert "S3SPOOL_COMPRESS_LEVEL (--compress-level): 12 is not a gzip level" in r.stderr


@pytest.mark.parametrize(
    ("codec", "level", "library"), [("zstd", "3", "zstandard"), ("gzip", "1", "isal")]
)
def test_a_missing_codec_library_names_the_extra(
    tmp_path: Path, codec: str, level: str, library: str
) -> None:
    """Without s3spool[compress], COMPRESS is a configuration error naming the extra."""
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{library!r}] = None\n")
    r = subprocess.run(
        [sys.executable, "-m", "s3spool", "run", "--once"],
        env=clean_env(
            {
                "S3SPOOL_SPOOL_DIRS": "/nonexistent-spool",
                "S3SPOOL_DESTINATION": "noop://",
                "S3SPOOL_COMPRESS": codec,
                "S3SPOOL_COMPRESS_LEVEL": level,
                "PYTHONPATH": str(tmp_path),
            }
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 78, r.stderr
    assert f"needs the {library} package" in r.stderr
    assert "pip install 's3spool[compress]'" in r.stderr


def _run_measured(env: dict[str, str], cwd: Path, log: Path) -> tuple[int, int]:
    """``s3spool run --once``: (exit code, peak RSS in KiB).

    The peak is VmHWM from /proc/PID/status, read every 10 ms while it runs (the high-water
    mark of the process's own memory, fresh at exec; wait4's ru_maxrss would start from the
    test process's RSS, which the child inherits until exec)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3spool", "run", "--once"],
            env=clean_env(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    status = Path(f"/proc/{proc.pid}/status")
    peak = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        try:
            found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M)
        except OSError:
            found = None
        if found:
            peak = max(peak, int(found.group(1)))
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"run --once took over 120 s\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    return proc.returncode, peak


@pytest.mark.slow
def test_a_200_mib_file_stays_within_the_memory_bound(rclone_s3: S3Target, tmp_path: Path) -> None:
    """Peak RSS with zstd (2 worker threads at this size) on a 200 MiB file: the same bound
    as without compression (bench's 128 MiB for a 1 GiB file), and no more than 40 MiB above
    the uncompressed run of the same file. The file is never held: the copy is on disk."""
    data = log_lines(200 * MIB, seed=5)
    rss = {}
    for codec in ("none", "zstd"):
        spool = tmp_path / codec
        (spool / "incoming").mkdir(parents=True)
        (spool / "incoming" / "huge.log").write_bytes(data)
        env = {
            **rclone_s3.env(f"{codec}/"),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_COMPRESS": codec,
            "S3SPOOL_LOG_LEVEL": "WARNING",
        }
        code, rss[codec] = _run_measured(env, tmp_path, tmp_path / f"{codec}.log")
        assert code == 0, (tmp_path / f"{codec}.log").read_text()[-3000:]
    stored = rclone_s3.get("zstd/huge.log.zst")
    assert decompress("zstd", stored) == data
    assert len(stored) < len(data) / 5
    peak, plain = rss["zstd"] / 1024, rss["none"] / 1024
    print(f"peak RSS: zstd {peak:.0f} MiB, uncompressed {plain:.0f} MiB")
    assert peak <= 128, (peak, plain)
    assert peak <= plain + 40, (peak, plain)


@pytest.mark.slow
def test_kill9_during_a_compressed_multipart_upload_leaves_one_object(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    # half noise, half logs: a compressed copy of ~33 MiB, 7 parts of 5 MiB
    data = os.urandom(30 * MIB) + log_lines(30 * MIB, seed=6)
    (spool / "incoming" / "mixed.dat").write_bytes(data)
    with FaultProxy(rclone_s3.endpoint_url) as fp:
        fp.latency_s = 0.3
        fp.fault_kinds = frozenset({"upload_part"})
        env = {
            **rclone_s3.via(fp.url).env(),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_KEY_FORMAT": "{uuid4}/{fname}",  # a second object would show
            "S3SPOOL_COMPRESS": "zstd",
            "S3SPOOL_MULTIPART_THRESHOLD": "5MiB",
            "S3SPOOL_PART_SIZE": "5MiB",
            "S3SPOOL_PART_CONCURRENCY": "1",
        }
        with SpoolProc(["run"], env, cwd=tmp_path) as first:
            first.wait_until(lambda: fp.snapshot()["counts"].get("upload_part", 0) >= 3, 60)
            first.kill()  # SIGKILL mid-upload: no abort, no cleanup
        fp.latency_s = 0.0
        with SpoolProc(["run"], env, cwd=tmp_path) as second:
            second.wait_for_log(r"resuming multipart upload of '[0-9a-f-]+/mixed.dat.zst'", 30)
            second.wait_until(lambda: names(spool / "done") == {"mixed.dat"}, 60)
            reused = second.wait_for_log(r"resumed: (\d+) of (\d+) parts reused", 10)
            second.signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.log_tail()
        counts = fp.snapshot()["counts"]
    assert counts.get("create_mpu") == 1, counts  # the same upload, continued
    # compression is deterministic: the parts stored before the kill matched the new copy
    assert int(reused.group(1)) >= 2, reused.group(0)
    keys = rclone_s3.keys()
    assert len(keys) == 1, keys
    assert keys[0].endswith("/mixed.dat.zst"), keys
    assert decompress("zstd", rclone_s3.get(keys[0])) == data
    uploads = rclone_s3.client().list_multipart_uploads(Bucket=rclone_s3.bucket)
    assert not uploads.get("Uploads"), uploads
    leftovers = [str(p.relative_to(spool)) for p in (spool / "working").rglob("*")]
    assert leftovers == [], leftovers  # no key record, no compressed copy


@needs_root
async def test_no_room_for_the_compressed_copy_pauses_the_spool_and_loses_nothing(
    moto_s3: S3Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC while writing the copy in working/<instance>/ is a local fault: the file goes
    back to incoming/ (nothing was sent), the spool pauses, and it is delivered once there
    is room again."""
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "fs", size="12m") as fs:
        spool = fs / "spool"
        for sub in ("incoming", "working", "done", "failed"):
            (spool / sub).mkdir(parents=True)
        data = os.urandom(5 * MIB)  # incompressible: the copy needs 5 MiB more
        filler = fs / "filler"
        filler.write_bytes(b"\0" * (4 * MIB))
        settings = settings_for(spool, moto_s3, compress="zstd", compress_skip=[])
        async with running(settings) as svc:
            drop(spool / "incoming", "noise.bin", data)
            await wait_until(
                lambda: any("compressed copy" in r.getMessage() for r in caplog.records),
                20,
                "the fault",
            )
            assert names(spool / "failed") == set()
            assert svc is not None
            filler.unlink()
            await wait_until(lambda: names(spool / "done") == {"noise.bin"}, 20, "delivery")
    assert decompress("zstd", moto_s3.get("noise.bin.zst")) == data
    assert moto_s3.keys() == ["noise.bin.zst"]
    lines = [r.getMessage() for r in caplog.records if "compressed copy" in r.getMessage()]
    assert re.search(r"No space left on device \(ENOSPC\)", lines[0]), lines
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    json.dumps(lines)  # plain text lines
