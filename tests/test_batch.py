"""BATCH with the real process: bundles on rclone (every small file in exactly one bundle, its
index offsets read back with ranged GETs), extract on the JuiceFS gateway (the objects of a
per-file run) and on rclone (which does not unpack), both with COMPRESS on part of the files;
kill -9, SIGTERM, a bundle given up."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import signal
import subprocess
import tarfile
from pathlib import Path
from urllib.parse import unquote

import crc32c
import zstandard

from faultproxy import FaultProxy
from proc import SpoolProc, cli
from s3servers import S3Target
from svc import drop, names

LARGE = 100 * 1024  # above the BATCH_FILE_LIMIT of these tests
MIB = 1024 * 1024
MD5_O = "d95679752134a2d9eb61dbd7b91c4bcc"  # of b"o"


def _names() -> list[bytes]:
    odd = [
        b"with space.txt",
        "grüße-日本語.txt".encode(),
        b"percent%41+plus",
        b"not-utf8-\xff\xfe",
        b"n" * 200,  # a key over 100 bytes: a PAX path= record in the tar
        b"empty",
        b"ctrl\x01char",
    ]
    return odd + [b"f%03d.log" % i for i in range(300 - len(odd))]


def _records(text: str, event: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event") == event:
                out.append(rec)
    return out


def _crc(data: bytes) -> str:
    return "crc32c:" + base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


#: files from 2500 bytes up (about half the small ones, and the large) compressed
COMPRESS = {"S3SPOOL_COMPRESS_MIN_SIZE": "2500"}


def _unpack(key: str, stored: bytes) -> bytes:
    """A file's bytes from what its key holds (COMPRESS: the key says the codec)."""
    if key.endswith(".gz"):
        return gzip.decompress(stored)
    if key.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    return stored


