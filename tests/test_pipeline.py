"""End to end through the real service: inotify, claim, upload to a real server, settling.

The main cases run against both moto (in-process) and `rclone serve s3`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from s3servers import S3Target
from svc import drop, names, running, settings_for, wait_until

MIB = 1024 * 1024


async def test_renamed_in_while_running(spool: Path, s3: S3Target) -> None:
    async with running(settings_for(spool, s3)):
        payloads = {f"file-{i}.dat": os.urandom(100 + i) for i in range(30)}
        for name, data in payloads.items():
            drop(spool / "incoming", name, data)
        await wait_until(lambda: len(names(spool / "done")) == 30, what="30 files in done/")
    assert sorted(s3.keys()) == sorted(payloads)
    for name, data in payloads.items():
        assert s3.get(name) == data
        assert (spool / "done" / name).read_bytes() == data
    assert names(spool / "incoming") == set()
    assert list((spool / "working").rglob("*.dat")) == []


async def test_the_running_service_collects_garbage_again(spool: Path, s3: S3Target) -> None:
    """``__main__`` starts with the cyclic collector off; once its stores are open the service
    freezes what start-up built and turns collection back on."""
    gc.disable()
    try:
        async with running(settings_for(spool, s3)):
            assert gc.isenabled()
            assert gc.get_freeze_count() > 0
            drop(spool / "incoming", "after-start", b"x")
            await wait_until(lambda: names(spool / "done") == {"after-start"})
    finally:
        gc.unfreeze()
        gc.enable()


async def test_backlog_present_at_startup(spool: Path, s3: S3Target) -> None:
    (spool / "incoming").mkdir(parents=True)
    for i in range(50):
        (spool / "incoming" / f"old-{i}").write_bytes(b"x" * i)
    async with running(settings_for(spool, s3)):
        await wait_until(lambda: len(names(spool / "done")) == 50, what="backlog drained")
    assert len(s3.keys()) == 50
    assert s3.get("old-7") == b"x" * 7


async def test_zero_byte_and_odd_names(spool: Path, s3: S3Target) -> None:
    """The key is the name (README "Odd file names"), '%', '+' and non-ASCII included;
    a non-ASCII name's Content-Disposition has the exact name in RFC 6266 filename*."""
    files = {
        "empty": b"",
        "with space.txt": b"a b",
        "naïve-日本.txt": "ü".encode(),
        "naïve.txt": b"n",
        "50%.csv": b"p",
        "a+b c.txt": b"+",
    }
    settings = settings_for(
        spool,
        s3,
        destination=f"s3://{s3.bucket}/in/",
        content_disposition='attachment; filename="{fname}"',
    )
    async with running(settings):
        for name, data in files.items():
            drop(spool / "incoming", name, data)
        drop(spool / "incoming", b"raw-\xff\xfe", b"bytes")
        await wait_until(lambda: len(names(spool / "done")) == len(files) + 1)
    # a name that is not UTF-8 gets the documented %XX encoding of its bytes
    assert sorted(s3.keys()) == sorted([f"in/{name}" for name in files] + ["in/raw-%FF%FE"])
    for name, data in files.items():
        assert s3.get(f"in/{name}") == data
    assert s3.get("in/raw-%FF%FE") == b"bytes"
    assert s3.head("in/naïve.txt")["ContentDisposition"] == (
        "attachment; filename=\"naive.txt\"; filename*=UTF-8''na%C3%AFve.txt"
    )
    assert s3.head("in/raw-%FF%FE")["ContentDisposition"] == (
        "attachment; filename=\"raw-__\"; filename*=UTF-8''raw-%FF%FE"
    )


