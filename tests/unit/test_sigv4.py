"""The lean signer equals botocore's ``S3SigV4Auth``: hundreds of generated requests, each
signed by the sender and by botocore at the same second, must carry the same headers."""

from __future__ import annotations

import datetime
import hashlib
import random
from typing import Any

import botocore.auth
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3spool.store import sigv4
from s3spool.store.sender import SignedSender

#: across a day (and a year) boundary, so a cached signing key must follow the day
TIMES = [
    datetime.datetime(2026, 12, 31, 23, 59, 59),
    datetime.datetime(2027, 1, 1, 0, 0, 0),
    datetime.datetime(2024, 2, 29, 12, 30, 1),
]
CREDS = [
    Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZX+IvYXdz/EJr=="),
    Credentials("ASIA2", "another/secret+key", " a  session\ttoken "),
    Credentials("AKID3", "s3cr3t", ""),  # an empty token is no token, to botocore too
]
#: pieces of keys, upload ids and header values: everything URL- or header-encoding can trip on
ODD = ["a", "Z9", "%", "%2F", "+", " ", "  ", "~", "=", "&", "?", "#", ";", "*", "'", "(", ")"]
ODD += ["日本", "é", "ß", "\u00a0", "/", "//", ".", "..", "-_.", "!", "$", ",", ":", "@", "\t"]
ODD += ["{", "}", "{0}", "\n"]
SIGNER_HEADERS = {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}
#: endpoint, addressing style, region, bucket, payload_signing_enabled
CLIENTS = [
    ("http://127.0.0.1:9000", "path", "us-east-1", "bkt", None),
    ("https://127.0.0.1:443", "path", "eu-west-1", "bkt", None),  # the default port is dropped
    ("http://LOCALHOST:8080/some/prefix", "path", "eu-west-1", "b-1", None),
    ("https://[::1]:9443", "path", "ap-south-1", "bkt", None),
    ("https://s3.example.com", "virtual", "eu-central-1", "bkt", None),
    (None, "virtual", "eu-central-1", "my-bucket", None),  # AWS itself
    ("https://127.0.0.1:9443", "path", "us-west-2", "bkt", True),
    ("http://127.0.0.1:9000", "path", "us-west-2", "bkt", False),
]


def _odd(rng: random.Random, most: int = 6) -> str:
    return "".join(rng.choice(ODD) for _ in range(rng.randint(0, most)))


def _params(rng: random.Random) -> dict[str, Any]:
    p: dict[str, Any] = {"Bucket": "bkt", "Key": rng.choice(["", "/", "a/"]) + _odd(rng, 10)}
    if rng.random() < 0.3:
        p["Key"] += "/"
    options = {
        "ContentType": ["application/octet-stream", "text/plain; charset=utf-8"],
        "ContentMD5": ["XUFAKrxLKna5cZ2REBfFkg==", "1B2M2Y8AsgTpgAmY7PhCfg=="],
        "ACL": ["private", "bucket-owner-full-control"],
        "StorageClass": ["STANDARD_IA", "GLACIER_IR"],
        "ServerSideEncryption": ["AES256", "aws:kms"],
        "SSEKMSKeyId": ["arn:aws:kms:eu-west-1:123:key/abc-def"],
        "IfNoneMatch": ["*"],
        "Tagging": ["a=b&c=d%20e", "k%C3%A9=v%2Bw", ""],
        "CacheControl": ["max-age=60,  public", "  no-cache  "],
        "ContentDisposition": [
            'attachment; filename="日本 語.txt"',
            "attachment; filename*=UTF-8''%E6%97%A5.txt",
            'inline;  filename=" a  b "',
        ],
        "ContentEncoding": ["zstd", "gzip"],
        "ChecksumCRC32C": ["yZRlqg=="],
        "ChecksumCRC32": ["NSRBwg=="],
        "ChecksumSHA256": ["LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564="],
        "ChecksumSHA1": ["qvTGHdzF6KLavt4PO0gs2a6pQ00="],
    }
    for name, values in options.items():
        if rng.random() < 0.35:
            p[name] = rng.choice(values)
    if rng.random() < 0.7:
        meta = {"s3spool-checksum": "crc32c:yZRlqg==", "name": _odd(rng)}
        for _ in range(rng.randint(0, 3)):
            name = rng.choice(["k", "x", "long-name", "é", "{0}", "a}b{"]) + str(rng.randint(0, 9))
            meta[name] = _odd(rng)
        if rng.random() < 0.1:  # names equal but for case: a shape only botocore signs
            meta["Dup"], meta["dup"] = "1", "2"
        p["Metadata"] = meta
    return p


