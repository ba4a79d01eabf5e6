"""Settings parsers, key encoding, S3 error classification and the plain-HTTP rule:
table-driven."""

from __future__ import annotations

import pytest

from s3spool.config.formats import parse_duration, parse_endpoint_url, parse_list, parse_size
from s3spool.errors import (
    BadRequest,
    NoSuchUpload,
    NotFound,
    PermanentError,
    PreconditionFailed,
    Refused,
    SlowDown,
    TransientError,
    Unsupported,
)
from s3spool.spool.keys import encode_name, sanitize_key
from s3spool.store.s3 import plain_http
from s3spool.store.s3errors import classify_error, parse_error_body

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (1048576, MIB),
        ("1048576", MIB),
        ("8MiB", 8 * MIB),
        ("8 MiB", 8 * MIB),
        ("16M", 16 * MIB),
        ("1GiB", 1024 * MIB),
        ("1G", 1024 * MIB),
        ("500KB", 500_000),
        ("500kb", 500_000),
        ("2MB", 2_000_000),
        ("1.5MiB", int(1.5 * MIB)),
        ("1K", 1024),
        ("1TiB", 1024**4),
        ("7b", 7),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "MiB", "-1MiB", "1XB", "1 2", "eight"])
def test_parse_size_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        (" 30 S ", 30.0),
        ("0.5h", 1800.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "s", "1w", "-5s", "5 minutes", "1h30m"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("huge", ["36501d", "9" * 30, float("inf"), 10**20])
def test_parse_duration_refuses_more_than_a_century(huge: object) -> None:
    # timers and thread waits overflow near 300 years
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_duration(huge)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000",
        "https://s3.eu-west-1.amazonaws.com",
        "http://[::1]:9000/",
        "http://minio.local.:9000/path",
        "127.0.0.1:9000",
        "localhost:9000",
        "ftp://host",
        "http://",
        "http://a b",
        "http://host:99999",
        "http://host:port",
        "http://-bad-.example",
        "http://[::zz]:1",
        "http://h\x00st",
        "http://h_st",
    ],
)
def test_endpoint_urls_are_refused_exactly_when_botocore_would(url: str) -> None:
    from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

    try:
        parse_endpoint_url(url)
    except ValueError:
        taken = False
    else:
        taken = True
    try:
        botocore = url.startswith(("http://", "https://")) and bool(
            is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)
        )
    except ValueError:
        botocore = False
    if url in ("http://host:99999", "http://host:port"):
        botocore = False  # botocore takes them, and fails at the first request
    assert taken == botocore


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("a,b", ["a", "b"]),
        (" a , ,b ", ["a", "b"]),
        ('["x,y", "z"]', ["x,y", "z"]),
        ("", []),
        (["kept"], ["kept"]),
    ],
)
def test_parse_list(text: object, items: list[str]) -> None:
    assert parse_list(text) == items


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (b"plain.txt", "plain.txt"),
        (b"a b+c~d", "a b+c~d"),
        ("日本語.log".encode(), "日本語.log"),
        (b"100%", "100%25"),
        (b"tab\there", "tab%09here"),
        (b"del\x7f", "del%7F"),
        (b"bad\xff\xfe.bin", "bad%FF%FE.bin"),
        (b"\xc3\xa9t\xe9", "ét%E9"),  # valid UTF-8, then a lone Latin-1 byte
        (b"\xe6\x97", "%E6%97"),  # a truncated sequence
        (b"", ""),
        (b"\x1f~ !", "%1F~ !"),  # the edges of printable ASCII
        (b"a\rb", "a%0Db"),
        (b"%", "%25"),
        (b"caf\xc3\xa9\x00", "café%00"),  # non-ASCII text with a control byte
    ],
)
def test_encode_name_is_lossless_and_utf8(raw: bytes, encoded: str) -> None:
    assert encode_name(raw) == encoded
    encoded.encode("utf-8")  # always valid UTF-8


def test_encode_name_keeps_distinct_names_distinct() -> None:
    names = [b"x%41", b"xA", b"x\x41", b"x%2541", b"\xff", b"%FF"]
    assert len({encode_name(n) for n in set(names)}) == len(set(names))