async def test_multipart_threshold_boundaries(spool: Path, s3: S3Target) -> None:
    threshold = 5 * MIB
    sizes = {
        "below": threshold - 1,
        "at": threshold,
        "above": threshold + 1,
        "parts": int(2.5 * threshold),
    }
    data = {name: os.urandom(size) for name, size in sizes.items()}
    with FaultProxy(s3.endpoint_url) as proxy:
        target = s3.via(proxy.url)
        settings = settings_for(
            spool, target, multipart_threshold=threshold, part_size=threshold, part_concurrency=2
        )
        async with running(settings):
            for name, body in data.items():
                drop(spool / "incoming", name, body)
            await wait_until(lambda: len(names(spool / "done")) == 4, 60)
        counts = proxy.snapshot()["counts"]
    for name, body in data.items():
        assert s3.get(name) == body, name
    # below the threshold: one PUT; at and above: multipart (1 + 2 + 3 parts)
    assert counts["put_object"] == 1
    assert counts["create_mpu"] == 3
    assert counts["complete_mpu"] == 3
    assert counts["upload_part"] == 1 + 2 + 3


async def test_hold_for_waits_for_writer(spool: Path, s3: S3Target) -> None:
    """A file written in place is not taken until its mtime is HOLD_FOR old."""
    async with running(settings_for(spool, s3, hold_for=1.0)):
        path = spool / "incoming" / "slow.log"
        with open(path, "wb") as fh:
            fh.write(b"first half,")
            fh.flush()
            await asyncio.sleep(0.6)
            assert s3.keys() == []  # CLOSE_WRITE has not even happened; nothing taken
            fh.write(b"second half")
        t_closed = time.monotonic()
        await asyncio.sleep(0.5)
        assert s3.keys() == [], "taken before HOLD_FOR elapsed"
        await wait_until(lambda: names(spool / "done") == {"slow.log"}, 10)
        assert time.monotonic() - t_closed >= 0.9
    assert s3.get("slow.log") == b"first half,second half"


async def test_every_key_field(spool: Path, moto_s3: S3Target) -> None:
    fmt = (
        "{spool_dir}/{m_YYYY}/{m_MM}/{m_DD}/{m_hh}{m_mm}{m_ss}/{c_YYYY}-{c_MM}-{c_DD}T"
        "{c_hh}{c_mm}{c_ss}/{hostname}/{now}/{uuid1}/{uuid4}/{fname}"
    )
    (spool / "incoming").mkdir(parents=True)
    path = spool / "incoming" / "k.csv"
    path.write_bytes(b"1,2")
    mtime = datetime(2020, 4, 30, 12, 34, 56, tzinfo=UTC).timestamp()
    os.utime(path, (mtime, mtime))
    before = int(time.time())
    async with running(settings_for(spool, moto_s3, key_format=fmt)):
        await wait_until(lambda: names(spool / "done") == {"k.csv"})
    (key,) = moto_s3.keys()
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    spool_dir = str(spool).strip("/")
    m = re.fullmatch(
        re.escape(spool_dir) + r"/2020/04/30/123456/(\d{4})-(\d\d)-(\d\d)T(\d{6})/([^/]+)/"
        rf"(\d+)/({uuid})/({uuid})/k\.csv",
        key,
    )
    assert m, key
    ctime = datetime.fromtimestamp(os.stat(spool / "done" / "k.csv").st_ctime, UTC)
    assert m.group(1) == f"{ctime.year:04d}"
    assert m.group(5) == os.uname().nodename
    assert before <= int(m.group(6)) <= int(time.time())
    assert m.group(7) != m.group(8)


async def test_multiple_spools(tmp_path: Path, s3: S3Target) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    settings = settings_for([a, b], s3, key_format="{spool_dir}/{fname}")
    async with running(settings):
        drop(a / "incoming", "x", b"from a")
        drop(b / "incoming", "x", b"from b")
        await wait_until(lambda: names(a / "done") == {"x"} and names(b / "done") == {"x"})
    assert s3.get(f"{str(a).strip('/')}/x") == b"from a"
    assert s3.get(f"{str(b).strip('/')}/x") == b"from b"


async def test_remove_on_success(spool: Path, s3: S3Target) -> None:
    async with running(settings_for(spool, s3, remove_on_success=True)) as svc:
        drop(spool / "incoming", "gone", b"bye")
        await wait_until(lambda: svc.counts.delivered == 1)
    assert s3.get("gone") == b"bye"
    assert not (spool / "done").exists()
    assert names(spool / "incoming") == set()


