"""Object options (METADATA, TAGS, CACHE_CONTROL, CONTENT_DISPOSITION) rendered per file from
the key's fields, names as their bytes: ``%XX`` in metadata, ``_`` in tags, and in
Content-Disposition an ASCII ``filename`` with the exact name in ``filename*`` (RFC 6266)."""

from __future__ import annotations

import os
import re
import string
import time
import unicodedata
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from s3spool.config.catalog import env_name, flag_name
from s3spool.config.options import MAX_TAG_VALUE, MAX_USER_METADATA, TAG_CLASS, key_format_fields
from s3spool.config.settings import Settings
from s3spool.errors import ConfigError, PermanentError
from s3spool.spool.keys import KeyInput, claim_input, field_values
from s3spool.spool.spool import Claim, Source

#: what a header value keeps of a field's value as it is: printable ASCII but the quoting
#: ones and '%' (so that unquote_to_bytes gives back the name's bytes)
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\%')
_NOT_TAG = re.compile(f"[^{TAG_CLASS}]")
#: RFC 5987 attr-char but ALPHA / DIGIT and "-._~", which quote() always keeps
_ATTR_CHAR = "!#$&+^`|"
#: a quoted filename="..." parameter of CONTENT_DISPOSITION: gets a filename* when needed
_FILENAME = re.compile(r'(?<![\w*-])filename\s*=\s*"([^"]*)"', re.IGNORECASE)


class OptionError(ValueError):
    """A value could not be rendered, or broke a limit once rendered."""

    def __init__(self, setting: str, text: str, reason: str = "bad_object_option") -> None:
        super().__init__(f"{setting}: {text}")
        self.reason = reason
        #: the message naming the setting both ways, as settings errors do
        self.named = f"{env_name(setting)} ({flag_name(setting)}): {text}"


def header_safe(value: str) -> str:
    """A field's value as header text: ``%XX`` (UTF-8; a name's other bytes as they are) for
    what a header cannot carry and ``%``."""
    if all(c in _HEADER_SAFE for c in value):
        return value
    return quote(value, safe=_HEADER_SAFE, errors="surrogateescape")


def ascii_fallback(value: str) -> str:
    """A field's value for a quoted ``filename``: non-ASCII letters without their accents, and
    ``_`` for the rest that is not printable ASCII, for ``"``, ``\\`` and ``%`` (RFC 6266 D)."""
    if all(c in _HEADER_SAFE for c in value):
        return value
    out = []
    for c in value:
        if c not in _HEADER_SAFE:
            c = "".join(a for a in unicodedata.normalize("NFKD", c) if a in _HEADER_SAFE) or "_"
        out.append(c)
    return "".join(out)


def _keep_edges(value: str) -> str:
    """Spaces at either end as ``%20``: HTTP drops them (a name may start with a space)."""
    if value[:1] != " " and value[-1:] != " ":
        return value
    body = value.lstrip(" ")
    inner = body.rstrip(" ")
    return "%20" * (len(value) - len(body)) + inner + "%20" * (len(body) - len(inner))


