"""SigV4 for the signed sender's PUTs: botocore's ``S3SigV4Auth.add_auth`` cut to what they hold;
``sign`` adds what botocore would (tests/unit/test_sigv4.py) or returns False."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from botocore.auth import SIGNED_HEADERS_BLACKLIST

from s3spool.store import clock

#: headers botocore's signer sets or replaces itself (and ``Date``, which changes how it dates)
_OWN = frozenset(
    {"authorization", "date", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"}
)
_REFUSE = _OWN | frozenset(SIGNED_HEADERS_BLACKLIST)
#: derived signing keys by (secret, day, region, service), as HMAC-SHA256's inner and outer hashes
#: with the key absorbed, copied per request (botocore makes four HMACs a request for it)
_keys: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
#: header name -> its lowercase form, or None where botocore would not sign it as is
_names: dict[str, str | None] = {}
_stamp = (0, "")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.digest(key, msg.encode(), "sha256")


def _key(secret: str, day: str, region: str, service: str) -> tuple[Any, Any]:
    cache_key = (secret, day, region, service)
    keyed = _keys.get(cache_key)
    if keyed is None:
        key = _hmac(f"AWS4{secret}".encode(), day)
        for part in (region, service, "aws4_request"):
            key = _hmac(key, part)
        if len(_keys) > 16:  # rotated credentials, new days: keep it small
            _keys.clear()
        block = key.ljust(64, b"\0")  # HMAC pads a short key to SHA-256's block
        keyed = _keys[cache_key] = (
            hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)),
        )
    return keyed


def _name(name: str) -> str | None:
    lname = name.lower()
    # botocore leaves out its blacklist, sets its own headers, and strips names in one place
    # but not the other
    signed = lname if lname not in _REFUSE and lname == lname.strip() else None
    if len(_names) > 1024:
        _names.clear()
    _names[name] = signed
    return signed


def amz_date() -> str:
    """Now, as SigV4 dates a request (formatted once a second; the store's time once a skew
    was found, ``clock.py``)."""
    global _stamp
    now = int(time.time() + clock.offset)
    if _stamp[0] != now:
        _stamp = (now, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
    return _stamp[1]


def sign(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    payload: str,
    creds: Any,
    region: str,
    service: str = "s3",
) -> bool:
    """Add X-Amz-Date, X-Amz-Security-Token (with a session token), X-Amz-Content-SHA256 and
    Authorization to ``headers``, signed with ``creds`` (botocore's frozen credentials).

    ``path``: the URL's path as sent (S3 signs it as is); ``query``: the URL's query, its
    pairs already sorted and encoded; ``headers`` must hold Host; ``payload``: the body's
    SHA-256 in hex, or UNSIGNED-PAYLOAD.
    """
    lower = {}
    for name, value in headers.items():
        lname = _names[name] if name in _names else _name(name)
        if lname is None or lname in lower or type(value) is not str:
            return False
        lower[lname] = " ".join(value.split())
    when = amz_date()
    token = creds.token
    lower["x-amz-date"] = when
    if token:
        lower["x-amz-security-token"] = " ".join(token.split())
    lower["x-amz-content-sha256"] = payload
    names = sorted(lower)
    signed = ";".join(names)
    block = "".join([f"{n}:{lower[n]}\n" for n in names])
    canonical = f"{method}\n{path}\n{query}\n{block}\n{signed}\n{payload}"
    day = when[:8]
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{when}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    inner, outer = _key(creds.secret_key, day, region, service)
    inner = inner.copy()
    inner.update(to_sign.encode())
    outer = outer.copy()
    outer.update(inner.digest())
    signature = outer.hexdigest()
    headers["X-Amz-Date"] = when
    if token:
        headers["X-Amz-Security-Token"] = token
    headers["X-Amz-Content-SHA256"] = payload
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return True