async def test_failure_goes_to_failed_with_reason(spool: Path, s3: S3Target) -> None:
    async with running(settings_for(spool, s3, fail_rate=1.0)) as svc:
        drop(spool / "incoming", "bad", b"never sent")
        await wait_until(lambda: svc.counts.failed == 1)
    assert (spool / "failed" / "bad").read_bytes() == b"never sent"
    reason = json.loads((spool / "failed" / "bad.reason.json").read_text())
    assert reason["reason"] == "injected"
    assert reason["name"] == "bad"
    assert s3.keys() == []


async def test_remove_on_failure(spool: Path, moto_s3: S3Target) -> None:
    async with running(settings_for(spool, moto_s3, fail_rate=1.0, remove_on_failure=True)) as svc:
        drop(spool / "incoming", "doomed", b"x")
        await wait_until(lambda: svc.counts.failed == 1)
    assert not (spool / "failed").exists()
    assert names(spool / "incoming") == set()


async def test_resubmit_mode_backs_off_and_delivers(tmp_path: Path, moto_s3: S3Target) -> None:
    """FAILED_DIR == INCOMING_DIR: failures come back after a backoff, never in a tight loop."""
    inc, work, done = tmp_path / "in", tmp_path / "work", tmp_path / "done"
    settings = settings_for(
        None,
        moto_s3,
        incoming_dir=inc,
        working_dir=work,
        done_dir=done,
        failed_dir=inc,
        fail_rate=0.5,
        retry_backoff=0.2,
        retry_backoff_max=0.4,
    )
    async with running(settings) as svc:
        for i in range(10):
            drop(inc, f"r{i}", f"payload {i}".encode())
        await wait_until(lambda: len(names(done)) == 10, 60, "all resubmitted files delivered")
        resubmits = svc.counts.failed
    assert sorted(moto_s3.keys()) == [f"r{i}" for i in range(10)]
    # with a 50 % failure rate, about 10 resubmits are expected; a tight loop would be thousands
    assert 0 < resubmits < 60
    assert not list(inc.glob("*.reason.json"))


async def test_noop_destination_with_fail_rate(spool: Path) -> None:
    settings = settings_for(spool, None, destination="noop://", fail_rate=0.5)
    async with running(settings) as svc:
        for i in range(40):
            drop(spool / "incoming", f"n{i}", b"z")
        await wait_until(lambda: svc.counts.delivered + svc.counts.failed == 40)
        delivered, failed = svc.counts.delivered, svc.counts.failed
    assert len(names(spool / "done")) == delivered
    assert len([n for n in names(spool / "failed") if not n.endswith(".reason.json")]) == failed
    assert 5 <= failed <= 35  # 50 % ± a wide margin: both paths really taken


async def test_non_regular_entries_are_left_in_place(
    spool: Path, moto_s3: S3Target, caplog: pytest.LogCaptureFixture
) -> None:
    (spool / "incoming").mkdir(parents=True)
    os.symlink("/etc/passwd", spool / "incoming" / "link")
    os.mkfifo(spool / "incoming" / "fifo")
    (spool / "incoming" / "subdir").mkdir()
    (spool / "incoming" / "real").write_bytes(b"ok")
    async with running(settings_for(spool, moto_s3)):
        await wait_until(lambda: names(spool / "done") == {"real"})
        await asyncio.sleep(0.3)
    assert names(spool / "incoming") == {"link", "fifo", "subdir"}
    assert moto_s3.keys() == ["real"]
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len([w for w in warnings if "'link'" in w]) == 1
    assert any("fifo" in w for w in warnings)


async def test_same_name_again_while_first_in_flight(spool: Path, moto_s3: S3Target) -> None:
    """A second file of the same name never overwrites the first anywhere."""
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.latency_s = 0.5
        async with running(settings_for(spool, moto_s3.via(proxy.url))):
            drop(spool / "incoming", "dup", b"first")
            await asyncio.sleep(0.2)
            drop(spool / "incoming", "dup", b"second")
            await wait_until(lambda: len(names(spool / "done")) == 2, 20)
    contents = {(spool / "done" / n).read_bytes() for n in names(spool / "done")}
    assert contents == {b"first", b"second"}
    assert names(spool / "done") == {"dup", "dup~1"}


