"""Hostile and odd input, table-driven (issue 3 point 8; docs/guarantees.md, guarantee 13).

Every row of ``CASES`` says

(a) how its entry is set up in ``incoming/`` (or during the run: ``setup``),
(b) the log record it must produce (``log``: field -> regex, searched in one record; ``None``
    only for names that are silently ignored by design, with the reason in ``note``),
(c) where the entry must end up (``place``: incoming, done, failed, working, or nowhere for a
    file that vanished), with ``reason`` = the ``reason`` field of ``failed/NAME.reason.json``,
(d) for uploaded entries the object key and its bytes (``key``, ``data``).

The real process runs (``python -m s3spool run [--once]``) against moto on 127.0.0.1, with
``S3SPOOL_LOG_FORMAT=json`` so records are matched by field.  When the tests run as root, the
service runs as uid 65534 (nobody) through setpriv, so permission cases are real; its spools live
under a fresh 0755 ``tempfile.mkdtemp()`` directory (pytest's tmp_path is under a 0700 one).

Cases are grouped into a few runs (``RUNS``) that do not interfere; each run is a module-scoped
fixture executed once, and ``test_case`` (one test per row) checks the run's outcome for its row,
so each case passes or fails on its own.  ``test_run`` checks each run as a whole: exit code, no
crash, every output line valid JSON (one line per record, whatever the names), no unexpected
object, and no credential or signature anywhere in the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import pytest

from faultproxy import FaultProxy
from proc import SpoolProc, as_user
from s3servers import RcloneServer, S3Server, S3Target
from s3spool.destinations import NoopStore
from s3spool.service import Service
from s3spool.spool import Claim
from svc import settings_for

AS_ROOT = os.geteuid() == 0
UID = 65534 if AS_ROOT else os.geteuid()  # the service's user
GID = 65534 if AS_ROOT else os.getegid()
PREFIX = "in/"  # destination prefix of every run
# Distinctive credentials: moto accepts any; they must never show up in a log.
ACCESS = "AKIAINPUTS" + uuid.uuid4().hex[:10].upper()
SECRET = "inputs-SECRET-" + uuid.uuid4().hex
LONG = "p" * 400  # literal KEY_FORMAT prefix of the "text" run (case 16)
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
LEAK = re.compile(
    r"(?i)(Signature|Credential|X-Amz-Security-Token|Authorization)['\"]?\s*[=:]\s*['\"]?"
    r"(?!\*\*\*)[A-Za-z0-9/+]"
)
FUTURE = 4102444800.0  # 2100-01-01T00:00:00Z

Place = Literal["incoming", "done", "failed", "working", "nowhere"]
Kind = Literal["file", "symlink", "fifo", "socket", "dir", "chr", "blk"]


# --- how entries are made ---------------------------------------------------------------------
@dataclass
class Spot:
    """Where one run's spool is: ``base/<run>/spool``, with ``base/<run>/outside`` beside it."""

    root: Path
    spool: Path
    outside: Path

    @property
    def incoming(self) -> Path:
        return self.spool / "incoming"

    def path(self, place: str, raw: bytes) -> bytes:
        return os.path.join(os.fsencode(self.spool / place), raw)


Maker = Callable[[Spot, bytes], None]


def own(path: str | bytes | Path) -> None:
    """Give an entry to the service user (producers usually run as it)."""
    if AS_ROOT:
        os.lchown(path, UID, GID)


def regular(data: bytes, *, mode: int = 0o644, root_only: bool = False,
            mtime: float | None = None) -> Maker:
    def make(spot: Spot, raw: bytes) -> None:
        path = spot.path("incoming", raw)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, mode)
        if not root_only:
            own(path)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    return make


def symlink(target: str) -> Maker:
    """``target`` may name ``{outside}`` or ``{spool}``."""

    def make(spot: Spot, raw: bytes) -> None:
        dest = spot.path("incoming", raw)
        os.symlink(target.format(outside=spot.outside, spool=spot.spool), dest)
        own(dest)

    return make


def fifo(spot: Spot, raw: bytes) -> None:
    os.mkfifo(spot.path("incoming", raw))
    own(spot.path("incoming", raw))


def unix_socket(spot: Spot, raw: bytes) -> None:
    path = spot.path("incoming", raw)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)  # the socket file stays after close
    own(path)


def directory(spot: Spot, raw: bytes) -> None:
    path = spot.path("incoming", raw)
    os.mkdir(path)
    with open(os.path.join(path, b"inner.dat"), "wb") as fh:
        fh.write(b"inside a directory: never uploaded")
    own(path)


def device(kind: int, major: int, minor: int) -> Maker:
    def make(spot: Spot, raw: bytes) -> None:
        os.mknod(spot.path("incoming", raw), kind | 0o666, os.makedev(major, minor))

    return make


def hard_link(spot: Spot, raw: bytes) -> None:
    target = spot.outside / "shared.dat"
    target.write_bytes(b"hard-linked from outside the spool")
    target.chmod(0o644)
    os.link(target, spot.path("incoming", raw))


# --- the table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    run: str
    name: bytes
    setup: str  # (a), in words; the code is ``make`` (before the run) or the run's script
    log: dict[str, str] | None  # (b)
    place: Place  # (c)
    reason: str | None = None  # (c) reason field of failed/NAME.reason.json; None: no such file
    key: str | None = None  # (d) bucket-relative
    data: bytes | None = None  # (d) object bytes == bytes of the file where it ends up
    make: Maker | None = None
    kind: Kind = "file"  # what the entry still is where it ends up
    link: str | None = None  # a symlink's target, unchanged
    once: bool = False  # the log record appears exactly once (warned once, not per scan)
    never: tuple[str, ...] = ()  # files whose bytes must be in no object (nor opened: see run)
    needs_root: bool = False
    note: str = ""
    bug: str | None = None  # a known service bug: the row is a strict xfail with this reason


def nm(raw: bytes) -> str:
    """A name as the service's ``%r`` log messages show it."""
    return re.escape(repr(os.fsdecode(raw)))


