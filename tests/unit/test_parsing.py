"""Settings parsers, key encoding, S3 error classification (with the clock skew and store-wide
causes), the plain-HTTP rule and the multipart part plan: table-driven."""

from __future__ import annotations

import datetime
import email.utils
import random
import time
from urllib.parse import unquote_to_bytes

import botocore.auth
import pytest

from s3spool.config.formats import (
    MAX_DURATION,
    format_duration,
    format_size,
    parse_duration,
    parse_endpoint_url,
    parse_list,
    parse_size,
)
from s3spool.config.load import load_settings
from s3spool.config.options import key_format_hint
from s3spool.errors import (
    AccessRefused,
    BadRequest,
    ClockSkewed,
    NoBucket,
    NoSuchUpload,
    NotFound,
    PermanentError,
    PreconditionFailed,
    Refused,
    SlowDown,
    StoreUnavailable,
    TransientError,
    Unsupported,
    UploadError,
)
from s3spool.spool.keys import encode_name, sanitize_key
from s3spool.store import clock, sigv4
from s3spool.store.s3 import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    part_plan,
    plain_http,
)
from s3spool.store.s3errors import classify_error, parse_error_body, store_down

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
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "0.5s"),
        (1e-7, "0.0000001s"),
        (30, "30s"),
        (90, "90s"),
        (60, "1m"),
        (5400, "90m"),
        (3600, "1h"),
        (86400, "24h"),
        (1.5, "1.5s"),
        (3599.25, "3599.25s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (1000, "1000"),
        (1024, "1KiB"),
        (1536, "1536"),
        (128 * 2**20, "128MiB"),
        (16 * 2**20, "16MiB"),
        (3 * 2**30, "3GiB"),
        (2**40, "1TiB"),
        (2**50, "1024TiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


def test_formatted_durations_and_sizes_read_back_the_same() -> None:
    """``s3spool config`` writes them so; its output must load as the same settings."""
    rng = random.Random(24)
    durations = [rng.uniform(0, 10) ** rng.randint(0, 9) for _ in range(3000)]
    durations += [rng.randint(0, 10**6) * scale for scale in (1, 0.001, 0.25, 60, 3600)]
    durations += [MAX_DURATION, 5e-324, 0.1, 0.3, 2 / 3]
    for seconds in durations:
        if seconds <= MAX_DURATION:
            assert parse_duration(format_duration(seconds)) == seconds, seconds
    sizes = [rng.randint(0, 2 ** rng.randint(1, 50)) for _ in range(3000)]
    sizes += [rng.randint(0, 4096) * 2 ** rng.randint(0, 40) for _ in range(3000)]
    for size in sizes:
        assert parse_size(format_size(size)) == size, size


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
        (b"100%", "100%"),  # '%' as it is: the key is the name
        (b"tab\there", "tab%09here"),
        (b"del\x7f", "del%7F"),
        (b"bad\xff\xfe.bin", "bad%FF%FE.bin"),
        (b"\xc3\xa9t\xe9", "ét%E9"),  # valid UTF-8, then a lone Latin-1 byte
        (b"\xe6\x97", "%E6%97"),  # a truncated sequence
        (b"", ""),
        (b"\x1f~ !", "%1F~ !"),  # the edges of printable ASCII
        (b"a\rb", "a%0Db"),
        (b"%", "%"),
        (b"50%.csv", "50%.csv"),
        (b"a+b c.txt", "a+b c.txt"),
        (b"bad\xff%41", "bad%FF%41"),  # the slow path keeps '%' too
        (b"caf\xc3\xa9\x00", "café%00"),  # non-ASCII text with a control byte
    ],
)
def test_encode_name_is_utf8(raw: bytes, encoded: str) -> None:
    assert encode_name(raw) == encoded
    encoded.encode("utf-8")  # always valid UTF-8


def test_encode_name_is_lossless_but_for_a_literal_escape() -> None:
    # README "Odd file names": unquote_to_bytes gives back every name without a literal %XX
    for raw in (b"50%.csv", b"100%", b"a\nb", b"caf\xe9", "na\u00efve".encode(), b"%zz%"):
        assert unquote_to_bytes(encode_name(raw)) == raw
    # the one ambiguity: a name holding %XX and the name with the byte XX share a key
    assert encode_name(b"a%0Ab") == encode_name(b"a\nb") == "a%0Ab"
    assert encode_name(b"%FF") == encode_name(b"\xff") == "%FF"
    names = [b"x%41", b"xA", b"x%2541", b"x%", b"x%25"]
    assert len({encode_name(n) for n in names}) == len(names)


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


