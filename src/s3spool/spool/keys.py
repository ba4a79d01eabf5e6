"""Object keys: ``KEY_FORMAT`` rendered for a file, never with a leading ``/``, ``.``, ``..`` or
empty segments; a name is its key but for ``%XX`` for bad UTF-8 and control characters."""

from __future__ import annotations

import functools
import os
import string
import time
import uuid
from collections.abc import Callable, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from s3spool.config.options import key_format_fields
from s3spool.errors import PermanentError

if TYPE_CHECKING:
    from s3spool.spool.spool import Claim

MAX_KEY_BYTES = 1024
_UNITS = ("YYYY", "MM", "DD", "hh", "mm", "ss")
_M_FIELDS = frozenset(f"m_{u}" for u in _UNITS)
_C_FIELDS = frozenset(f"c_{u}" for u in _UNITS)
#: fields of the file and the spool alone: a key of these is recomputed after a crash, not kept
STABLE_FIELDS = frozenset({"fname", "relpath", "dirname", "spool_dir"}) | _M_FIELDS
#: fields drawn anew for each claim: a dry run cannot show them
DRAWN_FIELDS = frozenset({"now", "uuid1", "uuid4"})


def encode_name(raw: bytes) -> str:
    """A file name as it goes into a key: valid UTF-8 unchanged, ``%`` included; ``%XX`` for
    control characters and each byte that is not valid UTF-8 (docs/keys.md)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (
        # the common name, printable ASCII (no control bytes, no DEL), without the generator
        (text.isascii() and text.isprintable())
        or not any(ord(c) < 0x20 or c == "\x7f" for c in text)
    ):
        return text
    out: list[str] = []
    i = 0
    while i < len(raw):
        b = raw[i]
        if b < 0x80:
            out.append(f"%{b:02X}" if b < 0x20 or b == 0x7F else chr(b))
            i += 1
            continue
        # take the one character a valid UTF-8 sequence starting here encodes, else escape
        # one byte (a wider chunk would take the ASCII after it unescaped: é then % or \n)
        for width in (2, 3, 4):
            try:
                char = raw[i : i + width].decode("utf-8")
            except UnicodeDecodeError:
                continue
            out.append(char)
            i += width
            break
        else:
            out.append(f"%{b:02X}")
            i += 1
    return "".join(out)


def _time_fields(prefix: str, ts: float) -> dict[str, str]:
    t = datetime.fromtimestamp(ts, UTC)
    values = [f"{t.year:04d}"] + [f"{n:02d}" for n in (t.month, t.day, t.hour, t.minute, t.second)]
    return dict(zip([f"{prefix}_{u}" for u in _UNITS], values, strict=True))


@dataclass(frozen=True, slots=True)
class KeyInput:
    """What a key is rendered from: the file's name and claim-time stat; ``dirname``: the
    directories between incoming/ and the file (``a/b``, RECURSIVE), kept by a claim."""

    name: bytes
    spool_dir: str
    mtime: float
    ctime: float
    dirname: bytes = b""


def claim_input(claim: Claim) -> KeyInput:
    """What a claim's key and object options render from (an adopted claim's mtime is its ctime)."""
    dirs = claim.spool.dirs
    dirname, _, name = claim.name.rpartition("/")  # a claim's name is its relpath
    return KeyInput(
        os.fsencode(name),
        _spool_field(dirs.root or dirs.incoming),
        claim.mtime,
        claim.ctime or claim.mtime,
        os.fsencode(dirname),
    )


def field_values(
    item: KeyInput, used: Set[str], hostname: str, names: Callable[[bytes], str] = encode_name
) -> dict[str, object]:
    """The values of the key fields for ``item``: the cheap ones always, the others
    (``now``, UUIDs, times) only when ``used`` names them; ``names`` turns name bytes to text."""
    values: dict[str, object] = {
        "fname": names(item.name),
        "spool_dir": item.spool_dir,
        "hostname": hostname,
    }
    if "relpath" in used or "dirname" in used:
        # segments encoded like names; "/" is never escaped, so the split is lossless too
        values["dirname"] = names(item.dirname)
        values["relpath"] = (
            f"{values['dirname']}/{values['fname']}" if item.dirname else values["fname"]
        )
    if "now" in used:
        values["now"] = int(time.time())
    if "uuid1" in used:
        values["uuid1"] = str(uuid.uuid1())
    if "uuid4" in used:
        values["uuid4"] = str(uuid.uuid4())
    if not used.isdisjoint(_M_FIELDS):
        values.update(_time_fields("m", item.mtime))
    if not used.isdisjoint(_C_FIELDS):
        values.update(_time_fields("c", item.ctime))
    return values


class KeyTemplate:
    """A ``KEY_FORMAT`` (checked by ``settings.check_key_format``) bound to a destination prefix."""

    def __init__(self, template: str, prefix: str, hostname: str) -> None:
        self.template = template
        self.prefix = prefix
        self.fields = key_format_fields(template)  # checked with the settings
        self.stable = self.fields <= STABLE_FIELDS
        self._formatter = string.Formatter()
        self._hostname = hostname

    def render(
        self, item: KeyInput, suffix: str = "", extra: dict[str, object] | None = None
    ) -> str:
        """The key of ``item``; ``suffix`` (COMPRESS's ``.zst``) is appended after the rules;
        ``extra``: fields of a template's own (a bundle's ``{batch_seq}``)."""
        if self.template == "{fname}":
            # the default, without the formatter: a name with no "/" and not "", "." or ".."
            # is its own sanitized key
            rendered = encode_name(item.name)
            if "/" in rendered or rendered in ("", ".", ".."):
                rendered = sanitize_key(rendered)
        else:
            values = field_values(item, self.fields, self._hostname)
            if extra:
                values.update(extra)
            try:
                rendered = self._formatter.vformat(self.template, (), values)
            except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
                raise PermanentError(f"key template failed: {exc!r}", reason="bad_key") from None
            rendered = sanitize_key(rendered)
        key = self.prefix + rendered + suffix
        if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
            raise PermanentError(
                f"key longer than {MAX_KEY_BYTES} bytes: {key[:80]!r}…", reason="key_too_long"
            )
        return key


def sanitize_key(rendered: str) -> str:
    """Collapse ``//``, drop ``.`` segments, refuse ``..``; never a leading ``/``."""
    segments = [s for s in rendered.split("/") if s not in ("", ".")]
    if any(s == ".." for s in segments):
        raise PermanentError(f"key {rendered!r} has a '..' segment", reason="bad_key")
    key = "/".join(segments)
    if not key:
        raise PermanentError("key template rendered an empty key", reason="bad_key")
    return key


def spool_dir_field(path: Path) -> str:
    """The ``{spool_dir}`` value: the spool root with its slashes stripped at both ends."""
    return encode_name(os.fsencode(path)).strip("/")


# once per spool, not per file: a handful of spools per process
_spool_field = functools.lru_cache(maxsize=256)(spool_dir_field)
