"""Self-tests for fwdproxy.ForwardProxy: plain HTTP and CONNECT through it, against rclone."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import EndpointConnectionError, SSLError
from yarl import URL

from fwdproxy import ForwardProxy, closed_port
from s3servers import RcloneServer, make_client, unique_bucket

MIB = 1 << 20


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


def s3_session(srv: RcloneServer, endpoint: str, **kw: Any) -> Any:
    return make_client(endpoint, srv.access_key, srv.secret_key, srv.region, attempts=1, **kw)


def exercise(client: Any) -> tuple[str, bytes, bytes]:
    """Create a bucket, PutObject 6 MiB, a 2-part multipart upload, list, get, head."""
    bucket = unique_bucket()
    client.create_bucket(Bucket=bucket)
    single, part1, part2 = os.urandom(6 * MIB), os.urandom(5 * MIB), os.urandom(MIB + 7)
    client.put_object(Bucket=bucket, Key="single", Body=single)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": client.upload_part(
                Bucket=bucket, Key="multi", UploadId=upload_id, PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in ((1, part1), (2, part2))
    ]
    client.complete_multipart_upload(
        Bucket=bucket, Key="multi", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    listed = client.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["multi", "single"]
    assert client.get_object(Bucket=bucket, Key="single")["Body"].read() == single
    assert client.head_object(Bucket=bucket, Key="multi")["ContentLength"] == 6 * MIB + 7
    return bucket, single, part1 + part2


def test_plain_http_goes_through_the_proxy(rclone_srv: RcloneServer, proxy: ForwardProxy) -> None:
    # Nothing listens on the endpoint's port: only the proxy knows where the store is.
    endpoint = proxy.endpoint_for(rclone_srv.url)
    client = s3_session(rclone_srv, endpoint, proxies={"http": proxy.url})
    bucket, _single, multi = exercise(client)

    # rclone checks SigV4, so success proves Host and every signed header arrived unchanged.
    assert (
        rclone_srv.new_target().client().get_object(Bucket=bucket, Key="multi")["Body"].read()
        == multi
    )
    # create bucket + PutObject + 2 parts; create + complete; list + get; head
    assert proxy.requests == Counter({"PUT": 4, "POST": 2, "GET": 2, "HEAD": 1})
    assert proxy.expect_continue >= 3  # botocore asks for 100-continue on big bodies
    assert proxy.tunnels == proxy.refused == proxy.upstream_errors == 0
    assert proxy.bytes_up >= 12 * MIB
    assert proxy.bytes_down >= 6 * MIB
    with pytest.raises(EndpointConnectionError):
        s3_session(rclone_srv, endpoint).list_buckets()  # without the proxy: refused


def test_https_goes_through_a_connect_tunnel(
    rclone_tls_srv: RcloneServer, proxy: ForwardProxy
) -> None:
    endpoint = proxy.endpoint_for(rclone_tls_srv.url)
    assert endpoint.startswith("https://127.0.0.1:")
    ca = rclone_tls_srv.ca_bundle
    client = s3_session(rclone_tls_srv, endpoint, proxies={"https": proxy.url}, ca_bundle=ca)
    exercise(client)

    assert proxy.tunnels >= 1
    assert proxy.requests == Counter()  # everything went inside the tunnels
    assert proxy.bytes_up >= 12 * MIB  # TLS records: a little more than the bodies
    with pytest.raises(EndpointConnectionError):
        s3_session(rclone_tls_srv, endpoint, ca_bundle=ca).list_buckets()
    # TLS is end to end: without the CA the client rejects rclone's certificate.
    with pytest.raises(SSLError):
        s3_session(rclone_tls_srv, endpoint, proxies={"https": proxy.url}).list_buckets()


def raw_exchange(proxy_url: str, request: bytes) -> bytes:
    host, port = proxy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_unrouted_targets_are_refused(proxy: ForwardProxy) -> None:
    port, sock = closed_port()
    with sock:
        got = raw_exchange(
            proxy.url, f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert got.startswith(b"HTTP/1.1 502 ")
        got = raw_exchange(proxy.url, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.1 502 ")
        # origin-form (a client that does not know it talks to a proxy) is no route either
        got = raw_exchange(proxy.url, b"GET /b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 502 ")
    assert proxy.refused == 3
    assert proxy.requests == Counter()


@pytest.mark.parametrize("upstream", ["10.0.0.1:80", "localhost:9000", "127.0.0.1"])
def test_routes_only_to_loopback(upstream: str) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:PORT"):
        ForwardProxy({"127.0.0.1:1": upstream})


# -- framing: chunked bodies, streaming, 100-continue, keep-alive, bodiless replies ----------


class Upstream:
    """An aiohttp origin server on the test's loop that reports what reached it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.first_bytes = asyncio.Event()

    async def echo(self, request: web.Request) -> web.StreamResponse:
        digest, size = hashlib.sha256(), 0
        async for piece in request.content.iter_any():
            self.first_bytes.set()
            digest.update(piece)
            size += len(piece)
        self.seen.append({"headers": dict(request.headers), "path": request.raw_path})
        # A chunked reply in several writes, so the proxy relays chunk framing back too.
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (str(size).encode(), b" ", digest.hexdigest().encode()):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def sized(self, request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 1000)  # HEAD gets Content-Length 1000 and no body


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    origin = Upstream()
    app = web.Application()
    app.router.add_post("/echo", origin.echo)
    app.router.add_get("/empty", origin.empty)
    app.router.add_get("/sized", origin.sized)  # aiohttp answers HEAD on GET routes
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield origin, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_chunked_streaming_continue_and_keepalive(
    upstream: tuple[Upstream, str], proxy: ForwardProxy
) -> None:
    origin, origin_url = upstream
    endpoint = proxy.endpoint_for(origin_url)
    pieces = [os.urandom(MIB) for _ in range(8)]

    async def body() -> AsyncIterator[bytes]:
        yield pieces[0]
        # The origin must see bytes while the client is still sending: a proxy that
        # buffered whole bodies would deadlock here.
        await asyncio.wait_for(origin.first_bytes.wait(), timeout=5)
        for piece in pieces[1:]:
            yield piece

    # Proxy credentials must not reach the origin. (aiohttp pools connections per proxy
    # header set, so every request carries the same ones.)
    via: dict[str, Any] = {
        "proxy": proxy.url,
        "proxy_headers": {"Proxy-Authorization": "Basic dXNlcjpwdw=="},
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(
            URL(f"{endpoint}/echo?x=1%2F2", encoded=True),  # sent exactly as written
            data=body(),  # an async generator is sent chunked
            **via,
            expect100=True,
        ) as resp:
            assert resp.status == 200
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            text = await resp.text()
        whole = b"".join(pieces)
        assert text == f"{len(whole)} {hashlib.sha256(whole).hexdigest()}"
        headers = origin.seen[0]["headers"]
        assert headers["Host"] == endpoint.removeprefix("http://")  # as the client sent it
        assert headers["Transfer-Encoding"] == "chunked"
        assert "Proxy-Authorization" not in headers
        assert "Expect" not in headers  # the proxy answered the 100-continue itself
        assert origin.seen[0]["path"] == "/echo?x=1%2F2"  # percent-encoding kept

        # Content-Length body, a 204 and a HEAD with Content-Length but no body, all on
        # the same client connection: each reply must have been framed exactly.
        async with session.post(f"{endpoint}/echo", data=b"abc", **via) as resp:
            assert await resp.text() == f"3 {hashlib.sha256(b'abc').hexdigest()}"
        async with session.get(f"{endpoint}/empty", **via) as resp:
            assert resp.status == 204
        async with session.head(f"{endpoint}/sized", **via) as resp:
            assert resp.headers["Content-Length"] == "1000"
        async with session.get(f"{endpoint}/sized", **via) as resp:
            assert await resp.read() == b"z" * 1000
    assert proxy.requests == Counter({"POST": 2, "GET": 2, "HEAD": 1})
    assert proxy.connections == 1
    assert proxy.expect_continue == 1