def skipped(raw: bytes, kind: str) -> dict[str, str]:
    return {"level": "^WARNING$",
            "event": rf"name={nm(raw)}: skipped, {kind} \(left in place\)$"}


def filed(raw: bytes, outcome: str, **more: str) -> dict[str, str]:
    return {"logger": "^s3spool.file$", "event": "^file$",
            "name": f"^{re.escape(os.fsdecode(raw))}$", "outcome": f"^{outcome}$", **more}


def tv(value: str) -> str:
    """A value in a text log line: as is, or JSON-quoted when odd (spaces, quotes, controls)."""
    return f"(?:{re.escape(value)}|{re.escape(json.dumps(value, ensure_ascii=False))})"


def text_filed(raw: bytes, outcome: str, key: str) -> dict[str, str]:
    return {"line": rf" INFO +s3spool\.file: file spool=\S+ name={tv(os.fsdecode(raw))} "
                    rf"key={tv(key)} .*outcome={outcome}"}


def uploaded(cid: str, raw: bytes, data: bytes, key: str, setup: str, **kw: Any) -> Case:
    run = kw.pop("run", "main")
    log = (text_filed(raw, "done", key) if run == "text"
           else filed(raw, "done", key=f"^{re.escape(key)}$"))
    return Case(cid, run, raw, setup, log, "done", key=key, data=data,
                make=kw.pop("make", None) or regular(data), **kw)


def ignored(cid: str, name: str) -> Case:
    return Case(cid, "main", name.encode(), f"regular file {name!r}", None, "incoming",
                data=b"producer temp file", make=regular(b"producer temp file"),
                note="matches the default IGNORE (.*, *.tmp, *.part): producers' temporary "
                     "names are skipped silently by design, or every in-progress write would "
                     "log a line")


NL = b"a\nb"
FORGED = b"x\n2030-01-01 00:00:00,000 ERROR s3spool: forged line"
BACKSLASH = b"back\\slash \"double\" 'single'"
L255 = b"L" * 251 + b".dat"
U255 = "日".encode() * 85
BAD220 = b"\xff" * 220
A220 = b"a" * 220

