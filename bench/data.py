"""Deterministic test data, and counting what arrived in the bucket."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from bench.config import MIB, SEED

_POOL = 64 * MIB


@cache
def _pool() -> bytes:
    # Doubled so any slice of up to _POOL bytes starting inside the first copy
    # is contiguous: each file is one or a few plain writes, no per-file RNG.
    block = random.Random(SEED).randbytes(_POOL)
    return block + block


def write_files(directory: Path, files: Iterable[tuple[str, int]]) -> None:
    """Write ``files`` with the same bytes every time (random, incompressible)."""
    pool = memoryview(_pool())
    directory.mkdir(parents=True, exist_ok=True)
    # Names relative to a directory fd: no path join and lookup per file,
    # which dominates writing case 5's 100,000 small files.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, (name, size) in enumerate(files):
            # A per-file offset so files are not byte-identical to each other.
            offset = (index * 1_048_583) % _POOL
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
            try:
                left = size
                while left:
                    n = min(left, _POOL)
                    os.write(fd, pool[offset : offset + n])
                    left -= n
                    offset = (offset + 4_099) % _POOL
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def payload(index: int, size: int) -> memoryview:
    """The bytes write_files would give a file of ``size`` at ``index`` (size <= 64 MiB)."""
    assert size <= _POOL
    offset = (index * 1_048_583) % _POOL
    return memoryview(_pool())[offset : offset + size]


def count_entries(directory: Path) -> int:
    """Cheap entry count (no stat per file); 0 if the directory is missing."""
    try:
        with os.scandir(directory) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


# rclone serve s3 writes uploads to temporary names and renames them into
# place; leftovers are hidden from S3 listings, so they are not objects.
_RCLONE_TEMP = (".rclone_temp_", ".rclone_multipart_upload_")


def bucket_objects(bucket_dir: Path) -> dict[str, int]:
    """Objects stored by rclone's local backend: relative key -> size."""
    objects: dict[str, int] = {}
    for root, _, names in os.walk(bucket_dir):
        for name in names:
            if name.startswith(_RCLONE_TEMP):
                continue
            path = Path(root) / name
            objects[str(path.relative_to(bucket_dir))] = path.stat().st_size
    return objects


def check_delivery(bucket_dir: Path, expected: Iterable[tuple[str, int]]) -> str | None:
    """None if every file arrived with its size, else a short reason.

    Matched on the key's last path segment so the check does not depend on how
    a tool lays out the prefix.
    """
    want = dict(expected)
    got: dict[str, int] = {}
    for key, size in bucket_objects(bucket_dir).items():
        got[key.rsplit("/", 1)[-1]] = size
    missing = [n for n in want if n not in got]
    wrong = [n for n, s in want.items() if n in got and got[n] != s]
    extra = [n for n in got if n not in want]
    problems = []
    if missing:
        problems.append(f"{len(missing)}/{len(want)} objects missing")
    if wrong:
        problems.append(f"{len(wrong)} objects with wrong size")
    if extra:
        problems.append(f"{len(extra)} unexpected objects")
    return "; ".join(problems) or None