@pytest.fixture
def host_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A correction made in a test is undone after it (the offset and botocore's clock)."""
    monkeypatch.setattr(clock, "offset", 0.0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", botocore.auth.get_current_datetime)


@pytest.mark.usefixtures("host_clock")
@pytest.mark.parametrize(
    ("code", "status", "store_off", "cls"),
    [
        ("RequestTimeTooSkewed", 403, -1800, ClockSkewed),  # a PUT's answer from rclone
        ("", 403, -1800, ClockSkewed),  # a HEAD's: no code
        ("", 403, 1800, ClockSkewed),  # this host behind the store
        ("", 403, -30, Refused),  # within the tolerance: not the clock
        ("RequestTimeTooSkewed", 403, None, TransientError),  # no Date header
        ("", 404, -1800, NotFound),  # only a refusal is put down to the clock
    ],
)
def test_a_refusal_from_a_far_clock_corrects_it(
    code: str, status: int, store_off: float | None, cls: type, caplog: pytest.LogCaptureFixture
) -> None:
    date = None if store_off is None else email.utils.formatdate(time.time() + store_off, True)
    err = classify_error(code, status, "HeadBucket: 403", date)
    assert type(err) is cls
    if cls is ClockSkewed:
        side = "ahead of" if store_off and store_off < 0 else "behind"
        assert str(err).startswith(f"this host's clock is 30 min {side} the store's: HeadBucket")
        assert clock.offset == pytest.approx(store_off, abs=2)
        signed = botocore.auth.get_current_datetime().replace(tzinfo=datetime.UTC)  # naive UTC
        assert signed.timestamp() - time.time() == pytest.approx(store_off, abs=2)
        ours = datetime.datetime.strptime(sigv4.amz_date(), "%Y%m%dT%H%M%SZ")
        ours_ts = ours.replace(tzinfo=datetime.UTC).timestamp()
        assert ours_ts == pytest.approx(signed.timestamp(), abs=2)
        assert [r.getMessage() for r in caplog.records] == [
            f"this host's clock is 30 min {side} the store's: signing requests with the "
            "store's time; set this host's clock right (NTP)"
        ]
        # corrected: the store's next answer agrees, a refusal is the store's again
        assert clock.skew(email.utils.formatdate(time.time() + store_off, True)) is None
    else:
        assert clock.offset == 0.0


@pytest.mark.usefixtures("host_clock")
def test_a_refusal_signed_before_a_correction_is_tried_again() -> None:
    now = email.utils.formatdate(time.time(), True)
    again = classify_error("AccessDenied", 403, "PutObject: AccessDenied", now, signed_with=-1800)
    assert type(again) is ClockSkewed  # transient: the retry is signed with the store's time
    assert type(classify_error("AccessDenied", 403, "m", now, signed_with=0.0)) is Refused


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(-1800, "30 min ahead of"), (45, "45 s behind"), (-10800, "3.0 h ahead of")],
)
def test_clock_words(seconds: float, words: str) -> None:
    assert clock.words(seconds) == f"this host's clock is {words} the store's"


@pytest.mark.parametrize(
    ("err", "cls", "says"),
    [
        (NotFound("HeadBucket: 404", reason="404"), NoBucket, "bucket 'b' does not exist"),
        (Refused("HeadBucket: 403", reason="AccessDenied"), AccessRefused, "credentials"),
        (TransientError("HeadBucket: 500", reason="http_500"), StoreUnavailable, "500"),
    ],
)
def test_store_down_names_the_cause(err: UploadError, cls: type, says: str) -> None:
    down = store_down(err, "b")
    assert type(down) is cls
    assert says in str(down)
    assert down.reason == err.reason