CASES: list[Case] = [
    # -- never followed, never opened: non-regular entries are left with one warning
    Case("01-symlink-etc-shadow", "main", b"shadow-link", "symlink -> /etc/shadow",
         skipped(b"shadow-link", "symlink"), "incoming", make=symlink("/etc/shadow"),
         kind="symlink", link="/etc/shadow", once=True, never=("/etc/shadow",),
         note="following it as nobody would have sent it to failed/ (EACCES)"),
    Case("01b-symlink-readable-outside", "main", b"decoy-link",
         "symlink -> a world-readable file outside the spool (inotify watches it for IN_OPEN)",
         skipped(b"decoy-link", "symlink"), "incoming", make=symlink("{outside}/decoy.txt"),
         kind="symlink", link="{outside}/decoy.txt", once=True, never=("{outside}/decoy.txt",)),
    Case("02-symlink-inside-spool", "main", b"inside-link",
         "symlink -> ../private.txt, a regular file in the spool root (watched for IN_OPEN)",
         skipped(b"inside-link", "symlink"), "incoming", make=symlink("../private.txt"),
         kind="symlink", link="../private.txt", once=True, never=("{spool}/private.txt",)),
    Case("02b-symlink-to-sibling", "main", b"sibling-link",
         "symlink -> sibling.dat, a regular file in incoming/ (uploaded under its own name)",
         skipped(b"sibling-link", "symlink"), "incoming", make=symlink("sibling.dat"),
         kind="symlink", link="sibling.dat", once=True),
    uploaded("02c-symlink-target-sibling", b"sibling.dat", b"the sibling's bytes",
             PREFIX + "sibling.dat", "regular file, target of the 02b symlink"),
    Case("02d-symlink-to-directory", "main", b"etc-link", "symlink -> /etc",
         skipped(b"etc-link", "symlink"), "incoming", make=symlink("/etc"), kind="symlink",
         link="/etc", once=True),
    Case("03-dangling-symlink", "main", b"dangling", "symlink -> /nonexistent/target",
         skipped(b"dangling", "symlink"), "incoming", make=symlink("/nonexistent/target"),
         kind="symlink", link="/nonexistent/target", once=True),
    Case("04-fifo", "main", b"fifo", "mkfifo (no writer: an open(2) would block forever)",
         skipped(b"fifo", "fifo"), "incoming", make=fifo, kind="fifo", once=True,
         note="the run must end quickly: see test_run[main]"),
    Case("05-unix-socket", "main", b"sock", "AF_UNIX socket bound to the name",
         skipped(b"sock", "socket"), "incoming", make=unix_socket, kind="socket", once=True),
    Case("06-directory", "main", b"subdir", "directory holding inner.dat",
         skipped(b"subdir", "directory"), "incoming", make=directory, kind="dir", once=True,
         note="inner.dat is not uploaded either: incoming/ is not walked recursively"),
    Case("07-char-device", "main", b"devnull", "mknod c 1 3 (a copy of /dev/null)",
         skipped(b"devnull", "device"), "incoming", make=device(stat.S_IFCHR, 1, 3),
         kind="chr", once=True, needs_root=True),
    Case("07b-block-device", "main", b"loopdev", "mknod b 7 0 (a loop device node)",
         skipped(b"loopdev", "device"), "incoming", make=device(stat.S_IFBLK, 7, 0),
         kind="blk", once=True, needs_root=True),
    # -- unreadable: failed/ with reason unreadable, bytes never sent, content intact
    Case("08-root-only-0600", "main", b"root-only",
         "regular file owned by root, mode 0600 (the service runs as nobody)",
         filed(b"root-only", "failed", level="^WARNING$", reason="^unreadable$",
               error="^cannot read: Permission denied$"),
         "failed", reason="unreadable", data=b"root's eyes only",
         make=regular(b"root's eyes only", mode=0o600, root_only=True),
         never=("{spool}/failed/root-only",), needs_root=True),
    Case("08b-mode-000", "main", b"mode-000", "regular file owned by the service user, mode 000",
         filed(b"mode-000", "failed", reason="^unreadable$",
               error="^cannot read: Permission denied$"),
         "failed", reason="unreadable", data=b"nobody may read this",
         make=regular(b"nobody may read this", mode=0), never=("{spool}/failed/mode-000",)),
    # -- odd names: uploaded, lossless key encoding (README "Odd file names")
    uploaded("09-newline", NL, b"newline name", PREFIX + "a%0Ab", "name a<LF>b"),
    uploaded("10-non-utf8", b"caf\xe9", b"latin-1 name", PREFIX + "caf%E9",
             "name b'caf\\xe9' (Latin-1, not UTF-8)"),
    uploaded("11-percent", b"50%.csv", b"percent", PREFIX + "50%25.csv", "name 50%.csv"),
    uploaded("11b-literal-escape", b"a%0Ab", b"literal %0A", PREFIX + "a%250Ab",
             "name a%0Ab, literally: must not collide with case 09's a<LF>b"),
    uploaded("12-three-dots", b"...", b"three dots", f"{PREFIX}{LONG}/...",
             "name ... (a name, not a '..' segment); IGNORE=*.tmp,*.part so that a dot-name "
             "is not ignored", run="text"),
    uploaded("13-leading-dash", b"-rf", b"not an option", PREFIX + "-rf", "name -rf"),
    uploaded("14-backslash-quotes", BACKSLASH, b"quotes", PREFIX + os.fsdecode(BACKSLASH),
             "name with a backslash, double and single quotes (text quoting: case 14t)"),
    uploaded("15-255-bytes", L255, b"long name", PREFIX + os.fsdecode(L255),
             "name of 255 bytes (NAME_MAX)"),
    uploaded("15b-255-bytes-multibyte", U255, b"long utf-8 name", PREFIX + U255.decode(),
             "name of 85 three-byte UTF-8 characters (255 bytes)"),
    uploaded("15c-control-chars", b"tab\there\x7f", b"controls", PREFIX + "tab%09here%7F",
             "name with a TAB and a DEL"),
    uploaded("15d-utf8-surrogate", b"sur\xed\xa0\x80", b"cesu", PREFIX + "sur%ED%A0%80",
             "name with an encoded UTF-16 surrogate (invalid UTF-8)"),
    uploaded("15e-truncated-utf8", b"trunc\xe6\x97", b"cut", PREFIX + "trunc%E6%97",
             "name ending in a truncated 3-byte UTF-8 sequence"),
    uploaded("15f-url-specials", b"q?x#y+z&=;", b"url", PREFIX + "q?x#y+z&=;",
             "name with URL-special characters ? # + & = ;"),
    uploaded("15g-spaces-only", b"   ", b"blank", PREFIX + "   ", "name of three spaces"),
    uploaded("15h-emoji", "📦.bin".encode(), b"box", PREFIX + "📦.bin",
             "name with a 4-byte UTF-8 character"),
    uploaded("15i-traversal-text", b"%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", b"not a path",
             PREFIX + "%252E%252E%252F%252E%252E%252Fetc%252Fpasswd",
             "name %2E%2E%2F%2E%2E%2Fetc%2Fpasswd, URL-encoded ../../etc/passwd (the key "
             "stays under the prefix, nothing decodes it)"),
    # -- ignored by IGNORE: no log at all
    ignored("17-hidden", ".hidden"),
    ignored("17b-tmp", "x.tmp"),
    ignored("17c-part", "y.part"),
    # -- sizes, times, links
    uploaded("18-empty", b"empty", b"", PREFIX + "empty", "0-byte file"),
    uploaded("19-hard-link-outside", b"hardlink", b"hard-linked from outside the spool",
             PREFIX + "hardlink",
             "hard link to outside/shared.dat (root-owned 0644, outside the spool)",
             make=hard_link,
             note="a hard link IS a regular file: it is uploaded (the outside name is kept)"),
    uploaded("19b-epoch-mtime", b"epoch", b"from 1970", PREFIX + "epoch", "mtime = 0",
             make=regular(b"from 1970", mtime=0.0)),
    uploaded("19c-future-mtime", b"future", b"from 2100", PREFIX + "future",
             "mtime 2100-01-01 (a producer with a skewed clock), HOLD_FOR=0 (default)",
             make=regular(b"from 2100", mtime=FUTURE)),
    Case("19d-future-mtime-held", "failed_ro", b"future-held",
         "mtime 2100-01-01, HOLD_FOR=1s, FAIL_RATE=1 (so it ends in failed/), `run`",
         {"level": "^WARNING$", "event": r"name='future-held'.*\bfuture\b"},
         "failed", reason="injected", data=b"held, not for 75 years",
         note="a clock ahead of ours: HOLD_FOR counts from now, with one warning"),
    # -- KEY_FORMAT too long for one name; text format quoting; DEBUG logs without credentials
    uploaded("16-key-fits", A220, b"fits", f"{PREFIX}{LONG}/{A220.decode()}",
             f"KEY_FORMAT={LONG[:3]}...(400)/{{fname}}; 220-byte ASCII name: key of 624 bytes",
             run="text"),
    Case("16b-key-too-long", "text", BAD220,
         "same KEY_FORMAT; 220 bytes 0xFF -> %FF x 220: key of 1064 bytes",
         {"line": r" WARNING +s3spool\.file: file .* outcome=failed reason=key_too_long "
                  r"error=\"key longer than 1024 bytes: "},
         "failed", reason="key_too_long", data=b"too long", make=regular(b"too long")),
    Case("14t-text-quoting", "text", BACKSLASH,
         "name with a backslash and quotes, LOG_FORMAT=text",
         {"line": r" INFO +s3spool\.file: file spool=\S+ name="
                  + re.escape(json.dumps(os.fsdecode(BACKSLASH))) + " "},
         "done", key=f"{PREFIX}{LONG}/{os.fsdecode(BACKSLASH)}", data=b"q",
         make=regular(b"q")),
    Case("14u-forged-log-line", "text", FORGED,
         "name holding a newline and a fake log line, LOG_FORMAT=text",
         {"line": r" INFO +s3spool\.file: file spool=\S+ name="
                  + re.escape(json.dumps(os.fsdecode(FORGED))) + " "},
         "done", key=f"{PREFIX}{LONG}/x%0A2030-01-01 00:00:00,000 ERROR s3spool: forged line",
         data=b"forged", make=regular(b"forged"),
         note="every line of the output starts with a timestamp: see test_run[text]"),
    uploaded("24-credentials", b"creds.dat", b"c", f"{PREFIX}{LONG}/creds.dat",
             f"LOG_LEVEL=DEBUG, secret key {SECRET[:14]}..., an upload", run="text",
             note="the secret, and any Signature=/Credential= value, are in no run's output "
                  "(test_run checks every run, this one at DEBUG)"),
    Case("24c-errors-do-not-leak", "done_ro", b"flaky.dat",
         "LOG_LEVEL=DEBUG behind the proxy: its PUTs reset, then answered 500, then let through",
         {"level": "^INFO$", "event": r"name='flaky\.dat': .+; retry \d+/\d+ in \d"},
         "done", key=PREFIX + "flaky.dat", data=b"retried twice",
         note="error messages of both attempts are in the output: test_run[done_ro] checks "
              "it holds no secret, Signature= or Credential= value"),
    Case("24b-refused-credentials", "badsecret", b"waits.dat",
         "rclone (which checks signatures) with a wrong secret; --once, DEBUG",
         {"level": "^ERROR$", "event": "^store unavailable: "}, "incoming",
         data=b"w", make=regular(b"w"),
         note="a global fault: the file is left where it is, exit 3, the secret not logged"),
    # -- races, unwritable directories, changing files (scripted during `run`)
    Case("20-vanish-before-claim", "failed_ro", b"vanishes",
         "HOLD_FOR=1s defers it; deleted 0.3s after it arrived, before it became eligible",
         None, "nowhere",
         note="nothing to say: the file never became eligible, and there is nothing to lose"),
    Case("20b-vanish-after-claim", "unit", b"gone",
         "Pipeline.deliver on a Claim whose file (and key record) was removed",
         {"level": "^WARNING$",
          "event": r"name='gone': 'gone' vanished after it was claimed; nothing to deliver$"},
         "nowhere"),
    Case("20c-symlink-swapped-in", "unit", b"swapped-link",
         "Pipeline.deliver on a Claim whose file was replaced by a symlink to a decoy",
         {"level": "^WARNING$", "event": r"name='swapped-link': skipped, is a symlink \(never "
                                         r"followed\) \(returned to incoming/\)$"},
         "incoming", kind="symlink", link="{outside}/decoy.txt",
         never=("{outside}/decoy.txt",)),
    Case("20d-fifo-swapped-in", "unit", b"swapped-fifo",
         "Pipeline.deliver on a Claim whose file was replaced by a fifo with no writer",
         {"level": "^WARNING$", "event": r"name='swapped-fifo': skipped, not a regular file "
                                         r"\(returned to incoming/\)$"},
         "incoming", kind="fifo", note="deliver must return within 5s (O_NONBLOCK)"),
    Case("21-done-unwritable", "done_ro", b"stuck-done",
         "done/ chowned to root 0755 while running; the file arrives; done/ given back",
         {"level": "^ERROR$",
          "event": r"^spool=\S+: cannot move 'stuck-done' in \S+/done: Permission denied "
                   r"\(EACCES\); this spool takes no new files until it works again$"},
         "done", key=PREFIX + "stuck-done", data=b"routed late",
         note="while done/ is unwritable: object stored, file in working/<instance>/files/, "
              "one line for the fault, moved within 2s of done/ working again (checked "
              "during the run)"),
    Case("22-failed-unwritable", "failed_ro", b"stuck-failed",
         "FAIL_RATE=1; failed/ chowned to root 0755 while running; the file arrives",
         {"level": "^ERROR$",
          "event": r"^spool=\S+: cannot move 'stuck-failed' in \S+/failed: Permission denied "
                   r"\(EACCES\); this spool takes no new files until it works again$"},
         "working", data=b"kept in working"),
    Case("23-growing-during-upload", "done_ro", b"growing.log",
         "renamed in with 1000 bytes, fd kept open; 500 more appended while its PUT is held "
         "by a 1s proxy latency",
         {"level": "^WARNING$",
          "event": r"name='growing\.log': changed during upload \(size 1000->1500\); "
                   r"uploading again$"},
         "done", key=PREFIX + "growing.log", data=b"A" * 1000 + b"B" * 500),
    # -- ENOSPC: a whole spool on a tmpfs with every inode used
    Case("25-enospc-key-record", "enospc", b"good-on-full-disk",
         "KEY_FORMAT={now}/{fname} (key record needed); no free inode on the spool's tmpfs",
         {"level": "^ERROR$",
          "event": r"^spool=\S+: cannot record the key of 'good-on-full-disk' in \S+/keys: No "
                   r"space left on device \(ENOSPC\); files that need space wait until it works "
                   r"again$"},
         "incoming", data=b"good file",
         make=regular(b"good file"),
         note="nothing was sent: the claim should be given back (or kept), not failed"),
    Case("25b-enospc-reason-file", "enospc", b"unreadable-full",
         "root-owned 0600 file; no free inode for failed/NAME.reason.json",
         {"level": "^WARNING$",
          "event": r"name='unreadable-full': could not write unreadable-full\.reason\.json: "
                   r"No space left on device$"},
         "failed", data=b"unreadable and disk full",
         make=regular(b"unreadable and disk full", mode=0o600, root_only=AS_ROOT),
         note="the reason cannot be written, so it is only in the log (reason=unreadable)"),
]


