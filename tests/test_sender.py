"""The signed sender is built from the botocore client's own parts, and signs as botocore does."""

from __future__ import annotations

import datetime
from typing import Any

import botocore.auth
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3spool.store import sigv4
from s3spool.store.bodies import FileRange
from s3spool.store.sender import SignedSender

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "token")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both signers at the same second (else a test straddling one would fail)."""
    now = datetime.datetime(2026, 12, 7, 23, 59, 59)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    monkeypatch.setattr(sigv4, "amz_date", lambda: now.strftime("%Y%m%dT%H%M%SZ"))


async def _sender(endpoint: str, **s3: Any) -> tuple[Any, SignedSender]:
    client = get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=AioConfig(s3={"addressing_style": "path", **s3}),
    )
    c = await client.__aenter__()
    sender = await SignedSender.for_client(c, "bkt")
    assert sender is not None
    return client, sender


async def test_uses_the_clients_own_session_and_credentials() -> None:
    # If aiobotocore moves these, the sender would silently lose the user's TLS and proxy
    # settings: fail here instead.
    client, sender = await _sender("https://127.0.0.1:1")
    try:
        c = client._client
        assert sender._http is c._endpoint.http_session
        assert sender._credentials is c._request_signer._credentials
        assert sender.base_url == "https://127.0.0.1:1/bkt"
    finally:
        await client.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("endpoint", "md5", "explicit", "expected"),
    [
        ("https://127.0.0.1:1", True, None, "UNSIGNED-PAYLOAD"),
        ("https://127.0.0.1:1", False, None, "sha256"),
        # the one deviation from botocore: a signed Content-MD5 covers the body on HTTP too
        ("http://127.0.0.1:1", True, None, "UNSIGNED-PAYLOAD"),
        ("http://127.0.0.1:1", False, None, "sha256"),
        ("http://127.0.0.1:1", True, True, "sha256"),
        ("https://127.0.0.1:1", False, False, "UNSIGNED-PAYLOAD"),
    ],
)
async def test_payload_signing(
    endpoint: str, md5: bool, explicit: bool | None, expected: str, clock: None
) -> None:
    s3 = {} if explicit is None else {"payload_signing_enabled": explicit}
    client, sender = await _sender(endpoint, **s3)
    try:
        params = {"Bucket": "bkt", "Key": "a b/c~d/%XX/日+", "Metadata": {"k": "v"}}
        if md5:
            params["ContentMD5"] = "XUFAKrxLKna5cZ2REBfFkg=="
        assert sender.needs_payload_hash(md5) == (expected == "sha256")
        url, headers = sender._signed("PutObject", params, b"hello", None, CREDS)
        got = headers["X-Amz-Content-SHA256"]
        if expected == "sha256":
            assert got == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        else:
            assert got == expected
        # the same request signed by botocore's own signer, with the same payload decision
        twin = AWSRequest(method="PUT", url=url, data=b"hello", headers=dict(headers))
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token"):
            del twin.headers[name]
        twin.context["client_config"] = AioConfig(
            s3={"payload_signing_enabled": got != "UNSIGNED-PAYLOAD"}
        )
        S3SigV4Auth(CREDS, "s3", "eu-west-1").add_auth(twin)
        assert twin.headers["Authorization"] == headers["Authorization"]
        assert url.endswith("/a%20b/c~d/%25XX/%E6%97%A5%2B")
    finally:
        await client.__aexit__(None, None, None)


async def test_streamed_body_needs_its_hash_where_signed() -> None:
    client, sender = await _sender("http://127.0.0.1:1")
    try:
        part = {"Bucket": "bkt", "Key": "k", "UploadId": "a+b==", "PartNumber": 3}
        with pytest.raises(ValueError, match="SHA-256"):
            sender._signed("UploadPart", part, FileRange(0, 0, 10), None, CREDS)
        url, headers = sender._signed("UploadPart", part, FileRange(0, 0, 10), "ab" * 32, CREDS)
        assert url.endswith("/bkt/k?partNumber=3&uploadId=a%2Bb%3D%3D")
        assert headers["X-Amz-Content-SHA256"] == "ab" * 32
    finally:
        await client.__aexit__(None, None, None)
