"""Self-tests for FaultProxy's store habits: whole-MD5 multipart ETags, stripped checksums,
501 NotImplemented, a denied prefix, failing chosen parts, and request byte accounting."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError

from faultproxy import FaultProxy, classify, strip_checksum_elements
from s3servers import S3Target, make_client

MIB = 1 << 20


@pytest.fixture
def moto_proxy(moto_s3: S3Target) -> Iterator[FaultProxy]:
    with FaultProxy(moto_s3.endpoint_url) as p:
        yield p


def client_via(target: S3Target, proxy: FaultProxy, attempts: int = 1) -> Any:
    return make_client(
        proxy.url, target.access_key, target.secret_key, target.region, attempts=attempts
    )


def error_of(info: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    resp = info.value.response
    return resp["ResponseMetadata"]["HTTPStatusCode"], resp["Error"]["Code"]


def multipart(c: Any, bucket: str, key: str, bodies: dict[int, bytes]) -> dict[str, Any]:
    """Upload the parts in the dict's order; Complete lists them by part number."""
    upload_id = c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = {
        n: c.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body)[
            "ETag"
        ]
        for n, body in bodies.items()
    }
    done: dict[str, Any] = c.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
    )
    return done


def test_classify_multipart_listings() -> None:
    assert classify("GET", "/b", {"uploads": ""}, {}) == "list_mpu"
    assert classify("GET", "/b/k", {"uploadId": "u"}, {}) == "list_parts"
    assert classify("DELETE", "/b/k", {"uploadId": "u"}, {}) == "abort_mpu"
    assert classify("GET", "/b", {"list-type": "2"}, {}) == "list"


# -- whole_md5_etag ----------------------------------------------------------------------


@pytest.mark.parametrize("server", ["moto_s3", "juicefs_s3"])
def test_whole_md5_etag(request: pytest.FixtureRequest, server: str) -> None:
    target: S3Target = request.getfixturevalue(server)
    first, second = os.urandom(5 * MIB), os.urandom(1000)
    whole = f'"{hashlib.md5(first + second).hexdigest()}"'
    with FaultProxy(target.endpoint_url) as proxy:
        c = client_via(target, proxy)
        # Off: the store's own multipart ETag, "<md5 of part md5s>-2".
        assert multipart(c, target.bucket, "plain", {1: first, 2: second})["ETag"].endswith('-2"')

        proxy.whole_md5_etag = True
        # Part 2 is sent first: the digest follows the part numbers Complete lists.
        done = multipart(c, target.bucket, "whole", {2: second, 1: first})
        assert done["ETag"] == whole
        assert done["ResponseMetadata"]["HTTPHeaders"].get("etag", whole) == whole
        assert c.head_object(Bucket=target.bucket, Key="whole")["ETag"] == whole
        assert c.get_object(Bucket=target.bucket, Key="whole")["ETag"] == whole
        assert c.head_object(Bucket=target.bucket, Key="plain")["ETag"].endswith('-2"')

        # A new object at the key replaces the remembered ETag with the store's own.
        c.put_object(Bucket=target.bucket, Key="whole", Body=b"small")
        small = f'"{hashlib.md5(b"small").hexdigest()}"'
        assert c.head_object(Bucket=target.bucket, Key="whole")["ETag"] == small
    assert target.get("whole") == b"small"


# -- strip_checksums ---------------------------------------------------------------------


def test_strip_checksum_elements_keeps_the_rest() -> None:
    xml = (
        b"<ListPartsResult><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Part><PartNumber>1"
        b"</PartNumber><ETag>&quot;e&quot;</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32>"
        b"<Size>3</Size></Part><ChecksumType>COMPOSITE</ChecksumType></ListPartsResult>"
    )
    assert strip_checksum_elements(xml) == (
        b"<ListPartsResult><Part><PartNumber>1</PartNumber><ETag>&quot;e&quot;</ETag>"
        b"<Size>3</Size></Part></ListPartsResult>"
    )


def test_strip_checksums(moto_s3: S3Target, moto_proxy: FaultProxy) -> None:
    c = client_via(moto_s3, moto_proxy)
    bucket = moto_s3.bucket

    def checksums(resp: dict[str, Any]) -> set[str]:
        headers = resp["ResponseMetadata"]["HTTPHeaders"]
        return {h for h in headers if h.startswith("x-amz-checksum-")}

    put = c.put_object(Bucket=bucket, Key="k", Body=b"abc", ChecksumAlgorithm="SHA256")
    assert checksums(put) == {"x-amz-checksum-sha256"}  # moto echoes it: the test can fail
    moto_proxy.strip_checksums = True
    put = c.put_object(Bucket=bucket, Key="k", Body=b"abc", ChecksumAlgorithm="SHA256")
    assert not checksums(put)
    assert "ETag" in put
    assert not checksums(c.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED"))
    attrs = c.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["Checksum", "ETag"])
    assert "ChecksumSHA256" not in attrs.get("Checksum", {})
    assert attrs["ETag"]
    moto_proxy.strip_checksums = False
    attrs = c.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["Checksum"])
    assert "ChecksumSHA256" in attrs["Checksum"]


# -- not_implemented, deny_prefix ----------------------------------------------------------


