"""The direct PutObject path signs exactly as botocore does (and as S3 verifies)."""

from __future__ import annotations

import calendar
import time

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3spool.direct import Signer


@pytest.mark.parametrize(
    ("path", "query", "payload", "token"),
    [
        ("/bkt/plain-key", "", "UNSIGNED-PAYLOAD", None),
        ("/bkt/a%20b/c~d/%25XX/%E6%97%A5", "", "UNSIGNED-PAYLOAD", "session-token"),
        ("/bkt/part", "partNumber=7&uploadId=abc%2Bdef%3D%3D", "UNSIGNED-PAYLOAD", None),
    ],
    ids=["plain", "odd-key-with-token", "upload-part"],
)
def test_signature_matches_botocore(path: str, query: str, payload: str, token: str | None) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    host = "s3.eu-west-1.amazonaws.com"
    headers = {
        "Content-MD5": "XUFAKrxLKna5cZ2REBfFkg==",
        "Content-Type": "text/plain",
        "x-amz-meta-s3spool-mtime": "1600000000.250000",
        "x-amz-checksum-crc32c": "yZRlqg==",
        "If-None-Match": "*",
    }
    url = f"https://{host}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method="PUT", url=url, data=b"hello", headers=dict(headers))
    request.context["payload_signing_enabled"] = False  # UNSIGNED-PAYLOAD, as over TLS
    S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(request)
    amz_date = request.headers["X-Amz-Date"]

    ours = {k.lower(): v for k, v in headers.items()}
    ours["host"] = host
    Signer("eu-west-1").sign(
        "PUT", path, query, ours, payload, creds.access_key, creds.secret_key, token,
        now=calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")),
    )
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == amz_date
