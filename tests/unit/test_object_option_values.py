"""METADATA, TAGS, CACHE_CONTROL, CONTENT_DISPOSITION and KEY_FORMAT: parsing, startup checks
and per-file rendering, table-driven (tests/test_object_options.py sends them to stores)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import pytest

from s3spool.config.formats import parse_pairs
from s3spool.config.load import load_settings
from s3spool.config.options import key_format_fields
from s3spool.config.settings import Settings
from s3spool.errors import ConfigError, PermanentError
from s3spool.spool.keys import KeyInput, encode_name
from s3spool.store.objectopts import ObjectOptions, header_safe

BASE: dict[str, Any] = {"destination": "noop://", "spool_dirs": "/tmp/s3spool-unit"}
MTIME = 1614834367.0  # 2021-03-04 05:06:07 UTC


def settings(**kw: Any) -> Settings:
    return load_settings(**BASE, **kw)


def refused(**kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        settings(**kw)
    return str(info.value)


@pytest.mark.parametrize(
    ("given", "pairs"),
    [
        ("a=1,b=2", {"a": "1", "b": "2"}),
        (" a = 1 , ,b=x y ", {"a": "1", "b": "x y"}),  # the comma form strips both sides
        ("a==b", {"a": "=b"}),  # split at the first '='
        ("a=", {"a": ""}),
        ('["a=x,y", " b= z"]', {"a": "x,y", "b": " z"}),  # a JSON list keeps values as written
        ('{"a": "x,y", "n": 3}', {"a": "x,y", "n": "3"}),
        ({"a": "1", "n": 2, "f": 1.5}, {"a": "1", "n": "2", "f": "1.5"}),  # a TOML table
        (["a=1", "b=2"], {"a": "1", "b": "2"}),
        ("", {}),
        (None, None),
    ],
)
def test_parse_pairs(given: object, pairs: dict[str, str] | None) -> None:
    assert parse_pairs(given) == pairs


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ("a", "'a' is not k=v"),
        ("a=1,b", "'b' is not k=v"),
        ('["a"]', "'a' is not k=v"),
        ("a=1,a=2", "'a' is given twice"),
        ("{not json", "not a valid JSON object"),
        ('{"a": [1]}', "the value of 'a' is not text"),
        ({"a": True}, "the value of 'a' is not text"),
        ([1], "1 is not k=v"),
    ],
)
def test_parse_pairs_refuses(given: object, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_pairs(given)


def test_settings_normalise_the_options() -> None:
    s = settings(
        metadata={"Source": "{spool_dir}", "YEAR": "{m_YYYY}"},
        tags="team=ops,year={m_YYYY}",
        cache_control="",
        content_disposition='attachment; filename="{fname}"',
    )
    assert s.metadata == {"source": "{spool_dir}", "year": "{m_YYYY}"}  # S3 lower-cases names
    assert s.tags == {"team": "ops", "year": "{m_YYYY}"}
    assert s.cache_control is None  # empty: unset
    assert settings().metadata is None
    assert settings().tags is None


META = "S3SPOOL_METADATA (--metadata): "
TAGS = "S3SPOOL_TAGS (--tags): "
KEY = "S3SPOOL_KEY_FORMAT (--key-format): "
PLAIN = "only plain fields like {fname} are allowed"


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        # metadata names
        ({"metadata": "=1"}, META + "a name is empty"),
        ({"metadata": "bad name=1"}, META + "name 'bad name' has characters"),
        ({"metadata": "a:b=1"}, META + "name 'a:b' has characters"),
        ({"metadata": {"caf\u00e9": "1"}}, "name 'café' has characters"),
        ({"metadata": "s3spool-mtime=1"}, META + "name 's3spool-mtime': the s3spool- prefix"),
        ({"metadata": "S3SPOOL-Other=1"}, "the s3spool- prefix is reserved"),
        ({"metadata": "x-amz-meta-a=1"}, "give the name without x-amz-meta-"),
        ({"metadata": "A=1,a=2"}, META + "name 'a' is given twice (names ignore case)"),
        # metadata values
        ({"metadata": "a=caf\u00e9"}, META + "value of 'a' holds 'é': header values are US-ASCII"),
        ({"metadata": "a=caf\u00e9"}, "percent-encoded (%C3%A9)"),
        ({"metadata": {"a": "x\ty"}}, META + "value of 'a' holds the control character '\\t'"),
        ({"metadata": {"a": " x"}}, "starts or ends with white space"),
        ({"metadata": "a={colour}"}, META + "value of 'a': unknown field {colour}; known fields:"),
        ({"metadata": "a={fname.x}"}, "{fname.x} uses attribute access; " + PLAIN),
        ({"metadata": "a={fname!r}"}, "{fname!r} uses a conversion"),
        ({"metadata": "a={}"}, "positional fields like {} are not allowed"),
        ({"metadata": {"a": "x" * 1600}}, META + "1601 bytes of names and values; at most 1536"),
        # tags
        ({"tags": ",".join(f"t{i}=v" for i in range(11))}, TAGS + "11 given; S3 allows at most 10"),
        ({"tags": {"k" * 129: "v"}}, TAGS + "name 'kkkkkkkkkkkkkkkkkkkk'… is 129 characters"),
        ({"tags": {"k": "v" * 257}}, TAGS + "value of 'k' is longer than 256 characters"),
        ({"tags": "=v"}, TAGS + "a name is empty"),
        ({"tags": {"{fname}": "v"}}, TAGS + "name '{fname}' holds '{'"),
        ({"tags": "aws:x=1"}, TAGS + "name 'aws:x': the aws: prefix is reserved"),
        ({"tags": "k=a,b=(1)"}, TAGS + "value of 'b' holds '('; tags take ASCII letters"),
        ({"tags": "k=caf\u00e9"}, TAGS + "value of 'k' holds 'é'"),
        ({"tags": "k={colour}"}, TAGS + "value of 'k': unknown field {colour}"),
        ({"tags": "k={fname[0]}"}, "{fname[0]} uses index access"),
        # cache control and content disposition
        ({"cache_control": "max-age=\u00e9"}, "S3SPOOL_CACHE_CONTROL (--cache-control): holds 'é'"),
        ({"cache_control": "{fname}"}, "key fields are not allowed here"),
        ({"content_disposition": "inline\n"}, "(--content-disposition): holds the control"),
        ({"content_disposition": "attachment; filename={colour}"}, "unknown field {colour}"),
        ({"content_disposition": 'filename="caf\u00e9"'}, "header values are US-ASCII"),
        # KEY_FORMAT: plain fields only
        ({"key_format": "{fname.upper}"}, KEY + "{fname.upper} uses attribute access; " + PLAIN),
        ({"key_format": "{fname[0]}"}, KEY + "{fname[0]} uses index access; " + PLAIN),
        ({"key_format": "{fname!r}"}, KEY + "{fname!r} uses a conversion; " + PLAIN),
        ({"key_format": "{fname!s}"}, KEY + "{fname!s} uses a conversion; " + PLAIN),
        ({"key_format": "{fname:{m_YYYY}}"}, KEY + "{fname:{m_YYYY}} nests a field"),
        ({"key_format": "{}"}, KEY + "positional fields like {} are not allowed"),
        ({"key_format": "{fname"}, KEY + "expected '}' before end of string"),
    ],
)
def test_bad_options_are_refused_at_startup(kw: dict[str, Any], needle: str) -> None:
    assert needle in refused(**kw)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"metadata": "a={now:%Y}"}, META + "value of 'a' failed to render: ValueError("),
        ({"content_disposition": "{m_YYYY:d}"}, "S3SPOOL_CONTENT_DISPOSITION (--content-dispo"),
        ({"tags": {"k": "{fname:>300}"}}, TAGS + "value of 'k' is 300 characters once rendered"),
    ],
)
def test_a_bad_format_spec_stops_the_start(kw: dict[str, Any], needle: str) -> None:
    """Only a render shows these; the store renders a sample when it opens (as KEY_FORMAT)."""
    s = settings(**kw)
    with pytest.raises(ConfigError) as info:
        ObjectOptions(s)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        ("{fname}", {"fname"}),
        ("{m_YYYY}/{m_MM}/{fname:>20}", {"m_YYYY", "m_MM", "fname"}),
        ("{{literal}}", set()),
    ],
)
def test_key_format_fields_takes_plain_fields(template: str, fields: set[str]) -> None:
    assert key_format_fields(template) == fields


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("report.csv", "report.csv"),
        ("with space", "with space"),
        ("caf\u00e9", "caf%C3%A9"),
        ('say "hi"', "say %22hi%22"),
        ("back\\slash", "back%5Cslash"),
        ("50%", "50%25"),  # '%' too: unquote_to_bytes gives back the name
        ("bad\udcff", "bad%FF"),  # a byte that is not UTF-8 (os.fsdecode), as it is
        ("a\nb", "a%0Ab"),
        ("\u65e5", "%E6%97%A5"),
    ],
)
def test_header_safe(value: str, safe: str) -> None:
    assert header_safe(value) == safe


OPTIONS: dict[str, Any] = {
    "metadata": "name={fname},year={m_YYYY},src={spool_dir},fixed=ops",
    "tags": "name={fname},year={m_YYYY}",
    "cache_control": "max-age=60",
    "content_disposition": 'attachment; filename="{fname}"',
}


@pytest.mark.parametrize(
    ("raw", "meta_name", "tag_name", "disposition"),
    [
        (b"report.csv", "report.csv", "report.csv", 'filename="report.csv"'),
        (
            "caf\u00e9 50%.txt".encode(),
            "caf%C3%A9 50%25.txt",
            "caf_ 50_.txt",
            "filename=\"cafe 50_.txt\"; filename*=UTF-8''caf%C3%A9%2050%25.txt",
        ),
        (b'q"uote', "q%22uote", "q_uote", "filename=\"q_uote\"; filename*=UTF-8''q%22uote"),
        (b"bad\xff", "bad%FF", "bad_", "filename=\"bad_\"; filename*=UTF-8''bad%FF"),
        # a control character after é
        ("\u00e9\n".encode(), "%C3%A9%0A", "__", "filename=\"e_\"; filename*=UTF-8''%C3%A9%0A"),
        (
            "日本.txt".encode(),
            "%E6%97%A5%E6%9C%AC.txt",
            "__.txt",
            "filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
        ),
        (b"a+b c!.txt", "a+b c!.txt", "a+b c_.txt", 'filename="a+b c!.txt"'),
        # HTTP drops spaces at the ends of a header value: there they are %20
        (b" lead and trail ", "%20lead and trail%20", " lead and trail ", None),
    ],
)
def test_rendered_per_file(
    raw: bytes, meta_name: str, tag_name: str, disposition: str | None
) -> None:
    opts = ObjectOptions(settings(**OPTIONS))
    params = opts.params(KeyInput(raw, "var/spool", MTIME, MTIME))
    assert params["Metadata"] == {
        "name": meta_name,
        "year": "2021",
        "src": "var/spool",
        "fixed": "ops",
    }
    assert unquote_to_bytes(meta_name) == raw  # lossless
    assert dict(parse_qsl(params["Tagging"])) == {"name": tag_name, "year": "2021"}
    assert params["CacheControl"] == "max-age=60"
    disposition = disposition or f'filename="{raw.decode()}"'
    assert params["ContentDisposition"] == f"attachment; {disposition}"
    if "filename*" in disposition:  # RFC 6266: the exact name, as bytes
        assert unquote_to_bytes(disposition.rpartition("''")[2]) == raw
    for value in (*params["Metadata"].values(), params["ContentDisposition"], params["Tagging"]):
        assert value.isascii()
        assert value.isprintable()


def test_fixed_options_are_rendered_once() -> None:
    opts = ObjectOptions(settings(metadata="a=1", tags="t=x y", cache_control="no-cache"))
    one = opts.params(KeyInput(b"a", "s", MTIME, MTIME))
    assert one is opts.params(KeyInput(b"b", "s", MTIME, MTIME))
    assert one == {"Metadata": {"a": "1"}, "Tagging": "t=x%20y", "CacheControl": "no-cache"}


@pytest.mark.parametrize(
    ("kw", "reason", "needle"),
    [
        ({"tags": "t={fname}{fname}"}, "bad_tag", TAGS + "value of 't' is 400 characters"),
        (
            {"metadata": {f"m{i}": "{fname}" for i in range(8)}},
            "metadata_too_large",
            META + "1616 bytes of names and values once rendered",
        ),
    ],
)
def test_a_value_too_long_for_one_file(kw: dict[str, Any], reason: str, needle: str) -> None:
    opts = ObjectOptions(settings(**kw))
    opts.params(KeyInput(b"short", "s", MTIME, MTIME))  # fine
    with pytest.raises(PermanentError) as info:
        opts.params(KeyInput(b"n" * 200, "s", MTIME, MTIME))
    assert info.value.reason == reason
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        # a wide chunk once swallowed the ASCII after é; '%' is kept as it is
        ("\u00e9\n%".encode(), "\u00e9%0A%"),
        (b"\xe9%", "%E9%"),
        ("\u00e9\n".encode(), "\u00e9%0A"),
        ("\U0001f600\x7f".encode(), "\U0001f600%7F"),
        (b"\xc3\xa9t\xe9", "\u00e9t%E9"),
    ],
)
def test_encode_name_escapes_after_multibyte_characters(raw: bytes, encoded: str) -> None:
    assert encode_name(raw) == encoded
    assert unquote_to_bytes(encoded) == raw