# --- results of one run ---------------------------------------------------------------------
@dataclass
class Result:
    run: str
    spot: Spot
    exit_code: int | None = None
    log: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)  # not JSON (json runs) / no timestamp
    objects: dict[str, bytes] = field(default_factory=dict)
    elapsed: float = 0.0
    opened: set[str] = field(default_factory=set)  # watched decoys something opened
    problems: dict[str, list[str]] = field(default_factory=dict)  # seen during the run, by case

    def note(self, cid: str, problem: str) -> None:
        self.problems.setdefault(cid, []).append(problem)


def finish(
    res: Result, proc: ServiceProc, started: float, target: S3Target, fmt: str
) -> None:
    """A run is over: its time, its log records and the objects it left in the bucket."""
    res.elapsed = time.monotonic() - started
    parse_log(res, proc.log_text(), fmt)
    fetch_objects(res, target)


def parse_log(res: Result, text: str, fmt: str) -> None:
    res.log = text
    for line in text.splitlines():
        if fmt == "json":
            try:
                rec = json.loads(line)
            except ValueError:
                res.bad_lines.append(line)
                continue
            res.records.append(rec if isinstance(rec, dict) else {"line": line})
        else:
            if not TEXT_LINE.match(line):
                res.bad_lines.append(line)
            res.records.append({"line": line})