class ObjectOptions:
    """The configured object options, rendered for one file at a time."""

    def __init__(self, s: Settings) -> None:
        self.metadata = dict(s.metadata or {})
        self.tags = dict(s.tags or {})
        self.cache_control = s.cache_control
        self.content_disposition = s.content_disposition
        templates = [*self.metadata.values(), *self.tags.values(), self.content_disposition or ""]
        self.fields = {field for t in templates for field in key_format_fields(t)}
        found = _FILENAME.search(self.content_disposition or "")
        self._filename = found.group(1) if found and key_format_fields(found.group(1)) else None
        self._hostname = s.hostname_field
        self._formatter = string.Formatter()
        now = time.time()
        try:
            sample = self._render(KeyInput(b"sample.dat", "spool", now, now))
        except OptionError as exc:
            raise ConfigError(exc.named) from None
        # without fields every file gets the same values: rendered once
        self._fixed = None if self.fields else sample

    def params(self, item: KeyInput) -> dict[str, Any]:
        """PutObject / CreateMultipartUpload parameters for the file ``item`` describes
        (``Metadata`` holds only the user's); ``PermanentError`` when a value cannot be sent."""
        if self._fixed is not None:
            return self._fixed
        try:
            return self._render(item)
        except OptionError as exc:
            raise PermanentError(exc.named, reason=exc.reason) from None

    def apply(self, params: dict[str, Any], src: Source) -> None:
        """Add the options to the object parameters ``params`` of ``src``."""
        if not src.per_file_options:
            if self.cache_control:
                params["CacheControl"] = self.cache_control
            return
        opts = self._fixed if self._fixed is not None else self.params(source_input(src))
        for name, value in opts.items():
            if name == "Metadata":
                params["Metadata"].update(value)  # never s3spool-*: settings refuses those
            else:
                params[name] = value

    def _format(self, setting: str, name: str, template: str, values: Mapping[str, object]) -> str:
        try:
            return self._formatter.vformat(template, (), values)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            what = f"value of {name!r}" if name else "value"
            raise OptionError(setting, f"{what} failed to render: {exc!r}") from None

    def _render(self, item: KeyInput) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # names as their bytes (os.fsdecode), not as the key has them: each option encodes them
        values = field_values(item, self.fields, self._hostname, os.fsdecode) if self.fields else {}
        if self.metadata:
            safe = {k: header_safe(str(v)) for k, v in values.items()}
            meta = {
                name: _keep_edges(self._format("metadata", name, t, safe))
                for name, t in self.metadata.items()
            }
            size = sum(len(k) + len(v) for k, v in meta.items())
            if size > MAX_USER_METADATA:
                raise OptionError(
                    "metadata",
                    f"{size} bytes of names and values once rendered; at most "
                    f"{MAX_USER_METADATA} (S3 allows 2 KiB, s3spool's own entries included)",
                    reason="metadata_too_large",
                )
            out["Metadata"] = meta
        if self.tags:
            tags = {
                name: _NOT_TAG.sub("_", self._format("tags", name, t, values))
                for name, t in self.tags.items()
            }
            for name, value in tags.items():
                if len(value) > MAX_TAG_VALUE:
                    raise OptionError(
                        "tags",
                        f"value of {name!r} is {len(value)} characters once rendered; "
                        f"S3 allows {MAX_TAG_VALUE}",
                        reason="bad_tag",
                    )
            # %20, not '+', for a space: unambiguous to every store's query decoder
            out["Tagging"] = urlencode(tags, quote_via=quote)
        if self.cache_control:
            out["CacheControl"] = self.cache_control
        if self.content_disposition:
            plain = {k: ascii_fallback(str(v)) for k, v in values.items()}
            cd = self._format("content_disposition", "", self.content_disposition, plain)
            if self._filename is not None:
                name = self._format("content_disposition", "", self._filename, values)
                if name != self._format("content_disposition", "", self._filename, plain):
                    exact = quote(name, safe=_ATTR_CHAR, errors="surrogateescape")
                    cd = f"{cd}; filename*=UTF-8''{exact}"
            out["ContentDisposition"] = _keep_edges(cd)
        return out


def object_options(s: Settings) -> ObjectOptions | None:
    """The options to send with every object, or None when none is set (the common case)."""
    if s.metadata or s.tags or s.cache_control or s.content_disposition:
        return ObjectOptions(s)
    return None


def source_input(src: Source) -> KeyInput:
    """What ``src``'s options render from: a claim's key input, else (``s3spool check``'s
    test object, which no spool holds) its name and mtime."""
    src = src.file()  # a compressed copy renders as its file
    if isinstance(src, Claim):
        return claim_input(src)
    t = src.mtime_ns / 1e9
    return KeyInput(os.fsencode(src.name), "", t, t)