@pytest.mark.parametrize(
    ("rendered", "key"),
    [
        ("a/b", "a/b"),
        ("/lead", "lead"),
        ("a//b///c", "a/b/c"),
        ("./a/./b/", "a/b"),
        ("p/x.tar.gz", "p/x.tar.gz"),
        ("...", "..."),
    ],
)
def test_sanitize_key(rendered: str, key: str) -> None:
    assert sanitize_key(rendered) == key


@pytest.mark.parametrize("bad", ["../etc", "a/../b", "a/..", "", "/", "./."])
def test_sanitize_key_refuses(bad: str) -> None:
    with pytest.raises(PermanentError) as info:
        sanitize_key(bad)
    assert info.value.reason == "bad_key"


@pytest.mark.parametrize(
    ("code", "status", "cls", "reason"),
    [
        ("SlowDown", 503, SlowDown, "slowdown"),
        ("", 503, SlowDown, "slowdown"),
        ("Throttling", 400, SlowDown, "slowdown"),
        ("InternalError", 500, TransientError, "InternalError"),
        ("", 502, TransientError, "http_502"),
        ("RequestTimeTooSkewed", 403, TransientError, "RequestTimeTooSkewed"),
        ("BadDigest", 400, TransientError, "BadDigest"),
        ("AccessDenied", 403, Refused, "AccessDenied"),
        ("403", 403, Refused, "AccessDenied"),  # a HEAD's error has no body
        ("NoSuchBucket", 404, Refused, "NoSuchBucket"),
        ("ExpiredToken", 400, Refused, "ExpiredToken"),
        ("NotImplemented", 501, Unsupported, "not_implemented"),
        ("", 501, Unsupported, "not_implemented"),
        ("EntityTooLarge", 400, PermanentError, "EntityTooLarge"),
        ("PreconditionFailed", 412, PreconditionFailed, "precondition_failed"),
        ("", 408, TransientError, "http_408"),
        ("InvalidArgument", 400, BadRequest, "InvalidArgument"),
        ("NoSuchUpload", 404, NoSuchUpload, "NoSuchUpload"),
        ("NoSuchKey", 404, NotFound, "NoSuchKey"),
        ("404", 404, NotFound, "404"),  # a HEAD's error has no body
    ],
)
def test_classify_error(code: str, status: int, cls: type, reason: str) -> None:
    err = classify_error(code, status, "msg")
    assert type(err) is cls
    assert err.reason == reason


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        (
            b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>",
            ("AccessDenied", "no", None),
        ),
        (
            b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>m</Message>"
            b"<Region>eu-west-1</Region></Error>",
            ("AuthorizationHeaderMalformed", "m", "eu-west-1"),
        ),
        (b"", ("", "", None)),
        (b"<html>gateway</html>", ("", "", None)),
    ],
)
def test_parse_error_body(body: bytes, parsed: tuple[str, str, str | None]) -> None:
    assert parse_error_body(body) == parsed


_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.mark.parametrize(
    ("endpoint", "env", "plain"),
    [
        ("http://127.0.0.1:9000", {}, True),
        ("HTTP://minio.lan:9000", {}, True),
        ("https://127.0.0.1:9000", {}, False),
        (None, {}, False),  # AWS itself: HTTPS
        ("http://127.0.0.1:9000", {"HTTP_PROXY": "http://proxy.lan:3128"}, True),
        ("http://127.0.0.1:9000", {"http_proxy": "proxy.lan:3128"}, True),  # botocore: http://
        ("http://127.0.0.1:9000", {"HTTP_PROXY": "https://proxy.lan:3128"}, False),
        ("http://127.0.0.1:9000", {"https_proxy": "https://proxy.lan:3128"}, True),  # not ours
        (
            "http://127.0.0.1:9000",
            {"HTTP_PROXY": "https://proxy.lan:3128", "NO_PROXY": "127.0.0.1"},
            True,
        ),
    ],
)
def test_plain_http(
    endpoint: str | None, env: dict[str, str], plain: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert plain_http(endpoint) is plain