@pytest.mark.parametrize(
    ("fmt", "hint"),
    [
        ("{fname}", None),
        ("{now:%Y}/{m_YYYY}/{fname}", None),  # a format spec is strftime, rightly
        ("%Y/%m/{fname}", "'%Y/%m/{fname}' holds %Y, %m, which keys carry as written "
         "(strftime codes are not expanded): use {m_YYYY}, {m_MM} (the file's mtime; {c_*} "
         "for its ctime, {now:%Y} for the upload time)"),
        ("${fname}", "'${fname}' holds '$', which keys carry as written: a field is {fname}, "
         "without '$'"),
        ("%j-{fname}", "use the {m_*} fields"),
        ("{relpath}", None),
        ("{m_YYYY}/{uuid4}.log", None),
        ("all-the-same", "'all-the-same' has none of {fname}, {relpath}, {uuid4}, {uuid1}: "
         "files that share the other fields get the same key"),
        ("{m_YYYY}/{hostname}", "has none of {fname}"),
        ("%", "has none of {fname}"),
    ],
)  # fmt: skip
def test_key_format_hint(fmt: str, hint: str | None) -> None:
    found = key_format_hint(fmt)
    if hint is None or found is None:
        assert found == hint
    else:
        assert hint in found


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


# --- the multipart part plan ------------------------------------------------------------------
PS = 16 * MIB  # PART_SIZE's default
TB = 10**12


@pytest.mark.parametrize(
    ("size", "part_size", "plan"),
    [
        (0, PS, (PS, 1)),
        (1, PS, (PS, 1)),
        (PS - 1, PS, (PS, 1)),
        (PS, PS, (PS, 1)),
        (PS + 1, PS, (PS, 2)),
        (MAX_PARTS * PS, PS, (PS, MAX_PARTS)),  # 156.25 GiB: exactly 10,000 parts
        # one byte more: the smallest whole MiB that fits, 17 MiB, in 9,412 parts
        (MAX_PARTS * PS + 1, PS, (17 * MIB, 9412)),
        (TB, PS, (96 * MIB, 9935)),
        (50 * TB, PS, (4769 * MIB, 9999)),
        (MAX_OBJECT_SIZE, PS, (MAX_PART_SIZE, MAX_PARTS)),
        (MAX_OBJECT_SIZE, MAX_PART_SIZE, (MAX_PART_SIZE, MAX_PARTS)),
        (MAX_PARTS * 5 * MIB + 1, 5 * MIB, (6 * MIB, 8334)),  # PART_SIZE's least
        # a part size recorded with a resumed upload fits its file: kept, though larger
        (TB, 128 * MIB, (128 * MIB, 7451)),
    ],
)
def test_part_plan(size: int, part_size: int, plan: tuple[int, int]) -> None:
    assert part_plan(size, part_size) == plan


def test_part_plan_from_zero_to_the_largest_object() -> None:
    sizes = sorted(
        {0, 1, PS - 1, PS, MAX_PARTS * PS, MAX_OBJECT_SIZE, 50 * TB}
        | {int(1.37**e) + d for e in range(1, 101) for d in (-1, 0, 1)}
    )
    for size in (s for s in sizes if 0 <= s <= MAX_OBJECT_SIZE):
        part, count = part_plan(size, PS)
        assert count <= MAX_PARTS, size
        assert part <= MAX_PART_SIZE, size
        # every byte in a part, no empty part (a 0-byte file is one empty part)
        assert (count - 1) * part < max(size, 1) <= count * part, size
        if part != PS:  # grown: whole MiB, and one MiB less would need more than 10,000 parts
            assert part % MIB == 0, size
            assert (part - MIB) * MAX_PARTS < size, size


def test_a_file_too_large_for_s3_fails_before_any_request() -> None:
    assert MAX_OBJECT_SIZE == 10_000 * 5 * 1024**3 == 53_687_091_200_000  # AWS: "48.8 TiB"
    for size in (MAX_OBJECT_SIZE + 1, 60 * TB):
        with pytest.raises(PermanentError) as info:
            part_plan(size, PS)
        assert info.value.reason == "too_large"
        assert f"{size} bytes, more than S3 takes in one object" in str(info.value)


def test_a_file_over_5_gib_never_goes_in_one_put() -> None:
    # S3's largest PUT is 5 GiB, whatever MULTIPART_THRESHOLD says
    s = load_settings(destination="s3://bkt", spool_dirs="/tmp/s3spool-unit")
    assert s.multipart_from == s.multipart_threshold  # 64 MiB
    s = load_settings(
        destination="s3://bkt", spool_dirs="/tmp/s3spool-unit", multipart_threshold="1TiB"
    )
    assert s.multipart_from == MAX_PART_SIZE + 1