def fetch_objects(res: Result, target: S3Target) -> None:
    listed: list[str] = target.keys()
    res.objects = {key: target.get(key) for key in listed}


class ServiceProc(SpoolProc):
    """SpoolProc, but as the unprivileged service user (setpriv) when the tests run as root."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        super().__init__(
            args,
            {**env, "PYTHONDONTWRITEBYTECODE": "1"},
            cwd,
            log_path,
            wrapper=as_user(UID, GID) if AS_ROOT else None,
        )


def service_env(target: S3Target, spool: Path, **settings: str) -> dict[str, str]:
    env = target.env(PREFIX)
    env.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET,
               S3SPOOL_SPOOL_DIRS=str(spool), S3SPOOL_LOG_FORMAT="json",
               S3SPOOL_RETRY_BACKOFF="0.05", S3SPOOL_RETRY_BACKOFF_MAX="0.2",
               S3SPOOL_CONNECT_TIMEOUT="3", S3SPOOL_READ_TIMEOUT="15")
    env.update({f"S3SPOOL_{k.upper()}": v for k, v in settings.items()})
    return env


def new_spot(base: Path, run: str) -> Spot:
    root = base / run
    spot = Spot(root, root / "spool", root / "outside")
    for d in (root, spot.outside, spot.spool / "producer"):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    spot.spool.mkdir(exist_ok=True)
    own(spot.spool)
    for sub in ("incoming", "working", "done", "failed"):
        (spot.spool / sub).mkdir(exist_ok=True)
        own(spot.spool / sub)
    (spot.outside / "decoy.txt").write_bytes(b"DECOY outside the spool: never to be read")
    (spot.outside / "decoy.txt").chmod(0o644)
    (spot.spool / "private.txt").write_bytes(b"PRIVATE to the spool root: never to be read")
    (spot.spool / "private.txt").chmod(0o644)
    return spot


def make_entries(spot: Spot, run: str) -> None:
    for case in CASES:
        if case.run == run and case.make is not None and (AS_ROOT or not case.needs_root):
            case.make(spot, case.name)


@contextlib.contextmanager
def watch_opens(paths: list[Path], res: Result) -> Iterator[None]:
    """Record (in ``res.opened``) any open(2) of these files while the block runs."""
    from asyncinotify import Inotify, Mask

    with contextlib.closing(Inotify(sync_timeout=0)) as inotify:
        for p in paths:
            inotify.add_watch(p, Mask.OPEN)
        yield
        res.opened |= {str(ev.watch.path) for ev in inotify if ev.watch is not None}


def drop(spot: Spot, name: str, data: bytes) -> None:
    """Write beside incoming/ and rename(2) in, as producers do; owned by the service user."""
    tmp = spot.spool / "producer" / name
    tmp.write_bytes(data)
    own(tmp)
    os.rename(tmp, spot.incoming / name)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def lock_out(path: Path) -> None:
    """Make a directory unwritable for the service user (root-owned 0755; non-root: 0555)."""
    if AS_ROOT:
        os.chown(path, 0, 0)
        path.chmod(0o755)
    else:
        path.chmod(0o555)


def give_back(path: Path) -> None:
    own(path)
    path.chmod(0o755)


def files_in_working(spot: Spot) -> set[str]:
    return {p.name for p in (spot.spool / "working").glob("*/files/*")}


# --- fixtures: one per run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="s3spool-inputs-"))
    path.chmod(0o755)
    if AS_ROOT:
        check = subprocess.run(
            [*as_user(UID, GID), sys.executable,
             "-c", "import s3spool.cli"], capture_output=True, text=True, timeout=60, check=False,
        )
        if check.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            pytest.skip(f"the venv cannot run as uid {UID}: {check.stderr.strip()[-300:]}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def run_main(base: Path, moto_srv: S3Server) -> Result:
    """One ``run --once`` over every "main" row at once."""
    target = moto_srv.new_target()
    spot = new_spot(base, "main")
    make_entries(spot, "main")
    res = Result("main", spot)
    watched = [spot.outside / "decoy.txt", spot.spool / "private.txt"]
    env = service_env(target, spot.spool)
    started = time.monotonic()
    with watch_opens(watched, res), \
            ServiceProc(["run", "--once"], env, spot.root, spot.root / "log") as proc:
        res.exit_code = proc.wait(40)
    finish(res, proc, started, target, "json")
    shared = spot.outside / "shared.dat"
    if not shared.exists() or shared.read_bytes() != b"hard-linked from outside the spool":
        res.note("19-hard-link-outside", "the file outside the spool was changed or removed")
    elif shared.stat().st_nlink != 2:
        res.note("19-hard-link-outside", f"outside file has {shared.stat().st_nlink} links")
    return res


@pytest.fixture(scope="module")
def run_text(base: Path, moto_srv: S3Server) -> Result:
    """``run --once``, LOG_FORMAT=text, LOG_LEVEL=DEBUG, a 400-byte literal KEY_FORMAT prefix,
    and IGNORE without ``.*`` (so that ``...`` is a candidate)."""
    target = moto_srv.new_target()
    spot = new_spot(base, "text")
    make_entries(spot, "text")
    res = Result("text", spot)
    env = service_env(target, spot.spool, log_format="text", log_level="DEBUG",
                      key_format=LONG + "/{fname}", ignore="*.tmp,*.part")
    started = time.monotonic()
    with ServiceProc(["run", "--once"], env, spot.root, spot.root / "log") as proc:
        res.exit_code = proc.wait(40)
    finish(res, proc, started, target, "text")
    return res


@pytest.fixture(scope="module")
def run_badsecret(base: Path, rclone_srv: RcloneServer) -> Result:
    """rclone checks SigV4: a wrong secret is refused (SignatureDoesNotMatch)."""
    target = rclone_srv.new_target()
    spot = new_spot(base, "badsecret")
    make_entries(spot, "badsecret")
    res = Result("badsecret", spot)
    env = service_env(target, spot.spool, log_level="DEBUG")
    env["AWS_ACCESS_KEY_ID"] = target.access_key  # the right key id, the wrong secret
    started = time.monotonic()
    with ServiceProc(["run", "--once"], env, spot.root, spot.root / "log") as proc:
        res.exit_code = proc.wait(40)
    finish(res, proc, started, target, "json")
    return res


@pytest.fixture(scope="module")
def run_done_ro(base: Path, moto_srv: S3Server) -> Result:
    """``run`` at DEBUG behind a FaultProxy: case 24c (failing PUTs), case 23 (slow PUT,
    growing file), then case 21."""
    target = moto_srv.new_target()
    spot = new_spot(base, "done_ro")
    res = Result("done_ro", spot)
    done = spot.spool / "done"
    started = time.monotonic()
    with FaultProxy(target.endpoint_url) as proxy:
        env = service_env(target.via(proxy.url), spot.spool, cleanup_interval="1",
                          rescan_interval="2", shutdown_grace="5", log_level="DEBUG")
        with ServiceProc(["run"], env, spot.root, spot.root / "log") as proc:
            try:
                proc.wait_for_log(r"watching 1 spool", 20)
                # 24c: error paths at DEBUG: a reset, then a 500, then success
                # (botocore reports a reset PUT as "could not connect": a pause, not a retry)
                proxy.fault_kinds = frozenset({"put_object"})
                proxy.reset = 1.0
                drop(spot, "flaky.dat", b"retried twice")
                proc.wait_for_log(r"'flaky\.dat': .+; retry 1/|store unavailable \(PutObject", 15)
                mark = proc.mark()
                proxy.reset, proxy.error500 = 0.0, 1.0
                proc.wait_for_log(r"'flaky\.dat': .+; retry \d+/", 15, since=mark)
                proxy.clear_faults()
                if not wait_until(lambda: (done / "flaky.dat").exists(), 15, "flaky done"):
                    res.note("24c-errors-do-not-leak", "not in done/ within 15s")
                # 23: the producer keeps its fd and appends while the PUT is held by the proxy
                proxy.latency_s = 1.0
                tmp = spot.spool / "producer" / "growing.log"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, b"A" * 1000)
                    own(tmp)
                    os.rename(tmp, spot.incoming / "growing.log")
                    if not wait_until(lambda: proxy.in_flight >= 1, 15, "PUT in flight"):
                        res.note("23-growing-during-upload", "no PUT in flight within 15s")
                    os.write(fd, b"B" * 500)
                finally:
                    os.close(fd)
                if not wait_until(lambda: (done / "growing.log").exists(), 20, "growing done"):
                    res.note("23-growing-during-upload", "not in done/ within 20s")
                proxy.latency_s = 0.0
                # 21: done/ unwritable while the file is uploaded
                lock_out(done)
                mark = proc.mark()
                drop(spot, "stuck-done", b"routed late")
                stuck = r"cannot move 'stuck-done' in \S+/done"
                proc.wait_for_log(stuck, 15, since=mark)
                if "stuck-done" not in files_in_working(spot):
                    res.note("21-done-unwritable", "not in working/<instance>/files/ while "
                                                   "done/ was unwritable")
                if target.get(PREFIX + "stuck-done") != b"routed late":
                    res.note("21-done-unwritable", "object missing while done/ was unwritable")
                time.sleep(2)  # probes of the fault go on meanwhile, without a line each
                if len(re.findall('"ERROR".*' + stuck, proc.log_text()[mark:])) != 1:
                    res.note("21-done-unwritable", "the fault was not logged exactly once")
                give_back(done)
                if not wait_until(lambda: (done / "stuck-done").exists(), 2.5, "stuck-done"):
                    res.note("21-done-unwritable", "not in done/ 2s after done/ was writable")
                proc.wait_for_log(r"/done works again after [0-9.]+s; resuming", 5, since=mark)
            finally:
                give_back(done)
                proc.signal(signal.SIGTERM)
                res.exit_code = proc.wait(30)
    finish(res, proc, started, target, "json")
    return res


@pytest.fixture(scope="module")
def run_failed_ro(base: Path, moto_srv: S3Server) -> Result:
    """``run`` with HOLD_FOR=1s and FAIL_RATE=1: case 20, case 19d, then case 22."""
    target = moto_srv.new_target()
    spot = new_spot(base, "failed_ro")
    res = Result("failed_ro", spot)
    failed = spot.spool / "failed"
    env = service_env(target, spot.spool, hold_for="1", fail_rate="1", cleanup_interval="1",
                      rescan_interval="2", shutdown_grace="5")
    started = time.monotonic()
    with ServiceProc(["run"], env, spot.root, spot.root / "log") as proc:
        try:
            proc.wait_for_log(r"watching 1 spool", 20)
            # 20: deferred by HOLD_FOR, then gone before it is eligible
            drop(spot, "vanishes", b"here for 0.3s")
            time.sleep(0.3)
            os.unlink(spot.incoming / "vanishes")
            time.sleep(2.5)  # past HOLD_FOR, the defer timer and one rescan
            if not proc.alive():
                res.note("20-vanish-before-claim", "the service died")
            # 19d: a future mtime must not hold a file until that future
            tmp = spot.spool / "producer" / "future-held"
            tmp.write_bytes(b"held, not for 75 years")
            own(tmp)
            os.utime(tmp, (FUTURE, FUTURE))
            os.rename(tmp, spot.incoming / "future-held")
            wait_until(lambda: (failed / "future-held").exists(), 8, "future-held failed")
            # 22: a failure that cannot be moved to failed/
            lock_out(failed)
            drop(spot, "stuck-failed", b"kept in working")
            proc.wait_for_log(r"cannot move 'stuck-failed' in \S+/failed", 15)
        finally:
            give_back(failed)
            proc.signal(signal.SIGTERM)
            res.exit_code = proc.wait(30)
    finish(res, proc, started, target, "json")
    return res


@pytest.fixture(scope="module")
def run_enospc(base: Path, moto_srv: S3Server) -> Iterator[Result]:
    """A spool on its own tmpfs (64 inodes), every inode used before ``run --once`` starts."""
    if not AS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    spot = new_spot(base, "enospc")
    shutil.rmtree(spot.spool)
    spot.spool.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=1m,nr_inodes=64,mode=0755,uid={UID},gid={GID}",
         "tmpfs", str(spot.spool)], capture_output=True, text=True, timeout=30, check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        target = moto_srv.new_target()
        instance = "inputs-enospc"
        for sub in ("incoming", "working", "done", "failed", "producer",
                    f"working/{instance}", f"working/{instance}/files",
                    f"working/{instance}/keys"):
            (spot.spool / sub).mkdir()
            own(spot.spool / sub)
        (spot.spool / "working" / instance / "lock").touch()
        own(spot.spool / "working" / instance / "lock")
        make_entries(spot, "enospc")
        filler = spot.spool / "filler"
        filler.mkdir()
        n = 0
        with contextlib.suppress(OSError):
            while n < 10_000:
                (filler / str(n)).touch()
                n += 1
        res = Result("enospc", spot)
        try:
            (filler / "one-more").touch()
            res.note("25-enospc-key-record", f"the tmpfs still has free inodes after {n}")
        except OSError:
            pass
        env = service_env(target, spot.spool, key_format="{now}/{fname}", instance_id=instance)
        started = time.monotonic()
        with ServiceProc(["run", "--once"], env, spot.root, spot.root / "log") as proc:
            res.exit_code = proc.wait(40)
        finish(res, proc, started, target, "json")
        yield res
    finally:
        if subprocess.run(["umount", str(spot.spool)], capture_output=True, timeout=30,
                          check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(spot.spool)], capture_output=True, timeout=30,
                           check=False)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        self.records.append({"level": record.levelname, "logger": record.name,
                             "event": record.getMessage(),
                             **(fields if isinstance(fields, dict) else {})})


@pytest.fixture(scope="module")
def run_unit(base: Path) -> Result:
    """In-process: races after the claim, arranged by hand around ``Pipeline.deliver``."""
    spot = new_spot(base, "unit")
    res = Result("unit", spot)
    handler = _Collect()
    logger = logging.getLogger("s3spool")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    decoy = spot.outside / "decoy.txt"
    try:
        with watch_opens([decoy], res):
            asyncio.run(_unit_races(spot, res))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    res.records = handler.records
    return res


async def _unit_races(spot: Spot, res: Result) -> None:
    settings = settings_for(spot.spool, None)
    svc = Service(settings)
    svc.prepare()
    (sp,) = svc.spools
    sp.open()
    # a regression that reads on must not crash the fixture: "upload" to noop:// and let the
    # case's place / opened-file checks say what went wrong
    svc.store = NoopStore(settings)

    async def deliver(cid: str, claim: Claim, timeout: float = 10) -> None:
        try:
            await asyncio.wait_for(svc.pipeline.deliver(claim), timeout)
        except TimeoutError:
            res.note(cid, f"deliver did not return within {timeout}s")
        except Exception as exc:
            res.note(cid, f"deliver raised {exc!r}")

    def claimed(name: str) -> Claim:
        drop(spot, name, b"regular when claimed")
        claim = sp.claim(name)
        assert claim is not None
        return claim

    try:
        # 20b: claimed, then removed (with its key record) before it is opened
        claim = claimed("gone")
        claim.key = PREFIX + "gone"
        sp.save_key(claim)
        os.unlink(claim.path)
        await deliver("20b-vanish-after-claim", claim)
        if (sp.keys / "gone").exists():
            res.note("20b-vanish-after-claim", "its key record was left in working/")
        # 20c: regular at lstat and claim time, a symlink at open time
        claim = claimed("swapped-link")
        os.unlink(claim.path)
        os.symlink(spot.outside / "decoy.txt", claim.path)
        await deliver("20c-symlink-swapped-in", claim)
        # 20d: a fifo with no writer at open time
        claim = claimed("swapped-fifo")
        os.unlink(claim.path)
        os.mkfifo(claim.path)
        fifo_path = claim.path

        def unblock() -> None:
            # a blocking open(2) would freeze the event loop, which wait_for cannot interrupt:
            # a writer's open releases it, so the test fails instead of hanging
            with contextlib.suppress(OSError):
                os.close(os.open(fifo_path, os.O_WRONLY | os.O_NONBLOCK))

        watchdog = threading.Timer(5.0, unblock)
        watchdog.start()
        started = time.monotonic()
        try:
            await deliver("20d-fifo-swapped-in", claim)
        finally:
            watchdog.cancel()
        if time.monotonic() - started > 4:
            res.note("20d-fifo-swapped-in", "deliver blocked on the fifo (released by a writer)")
    finally:
        sp.close()


# --- checks ---------------------------------------------------------------------------------
def entry_kind(path: bytes) -> str:
    mode = os.lstat(path).st_mode
    for kind, test in (("symlink", stat.S_ISLNK), ("fifo", stat.S_ISFIFO),
                       ("socket", stat.S_ISSOCK), ("dir", stat.S_ISDIR), ("chr", stat.S_ISCHR),
                       ("blk", stat.S_ISBLK), ("file", stat.S_ISREG)):
        if test(mode):
            return kind
    return "?"


def locate(spot: Spot, raw: bytes) -> list[tuple[str, bytes]]:
    found = [(p, spot.path(p, raw)) for p in ("incoming", "done", "failed")
             if os.path.lexists(spot.path(p, raw))]
    for inst in sorted((spot.spool / "working").iterdir()):
        path = os.path.join(os.fsencode(inst / "files"), raw)
        if os.path.lexists(path):
            found.append(("working", path))
    return found


def matching(records: list[dict[str, Any]], want: dict[str, str]) -> list[dict[str, Any]]:
    return [r for r in records
            if all(k in r and re.search(v, str(r[k]), re.S) for k, v in want.items())]


def mentions(rec: dict[str, Any], raw: bytes) -> bool:
    name = os.fsdecode(raw)
    return rec.get("name") == name or any(
        isinstance(v, str) and (repr(name) in v or f"/{name}" in v) for v in rec.values())


def check_case(case: Case, res: Result) -> list[str]:
    spot, raw = res.spot, case.name
    problems = list(res.problems.get(case.id, []))
    # (b) the log record
    if case.log is None:
        said = [r for r in res.records if mentions(r, raw)]
        if said:
            problems.append(f"expected no log record about it, got {said[:3]}")
    else:
        hits = matching(res.records, case.log)
        if not hits:
            problems.append(f"no log record matches {case.log}")
        elif case.once and len(hits) != 1:
            problems.append(f"expected the record once, got it {len(hits)} times")
    # (c) where it ended up, still what it was
    found = locate(spot, raw)
    places = [p for p, _ in found]
    want = [] if case.place == "nowhere" else [case.place]
    if places != want:
        problems.append(f"expected it in {want}, found it in {places}")
    elif found:
        path = found[0][1]
        kind = entry_kind(path)
        if kind != case.kind:
            problems.append(f"it is now a {kind}, expected a {case.kind}")
        if case.link is not None and kind == "symlink":
            link = case.link.format(outside=spot.outside, spool=spot.spool)
            if os.readlink(path) != os.fsencode(link):
                problems.append(f"symlink now points to {os.readlink(path)!r}, not {link!r}")
        if case.data is not None and kind == "file":
            with open(path, "rb") as fh:
                if fh.read() != case.data:
                    problems.append("its bytes changed")
    note = spot.path("failed", raw + b".reason.json")
    if case.reason is None:
        if os.path.lexists(note):
            problems.append("unexpected failed/NAME.reason.json")
    elif not os.path.exists(note):
        problems.append("failed/NAME.reason.json missing")
    else:
        with open(note, encoding="utf-8") as fh:
            reason = json.load(fh)
        if reason.get("reason") != case.reason or reason.get("name") != os.fsdecode(raw):
            problems.append(f"reason file says {reason}")
    # (d) the object
    keys = [k for k in res.objects if unquote_to_bytes(k.rsplit("/", 1)[-1]) == raw]
    if case.key is None:
        if keys:
            problems.append(f"unexpected object(s) {keys}")
    else:
        if keys != [case.key]:
            problems.append(f"expected exactly the key {case.key!r}, got {keys}")
        elif res.objects[case.key] != case.data:
            problems.append(f"object bytes {res.objects[case.key][:60]!r} != {case.data!r}")
        if not case.key.startswith(PREFIX):
            problems.append("the key leaves the destination prefix")
    for template in case.never:
        private = Path(template.format(outside=spot.outside, spool=spot.spool))
        try:
            secret = private.read_bytes()
        except OSError:
            secret = b""
        if secret and any(secret in body for body in res.objects.values()):
            problems.append(f"the bytes of {private} were uploaded")
        if str(private) in res.opened:
            problems.append(f"{private} was opened")
    return problems


def _param(case: Case) -> Any:
    marks: list[Any] = []
    if case.bug:
        marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(case: Case, request: pytest.FixtureRequest) -> None:
    if case.needs_root and not AS_ROOT:
        pytest.skip("needs root (mknod, a root-owned file)")
    res: Result = request.getfixturevalue(f"run_{case.run}")
    problems = check_case(case, res)
    assert not problems, (
        f"{case.id}: {case.setup}\n  " + "\n  ".join(problems)
        + f"\n--- {case.run} log tail ---\n" + "\n".join(res.log.splitlines()[-25:])
    )


RUNS = {
    # run: (exit code, seconds it may take)
    "main": (1, 20.0),  # 1: the unreadable files failed; a blocking fifo would hang it
    "text": (1, 20.0),  # 1: key_too_long
    "badsecret": (3, 20.0),  # 3: store unavailable
    "done_ro": (0, 60.0),
    "failed_ro": (0, 40.0),
    "enospc": (75, 20.0),  # 75: a file left behind by a full disk (and one failed)
    "unit": (0, 20.0),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_run(run: str, request: pytest.FixtureRequest) -> None:
    res: Result = request.getfixturevalue(f"run_{run}")
    code, seconds = RUNS[run]
    problems = []
    if run != "unit" and res.exit_code != code:
        problems.append(f"exit code {res.exit_code}, expected {code}")
    if res.elapsed > seconds:
        problems.append(f"took {res.elapsed:.1f}s (limit {seconds}s)")
    if res.bad_lines:
        problems.append(f"output lines that are not one record each: {res.bad_lines[:5]}")
    crashes = [r for r in res.records if "exc" in r or "unexpected error" in str(r)
               or "Traceback" in str(r)]
    if crashes:
        problems.append(f"crash records: {crashes[:3]}")
    if SECRET in res.log or SECRET in str(res.records):
        problems.append("the secret access key is in the output")
    leaks = [m.group(0) for m in LEAK.finditer(res.log)]
    if leaks:
        problems.append(f"signature material in the output: {leaks[:3]}")
    expected = {c.key for c in CASES if c.run == run and c.key is not None}
    extra = set(res.objects) - expected
    if extra:
        problems.append(f"objects no case expects: {sorted(extra)}")
    assert not problems, f"run {run}:\n  " + "\n  ".join(problems) + "\n--- log tail ---\n" + (
        "\n".join(res.log.splitlines()[-25:]))


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 22
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.run for c in CASES} <= set(RUNS)
    for c in CASES:
        assert c.log is not None or c.note, f"{c.id}: a silent case must say why"
        assert (c.key is None) == (c.place != "done"), c.id
