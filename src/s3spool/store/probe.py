"""What only a write shows of a store, for ``s3spool check``: checksum echo, ETag forms,
conditional writes, AbortMultipartUpload.  It writes test objects under the prefix and
deletes them; the service itself never does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Protocol

from s3spool.errors import PermanentError, UploadError
from s3spool.spool.spool import Source
from s3spool.store.base import Delivery
from s3spool.store.digests import BodyDigest
from s3spool.store.multipart import Parts
from s3spool.store.s3errors import translate
from s3spool.store.sender import Body


class Writable(Parts, Protocol):
    """What the check needs beyond a multipart upload."""

    prefix: str

    async def send_put(
        self, src: Source, body: Body, digest: BodyDigest, payload: str | None
    ) -> Delivery: ...

    async def abort_upload(self, key: str, upload_id: str) -> None: ...


async def test_write(s3: Writable) -> str:
    """Write test objects under the prefix (``s3spool check``); returns the PUT's key.

    The PUT carries the same headers as a real upload (checksum, SSE, ACL,
    storage class) through the same sender, so a store or policy that would refuse
    uploads refuses this too.  On the way it learns what the store's answers allow
    (``facts``): checksum echo, ETag forms, whether If-None-Match is honoured.
    A failed DELETE raises ``PermanentError`` with reason ``test_object_left``:
    uploads need no s3:DeleteObject.
    """
    import secrets

    key = f"{s3.prefix}.s3spool-check-{secrets.token_hex(8)}"
    data = b"s3spool check: safe to delete\n"
    src = Source("check.txt", size=len(data), mtime_ns=time.time_ns(), key=key)
    left: list[str] = []
    try:
        await s3.send_put(src, data, s3.ck.body(data), None)
        left.append(key)
        await _learn_conditional(s3, src, data)
        mpu_key = key + "-multipart"
        left.append(mpu_key)
        await _learn_multipart(s3, src, mpu_key, data)
        created = await s3.client.create_multipart_upload(Bucket=s3.bucket, Key=mpu_key)
        await s3.abort_upload(mpu_key, created["UploadId"])
    finally:
        for name in left:
            try:
                await s3.client.delete_object(Bucket=s3.bucket, Key=name)
            except Exception as exc:
                err = translate(exc, f"DeleteObject {name!r}")
                raise PermanentError(
                    f"the test object {name!r} was left behind ({err}); remove it by hand",
                    reason="test_object_left",
                ) from None
    return key


async def _learn_conditional(s3: Writable, src: Source, data: bytes) -> None:
    params = {"Bucket": s3.bucket, "Key": src.key, "IfNoneMatch": "*"}
    params.update(s3.digest_params(s3.ck.body(data)))
    try:
        await s3.sender.send("PutObject", params, data)
        s3.verifier.facts.conditional_writes = False
    except UploadError as exc:
        if exc.reason == "not_implemented":
            s3.verifier.facts.conditional_writes = False
        elif exc.reason == "precondition_failed":
            s3.verifier.facts.conditional_writes = True
        else:
            raise


async def _learn_multipart(s3: Writable, src: Source, key: str, data: bytes) -> None:
    """A one-part multipart upload (a last part may be small): its ETag form."""
    s = dataclasses.replace(src, key=key, upload_id=None)
    try:
        created = await s3.client.create_multipart_upload(
            Bucket=s3.bucket,
            Key=key,
            **({"ChecksumAlgorithm": s3.ck.param} if s3.verifier.send_checksum else {}),
        )
        upload_id = created["UploadId"]
        digest = s3.ck.body(data)
        resp = await s3.sender.send(
            "UploadPart",
            {
                "Bucket": s3.bucket,
                "Key": key,
                "UploadId": upload_id,
                "PartNumber": 1,
                **s3.digest_params(digest),
            },
            data,
        )
        part = {"PartNumber": 1, "ETag": resp.get("ETag")}
        if s3.verifier.send_checksum and digest.checksum_b64:
            part[f"Checksum{s3.ck.param}"] = digest.checksum_b64
        done = await s3.client.complete_multipart_upload(
            Bucket=s3.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [part]}
        )
    except Exception as exc:
        raise translate(exc, "multipart test upload") from None
    fd = os.memfd_create("s3spool-check")
    try:
        os.write(fd, data)
        s.fd = fd
        await s3.verifier.whole_object(s, done, [digest], lambda: s3.head(key))
    finally:
        os.close(fd)