def test_not_implemented_kinds(moto_s3: S3Target, moto_proxy: FaultProxy) -> None:
    c = client_via(moto_s3, moto_proxy)
    bucket = moto_s3.bucket
    upload_id = c.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    moto_proxy.not_implemented = {"list_mpu", "list_parts", "abort_mpu"}
    calls: list[Callable[[], Any]] = [
        lambda: c.list_multipart_uploads(Bucket=bucket),
        lambda: c.list_parts(Bucket=bucket, Key="m", UploadId=upload_id),
        lambda: c.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id),
    ]
    for call in calls:
        with pytest.raises(ClientError) as info:
            call()
        assert error_of(info) == (501, "NotImplemented")
    c.put_object(Bucket=bucket, Key="other", Body=b"x")  # other kinds still pass
    snap = moto_proxy.snapshot()
    assert snap["injected"] == {"not_implemented": 3}
    assert not {"list_mpu", "list_parts", "abort_mpu"} & set(snap["counts"])  # not forwarded
    moto_proxy.not_implemented = set()
    assert [u["UploadId"] for u in c.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [
        upload_id
    ]


def test_deny_prefix(rclone_s3: S3Target) -> None:
    with FaultProxy(rclone_s3.endpoint_url) as proxy:
        c = client_via(rclone_s3, proxy)
        bucket = rclone_s3.bucket
        rclone_s3.put("secret/old", b"there before")
        proxy.deny_prefix = "secret/"
        with pytest.raises(ClientError) as info:
            c.put_object(Bucket=bucket, Key="secret/a b", Body=b"x" * 1000)  # sent as a%20b
        assert error_of(info) == (403, "AccessDenied")
        with pytest.raises(ClientError) as info:
            c.head_object(Bucket=bucket, Key="secret/old")
        assert error_of(info) == (403, "403")  # HEAD: status only, no XML body
        with pytest.raises(ClientError) as info:
            c.get_object(Bucket=bucket, Key="secret/old")
        assert error_of(info) == (403, "AccessDenied")
        c.put_object(Bucket=bucket, Key="secretive", Body=b"ok")  # not under "secret/"
        c.put_object(Bucket=bucket, Key="public/secret/x", Body=b"ok")
        assert sorted(k["Key"] for k in c.list_objects_v2(Bucket=bucket)["Contents"]) == [
            "public/secret/x",
            "secret/old",
            "secretive",
        ]
        assert proxy.injected["access_denied"] == 3
        assert proxy.bytes_in["put_object"] == 1000 + 2 + 2  # denied bodies count too


# -- fail_parts, bytes_in -------------------------------------------------------------------


def test_fail_parts_and_bytes_in(rclone_s3: S3Target) -> None:
    part1, part2 = os.urandom(5 * MIB), os.urandom(MIB)
    with FaultProxy(rclone_s3.endpoint_url) as proxy:
        proxy.fail_parts = {2: 2}
        once = client_via(rclone_s3, proxy)
        bucket = rclone_s3.bucket
        upload_id = once.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]

        def upload(c: Any, n: int, body: bytes) -> str:
            resp = c.upload_part(
                Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=n, Body=body
            )
            return str(resp["ETag"])

        etag1 = upload(once, 1, part1)  # not a chosen part number
        with pytest.raises(ClientError) as info:
            upload(once, 2, part2)
        assert error_of(info) == (500, "InternalError")
        # botocore retries a 500 by itself: one more failure, then the real upload.
        etag2 = upload(client_via(rclone_s3, proxy, attempts=3), 2, part2)
        once.complete_multipart_upload(
            Bucket=bucket,
            Key="m",
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": etag1}, {"PartNumber": 2, "ETag": etag2}]
            },
        )
        assert proxy.fail_parts == {2: 0}
        assert proxy.injected["fail_part"] == 2
        assert proxy.counts["upload_part"] == 2  # only the two successful ones forwarded
        # Every copy of part 2 was received in full, even the failed ones.
        assert proxy.bytes_in["upload_part"] == len(part1) + 3 * len(part2)
        assert proxy.bytes_in["upload_part"] > 1.25 * (len(part1) + len(part2))
    assert rclone_s3.get("m") == part1 + part2


def test_bytes_in_counts_faulted_bodies_but_not_resets(
    moto_s3: S3Target, moto_proxy: FaultProxy
) -> None:
    c = client_via(moto_s3, moto_proxy)
    body = b"b" * 100_000
    moto_proxy.error500 = 1.0
    with pytest.raises(ClientError):
        c.put_object(Bucket=moto_s3.bucket, Key="k", Body=body)
    moto_proxy.error500 = 0.0
    moto_proxy.reset = 1.0  # cut before the body is read: nothing counted
    with pytest.raises((HTTPClientError, EndpointConnectionError)):
        c.put_object(Bucket=moto_s3.bucket, Key="k", Body=body)
    moto_proxy.reset = 0.0
    c.put_object(Bucket=moto_s3.bucket, Key="k", Body=body)
    c.get_object(Bucket=moto_s3.bucket, Key="k")["Body"].read()
    assert moto_proxy.bytes_in == {"put_object": 2 * len(body), "get_object": 0}
    moto_proxy.clear_counters()
    assert moto_proxy.bytes_in == {}