async def test_object_options_and_metadata(spool: Path, moto_s3: S3Target) -> None:
    (spool / "incoming").mkdir(parents=True)
    path = spool / "incoming" / "report.csv"
    path.write_bytes(b"a,b\n")
    os.utime(path, (1_600_000_000.25, 1_600_000_000.25))
    settings = settings_for(
        spool, moto_s3, acl="public-read", storage_class="STANDARD_IA", sse="AES256"
    )
    async with running(settings):
        drop(spool / "incoming", "notes.bin", b"\x00\x01")
        await wait_until(lambda: len(names(spool / "done")) == 2)
    head = moto_s3.head("report.csv")
    assert head["ContentType"] == "text/csv"
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["s3spool-mtime"] == "1600000000.250000"
    assert head["Metadata"]["s3spool-checksum"].startswith("crc32c:")
    grants = moto_s3.client().get_object_acl(Bucket=moto_s3.bucket, Key="report.csv")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") for g in grants)


async def test_content_type_setting_wins(spool: Path, moto_s3: S3Target) -> None:
    async with running(settings_for(spool, moto_s3, content_type="application/x-ndjson")):
        drop(spool / "incoming", "x.csv", b"{}")
        await wait_until(lambda: names(spool / "done") == {"x.csv"})
    assert moto_s3.head("x.csv")["ContentType"] == "application/x-ndjson"


@pytest.mark.parametrize("algorithm", ["crc32c", "crc32", "sha256", "md5", "none"])
async def test_checksum_algorithms(spool: Path, s3: S3Target, algorithm: str) -> None:
    small, big = os.urandom(3000), os.urandom(6 * MIB)
    settings = settings_for(
        spool, s3, checksum=algorithm, multipart_threshold=5 * MIB, part_size=5 * MIB
    )
    async with running(settings):
        drop(spool / "incoming", "small", small)
        drop(spool / "incoming", "big", big)
        await wait_until(lambda: names(spool / "done") == {"small", "big"}, 30)
    assert s3.get("small") == small
    assert s3.get("big") == big


async def test_checksum_compat_sends_only_content_md5(spool: Path, moto_s3: S3Target) -> None:
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        async with running(settings_for(spool, moto_s3.via(proxy.url), checksum_compat=True)):
            drop(spool / "incoming", "legacy", b"old store")
            await wait_until(lambda: names(spool / "done") == {"legacy"})
        headers = proxy.seen_headers
    put = [h for kind, h in headers if kind == "put_object"]
    assert put
    assert "content-md5" in put[0]
    assert not [k for k in put[0] if k.startswith("x-amz-checksum-")]


async def test_done_name_clash_same_file_is_replaced(spool: Path, moto_s3: S3Target) -> None:
    (spool / "done").mkdir(parents=True)
    (spool / "done" / "again").write_bytes(b"same bytes")
    async with running(settings_for(spool, moto_s3)):
        drop(spool / "incoming", "again", b"same bytes")
        await wait_until(lambda: moto_s3.keys() == ["again"])
        await asyncio.sleep(0.2)
    assert names(spool / "done") == {"again"}  # replaced, not suffixed


async def test_delete_after_counts_from_arrival_in_done(spool: Path, moto_s3: S3Target) -> None:
    (spool / "incoming").mkdir(parents=True)
    old = spool / "incoming" / "ancient"
    old.write_bytes(b"from 2001")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    settings = settings_for(spool, moto_s3, delete_after=2, cleanup_interval=0.2)
    async with running(settings):
        await wait_until(lambda: names(spool / "done") == {"ancient"})
        arrived = time.monotonic()
        await asyncio.sleep(1.0)
        # an mtime from 2001 must not make it expire at once
        assert names(spool / "done") == {"ancient"}
        await wait_until(lambda: names(spool / "done") == set(), 10, "expired from done/")
        assert time.monotonic() - arrived >= 1.9
    assert moto_s3.get("ancient") == b"from 2001"
