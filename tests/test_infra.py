"""Self-tests for the test infrastructure: servers, fault proxy, subprocess runner."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import signal
import socket
import ssl
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError, SSLError

from faultproxy import FaultProxy, classify
from proc import SpoolProc
from s3servers import JuiceFSServer, RcloneServer, S3Target, client_config, make_client
from tlsca import make_tls_files

# What a dropped connection looks like at a boto3 client.
CONNECTION_ERRORS = (HTTPClientError, EndpointConnectionError)


def no_retry_client(target: S3Target, url: str) -> Any:
    return make_client(url, target.access_key, target.secret_key, target.region, attempts=1)


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
def proxy(s3: S3Target) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint_url, seed=1) as p:
        yield p


@pytest.fixture
def moto_proxy(moto_s3: S3Target) -> Iterator[FaultProxy]:
    with FaultProxy(moto_s3.endpoint_url, seed=1) as p:
        yield p


# -- servers ------------------------------------------------------------------------------


def test_put_get_list_head(s3: S3Target) -> None:
    s3.put("a/one.txt", b"1")
    s3.put("a/sub dir/two+x.bin", b"\x00" * 1000)
    s3.put("b/three", b"")
    assert sorted(s3.keys()) == ["a/one.txt", "a/sub dir/two+x.bin", "b/three"]
    assert s3.keys("a/") == ["a/one.txt", "a/sub dir/two+x.bin"]
    assert s3.get("a/one.txt") == b"1"
    assert s3.get("b/three") == b""
    assert s3.head("a/sub dir/two+x.bin")["ContentLength"] == 1000


def test_env_describes_target(s3: S3Target) -> None:
    env = dataclasses.replace(s3, prefix="p/").env("in/")
    assert env["S3SPOOL_DESTINATION"] == f"s3://{s3.bucket}/p/in/"
    assert env["S3SPOOL_ENDPOINT_URL"] == s3.endpoint_url
    assert env["S3SPOOL_ADDRESSING_STYLE"] == "path"
    assert env["AWS_ACCESS_KEY_ID"] == s3.access_key
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"


def test_rclone_stop_start_same_port_keeps_data(rclone_private: RcloneServer) -> None:
    target = rclone_private.new_target()
    target.put("k", b"survives")
    url = rclone_private.url
    rclone_private.stop()
    with pytest.raises(EndpointConnectionError):
        no_retry_client(target, url).get_object(Bucket=target.bucket, Key="k")
    rclone_private.start()
    assert rclone_private.url == url
    assert target.get("k") == b"survives"


def tls_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> str:
    """Handshake over a socketpair, the server side in a thread; returns the TLS version."""

    def serve(sock: socket.socket) -> None:
        with contextlib.suppress(OSError), server_ctx.wrap_socket(sock, server_side=True):
            pass

    a, b = socket.socketpair()
    with a, b, ThreadPoolExecutor(1) as pool:
        pool.submit(serve, a)
        with client_ctx.wrap_socket(b, server_hostname=name) as tls:
            return str(tls.version())


def test_tls_files_verify_for_ip_and_localhost(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_pem, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_pem))
    assert tls_handshake(server_ctx, client_ctx, "127.0.0.1").startswith("TLSv1.")
    assert tls_handshake(server_ctx, client_ctx, "localhost").startswith("TLSv1.")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(server_ctx, client_ctx, "127.0.0.2")  # no such SAN
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(server_ctx, ssl.create_default_context(), "127.0.0.1")  # CA not trusted


def test_rclone_https_with_private_ca(rclone_tls_s3: S3Target) -> None:
    assert rclone_tls_s3.endpoint_url.startswith("https://127.0.0.1:")
    assert rclone_tls_s3.ca_bundle
    assert Path(rclone_tls_s3.ca_bundle).is_file()
    rclone_tls_s3.put("k", b"over tls")
    assert rclone_tls_s3.get("k") == b"over tls"
    # Untrusted without the CA; env() leaves the choice of CA setting to the test.
    with pytest.raises(SSLError):
        no_retry_client(rclone_tls_s3, rclone_tls_s3.endpoint_url).list_buckets()
    assert not [k for k in rclone_tls_s3.env() if "CA_BUNDLE" in k]


def test_juicefs_gateway_objects_multipart_and_quiet_process(
    juicefs_srv: JuiceFSServer, juicefs_s3: S3Target
) -> None:
    data = b"juice" * 1000
    juicefs_s3.put("a/b.txt", data)
    assert juicefs_s3.get("a/b.txt") == data
    assert juicefs_s3.keys() == ["a/b.txt"]
    assert juicefs_s3.head("a/b.txt")["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    c = juicefs_s3.client()
    upload_id = c.create_multipart_upload(Bucket=juicefs_s3.bucket, Key="m")["UploadId"]
    uploads = c.list_multipart_uploads(Bucket=juicefs_s3.bucket)["Uploads"]
    assert [u["UploadId"] for u in uploads] == [upload_id]
    parts = [
        {
            "PartNumber": n,
            "ETag": c.upload_part(
                Bucket=juicefs_s3.bucket, Key="m", UploadId=upload_id, PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in ((1, b"x" * (5 << 20)), (2, b"y"))
    ]
    done = c.complete_multipart_upload(
        Bucket=juicefs_s3.bucket, Key="m", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    assert done["ETag"].endswith('-2"')
    assert juicefs_s3.head("m")["ETag"] == done["ETag"]  # --keep-etag
    # The gateway runs with a scrubbed environment and no phoning home.
    assert juicefs_srv.proc is not None
    pid = juicefs_srv.proc.pid
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    assert not {n for n in names if "proxy" in n.lower() or n.startswith("AWS_")}
    # (juicefs rewrites its argv into one string, so search the raw bytes)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b" --no-usage-report " in cmdline
    assert b" --no-agent " in cmdline


# -- proxy: forwarding ----------------------------------------------------------------------


def test_proxy_forwards_signed_requests_and_counts_kinds(s3: S3Target, proxy: FaultProxy) -> None:
    # rclone checks SigV4, so success there proves Host, path and query arrive unchanged.
    via = s3.via(proxy.url)
    c = via.client()
    via.put("dir/odd key+%.txt", b"payload")
    assert via.get("dir/odd key+%.txt") == b"payload"
    assert via.head("dir/odd key+%.txt")["ContentLength"] == 7  # HEAD keeps Content-Length
    assert via.keys() == ["dir/odd key+%.txt"]
    mpu = c.create_multipart_upload(Bucket=s3.bucket, Key="big")
    part = c.upload_part(
        Bucket=s3.bucket, Key="big", UploadId=mpu["UploadId"], PartNumber=1, Body=b"x" * 100
    )
    c.complete_multipart_upload(
        Bucket=s3.bucket,
        Key="big",
        UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    other = c.create_multipart_upload(Bucket=s3.bucket, Key="gone")
    c.abort_multipart_upload(Bucket=s3.bucket, Key="gone", UploadId=other["UploadId"])
    c.delete_object(Bucket=s3.bucket, Key="dir/odd key+%.txt")
    assert s3.get("big") == b"x" * 100
    assert proxy.snapshot() == {
        "counts": {
            "put_object": 1,
            "get_object": 1,
            "head_object": 1,
            "list": 1,
            "create_mpu": 2,
            "upload_part": 1,
            "complete_mpu": 1,
            "abort_mpu": 1,
            "delete_object": 1,
        },
        "injected": {},
    }


def test_classify_edge_cases() -> None:
    assert classify("PUT", "/b/k", {}, {"x-amz-copy-source": "b/o"}) == "other"
    assert classify("PUT", "/b", {}, {}) == "other"  # create bucket
    assert classify("GET", "/b", {"list-type": "2"}, {}) == "list"
    assert classify("GET", "/b/k", {"uploadId": "u"}, {}) == "list_parts"


async def test_proxy_serves_async_client_on_running_loop(moto_s3: S3Target) -> None:
    # The proxy has its own loop/thread, so an async test's loop never has to serve it.
    with FaultProxy(moto_s3.endpoint_url) as p:
        async with get_session().create_client(
            "s3",
            endpoint_url=p.url,
            region_name=moto_s3.region,
            aws_access_key_id=moto_s3.access_key,
            aws_secret_access_key=moto_s3.secret_key,
            config=client_config(attempts=1),
        ) as c:
            await c.put_object(Bucket=moto_s3.bucket, Key="async", Body=b"ok")
        assert p.counts["put_object"] == 1
    assert moto_s3.get("async") == b"ok"


def test_latency_and_in_flight_tracking(moto_s3: S3Target, moto_proxy: FaultProxy) -> None:
    moto_proxy.latency_s = 0.3
    client = no_retry_client(moto_s3, moto_proxy.url)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=moto_s3.bucket, Key=f"k{i}"), range(4)))
    assert moto_proxy.max_in_flight == 4
    assert moto_proxy.in_flight == 0
    assert [n for _, n in moto_proxy.in_flight_samples][-1] == 0


# -- proxy: faults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("slowdown", 503, "SlowDown"), ("error500", 500, "InternalError")],
)
def test_error_faults_reach_client_as_s3_errors(
    moto_s3: S3Target, moto_proxy: FaultProxy, fault: str, status: int, code: str
) -> None:
    setattr(moto_proxy, fault, 1.0)
    with pytest.raises(ClientError) as info:
        no_retry_client(moto_s3, moto_proxy.url).put_object(
            Bucket=moto_s3.bucket, Key="k", Body=b"x"
        )
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert moto_proxy.injected[fault] == 1
    assert moto_proxy.counts["put_object"] == 0  # answered by the proxy, not forwarded
    assert moto_s3.keys() == []


def test_reset_fault_is_a_connection_error(moto_s3: S3Target, moto_proxy: FaultProxy) -> None:
    moto_proxy.reset = 1.0
    client = no_retry_client(moto_s3, moto_proxy.url)
    with pytest.raises(CONNECTION_ERRORS):
        client.put_object(Bucket=moto_s3.bucket, Key="k", Body=b"x" * 100_000)
    with pytest.raises(CONNECTION_ERRORS):
        client.head_object(Bucket=moto_s3.bucket, Key="k")
    assert moto_proxy.injected["reset"] == 2
    moto_proxy.reset = 0.0
    client.put_object(Bucket=moto_s3.bucket, Key="k", Body=b"x")


def test_down_flag_and_kind_filter(moto_s3: S3Target, moto_proxy: FaultProxy) -> None:
    client = no_retry_client(moto_s3, moto_proxy.url)
    moto_proxy.down = True
    with pytest.raises(CONNECTION_ERRORS):
        client.list_objects_v2(Bucket=moto_s3.bucket)
    moto_proxy.down = False
    moto_proxy.slowdown = 1.0
    moto_proxy.fault_kinds = frozenset({"put_object"})
    client.list_objects_v2(Bucket=moto_s3.bucket)  # not a faulted kind
    with pytest.raises(ClientError, match="SlowDown"):
        client.put_object(Bucket=moto_s3.bucket, Key="k", Body=b"x")
    assert moto_proxy.snapshot()["injected"] == {"down": 1, "slowdown": 1}


def test_fault_fraction_is_seeded(moto_s3: S3Target) -> None:
    def outcomes() -> list[bool]:
        with FaultProxy(moto_s3.endpoint_url, seed=7) as p:
            p.error500 = 0.5
            client = no_retry_client(moto_s3, p.url)
            results = []
            for _ in range(20):
                try:
                    client.head_bucket(Bucket=moto_s3.bucket)
                    results.append(True)
                except ClientError:
                    results.append(False)
            return results

    first = outcomes()
    assert 0 < sum(first) < 20
    assert outcomes() == first


def test_corrupt_body_rejected_by_rclone_md5(rclone_s3: S3Target) -> None:
    data = b"important bytes" * 100
    with FaultProxy(rclone_s3.endpoint_url) as p:
        client = no_retry_client(rclone_s3, p.url)
        p.corrupt_next(1)
        with pytest.raises(ClientError) as info:
            client.put_object(
                Bucket=rclone_s3.bucket, Key="k", Body=data, ContentMD5=content_md5(data)
            )
        assert info.value.response["Error"]["Code"] == "BadDigest"
        # Only the next request was corrupted.
        client.put_object(Bucket=rclone_s3.bucket, Key="k", Body=data, ContentMD5=content_md5(data))
        assert p.injected["corrupt"] == 1
    assert rclone_s3.get("k") == data


def test_corrupt_flips_exactly_one_byte(moto_s3: S3Target, moto_proxy: FaultProxy) -> None:
    # moto verifies no digests, so the corrupted body is stored and can be inspected.
    data = bytes(range(256)) * 4
    moto_proxy.corrupt_next(1, kinds=["put_object"])
    no_retry_client(moto_s3, moto_proxy.url).put_object(Bucket=moto_s3.bucket, Key="k", Body=data)
    stored = moto_s3.get("k")
    assert len(stored) == len(data)
    assert sum(a != b for a, b in zip(stored, data, strict=True)) == 1


def test_upstream_down_surfaces_as_connection_error(rclone_private: RcloneServer) -> None:
    target = rclone_private.new_target()
    with FaultProxy(rclone_private.url) as p:
        client = no_retry_client(target, p.url)
        rclone_private.stop()
        with pytest.raises(CONNECTION_ERRORS):
            client.put_object(Bucket=target.bucket, Key="k", Body=b"x")
        assert p.upstream_errors == 1
        rclone_private.start()
        client.put_object(Bucket=target.bucket, Key="k", Body=b"x")
    assert target.get("k") == b"x"


# -- subprocess runner ----------------------------------------------------------------------

FAKE_SERVICE = textwrap.dedent(
    """
    import os, signal, sys, time
    print("started", sys.argv[1:], os.environ.get("AWS_SESSION_TOKEN"), os.environ["MARK"])
    signal.signal(signal.SIGTERM, lambda *_: (print("bye"), sys.exit(3)))
    while True:
        time.sleep(0.05)
    """
)


def fake_spool_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SpoolProc:
    # A stand-in `s3spool` package in cwd; `python -m` resolves it before the real one.
    pkg = tmp_path / "s3spool"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_SERVICE)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "leaked")
    return SpoolProc(["--flag"], {"MARK": "m1"}, cwd=tmp_path)


def test_spoolproc_logs_signals_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_spool_proc(tmp_path, monkeypatch) as sp:
        m = sp.wait_for_log(r"started \['--flag'\] (\S+) (\S+)", timeout=10)
        assert m.groups() == ("None", "m1")  # inherited AWS_* dropped, env passed
        sp.signal(signal.SIGTERM)
        assert sp.wait(timeout=10) == 3
        assert "bye" in sp.log_text()
        with pytest.raises(AssertionError, match=r"exited with 3(.|\n)*bye"):
            sp.wait_for_log("never printed", timeout=5)


async def test_spoolproc_async_wait_and_kill_on_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_spool_proc(tmp_path, monkeypatch) as sp:
        mark = sp.mark()
        await sp.await_log("started", timeout=10, since=mark)
        with pytest.raises(AssertionError, match=r"0\.2s passed"):
            await sp.await_log("never printed", timeout=0.2)
    assert sp.proc.returncode == -signal.SIGKILL
