"""Issue 25's acceptance at full scale: kill -9 during batches, a drain, then every file checked
in the store through its API (extract on the JuiceFS gateway, bundle on rclone); a table.

    python -m bench.batchcheck [--mode extract|bundle|both] [--files 10000] [--kills 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import BUCKET, KIB, MIB, PREFIX, S3SPOOL
from bench.data import BUNDLE_INDEX
from bench.server import bench_server
from bench.tools import S3spool

#: the store each mode is checked on: one that unpacks tars, and one that does not need to
STORES = {"extract": "juicefs", "bundle": "rclone"}
#: larger than BATCH_FILE_LIMIT (1 MiB): each goes alone; the last is above MULTIPART_THRESHOLD
LARGE = (2 * MIB + 17, 5 * MIB, 9 * MIB - 3, 65 * MIB)
BATCH_FILE_LIMIT = MIB  # the default
#: for each kill moment: a run is killed once a batch of it settled (a run forms all its
#: batches at the start, 10 at the defaults, and sends them side by side)
WAIT_S = 300.0
DRAIN_S = 1200.0
INSTANCE = re.compile(rb"watching .* \(instance ([^)]+)\)")  # the service's start line
PER_FILE = "per-file/"  # the prefix of the per-file run that key_of is checked against


def _names(count: int) -> list[bytes]:
    """``count`` distinct names, one in ten odd: spaces, %, +, non-ASCII, over 100 bytes, a
    control character and a byte that is not UTF-8 (never one IGNORE's defaults skip:
    ``.*``, ``*.tmp``, ``*.part``)."""
    odd = (
        "with space {i}.txt",
        "percent%41+plus{i}",
        "grüße-日本語-{i}.log",
        "long-" + "n" * 100 + "-{i}",
        "日本語" * 12 + "{i}",
        "ctrl\x01char{i}",
    )
    out = []
    for i in range(count):
        if i % 10 == 9:
            kind = (i // 10) % (len(odd) + 1)
            out.append(
                b"latin-caf\xe9-%d" % i if kind == len(odd) else odd[kind].format(i=i).encode()
            )
        else:
            out.append(b"f%06d.bin" % i)
    return out


def key_of(name: bytes) -> str:
    """The key a per-file run gives ``name`` by default (docs/keys.md): the prefix, then the
    name with control characters and bytes that are not UTF-8 as %XX."""
    out = []
    for ch in name.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"%{code - 0xDC00:02X}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"%{code:02X}")
        else:
            out.append(ch)
    return PREFIX + "".join(out)


@dataclass
class Row:
    mode: str
    store: str
    files: int
    kills: list[int] = field(default_factory=list)  # batch records in flight at each kill
    drain_rc: int | None = None
    objects: int = 0
    exact: int = 0
    duplicates: int = 0
    missing: int = 0
    alone: int = 0  # bundle: small files stored as objects of their own
    problems: list[str] = field(default_factory=list)
    send_s: float = 0.0
    check_s: float = 0.0


def _spool_files(rng: random.Random, count: int) -> dict[bytes, bytes]:
    files = {name: rng.randbytes(rng.randrange(0, 4 * KIB)) for name in _names(count)}
    for i, size in enumerate(LARGE):
        files[b"large-%d.bin" % i] = rng.randbytes(size)
    return files


def _write(incoming: Path, files: dict[bytes, bytes]) -> None:
    incoming.mkdir(parents=True)
    for name, data in files.items():
        (incoming / os.fsdecode(name)).write_bytes(data)


def _in_flight(spool: Path) -> int:
    return sum(1 for _ in (spool / "working").glob("*/batches/*.json"))


def _a_batch_settled(spool: Path, log: Path, proc: subprocess.Popen[bytes]) -> bool:
    """Wait (at most WAIT_S) until a batch record of ``proc``'s instance is gone, a batch
    settled (not the log's batch line: it comes up to 0.1 s later; nor a dead instance's
    record that it adopts), or ``proc`` ends."""
    deadline = time.monotonic() + WAIT_S
    batches: Path | None = None
    most = 0
    while proc.poll() is None and time.monotonic() < deadline:
        if batches is None:
            found = INSTANCE.search(log.read_bytes())
            if found:
                batches = spool / "working" / os.fsdecode(found[1]) / "batches"
        else:
            now = sum(1 for _ in batches.glob("*.json"))
            if now < most:
                return True
            most = max(most, now)
        time.sleep(0.002)
    return False


def _deliver(rundir: Path, url: str, mode: str, kills: int, row: Row) -> None:
    """``run`` killed with SIGKILL ``kills`` times while batches are sent (each run once a
    batch of it settled, while the others are sent), then ``run --once``."""
    spool = rundir / "spool"
    env = S3spool("s3spool").env(rundir, url, {"S3SPOOL_BATCH": mode})
    for n in range(kills):
        log = rundir / f"run-{n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(S3SPOOL), "run"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=rundir
            )
        try:
            settled = _a_batch_settled(spool, log, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.returncode != -signal.SIGKILL:
            row.problems.append(f"run {n} exited with {proc.returncode} before its kill")
        elif not settled:
            row.problems.append(f"run {n}: no batch settled in {WAIT_S:.0f} s")
        # the records left are the batches the kill cut short
        row.kills.append(_in_flight(spool))
        if not row.kills[-1]:
            row.problems.append(f"kill {n}: no batch in flight")
    try:
        row.drain_rc = _once(env, rundir, "drain.log")
    except subprocess.TimeoutExpired:
        row.problems.append(f"the drain outlived {DRAIN_S:.0f} s")
    if row.drain_rc != 0:
        row.problems.append(f"drain exit code {row.drain_rc} (see {rundir / 'drain.log'})")


def _once(env: dict[str, str], rundir: Path, log: str) -> int:
    """`s3spool run --once`, its output in ``rundir/log``; its exit code."""
    with open(rundir / log, "wb") as out:
        return subprocess.run(
            [str(S3SPOOL), "run", "--once"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=rundir,
            timeout=DRAIN_S,
            check=False,
        ).returncode


def _check_spool(spool: Path, files: dict[bytes, bytes], row: Row) -> None:
    """Every file in done/; nothing left in incoming/, working/ (empty directories aside),
    failed/."""
    for sub in ("incoming", "working", "failed"):
        left = [p for p in (spool / sub).rglob("*") if not p.is_dir()]
        if left:
            row.problems.append(f"{len(left)} files left in {sub}/, e.g. {left[0]}")
    done = {os.fsencode(n) for n in os.listdir(spool / "done")}
    if done != set(files):
        row.problems.append(
            f"done/ holds {len(done)} of {len(files)} ({len(done - set(files))} other)"
        )


def _listing(client: Any) -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {obj["Key"]: int(obj["Size"]) for page in pages for obj in page.get("Contents", [])}


def _get(client: Any, key: str, rng: str | None = None) -> bytes:
    kw = {"Range": rng} if rng else {}
    body: bytes = client.get_object(Bucket=BUCKET, Key=key, **kw)["Body"].read()
    return body


#: a GET to make: key, range (None: the whole object), the bytes it must give
Read = tuple[str, str | None, bytes]


def _count_exact(client: Any, reads: list[Read]) -> int:
    """How many of ``reads`` give their bytes."""
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(lambda r: _get(client, r[0], r[1]) == r[2], reads))


def _check_extract(client: Any, files: dict[bytes, bytes], row: Row) -> None:
    """Exactly one object per file at its per-file key, byte-exact; nothing else (no tar)."""
    objects = _listing(client)
    row.objects = len(objects)
    want = {key_of(name): data for name, data in files.items()}
    row.missing = len(want.keys() - objects.keys())
    stray = objects.keys() - want.keys()
    if stray:
        row.problems.append(f"{len(stray)} stray objects, e.g. {sorted(stray)[:3]}")
    reads: list[Read] = [(key, None, data) for key, data in want.items() if key in objects]
    row.exact = _count_exact(client, reads)


def _check_bundle(client: Any, files: dict[bytes, bytes], row: Row) -> None:
    """Every small file in exactly one bundle (or, given up, alone at its key), read back with
    one ranged GET at its index's offset and size; the large ones alone; each bundle with its
    index and each index with its bundle."""
    objects = _listing(client)
    row.objects = len(objects)
    bundles = {k for k in objects if k.endswith(".tar")}
    indexes = {k.removesuffix(BUNDLE_INDEX) for k in objects if k.endswith(BUNDLE_INDEX)}
    if bundles != indexes:
        row.problems.append(
            f"{len(bundles - indexes)} bundles without an index, "
            f"{len(indexes - bundles)} indexes without a bundle"
        )
    by_key = {key_of(name): name for name in files}
    seen: Counter[bytes] = Counter()
    reads: list[Read] = []
    empty = 0  # members of no bytes: no range to ask for
    for bundle in sorted(bundles & indexes):
        for line in _get(client, bundle + BUNDLE_INDEX).decode().splitlines():
            entry = json.loads(line)
            name = os.fsencode(entry["name"])
            seen[name] += 1
            if name not in files or entry["key"] != key_of(name):
                row.problems.append(f"{bundle}: unexpected member {entry['name']!r}")
                continue
            start, size = entry["offset"], entry["size"]
            if start + size > objects[bundle]:
                row.problems.append(f"{bundle}: {entry['name']!r} beyond the bundle's end")
            elif size == 0:
                empty += files[name] == b""
            else:
                reads.append((bundle, f"bytes={start}-{start + size - 1}", files[name]))
    for key in objects.keys() - bundles - {b + BUNDLE_INDEX for b in indexes}:
        alone = by_key.get(key)
        if alone is None:
            row.problems.append(f"stray object {key}")
            continue
        seen[alone] += 1
        reads.append((key, None, files[alone]))
        row.alone += len(files[alone]) <= BATCH_FILE_LIMIT
    row.missing = len(files.keys() - seen.keys())
    row.duplicates = sum(1 for n in seen.values() if n > 1)
    row.exact = empty + _count_exact(client, reads)
    if row.alone:
        row.problems.append(f"{row.alone} small files alone, not in a bundle")
    large = {b"large-%d.bin" % i for i in range(len(LARGE))}
    if not all(key_of(name) in objects for name in large):
        row.problems.append("a large file is not an object of its own")


def _check_key_of(rundir: Path, url: str, client: Any, files: dict[bytes, bytes], row: Row) -> None:
    """key_of gives the keys of a per-file run (BATCH=off) of the same names, empty (the
    bytes make no key), under a prefix of its own."""
    tool, perdir = S3spool("s3spool"), rundir / "per-file"
    _write(tool.source_dir(perdir), dict.fromkeys(files, b""))
    env = tool.env(perdir, url, {"S3SPOOL_DESTINATION": f"s3://{BUCKET}/{PER_FILE}"})
    rc = _once(env, rundir, "per-file.log")
    if rc != 0:
        row.problems.append(f"the per-file run's exit code {rc}")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PER_FILE)
    got = {obj["Key"][len(PER_FILE) :] for page in pages for obj in page.get("Contents", [])}
    rendered = {key_of(name)[len(PREFIX) :] for name in files}
    if got != rendered:
        row.problems.append(
            f"a per-file run's keys differ: {sorted(got - rendered)[:3]} "
            f"against {sorted(rendered - got)[:3]}"
        )


def check_mode(mode: str, count: int, kills: int, workdir: Path) -> Row:
    store = STORES[mode]
    row = Row(mode, store, count + len(LARGE))
    rundir = workdir / mode
    rundir.mkdir()
    files = _spool_files(random.Random(25), count)
    _write(rundir / "spool" / "incoming", files)
    with bench_server(rundir / "s3", rundir / "server.log", store) as server:
        start = time.monotonic()
        _deliver(rundir, server.url, mode, kills, row)
        row.send_s = time.monotonic() - start
        _check_spool(rundir / "spool", files, row)
        start = time.monotonic()
        client = server.client()
        (_check_extract if mode == "extract" else _check_bundle)(client, files, row)
        _check_key_of(rundir, server.url, client, files, row)
        row.check_s = time.monotonic() - start
    if row.exact != len(files):
        row.problems.append(f"{len(files) - row.exact} files not read back byte-exact")
    if row.missing or row.duplicates:
        row.problems.append(f"{row.missing} missing, {row.duplicates} duplicated")
    return row


def table(rows: list[Row]) -> str:
    head = (
        "| mode | store | files | kills (batches in flight) | drain exit | objects | byte-exact "
        "| duplicates | missing | send s | check s | result |"
    )
    out = [head, "|" + "---|" * 12]
    for r in rows:
        out.append(
            f"| {r.mode} | {r.store} | {r.files} | {len(r.kills)} ({', '.join(map(str, r.kills))}) "
            f"| {r.drain_rc} | {r.objects} | {r.exact} | {r.duplicates} | {r.missing} "
            f"| {r.send_s:.1f} | {r.check_s:.1f} | {'; '.join(r.problems) or 'ok'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.batchcheck", description=__doc__)
    ap.add_argument("--mode", choices=("extract", "bundle", "both"), default="both")
    ap.add_argument("--files", type=int, default=10_000, help="small files (default 10,000)")
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    modes = ("extract", "bundle") if args.mode == "both" else (args.mode,)
    workdir = Path(tempfile.mkdtemp(prefix="batchcheck-"))
    rows: list[Row] = []
    finished = False
    try:
        for mode in modes:
            rows.append(check_mode(mode, args.files, args.kills, workdir))
            print(f"[batchcheck] {mode}: {rows[-1].problems or 'ok'}", file=sys.stderr, flush=True)
        finished = True
    finally:
        if args.keep or not finished or any(r.problems for r in rows):
            print(f"[batchcheck] work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir)
    print(table(rows))
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