@pytest.mark.parametrize(("endpoint", "style", "region", "bucket", "explicit"), CLIENTS)
async def test_signs_as_botocore_does(
    endpoint: str | None,
    style: str,
    region: str,
    bucket: str,
    explicit: bool | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3: dict[str, Any] = {"addressing_style": style}
    if explicit is not None:
        s3["payload_signing_enabled"] = explicit
    ctx = get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=AioConfig(s3=s3),
    )
    client = await ctx.__aenter__()
    try:
        sender = await SignedSender.for_client(client, bucket)
        assert sender is not None
        rng = random.Random(f"{endpoint} {style} {explicit}")  # deterministic per client
        lean = 0
        signed: list[bool] = []  # what sigv4.sign answered: True signed lean, False botocore
        real_sign = sigv4.sign
        monkeypatch.setattr(sigv4, "sign", lambda *a: signed.append(real_sign(*a)) or signed[-1])
        for i in range(100):
            now = TIMES[i % len(TIMES)]
            monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda now=now: now)
            monkeypatch.setattr(sigv4, "amz_date", lambda now=now: now.strftime("%Y%m%dT%H%M%SZ"))
            creds = rng.choice(CREDS).get_frozen_credentials()
            params = _params(rng)
            op = "PutObject"
            if rng.random() < 0.4:
                op = "UploadPart"
                params["UploadId"] = _odd(rng, 8) or "x"
                params["PartNumber"] = rng.randint(1, 10000)
            body = rng.randbytes(rng.randint(0, 64))
            sha = hashlib.sha256(body).hexdigest()
            known = sha if rng.random() < 0.5 else None  # from the digest pass, or not
            url, headers = sender._signed(op, params, body, known, creds)  # type: ignore[arg-type]
            lean += signed[-1]
            assert signed[-1] == ("Dup" not in params.get("Metadata", {}))

            # the payload decision: explicit config, else signed unless a Content-MD5 is
            signs = explicit if explicit is not None else "ContentMD5" not in params
            assert headers["X-Amz-Content-SHA256"] == (sha if signs else "UNSIGNED-PAYLOAD")

            # botocore's own signer over the same URL, headers and payload decision
            twin = AWSRequest(method="PUT", url=url, data=body)
            for name, value in headers.items():
                if name.lower() not in SIGNER_HEADERS:
                    twin.headers[name] = value
            twin.context["client_config"] = AioConfig(s3={"payload_signing_enabled": signs})
            S3SigV4Auth(creds, "s3", region).add_auth(twin)
            assert sorted(headers.items()) == sorted(twin.headers.items()), (op, params)
            assert ("X-Amz-Security-Token" in headers) == bool(creds.token)
        assert lean >= 80
    finally:
        await ctx.__aexit__(None, None, None)


@pytest.mark.parametrize(
    "odd",
    [
        {"Date": "Mon, 07 Dec 2026 16:00:00 GMT"},  # botocore then dates by Date
        {"authorization": "x"},
        {"X-Amz-Content-SHA256": "x"},
        {"User-Agent": "x"},  # botocore leaves it unsigned
        {"Expect": "100-continue"},
        {"x-amz-meta-a ": "x"},  # botocore strips the name in one place, not the other
        {"x-amz-meta-A": "1", "x-amz-meta-a": "2"},
        {"x-amz-meta-n": 1},
    ],
)
def test_refuses_what_it_does_not_cover(odd: dict[str, Any]) -> None:
    headers = {"Host": "h", **odd}
    before = dict(headers)
    creds = CREDS[1].get_frozen_credentials()
    assert not sigv4.sign("PUT", "/k", "", headers, "UNSIGNED-PAYLOAD", creds, "r")
    assert headers == before


def test_signing_key_follows_day_and_secret() -> None:
    # the cached key is the one botocore derives, per day and per secret
    for day, secret in [("20261231", "s1"), ("20270101", "s1"), ("20270101", "s2")]:
        expected = S3SigV4Auth(Credentials("a", secret), "s3", "r")._sign(
            f"AWS4{secret}".encode(), day
        )
        for part in ("r", "s3", "aws4_request"):
            expected = hmac_sha256(expected, part)
        inner, outer = (h.copy() for h in sigv4._key(secret, day, "r", "s3"))
        inner.update(b"to sign")
        outer.update(inner.digest())
        assert outer.digest() == hmac_sha256(expected, "to sign")


def hmac_sha256(key: bytes, msg: str) -> bytes:
    return S3SigV4Auth(None, "s3", "r")._sign(key, msg)
