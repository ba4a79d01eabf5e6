"""Checks of templates and object options (what S3 and HTTP allow in metadata, tags and header
values), run as the settings are read.  Every ``ValueError`` starts with the setting's name."""

from __future__ import annotations

import re
import string
from collections.abc import Set
from urllib.parse import quote


def key_format_fields(template: str, setting: str = "key_format") -> set[str]:
    """The field names a template refers to; ``ValueError`` on bad syntax or a field that is
    more than a plain name: attribute or index access, a conversion or a field nested in the
    format spec would reach into Python objects or render text no one wrote down."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None
    for _literal, field, spec, conv in parsed:
        if field is None:
            continue
        base = re.split(r"[.\[]", field, maxsplit=1)[0]
        written = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        if not base:
            raise ValueError(
                f"{setting}: positional fields like {{}} are not allowed; name a field"
            )
        problem = ""
        if field[len(base) :].startswith("."):
            problem = "uses attribute access"
        elif field[len(base) :].startswith("["):
            problem = "uses index access"
        elif conv:
            problem = "uses a conversion"
        elif spec and "{" in spec:
            problem = "nests a field in its format spec"
        if problem:
            raise ValueError(
                f"{setting}: {written} {problem}; only plain fields like {{{base}}} are allowed"
            )
        names.add(base)
    return names


#: an HTTP header name (RFC 9110 token): what an x-amz-meta-NAME may use
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: names of s3spool's own metadata (s3spool-mtime, -instance, -checksum, -part-size)
RESERVED_METADATA_PREFIX = "s3spool-"
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 10, 128, 256  # S3's limits, in characters
#: what S3 takes in a tag name or value (AWS's tag restrictions; S3 refuses the rest, non-ASCII
#: letters, ',' and '(' included, with InvalidTag)
TAG_CLASS = r"A-Za-z0-9 +\-=._:/@"
_TAG_RE = re.compile(f"[{TAG_CLASS}]")
TAG_CHARS = "tags take ASCII letters, digits, space and + - = . _ : / @ only"
#: bytes of user metadata (names + values); S3 allows 2 KiB with s3spool's own entries
MAX_USER_METADATA = 1536


def _check_known(setting: str, fields: Set[str], known: Set[str]) -> None:
    unknown = sorted(fields - known)
    if unknown:
        raise ValueError(
            f"{setting}: unknown field {{{unknown[0]}}}; known fields: " + ", ".join(sorted(known))
        )


def check_key_format(template: str, known: Set[str], setting: str = "key_format") -> set[str]:
    """Every check of ``KEY_FORMAT``: plain known fields, no literal ``.``/``..`` segment, and
    a format spec that renders (``{now:%Y}`` fails here, not at the first file); its fields."""
    fields = key_format_fields(template, setting)
    if not fields and not template.strip("/"):
        hint = "; the default is {fname}" if setting == "key_format" else ""
        raise ValueError(f"{setting}: empty: every key would be the prefix{hint}")
    _check_known(setting, fields, known)
    bad = next((c for c in _literal(template) if c < " " or c == "\x7f"), None)
    if bad is not None:
        raise ValueError(f"{setting}: holds the control character {bad!r}")
    for seg in template.split("/"):
        if seg in (".", ".."):
            raise ValueError(f"{setting}: '{seg}' segments are not allowed")
    try:
        template.format_map({f: 0 if f == "now" else "sample" for f in fields})
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{setting}: {exc}") from None
    return fields


#: strftime codes (as Fluent Bit, Vector and logrotate write dates) and the key fields to use
_STRFTIME_FIELDS = {"Y": "m_YYYY", "m": "m_MM", "d": "m_DD", "H": "m_hh", "M": "m_mm", "S": "m_ss"}
_STRFTIME_RE = re.compile(r"%[A-Za-z]")


def key_format_hint(template: str) -> str | None:
    """What a valid ``KEY_FORMAT`` holds that its author likely did not mean: strftime codes
    or shell-style ``$`` (every key carries them as they are), or no field that tells files
    apart (they would share keys); None if nothing."""
    text = _literal(template)
    codes = list(dict.fromkeys(_STRFTIME_RE.findall(text)))
    hints = []
    if codes:
        use = [f"{{{_STRFTIME_FIELDS[c[1]]}}}" for c in codes if c[1] in _STRFTIME_FIELDS]
        hints.append(
            f"holds {', '.join(codes)}, which keys carry as written (strftime codes are not "
            f"expanded): use {', '.join(use) or 'the {m_*} fields'} (the file's mtime; {{c_*}} "
            "for its ctime, {now:%Y} for the upload time)"
        )
    if "$" in text:
        hints.append("holds '$', which keys carry as written: a field is {fname}, without '$'")
    if not key_format_fields(template) & _PER_FILE:
        hints.append(
            "has none of {fname}, {relpath}, {uuid4}, {uuid1}: files that share the other "
            "fields get the same key, and each replaces the one before"
        )
    return f"{template!r} " + "; ".join(hints) if hints else None


#: fields that tell two files of one moment apart
_PER_FILE = frozenset({"fname", "relpath", "uuid1", "uuid4"})


def _literal(template: str) -> str:
    """The text of a template outside its fields."""
    return "".join(literal for literal, *_ in string.Formatter().parse(template))


def check_header_name(head: str, name: str) -> None:
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(
            f"{head} has characters an HTTP header name cannot have "
            "(letters, digits and !#$%&'*+-.^_`|~ only)"
        )


def check_header_value(head: str, text: str, *, fields: bool = False) -> None:
    """Text an HTTP header value can carry: printable US-ASCII, no white space at either end
    (``head`` starts each message: ``"content_type:"``; ``fields``: key fields may stand in)."""
    bad = next((c for c in text if not " " <= c <= "~"), None)  # control or not US-ASCII
    if bad is not None and bad > "~":
        hint = (
            ", or take it from a key field (encoded per file, see docs/keys.md)" if fields else ""
        )
        raise ValueError(
            f"{head} holds {bad!r}: header values are US-ASCII; write it percent-encoded "
            f"({quote(bad)}){hint}"
        )
    if bad is not None:
        raise ValueError(f"{head} holds the control character {bad!r}")
    if text != text.strip():
        raise ValueError(f"{head} starts or ends with white space, which HTTP drops")


def check_option_value(
    setting: str, what: str, text: str, *, header: bool, known: Set[str]
) -> set[str]:
    """A value that may use key fields: plain, known fields, and text it can carry (``header``:
    printable US-ASCII without white space at either end, which HTTP drops; else a tag value's
    ``TAG_CHARS``).  Returns the fields used."""
    label = f"{setting}: {what}" if what else setting
    head = f"{setting}: {what}" if what else f"{setting}:"  # "field: ..." in every message
    fields = key_format_fields(text, label)
    if header:
        check_header_value(head, text, fields=True)
    else:
        bad = next((c for c in _literal(text) if not _TAG_RE.fullmatch(c)), None)
        if bad is not None:
            raise ValueError(f"{head} holds {bad!r}; {TAG_CHARS}")
    _check_known(label, fields, known)
    return fields


def check_metadata(pairs: dict[str, str], known: Set[str]) -> dict[str, str]:
    """METADATA: names lower-cased (S3 stores them so), checked; values checked."""
    out: dict[str, str] = {}
    for name, value in pairs.items():
        if not name:
            raise ValueError("metadata: a name is empty")
        check_header_name(f"metadata: name {name!r}", name)
        low = name.lower()
        if low.startswith("x-amz-meta-"):
            raise ValueError(f"metadata: name {name!r}: give the name without x-amz-meta-")
        if low.startswith(RESERVED_METADATA_PREFIX):
            raise ValueError(
                f"metadata: name {name!r}: the {RESERVED_METADATA_PREFIX} prefix is reserved "
                "for s3spool's own metadata"
            )
        if low in out:
            raise ValueError(f"metadata: name {name!r} is given twice (names ignore case)")
        check_option_value("metadata", f"value of {name!r}", value, header=True, known=known)
        out[low] = value
    size = sum(len(k) + len(_literal(v)) for k, v in out.items())
    if size > MAX_USER_METADATA:
        raise ValueError(
            f"metadata: {size} bytes of names and values; at most {MAX_USER_METADATA} "
            "(S3 allows 2 KiB of metadata, s3spool's own entries included)"
        )
    return out


def check_tags(pairs: dict[str, str], known: Set[str]) -> dict[str, str]:
    """TAGS: S3's limits on count and length, and the characters S3 takes."""
    if len(pairs) > MAX_TAGS:
        raise ValueError(f"tags: {len(pairs)} given; S3 allows at most {MAX_TAGS} per object")
    for name, value in pairs.items():
        if not name:
            raise ValueError("tags: a name is empty")
        if len(name) > MAX_TAG_KEY:
            raise ValueError(
                f"tags: name {name[:20]!r}… is {len(name)} characters; S3 allows {MAX_TAG_KEY}"
            )
        bad = next((c for c in name if not _TAG_RE.fullmatch(c)), None)
        if bad is not None:
            raise ValueError(
                f"tags: name {name!r} holds {bad!r}; {TAG_CHARS} (key fields only in values)"
            )
        if name.lower().startswith("aws:"):
            raise ValueError(f"tags: name {name!r}: the aws: prefix is reserved by AWS")
        check_option_value("tags", f"value of {name!r}", value, header=False, known=known)
        if len(_literal(value)) > MAX_TAG_VALUE:
            raise ValueError(
                f"tags: value of {name!r} is longer than {MAX_TAG_VALUE} characters (S3's limit)"
            )
    return dict(pairs)
