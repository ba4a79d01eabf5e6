"""Every store, every network: the main cases on each real server and network path, and the
store habits of the field emulated by the fault proxy (each row of the stores issue's table).

End-to-end cases run the real ``s3spool run --once`` process: a few small files, odd names and
one multipart file, then every object is read back and compared byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from faultproxy import FaultProxy
from fwdproxy import ForwardProxy
from proc import SpoolProc, cli
from s3servers import RcloneServer, S3Target, free_port
from s3spool.spool.keys import encode_name
from s3spool.store.s3 import MAX_OBJECT_SIZE
from svc import drop, names, running, settings_for, wait_until

MIB = 1024 * 1024
MULTIPART = {"S3SPOOL_MULTIPART_THRESHOLD": "5MiB", "S3SPOOL_PART_SIZE": "5MiB"}
ODD_NAMES = ["a b.txt", "ünï cødé.log", "100%+plus~tilde.dat", "semi;colon=eq&amp.csv"]


def backlog(incoming: Path) -> dict[str, bytes]:
    """Small files, odd names and one 11 MiB file (3 parts of 5 MiB), written in place."""
    incoming.mkdir(parents=True, exist_ok=True)
    files = {f"small-{i}.bin": os.urandom(100 + 997 * i) for i in range(6)}
    files.update({name: name.encode() * 50 for name in ODD_NAMES})
    files["big.bin"] = os.urandom(11 * MIB)
    for name, data in files.items():
        (incoming / name).write_bytes(data)
    return files


def drain(
    target: S3Target, spool: Path, env: dict[str, str], reader: S3Target | None = None
) -> dict[str, bytes]:
    """``run --once`` over a fresh backlog; asserts exit 0 and every object's bytes.

    ``reader``: where the test reads the objects back, when s3spool's endpoint is not
    reachable directly (a proxy's closed port).
    """
    files = backlog(spool / "incoming")
    r = cli(
        ["run", "--once"],
        {**target.env(), "S3SPOOL_SPOOL_DIRS": str(spool), **MULTIPART, **env},
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert names(spool / "done") == set(files), r.stderr
    for name, data in files.items():
        assert (reader or target).get(encode_name(os.fsencode(name))) == data, name
    return files


# --- the main cases on every server and network path ---------------------------------------


@pytest.mark.parametrize("server", ["moto", "rclone", "juicefs"])
def test_end_to_end_on_each_server(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target: S3Target = request.getfixturevalue(f"{server}_s3")
    drain(target, tmp_path / "spool", {})


@pytest.mark.parametrize(
    "trust",
    [
        lambda ca: {"AWS_CA_BUNDLE": ca},
        lambda ca: {"S3SPOOL_CA_BUNDLE": ca},
        lambda ca: {"S3SPOOL_VERIFY_SSL": "false"},
    ],
    ids=["AWS_CA_BUNDLE", "CA_BUNDLE", "no-verify-ssl"],
)
def test_https_with_a_private_ca(
    trust: Callable[[str], dict[str, str]], rclone_tls_s3: S3Target, tmp_path: Path
) -> None:
    assert rclone_tls_s3.endpoint_url.startswith("https://")
    assert rclone_tls_s3.ca_bundle is not None
    drain(rclone_tls_s3, tmp_path / "spool", trust(rclone_tls_s3.ca_bundle))


def test_plain_http_reads_no_ca_bundle(rclone_s3: S3Target, tmp_path: Path) -> None:
    # No TLS, nothing to verify: the bundle botocore would load before the first request
    # (this one is missing, which would make every upload fail) is never read.
    assert rclone_s3.endpoint_url.startswith("http://")
    drain(rclone_s3, tmp_path / "spool", {"AWS_CA_BUNDLE": str(tmp_path / "missing.pem")})


@pytest.mark.parametrize("server", ["rclone_s3", "rclone_tls_s3"])
def test_a_session_token_is_signed(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # rclone checks every signature: the signed sender's, with X-Amz-Security-Token among
    # the signed headers, over HTTP (signed payload or Content-MD5) and HTTPS
    target: S3Target = request.getfixturevalue(server)
    env = {"AWS_SESSION_TOKEN": "FwoGZX+IvYXdz/EJr//token=="}
    if target.ca_bundle is not None:
        env["AWS_CA_BUNDLE"] = target.ca_bundle
    drain(target, tmp_path / "spool", env)


def test_untrusted_certificate_is_a_store_fault_and_loses_nothing(
    rclone_tls_s3: S3Target, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    files = backlog(spool / "incoming")
    r = cli(["run", "--once"], {**rclone_tls_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool)})
    assert r.returncode == 3, r.stderr
    assert "certificate" in r.stderr.lower(), r.stderr
    assert names(spool / "incoming") == set(files)
    assert rclone_tls_s3.keys() == []


def test_a_bad_ca_bundle_setting_is_named(rclone_tls_s3: S3Target, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    env = {**rclone_tls_s3.env(), "S3SPOOL_SPOOL_DIRS": str(tmp_path / "spool")}
    r = cli(["run", "--once"], {**env, "S3SPOOL_CA_BUNDLE": str(not_pem)})
    assert r.returncode == 78, r.stderr
    assert "CA_BUNDLE" in r.stderr, r.stderr
    assert "no PEM certificate" in r.stderr, r.stderr


@pytest.mark.parametrize(("content", "says"), [(None, "cannot read"), ("hello", "no PEM")])
def test_a_bad_aws_ca_bundle_is_named(
    content: str | None, says: str, rclone_tls_s3: S3Target, tmp_path: Path
) -> None:
    # botocore's own chain (AWS_CA_BUNDLE, the profile's ca_bundle) would fail only at the
    # first request, with "No such file or directory" and no name
    bundle = tmp_path / "corp-ca.pem"
    if content is not None:
        bundle.write_text(content)
    spool = tmp_path / "spool"
    files = backlog(spool / "incoming")
    env = {**rclone_tls_s3.env(), "S3SPOOL_SPOOL_DIRS": str(spool), "AWS_CA_BUNDLE": str(bundle)}
    r = cli(["run", "--once"], env)
    assert r.returncode == 78, r.stderr
    for named in ("AWS_CA_BUNDLE", str(bundle), says):
        assert named in r.stderr, r.stderr
    assert names(spool / "incoming") == set(files)
    assert rclone_tls_s3.keys() == []


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as fwd:
        yield fwd


def test_every_request_passes_through_an_http_proxy(
    proxy: ForwardProxy, rclone_s3: S3Target, tmp_path: Path
) -> None:
    # The endpoint's port is closed: only the proxy knows where the store really is, so a
    # request that bypassed the proxy would fail.
    via = rclone_s3.via(proxy.endpoint_for(rclone_s3.endpoint_url))
    env = {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
    files = drain(via, tmp_path / "spool", env, reader=rclone_s3)
    snap = proxy.snapshot()
    requests = snap["requests"]
    assert isinstance(requests, dict)
    # every object body: one PUT per small file, one per part of the big one
    assert requests.get("PUT", 0) >= len(files) - 1 + 3, snap
    assert snap["refused"] == 0, snap


def test_every_request_passes_through_an_https_proxy_tunnel(
    proxy: ForwardProxy, rclone_tls_s3: S3Target, tmp_path: Path
) -> None:
    via = rclone_tls_s3.via(proxy.endpoint_for(rclone_tls_s3.endpoint_url))
    assert rclone_tls_s3.ca_bundle is not None
    env = {
        "HTTPS_PROXY": proxy.url,
        "https_proxy": proxy.url,
        "NO_PROXY": "",
        "no_proxy": "",
        "AWS_CA_BUNDLE": rclone_tls_s3.ca_bundle,
    }
    drain(via, tmp_path / "spool", env, reader=rclone_tls_s3)
    snap = proxy.snapshot()
    tunnels = snap["tunnels"]
    assert isinstance(tunnels, int)
    assert tunnels >= 1, snap
    assert snap["refused"] == 0, snap


# --- store habits, each a row of the table -----------------------------------------


def test_denied_prefix_fails_those_files_and_delivers_the_rest(
    moto_s3: S3Target, tmp_path: Path
) -> None:
    allowed, denied = tmp_path / "allowed", tmp_path / "denied"
    ok = {f"ok-{i}": os.urandom(500) for i in range(8)}
    no = {f"no-{i}": os.urandom(500) for i in range(8)}
    for spool, files in ((allowed, ok), (denied, no)):
        (spool / "incoming").mkdir(parents=True)
        for name, data in files.items():
            (spool / "incoming" / name).write_bytes(data)
    with FaultProxy(moto_s3.endpoint_url) as fp:
        # a prefix policy (or a KMS grant) on one spool's keys: {spool_dir} is its path
        fp.deny_prefix = str(denied).strip("/") + "/"
        env = {
            **moto_s3.via(fp.url).env(),
            "S3SPOOL_SPOOL_DIRS": f"{allowed},{denied}",
            "S3SPOOL_KEY_FORMAT": "{spool_dir}/{fname}",
        }
        r = cli(["run", "--once"], env)
    assert r.returncode == 1, r.stderr  # files failed; not 3: the store is fine
    assert "paused" not in r.stderr, r.stderr
    assert names(allowed / "done") == set(ok)
    assert names(allowed / "incoming") == set()
    for name, data in ok.items():
        assert moto_s3.get(f"{str(allowed).strip('/')}/{name}") == data
    assert names(denied / "failed") == set(no) | {f"{n}.reason.json" for n in no}
    reason = json.loads((denied / "failed" / "no-0.reason.json").read_text())
    assert reason["reason"] == "AccessDenied", reason
    assert "AccessDenied" in reason["error"], reason


def test_bucket_in_another_region_is_followed(moto_s3: S3Target, spool: Path) -> None:
    with FaultProxy(moto_s3.endpoint_url) as fp:
        fp.bucket_region = "eu-west-1"  # REGION says us-east-1 (target.env())
        files = backlog(spool / "incoming")
        r = cli(
            ["run", "--once"],
            {
                **moto_s3.via(fp.url).env(),
                "S3SPOOL_SPOOL_DIRS": str(spool),
                "S3SPOOL_WORKERS": "4",
                **MULTIPART,
            },
        )
        wrong = fp.snapshot()["injected"].get("wrong_region", 0)
    assert r.returncode == 0, r.stderr
    assert names(spool / "done") == set(files)
    assert "bucket answers from region eu-west-1" in r.stderr, r.stderr
    # botocore learns the region from the first answer (the startup probe); bodies already in
    # flight when the sender hears of it are refused once each, then none
    assert 1 <= wrong <= 1 + 4 * 2, wrong


def test_whole_object_md5_multipart_etag_is_accepted(moto_s3: S3Target, spool: Path) -> None:
    data = os.urandom(11 * MIB)
    (spool / "incoming").mkdir(parents=True)
    (spool / "incoming" / "big").write_bytes(data)
    with FaultProxy(moto_s3.endpoint_url) as fp:
        fp.whole_md5_etag = True
        r = cli(
            ["run", "--once"],
            {**moto_s3.via(fp.url).env(), "S3SPOOL_SPOOL_DIRS": str(spool), **MULTIPART},
        )
        counts = fp.snapshot()["counts"]
        seen = moto_s3.via(fp.url).head("big")["ETag"]  # what a client of that store sees
    assert r.returncode == 0, r.stderr
    assert names(spool / "done") == {"big"}
    assert counts.get("complete_mpu") == 1, counts  # accepted at once, never re-uploaded
    assert counts.get("upload_part") == 3, counts
    assert seen.strip('"') == hashlib.md5(data).hexdigest()
    assert moto_s3.get("big") == data


def test_no_checksum_echo_still_delivers(moto_s3: S3Target, spool: Path) -> None:
    with FaultProxy(moto_s3.endpoint_url) as fp:
        fp.strip_checksums = True
        files = backlog(spool / "incoming")
        r = cli(
            ["run", "--once"],
            {**moto_s3.via(fp.url).env(), "S3SPOOL_SPOOL_DIRS": str(spool), **MULTIPART},
        )
    assert r.returncode == 0, r.stderr
    assert names(spool / "done") == set(files)


def test_part_errors_retry_only_those_parts(rclone_s3: S3Target, spool: Path) -> None:
    size = 256 * MIB
    (spool / "incoming").mkdir(parents=True)
    digest = hashlib.md5()
    with open(spool / "incoming" / "huge", "wb") as fh:
        for _ in range(size // (16 * MIB)):
            chunk = os.urandom(16 * MIB)
            digest.update(chunk)
            fh.write(chunk)
    with FaultProxy(rclone_s3.endpoint_url) as fp:
        fp.fail_parts = {2: 1, 5: 1}  # a transient 500 on two parts, once each
        r = cli(
            ["run", "--once"],
            {**rclone_s3.via(fp.url).env(), "S3SPOOL_SPOOL_DIRS": str(spool)},
            timeout=240,
        )
        sent = fp.snapshot()
        part_bytes = fp.bytes_in["upload_part"]  # the proxy is idle now: no race
    assert r.returncode == 0, r.stderr
    assert names(spool / "done") == {"huge"}
    assert sent["counts"].get("upload_part") == 16, sent  # forwarded: each part once
    assert sent["injected"].get("fail_part") == 2, sent  # ... after two answered 500
    assert part_bytes < 1.25 * size, (part_bytes, sent)
    got = rclone_s3.client().get_object(Bucket=rclone_s3.bucket, Key="huge")["Body"]
    stored = hashlib.md5()
    for chunk in iter(lambda: got.read(8 * MIB), b""):
        stored.update(chunk)
    assert stored.hexdigest() == digest.hexdigest()


def test_kill_during_multipart_resumes_from_stored_parts(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    data = os.urandom(60 * MIB)  # 12 parts of 5 MiB
    (spool / "incoming" / "big").write_bytes(data)
    with FaultProxy(rclone_s3.endpoint_url) as fp:
        fp.latency_s = 0.25
        fp.fault_kinds = frozenset({"upload_part"})
        env = {
            **rclone_s3.via(fp.url).env(),
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_PART_CONCURRENCY": "1",
            **MULTIPART,
        }
        with SpoolProc(["run"], env, cwd=tmp_path) as first:
            first.wait_until(lambda: fp.snapshot()["counts"].get("upload_part", 0) >= 6, 60)
            first.kill()  # SIGKILL: no abort, no cleanup
        before = fp.snapshot()["counts"].get("upload_part", 0)
        fp.latency_s = 0.0
        # the part size recorded with the upload is kept, whatever PART_SIZE says now
        env["S3SPOOL_PART_SIZE"] = "6MiB"
        with SpoolProc(["run"], env, cwd=tmp_path) as second:
            second.wait_for_log(r"resuming multipart upload of 'big'", 30)
            second.wait_until(lambda: names(spool / "done") == {"big"}, 60)
        counts = fp.snapshot()["counts"]
    assert counts.get("list_parts", 0) >= 1, counts
    assert counts.get("create_mpu") == 1, counts  # the same upload, continued
    assert counts.get("abort_mpu", 0) == 0, counts
    # at most the part in flight at the kill is sent twice
    assert counts["upload_part"] <= 12 + 1, (before, counts)
    assert rclone_s3.get("big") == data
    meta = {k.lower(): v for k, v in rclone_s3.head("big")["Metadata"].items()}  # rclone: Title
    assert meta["s3spool-part-size"] == str(5 * MIB)


def test_a_file_larger_than_s3_takes_fails_before_any_request(moto_s3: S3Target) -> None:
    """One byte over 10,000 parts of 5 GiB: failed/ with reason too_large, no request for it,
    the file never read (sparse, on tmpfs: ext4 stops at 16 TiB; a read would hit the timeout)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm (tmpfs) for a sparse file of 53.7 TB")
    root = Path(tempfile.mkdtemp(prefix="s3spool-huge-", dir="/dev/shm"))
    try:
        (root / "incoming").mkdir()
        try:
            with open(root / "incoming" / "huge", "wb") as fh:
                fh.truncate(MAX_OBJECT_SIZE + 1)
        except OSError as exc:
            pytest.skip(f"/dev/shm takes no sparse file of 53.7 TB: {exc}")
        (root / "incoming" / "small").write_bytes(b"small")
        with FaultProxy(moto_s3.endpoint_url) as fp:
            env = {**moto_s3.via(fp.url).env(), "S3SPOOL_SPOOL_DIRS": str(root)}
            r = cli(["run", "--once"], env, timeout=60)
            counts = fp.snapshot()["counts"]
        assert r.returncode == 1, r  # a file failed
        reason = json.loads((root / "failed" / "huge.reason.json").read_text())
        assert reason["reason"] == "too_large", reason
        assert f"{MAX_OBJECT_SIZE + 1} bytes, more than S3 takes" in reason["error"], reason
        assert (root / "failed" / "huge").stat().st_size == MAX_OBJECT_SIZE + 1
        assert "create_mpu" not in counts, counts
        assert counts.get("put_object") == 1, counts  # the small file's
        assert moto_s3.keys() == ["small"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_idle_store_outage_makes_readyz_unready(
    rclone_private: RcloneServer, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = rclone_private.new_target()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", target.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", target.secret_key)
    port = free_port()
    settings = settings_for(spool, target, probe_interval=0.3, http_addr=f"127.0.0.1:{port}")
    async with running(settings) as svc, aiohttp.ClientSession() as http:

        async def ready() -> int:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status

        async def store_up() -> str:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            return next(ln for ln in text.splitlines() if ln.startswith("s3spool_store_up "))

        await wait_until(lambda: svc.ready, 10)
        for _ in range(100):  # the HTTP server binds in its own task: wait until it answers
            try:
                assert await ready() == 200
                break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("/readyz never answered")
        rclone_private.stop()  # no file arrives: only the idle probe can notice
        await wait_until(lambda: not svc.routes[0].gate.is_set(), 10, "the idle probe notices")
        assert await ready() == 503
        assert await store_up() == "s3spool_store_up 0.0"
        rclone_private.start()
        await wait_until(lambda: svc.routes[0].gate.is_set(), 20, "resumed after the outage")
        assert await ready() == 200
        assert await store_up() == "s3spool_store_up 1.0"
        drop(spool / "incoming", "after", b"still works")
        await wait_until(lambda: names(spool / "done") == {"after"}, 20)


async def test_missing_multipart_apis_warn_once(
    moto_s3: S3Target, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="s3spool")
    with FaultProxy(moto_s3.endpoint_url) as fp:
        fp.not_implemented = {"list_mpu", "abort_mpu"}
        settings = settings_for(
            spool, moto_s3.via(fp.url), cleanup_interval=0.1, abort_multipart_after=0.2
        )
        async with running(settings):
            await asyncio.sleep(2.0)  # twenty cleanup cycles, several sweeps
        list_calls = fp.snapshot()["injected"].get("not_implemented", 0)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "ListMultipartUploads" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "not support" in warnings[0]
    assert list_calls == 1  # asked once at startup, never again
