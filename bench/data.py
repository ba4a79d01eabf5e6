"""Deterministic test data, and counting what arrived in the bucket."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterable
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


@cache
def log_pool() -> bytes:
    """64 MiB of web-server log lines that compress about 10:1 (zstd level 3), doubled like
    ``_pool`` (deterministic: the same bytes every run)."""
    rng = random.Random(SEED)
    hosts = [f"web-{i:02d}.prod.example.internal" for i in range(8)]
    ips = [f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(64)]
    paths = ["/api/v1/items", "/api/v1/users", "/static/app.js", "/login", "/api/v2/search?q="]
    agents = [
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "curl/8.5.0",
        "Go-http-client/1.1",
        "python-requests/2.32.3",
    ]
    levels = ["INFO"] * 20 + ["WARN", "ERROR", "DEBUG"]
    lines: list[str] = []
    size, t = 0, 1795000000.0
    while size < _POOL:
        t += rng.expovariate(400.0)
        st = time.gmtime(int(t))
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S', st)}.{int(t % 1 * 1000):03d}Z "
            f"{rng.choice(levels)} {rng.choice(hosts)} nginx[1042]: {rng.choice(ips)} - - "
            f'"GET {rng.choice(paths)}{rng.randrange(500)} HTTP/1.1" '
            f"{rng.choice((200, 200, 200, 200, 304, 404))} {rng.randrange(200, 260) * 64} "
            f'"-" "{rng.choice(agents)}" rt={rng.randrange(100)}ms '
            f"upstream=backend-{rng.randrange(4)}:8080\n"
        )
        lines.append(line)
        size += len(line)
    block = "".join(lines).encode()[:_POOL]
    return block + block


def write_stream(path: Path, size: int, pool: bytes) -> None:
    """A file of ``size`` bytes cut from ``pool`` (``_pool()`` or ``log_pool()``)."""
    view = memoryview(pool)
    with open(path, "wb") as fh:
        offset, left = 0, size
        while left:
            n = min(left, _POOL)
            fh.write(view[offset : offset + n])
            left -= n
            offset = (offset + 4_099) % _POOL


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


#: s3spool's BATCH=bundle: a tar object and, at its key plus this, the index of its files
BUNDLE_INDEX = ".index.jsonl"


def bundle_members(index: bytes, bundle_size: int) -> dict[str, int]:
    """The files a bundle's index names (last key segment -> size), each within the bundle."""
    out: dict[str, int] = {}
    for line in index.decode().splitlines():
        entry = json.loads(line)
        if entry["offset"] + entry["size"] <= bundle_size:
            out[entry["key"].rsplit("/", 1)[-1]] = entry["size"]
    return out


def check_delivery(bucket_dir: Path, expected: Iterable[tuple[str, int]]) -> str | None:
    """check_objects on what rclone's local backend holds in ``bucket_dir``."""
    return check_objects(
        bucket_objects(bucket_dir), lambda key: (bucket_dir / key).read_bytes(), expected
    )


def check_objects(
    objects: dict[str, int], read: Callable[[str], bytes], expected: Iterable[tuple[str, int]]
) -> str | None:
    """None if every file arrived with its size, else a short reason. ``objects``: the
    bucket's (key -> size); ``read``: one object's bytes (a bundle's index).

    Matched on the key's last path segment so the check does not depend on how
    a tool lays out the prefix.
    """
    want = dict(expected)
    got: dict[str, int] = {}
    for key, size in objects.items():
        if key.endswith(BUNDLE_INDEX) and key[: -len(BUNDLE_INDEX)] in objects:
            got.update(bundle_members(read(key), objects[key[: -len(BUNDLE_INDEX)]]))
        elif key + BUNDLE_INDEX not in objects:
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