def _batched_once(
    tmp_path: Path, target: S3Target, mode: str, compress: str, **more: str
) -> tuple[dict[bytes, bytes], dict[bytes, bytes], subprocess.CompletedProcess[str]]:
    """300 small files of odd names and 2 large ones, one `run --once` with ``BATCH=mode`` and
    ``COMPRESS=compress`` (``more``: other variables): everything in done/, no batch record
    left."""
    spool = tmp_path / "spool"
    incoming = spool / "incoming"
    incoming.mkdir(parents=True)
    small: dict[bytes, bytes] = {}
    for i, name in enumerate(_names()):
        data = b"" if name == b"empty" else os.urandom(1 + i * 37 % 5000)
        drop(incoming, name, data)
        small[name] = data
    large = {b"large-%d.bin" % i: os.urandom(LARGE + i) for i in range(2)}
    for name, data in large.items():
        drop(incoming, name, data)
    env = {
        **target.env("pre"),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_BATCH": mode,
        "S3SPOOL_BATCH_MAX_FILES": "100",
        "S3SPOOL_BATCH_FILE_LIMIT": "64KiB",
        "S3SPOOL_LOG_FORMAT": "json",
        "S3SPOOL_WORKERS": "8",
        "S3SPOOL_COMPRESS": compress,
        **COMPRESS,
        **more,
    }
    run = cli(["run", "--once"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {os.fsencode(n) for n in os.listdir(spool / "done")} == set(small) | set(large)
    assert not os.listdir(incoming)
    assert not any((spool / "working").rglob("*.json")), "batch records are gone"
    return small, large, run


def test_bundle_once_against_rclone(tmp_path: Path, rclone_s3: S3Target) -> None:
    # a member's METADATA, TAGS and CONTENT_DISPOSITION go into its index line; the bundle
    # object has none of them, but CACHE_CONTROL
    options = {
        "S3SPOOL_METADATA": "src={fname},team=ops",
        "S3SPOOL_TAGS": "kind=log",
        "S3SPOOL_CONTENT_DISPOSITION": 'attachment; filename="{fname}"',
        "S3SPOOL_CACHE_CONTROL": "max-age=60",
    }
    small, large, run = _batched_once(tmp_path, rclone_s3, "bundle", "zstd", **options)
    keys = rclone_s3.keys()
    # the large files alone, as without BATCH
    for name, data in large.items():
        assert (
            _unpack("pre/" + name.decode() + ".zst", rclone_s3.get(f"pre/{name.decode()}.zst"))
            == data
        )
    bundles = sorted(k for k in keys if k.endswith(".tar"))
    assert len(bundles) >= 3, keys  # 300 small files, at most 100 a batch
    assert all(k.startswith("pre/bundles/") for k in bundles)
    assert sorted(k for k in keys if k.endswith(".index.jsonl")) == [
        k + ".index.jsonl" for k in bundles
    ]
    assert len(keys) == 2 * len(bundles) + len(large), "nothing else in the store"

    seen: dict[str, int] = {}
    sizes: dict[str, int] = {}
    client = rclone_s3.client()
    for bundle in bundles:
        head = client.head_object(Bucket=rclone_s3.bucket, Key=bundle)
        assert head["CacheControl"] == "max-age=60"
        assert not {"src", "team"} & set(head["Metadata"]), head["Metadata"]
        assert head.get("ContentDisposition") is None
        body = rclone_s3.get(bundle)
        lines = rclone_s3.get(bundle + ".index.jsonl").decode().splitlines()
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
        assert len(members) == len(lines)
        for line in lines:
            entry = json.loads(line)
            name = os.fsencode(entry["name"])
            data = small[name]
            seen[entry["name"]] = seen.get(entry["name"], 0) + 1
            # COMPRESS: the key a per-file run gives (.zst from COMPRESS_MIN_SIZE); size: of
            # the stored bytes, file_size and checksum: of the file
            assert entry["key"].startswith("pre/")
            assert entry["key"].endswith(".zst") == (len(data) >= 2500)
            assert entry.get("file_size", entry["size"]) == len(data)
            assert ("file_size" in entry) == (len(data) >= 2500)
            assert entry["checksum"] == _crc(data)
            assert entry["metadata"]["team"] == "ops"
            assert entry["tags"] == {"kind": "log"}
            assert entry["content_disposition"].startswith("attachment; filename=")
            # as the per-file path writes a name in a header: %XX for what cannot go as it is
            assert unquote(entry["metadata"]["src"], errors="surrogateescape") == entry["name"]
            member = members[entry["key"]]  # the member's name is the key it would have had
            assert member.offset_data == entry["offset"]
            assert member.size == entry["size"]
            sizes[entry["key"]] = entry["size"]
            if data:  # a ranged GET of the index's offset and size gives the stored bytes
                end = entry["offset"] + entry["size"] - 1
                got = client.get_object(
                    Bucket=rclone_s3.bucket, Key=bundle, Range=f"bytes={entry['offset']}-{end}"
                )["Body"].read()
                assert _unpack(entry["key"], got) == data, entry
    assert sorted(seen) == sorted(os.fsdecode(n) for n in small)
    assert set(seen.values()) == {1}, "each small file in exactly one bundle"

    files = _records(run.stderr + run.stdout, "file")
    assert len(files) == len(small) + len(large)
    assert all(r["outcome"] == "delivered" for r in files)
    in_bundles = [r for r in files if "bundle" in r]
    assert len(in_bundles) == len(small)
    for r in in_bundles:  # the file's size, and (compressed) the stored size as per file
        assert r.get("stored") == (sizes[str(r["key"])] if "stored" in r else None)
        assert r["size"] == len(small[os.fsencode(str(r["name"]))])
        assert str(r["key"]).endswith(".zst") == ("stored" in r)
    assert {r["bundle"] for r in in_bundles} == set(bundles)
    batches = _records(run.stderr + run.stdout, "batch")
    assert sorted(str(r["bundle"]) for r in batches) == bundles
    assert sum(int(str(r["files"])) for r in batches) == len(small)
    summary = next(line for line in run.stderr.splitlines() if "run --once:" in line)
    assert "run --once: 302 delivered (" in summary
    counted = re.search(r", (\d+) batches, (\d+) requests\), 0 failed", summary)
    assert counted, summary
    assert int(counted[1]) == len(bundles)
    # a PUT of each bundle and each index, the two large files, HeadBucket and the survey's
    # ListMultipartUploads: 2 per 100 files here (BATCH_MAX_FILES=100)
    assert int(counted[2]) <= 2 * len(bundles) + len(large) + 3, summary


def test_extract_on_juicefs_gives_the_objects_of_a_per_file_run(
    tmp_path: Path, juicefs_s3: S3Target, rclone_s3: S3Target
) -> None:
    small, large, run = _batched_once(tmp_path, juicefs_s3, "extract", "gzip")
    # the keys a per-file run with the same COMPRESS gives, from the same files on another store
    per_file = tmp_path / "per-file"
    (per_file / "incoming").mkdir(parents=True)
    for name, data in {**small, **large}.items():
        drop(per_file / "incoming", name, data)
    env = {**rclone_s3.env("pre"), "S3SPOOL_SPOOL_DIRS": str(per_file), "S3SPOOL_COMPRESS": "gzip"}
    plain = cli(["run", "--once"], {**env, **COMPRESS})
    assert plain.returncode == 0, plain.stderr[-3000:]
    keys = sorted(juicefs_s3.keys())
    assert keys == sorted(rclone_s3.keys())
    assert sum(k.endswith(".gz") for k in keys) > len(keys) // 3
    by_key = {}
    for rec in _records(run.stderr, "file"):
        by_key[str(rec["key"])] = os.fsencode(str(rec["name"]))
        assert ("stored" in rec) == str(rec["key"]).endswith(".gz")
    for key in keys:
        assert _unpack(key, juicefs_s3.get(key)) == {**small, **large}[by_key[key]], key
    batches = _records(run.stderr, "batch")
    assert len(batches) >= 3
    assert sum(int(str(r["files"])) for r in batches) == len(small)


def test_extract_on_a_store_that_does_not_unpack_falls_back(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    spool = tmp_path / "spool"
    incoming = spool / "incoming"
    incoming.mkdir(parents=True)
    files = {f"e{i}": b"%d" % i for i in range(30)}
    for name, data in files.items():
        drop(incoming, name, data)
    env = {
        **rclone_s3.env("pre"),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_BATCH": "extract",
        "S3SPOOL_BATCH_MAX_FILES": "10",
    }
    run = cli(["run", "--once"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("instead of unpacking it") == 1, run.stderr
    assert sorted(os.listdir(spool / "done")) == sorted(files)
    assert sorted(rclone_s3.keys()) == sorted(f"pre/{n}" for n in files), "no stray tar"
    for name, data in files.items():
        assert rclone_s3.get(f"pre/{name}") == data


def test_a_bundle_given_up_sends_its_files_one_by_one(tmp_path: Path, rclone_s3: S3Target) -> None:
    spool = tmp_path / "spool"
    incoming = spool / "incoming"
    incoming.mkdir(parents=True)
    for i in range(20):
        drop(incoming, f"g{i}", b"%d" % i)
    env = {
        **rclone_s3.env("pre"),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_BATCH": "bundle",
        "S3SPOOL_FAIL_RATE": "1",  # every request fails: the bundle, then each file alone
    }
    run = cli(["run", "--once"], env)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "bundle not delivered (injected failure (FAIL_RATE)); its 20 files go one by one" in (
        run.stderr
    )
    failed = spool / "failed"
    assert sorted(os.listdir(failed)) == sorted(
        [f"g{i}" for i in range(20)] + [f"g{i}.reason.json" for i in range(20)]
    )
    assert rclone_s3.keys() == []
    assert not any((spool / "working").rglob("*.json")), "no batch record is left"


def _kill_three_times_then_drain(
    tmp_path: Path, target: S3Target, mode: str, count: int, **more: str
) -> dict[bytes, bytes]:
    """``count`` small files, kill -9 three times during batches, then a drain: the files
    (``more``: settings)."""
    spool = tmp_path / "spool"
    incoming = spool / "incoming"
    incoming.mkdir(parents=True)
    files = {b"k%05d" % i: os.urandom(2048 + i % 700) for i in range(count)}
    for name, data in files.items():
        drop(incoming, name, data)
    env = {
        **target.env("pre"),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_BATCH": mode,
        "S3SPOOL_BATCH_MAX_FILES": "50",
        "S3SPOOL_WORKERS": "4",
        "S3SPOOL_LOG_FORMAT": "json",
        **{f"S3SPOOL_{k.upper()}": v for k, v in more.items()},
    }
    done = spool / "done"

    def delivered() -> int:
        return len(os.listdir(done)) if done.exists() else 0

    for goal in (count // 10, count * 4 // 10, count * 7 // 10):  # kill -9 mid-run, three times
        with SpoolProc(["run"], env, tmp_path) as proc:
            proc.wait_until(lambda g=goal: delivered() >= g, 60, f"{goal} in done/")
            proc.kill()
        assert delivered() < len(files), "killed before the end"
    run = cli(["run", "--once"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {os.fsencode(n) for n in os.listdir(done)} == set(files)
    return files


def test_extract_kill_during_batches_then_drain_gives_one_object_per_file(
    tmp_path: Path, juicefs_s3: S3Target
) -> None:
    files = _kill_three_times_then_drain(tmp_path, juicefs_s3, "extract", 1000)
    keys = juicefs_s3.keys()
    assert sorted(keys) == sorted(f"pre/{n.decode()}" for n in files), "no tar, no stray"
    for name, data in files.items():
        assert juicefs_s3.get(f"pre/{name.decode()}") == data


def test_kill_during_batches_then_drain_delivers_each_file_once(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    # COMPRESS on about half the files: a restart sends the same compressed bytes, same keys
    files = _kill_three_times_then_drain(
        tmp_path, rclone_s3, "bundle", 3000, compress="zstd", compress_min_size="2400"
    )
    keys = rclone_s3.keys()
    bundles = [k for k in keys if k.endswith(".tar")]
    assert sorted(k for k in keys if k.endswith(".index.jsonl")) == sorted(
        k + ".index.jsonl" for k in bundles
    ), "every bundle has its index"
    alone = {k for k in keys if not k.endswith((".tar", ".index.jsonl"))}
    found: dict[bytes, int] = {}
    for key in alone:
        name = key.removeprefix("pre/").removesuffix(".zst").encode()
        assert key.endswith(".zst") == (len(files[name]) >= 2400)
        assert _unpack(key, rclone_s3.get(key)) == files[name]
        found[name] = found.get(name, 0) + 1
    for bundle in bundles:
        body = rclone_s3.get(bundle)
        for line in rclone_s3.get(bundle + ".index.jsonl").decode().splitlines():
            entry = json.loads(line)
            name = os.fsencode(entry["name"])
            stored = body[entry["offset"] : entry["offset"] + entry["size"]]
            assert _unpack(entry["key"], stored) == files[name]
            assert entry["key"].endswith(".zst") == (len(files[name]) >= 2400)
            found[name] = found.get(name, 0) + 1
    assert set(found) == set(files)
    assert {n: c for n, c in found.items() if c != 1} == {}, "each file exactly once"


def test_kill9_during_a_multipart_bundle_resumes_its_recorded_upload(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """A bundle above MULTIPART_THRESHOLD, kill -9 once a part is stored: the next start
    continues the upload its record names; each member once, the index's offsets exact."""
    spool = tmp_path / "spool"
    incoming = spool / "incoming"
    incoming.mkdir(parents=True)
    files = {b"m%d" % i: os.urandom(4 * MIB - 1000 * i) for i in range(3)}  # 3 parts of 5 MiB
    for name, data in files.items():
        drop(incoming, name, data)
    with FaultProxy(rclone_s3.endpoint_url) as fp:
        fp.latency_s = 0.5
        fp.fault_kinds = frozenset({"upload_part"})
        env = {
            **rclone_s3.via(fp.url).env("pre"),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_BATCH": "bundle",
            "S3SPOOL_BATCH_MAX_FILES": "3",
            "S3SPOOL_BATCH_FILE_LIMIT": "4MiB",
            "S3SPOOL_MULTIPART_THRESHOLD": "5MiB",
            "S3SPOOL_PART_SIZE": "5MiB",
            "S3SPOOL_PART_CONCURRENCY": "1",
        }
        with SpoolProc(["run"], env, cwd=tmp_path) as first:
            first.wait_until(lambda: fp.snapshot()["counts"].get("upload_part", 0) >= 2, 60)
            first.kill()  # SIGKILL mid-upload: part 1 stored, no abort
        assert names(spool / "done") == set()
        fp.latency_s = 0.0
        with SpoolProc(["run"], env, cwd=tmp_path) as second:
            second.wait_for_log(r"resuming multipart upload of 'pre/bundles/[^']+\.tar'", 30)
            second.wait_until(lambda: names(spool / "done") == {"m0", "m1", "m2"}, 60)
            reused = second.wait_for_log(r"resumed: (\d+) of 3 parts reused", 10)
            second.signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.log_tail()
        counts = fp.snapshot()["counts"]
    assert counts.get("create_mpu") == 1, counts  # the recorded upload, continued
    assert int(reused.group(1)) >= 1, reused.group(0)
    keys = rclone_s3.keys()
    (bundle,) = [k for k in keys if k.endswith(".tar")]
    assert sorted(keys) == [bundle, bundle + ".index.jsonl"], keys
    body = rclone_s3.get(bundle)
    index = [json.loads(line) for line in rclone_s3.get(bundle + ".index.jsonl").splitlines()]
    assert sorted(e["name"] for e in index) == ["m0", "m1", "m2"], "each member once"
    for entry in index:
        start = entry["offset"]
        assert body[start : start + entry["size"]] == files[entry["name"].encode()]
    uploads = rclone_s3.client().list_multipart_uploads(Bucket=rclone_s3.bucket)
    assert not uploads.get("Uploads"), uploads
    assert not any((spool / "working").rglob("*.json")), "the record is gone"


def test_sigterm_returns_the_files_of_a_batch_still_forming(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    spool = tmp_path / "spool"
    incoming = spool / "incoming"
    incoming.mkdir(parents=True)
    env = {
        **rclone_s3.env("pre"),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_BATCH": "bundle",
        "S3SPOOL_BATCH_MAX_WAIT": "1h",
    }
    with SpoolProc(["run"], env, tmp_path) as proc:
        proc.wait_for_log("watching 1 spool")
        for i in range(5):
            drop(incoming, f"w{i}", b"%d" % i)
        proc.wait_until(lambda: not os.listdir(incoming), 10, "the files claimed")
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.log_tail()
    assert sorted(os.listdir(incoming)) == [f"w{i}" for i in range(5)]
    assert not [p for p in (spool / "working").rglob("*") if p.is_file()]
    assert rclone_s3.keys() == []


def test_claims_of_a_batch_still_forming_at_a_crash_go_into_a_bundle(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """kill -9 while a batch forms leaves claims with no batch record and no key record: the
    next run puts them into a bundle, not one by one; one that went alone before the crash (a
    bundle given up) is found in the store and not sent again."""
    files = {f"c{i}": b"%d" % i for i in range(20)}
    sent = tmp_path / "sent"
    (sent / "incoming").mkdir(parents=True)
    (sent / "incoming" / "c0").write_bytes(files["c0"])
    plain = cli(["run", "--once"], {**rclone_s3.env("pre"), "S3SPOOL_SPOOL_DIRS": str(sent)})
    assert plain.returncode == 0, plain.stderr[-3000:]
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    dead = spool / "working" / "vm.1.dead01"  # no process holds its lock
    (dead / "keys").mkdir(parents=True)
    (dead / "files").mkdir()
    for name, data in files.items():
        (dead / "files" / name).write_bytes(data)
    env = {**rclone_s3.env("pre"), "S3SPOOL_SPOOL_DIRS": str(spool), "S3SPOOL_BATCH": "bundle"}
    run = cli(["run", "--once"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(os.listdir(spool / "done")) == sorted(files)
    keys = rclone_s3.keys()
    bundles = [k for k in keys if k.endswith(".tar")]
    assert len(bundles) == 1
    assert sorted(keys) == sorted(["pre/c0", bundles[0], bundles[0] + ".index.jsonl"]), keys
    index = rclone_s3.get(bundles[0] + ".index.jsonl").decode().splitlines()
    assert sorted(json.loads(line)["name"] for line in index) == sorted(files.keys() - {"c0"})


async def test_listed_seeks_past_other_objects(tmp_path: Path, rclone_s3: S3Target) -> None:
    """The listing that confirms extracted files: right answers, and pages only where needed."""
    from concurrent.futures import ThreadPoolExecutor

    from s3spool.config.settings import Settings
    from s3spool.store.s3 import S3Store

    client = rclone_s3.client()
    others = [f"pre/f{i:04d}" for i in range(1100)]  # more than a page before "pre/f5"
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(lambda k: client.put_object(Bucket=rclone_s3.bucket, Key=k, Body=b"o"), others)
        )
    client.put_object(Bucket=rclone_s3.bucket, Key="pre/f5", Body=b"five!")
    env = rclone_s3.env()
    s = Settings(
        destination=env["S3SPOOL_DESTINATION"],
        endpoint_url=rclone_s3.endpoint_url,
        region=rclone_s3.region,
        addressing_style="path",
        spool_dirs=[tmp_path],
    )
    async with S3Store(s) as store:
        calls = 0
        real = store.client.list_objects_v2

        async def counted(**kw: object) -> object:
            nonlocal calls
            calls += 1
            return await real(**kw)

        store.client.list_objects_v2 = counted  # type: ignore[method-assign]
        five = {"pre/f5": (5, "ec550badc26b54eabf2ed55051f7392d")}
        assert await store.listed(["pre/f5"]) == five
        assert calls == 1  # one key: its own prefix
        calls = 0
        assert await store.listed(["pre/f0000", "pre/f5"]) == {"pre/f0000": (1, MD5_O), **five}
        assert calls == 2  # a page holding the first, then a seek past 100 others to the last
        calls = 0
        wanted = sorted([*others[::100], "pre/f0000x", "pre/zz"])
        found = await store.listed(wanted)
        assert sorted(found) == others[::100]
        assert all(size == 1 for size, _ in found.values())
        assert calls == 2  # the first page holds ten of them; the second the rest


def test_check_says_whether_the_store_unpacks(
    tmp_path: Path, juicefs_s3: S3Target, rclone_s3: S3Target
) -> None:
    (tmp_path / "spool").mkdir()
    extra = {"S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool"), "S3SPOOL_BATCH": "extract"}
    yes = cli(["check"], {**juicefs_s3.env("pre"), **extra})
    assert yes.returncode == 0, yes.stdout + yes.stderr
    assert "  auto-extract: yes" in yes.stdout, yes.stdout
    no = cli(["check"], {**rclone_s3.env("pre"), **extra})
    assert "  auto-extract: no (it keeps a tar as one object" in no.stdout, no.stdout
    assert "but the store does not unpack tars (BATCH=extract)" in no.stdout
    assert juicefs_s3.keys() == []
    assert rclone_s3.keys() == [], "the test objects are deleted"
