"""The table of hostile and odd inputs that test_inputs.py runs (docs/guarantees.md,
guarantee 13).

Every row of ``CASES`` says

(a) how its entry is set up in ``incoming/`` (``make``, before the run; or in words only, in
    ``setup``, when the run's fixture in test_inputs.py scripts it during the run),
(b) the log record it must produce (``log``: field -> regex, searched in one record; ``None``
    only for names that are silently ignored by design, with the reason in ``note``),
(c) where the entry must end up (``place``: incoming, done, failed, working, or nowhere for a
    file that vanished), with ``reason`` = the ``reason`` field of ``failed/NAME.reason.json``,
(d) for uploaded entries the object key and its bytes (``key``, ``data``).

A row belongs to one run (``run``, a key of ``RUNS``): the runs are the ``run_*`` fixtures of
test_inputs.py, each with its own settings.  To add a case, add a row to a run whose settings
fit it (a new run needs a new fixture and an entry in ``RUNS``); inputs_runs.check_case says
how each field is checked.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from proc import NOBODY

AS_ROOT = os.geteuid() == 0
UID = NOBODY if AS_ROOT else os.geteuid()  # the service's user
GID = NOBODY if AS_ROOT else os.getegid()
OWNER = (UID, GID) if AS_ROOT else None  # what producers' files are chowned to
PREFIX = "in/"  # destination prefix of every run
# Distinctive credentials: moto accepts any; they must never show up in a log.
ACCESS = "AKIAINPUTS" + uuid.uuid4().hex[:10].upper()
SECRET = "inputs-SECRET-" + uuid.uuid4().hex
LONG = "p" * 400  # literal KEY_FORMAT prefix of the "text" run (case 16)
FUTURE = 4102444800.0  # 2100-01-01T00:00:00Z

Place = Literal["incoming", "done", "failed", "working", "nowhere"]
Kind = Literal["file", "symlink", "fifo", "socket", "dir", "chr", "blk"]

# run: (exit code, seconds it may take); each run is the fixture run_<run> in test_inputs.py
RUNS = {
    "main": (1, 20.0),  # 1: the unreadable files failed; a blocking fifo would hang it
    "text": (1, 20.0),  # 1: key_too_long
    "badsecret": (3, 20.0),  # 3: store unavailable
    "done_ro": (0, 60.0),
    "failed_ro": (0, 40.0),
    "enospc": (75, 20.0),  # 75: a file left behind by a full disk (and one failed)
    "unit": (0, 20.0),
}


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

    @property
    def producer(self) -> Path:
        """Where producers write before their rename into incoming/ (svc.drop's, too)."""
        return self.spool / "tmp-producer"

    def path(self, place: str, raw: bytes) -> bytes:
        return os.path.join(os.fsencode(self.spool / place), raw)


Maker = Callable[[Spot, bytes], None]


def own(path: str | bytes | Path) -> None:
    """Give an entry to the service user (producers usually run as it)."""
    if AS_ROOT:
        os.lchown(path, UID, GID)


def regular(
    data: bytes, *, mode: int = 0o644, root_only: bool = False, mtime: float | None = None
) -> Maker:
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
    return {"level": "^WARNING$", "event": rf"name={nm(raw)}: skipped, {kind} \(left in place\)$"}


def filed(raw: bytes, outcome: str, **more: str) -> dict[str, str]:
    return {
        "logger": "^s3spool.file$",
        "event": "^file$",
        "name": f"^{re.escape(os.fsdecode(raw))}$",
        "outcome": f"^{outcome}$",
        **more,
    }


def tv(value: str) -> str:
    """A value in a text log line: as is, or JSON-quoted when odd (spaces, quotes, controls)."""
    return f"(?:{re.escape(value)}|{re.escape(json.dumps(value, ensure_ascii=False))})"


def text_filed(raw: bytes, outcome: str, key: str) -> dict[str, str]:
    return {
        "line": rf" INFO +s3spool\.file: file spool=\S+ name={tv(os.fsdecode(raw))} "
        rf"key={tv(key)} .*outcome={outcome}"
    }


# --- row builders: one for each common shape of row ----------------------------------------
def uploaded(cid: str, raw: bytes, data: bytes, key: str, setup: str, **kw: Any) -> Case:
    """Uploaded as ``key`` and logged as delivered: a regular file of ``data`` unless ``make``
    says otherwise; in the main run unless ``run`` says otherwise."""
    run = kw.pop("run", "main")
    log = (
        text_filed(raw, "delivered", key)
        if run == "text"
        else filed(raw, "delivered", key=f"^{re.escape(key)}$")
    )
    return Case(
        cid,
        run,
        raw,
        setup,
        log,
        "done",
        key=key,
        data=data,
        make=kw.pop("make", None) or regular(data),
        **kw,
    )


def ignored(cid: str, name: str) -> Case:
    """A name the default IGNORE matches: left in incoming/ without a word."""
    return Case(
        cid,
        "main",
        name.encode(),
        f"regular file {name!r}",
        None,
        "incoming",
        data=b"producer temp file",
        make=regular(b"producer temp file"),
        note="matches the default IGNORE (.*, *.tmp, *.part): producers' temporary "
        "names are skipped silently by design, or every in-progress write would "
        "log a line",
    )


# how the "skipped" warning names each kind of entry
SKIPPED_AS = {
    "symlink": "symlink",
    "fifo": "fifo",
    "socket": "socket",
    "dir": "directory",
    "chr": "device",
    "blk": "device",
}


def left(cid: str, raw: bytes, kind: Kind, make: Maker, setup: str, **kw: Any) -> Case:
    """A non-regular entry in the main run: never opened, left in incoming/, warned once."""
    return Case(
        cid,
        "main",
        raw,
        setup,
        skipped(raw, SKIPPED_AS[kind]),
        "incoming",
        make=make,
        kind=kind,
        once=True,
        **kw,
    )


def left_link(cid: str, raw: bytes, target: str, setup: str, **kw: Any) -> Case:
    """A symlink to ``target`` (see symlink()), never followed: ``left`` and still a link."""
    return left(cid, raw, "symlink", symlink(target), setup, link=target, **kw)


def left_device(
    cid: str, raw: bytes, kind: Literal["chr", "blk"], major: int, minor: int, setup: str
) -> Case:
    """A device node (mknod needs root), ``left``."""
    mode = stat.S_IFCHR if kind == "chr" else stat.S_IFBLK
    return left(cid, raw, kind, device(mode, major, minor), setup, needs_root=True)


def name_quoted(cid: str, raw: bytes, data: bytes, key: str, setup: str, **kw: Any) -> Case:
    """Uploaded in the text run, with the name JSON-quoted in its log line."""
    quoted = re.escape(json.dumps(os.fsdecode(raw)))
    log = {"line": rf" INFO +s3spool\.file: file spool=\S+ name={quoted} "}
    return Case(cid, "text", raw, setup, log, "done", key=key, data=data, make=regular(data), **kw)


NL = b"a\nb"
FORGED = b"x\n2030-01-01 00:00:00,000 ERROR s3spool: forged line"
BACKSLASH = b"back\\slash \"double\" 'single'"
L255 = b"L" * 251 + b".dat"
U255 = "日".encode() * 85
BAD220 = b"\xff" * 220
A220 = b"a" * 220

CASES: list[Case] = [
    # -- never followed, never opened: non-regular entries are left with one warning
    left_link(
        "01-symlink-etc-shadow",
        b"shadow-link",
        "/etc/shadow",
        "symlink -> /etc/shadow",
        never=("/etc/shadow",),
        note="following it as nobody would have sent it to failed/ (EACCES)",
    ),
    left_link(
        "01b-symlink-readable-outside",
        b"decoy-link",
        "{outside}/decoy.txt",
        "symlink -> a world-readable file outside the spool (inotify watches it for IN_OPEN)",
        never=("{outside}/decoy.txt",),
    ),
    left_link(
        "02-symlink-inside-spool",
        b"inside-link",
        "../private.txt",
        "symlink -> ../private.txt, a regular file in the spool root (watched for IN_OPEN)",
        never=("{spool}/private.txt",),
    ),
    left_link(
        "02b-symlink-to-sibling",
        b"sibling-link",
        "sibling.dat",
        "symlink -> sibling.dat, a regular file in incoming/ (uploaded under its own name)",
    ),
    uploaded(
        "02c-symlink-target-sibling",
        b"sibling.dat",
        b"the sibling's bytes",
        PREFIX + "sibling.dat",
        "regular file, target of the 02b symlink",
    ),
    left_link("02d-symlink-to-directory", b"etc-link", "/etc", "symlink -> /etc"),
    left_link(
        "03-dangling-symlink", b"dangling", "/nonexistent/target", "symlink -> /nonexistent/target"
    ),
    left(
        "04-fifo",
        b"fifo",
        "fifo",
        fifo,
        "mkfifo (no writer: an open(2) would block forever)",
        note="the run must end quickly: see test_run[main]",
    ),
    left("05-unix-socket", b"sock", "socket", unix_socket, "AF_UNIX socket bound to the name"),
    left(
        "06-directory",
        b"subdir",
        "dir",
        directory,
        "directory holding inner.dat",
        note="inner.dat is not uploaded either: incoming/ is not walked recursively",
    ),
    left_device("07-char-device", b"devnull", "chr", 1, 3, "mknod c 1 3 (a copy of /dev/null)"),
    left_device("07b-block-device", b"loopdev", "blk", 7, 0, "mknod b 7 0 (a loop device node)"),
    # -- unreadable: failed/ with reason unreadable, bytes never sent, content intact
    Case(
        "08-root-only-0600",
        "main",
        b"root-only",
        "regular file owned by root, mode 0600 (the service runs as nobody)",
        filed(
            b"root-only",
            "failed",
            level="^WARNING$",
            reason="^unreadable$",
            error="^cannot read: Permission denied$",
        ),
        "failed",
        reason="unreadable",
        data=b"root's eyes only",
        make=regular(b"root's eyes only", mode=0o600, root_only=True),
        never=("{spool}/failed/root-only",),
        needs_root=True,
    ),
    Case(
        "08b-mode-000",
        "main",
        b"mode-000",
        "regular file owned by the service user, mode 000",
        filed(
            b"mode-000",
            "failed",
            reason="^unreadable$",
            error="^cannot read: Permission denied$",
            size="^20$",  # read from its inode: the file itself cannot be
        ),
        "failed",
        reason="unreadable",
        data=b"nobody may read this",
        make=regular(b"nobody may read this", mode=0),
        never=("{spool}/failed/mode-000",),
    ),
    # -- odd names: uploaded, the key is the name but for %XX (README "Odd file names")
    uploaded("09-newline", NL, b"newline name", PREFIX + "a%0Ab", "name a<LF>b"),
    uploaded(
        "10-non-utf8",
        b"caf\xe9",
        b"latin-1 name",
        PREFIX + "caf%E9",
        "name b'caf\\xe9' (Latin-1, not UTF-8)",
    ),
    uploaded("11-percent", b"50%.csv", b"percent", PREFIX + "50%.csv", "name 50%.csv"),
    uploaded(
        "11b-literal-escape",
        b"x%41y",
        b"literal %41",
        PREFIX + "x%41y",
        "name x%41y, literally: as it is in the key (an A is never escaped, so no file meets it)",
    ),
    uploaded(
        "12-three-dots",
        b"...",
        b"three dots",
        f"{PREFIX}{LONG}/...",
        "name ... (a name, not a '..' segment); IGNORE=*.tmp,*.part so that a dot-name "
        "is not ignored",
        run="text",
    ),
    uploaded("13-leading-dash", b"-rf", b"not an option", PREFIX + "-rf", "name -rf"),
    uploaded(
        "14-backslash-quotes",
        BACKSLASH,
        b"quotes",
        PREFIX + os.fsdecode(BACKSLASH),
        "name with a backslash, double and single quotes (text quoting: case 14t)",
    ),
    uploaded(
        "15-255-bytes",
        L255,
        b"long name",
        PREFIX + os.fsdecode(L255),
        "name of 255 bytes (NAME_MAX)",
    ),
    uploaded(
        "15b-255-bytes-multibyte",
        U255,
        b"long utf-8 name",
        PREFIX + U255.decode(),
        "name of 85 three-byte UTF-8 characters (255 bytes)",
    ),
    uploaded(
        "15c-control-chars",
        b"tab\there\x7f",
        b"controls",
        PREFIX + "tab%09here%7F",
        "name with a TAB and a DEL",
    ),
    uploaded(
        "15d-utf8-surrogate",
        b"sur\xed\xa0\x80",
        b"cesu",
        PREFIX + "sur%ED%A0%80",
        "name with an encoded UTF-16 surrogate (invalid UTF-8)",
    ),
    uploaded(
        "15e-truncated-utf8",
        b"trunc\xe6\x97",
        b"cut",
        PREFIX + "trunc%E6%97",
        "name ending in a truncated 3-byte UTF-8 sequence",
    ),
    uploaded(
        "15f-url-specials",
        b"q?x#y+z&=;",
        b"url",
        PREFIX + "q?x#y+z&=;",
        "name with URL-special characters ? # + & = ;",
    ),
    uploaded("15g-spaces-only", b"   ", b"blank", PREFIX + "   ", "name of three spaces"),
    uploaded(
        "15h-emoji",
        "📦.bin".encode(),
        b"box",
        PREFIX + "📦.bin",
        "name with a 4-byte UTF-8 character",
    ),
    uploaded(
        "15i-traversal-text",
        b"%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        b"not a path",
        PREFIX + "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "name %2E%2E%2F%2E%2E%2Fetc%2Fpasswd, URL-encoded ../../etc/passwd (the key "
        "stays under the prefix, nothing decodes it)",
    ),
    # -- ignored by IGNORE: no log at all
    ignored("17-hidden", ".hidden"),
    ignored("17b-tmp", "x.tmp"),
    ignored("17c-part", "y.part"),
    # -- sizes, times, links
    uploaded("18-empty", b"empty", b"", PREFIX + "empty", "0-byte file"),
    uploaded(
        "19-hard-link-outside",
        b"hardlink",
        b"hard-linked from outside the spool",
        PREFIX + "hardlink",
        "hard link to outside/shared.dat (root-owned 0644, outside the spool)",
        make=hard_link,
        note="a hard link IS a regular file: it is uploaded (the outside name is kept)",
    ),
    uploaded(
        "19b-epoch-mtime",
        b"epoch",
        b"from 1970",
        PREFIX + "epoch",
        "mtime = 0",
        make=regular(b"from 1970", mtime=0.0),
    ),
    uploaded(
        "19c-future-mtime",
        b"future",
        b"from 2100",
        PREFIX + "future",
        "mtime 2100-01-01 (a producer with a skewed clock), HOLD_FOR=0 (default)",
        make=regular(b"from 2100", mtime=FUTURE),
    ),
    Case(
        "19d-future-mtime-held",
        "failed_ro",
        b"future-held",
        "mtime 2100-01-01, HOLD_FOR=1s, FAIL_RATE=1 (so it ends in failed/), `run`",
        {"level": "^WARNING$", "event": r"name='future-held'.*\bfuture\b"},
        "failed",
        reason="injected",
        data=b"held, not for 75 years",
        note="a clock ahead of ours: HOLD_FOR counts from now, with one warning",
    ),
    # -- KEY_FORMAT too long for one name; text format quoting; DEBUG logs without credentials
    uploaded(
        "16-key-fits",
        A220,
        b"fits",
        f"{PREFIX}{LONG}/{A220.decode()}",
        f"KEY_FORMAT={LONG[:3]}...(400)/{{fname}}; 220-byte ASCII name: key of 624 bytes",
        run="text",
    ),
    Case(
        "16b-key-too-long",
        "text",
        BAD220,
        "same KEY_FORMAT; 220 bytes 0xFF -> %FF x 220: key of 1064 bytes",
        {
            "line": r" WARNING +s3spool\.file: file .* outcome=failed reason=key_too_long "
            r"error=\"key longer than 1024 bytes: "
        },
        "failed",
        reason="key_too_long",
        data=b"too long",
        make=regular(b"too long"),
    ),
    name_quoted(
        "14t-text-quoting",
        BACKSLASH,
        b"q",
        f"{PREFIX}{LONG}/{os.fsdecode(BACKSLASH)}",
        "name with a backslash and quotes, LOG_FORMAT=text",
    ),
    name_quoted(
        "14u-forged-log-line",
        FORGED,
        b"forged",
        f"{PREFIX}{LONG}/x%0A2030-01-01 00:00:00,000 ERROR s3spool: forged line",
        "name holding a newline and a fake log line, LOG_FORMAT=text",
        note="every line of the output starts with a timestamp: see test_run[text]",
    ),
    uploaded(
        "24-credentials",
        b"creds.dat",
        b"c",
        f"{PREFIX}{LONG}/creds.dat",
        f"LOG_LEVEL=DEBUG, secret key {SECRET[:14]}..., an upload",
        run="text",
        note="the secret, and any Signature=/Credential= value, are in no run's output "
        "(test_run checks every run, this one at DEBUG)",
    ),
    Case(
        "24c-errors-do-not-leak",
        "done_ro",
        b"flaky.dat",
        "LOG_LEVEL=DEBUG behind the proxy: its PUTs reset, then answered 500, then let through",
        {"level": "^INFO$", "event": r"name='flaky\.dat': .+; retry \d+/\d+ in \d"},
        "done",
        key=PREFIX + "flaky.dat",
        data=b"retried twice",
        note="error messages of both attempts are in the output: test_run[done_ro] checks "
        "it holds no secret, Signature= or Credential= value",
    ),
    Case(
        "24b-refused-credentials",
        "badsecret",
        b"waits.dat",
        "rclone (which checks signatures) with a wrong secret; --once, DEBUG",
        {"level": "^ERROR$", "event": "^store unavailable: "},
        "incoming",
        data=b"w",
        make=regular(b"w"),
        note="a global fault: the file is left where it is, exit 3, the secret not logged",
    ),
    # -- races, unwritable directories, changing files (scripted during `run`)
    Case(
        "20-vanish-before-claim",
        "failed_ro",
        b"vanishes",
        "HOLD_FOR=1s defers it; deleted 0.3s after it arrived, before it became eligible",
        None,
        "nowhere",
        note="nothing to say: the file never became eligible, and there is nothing to lose",
    ),
    Case(
        "20b-vanish-after-claim",
        "unit",
        b"gone",
        "Pipeline.deliver on a Claim whose file (and key record) was removed",
        {
            "level": "^WARNING$",
            "event": r"name='gone': 'gone' vanished after it was claimed; nothing to deliver$",
        },
        "nowhere",
    ),
    Case(
        "20c-symlink-swapped-in",
        "unit",
        b"swapped-link",
        "Pipeline.deliver on a Claim whose file was replaced by a symlink to a decoy",
        {
            "level": "^WARNING$",
            "event": r"name='swapped-link': skipped, is a symlink \(never "
            r"followed\) \(returned to incoming/\)$",
        },
        "incoming",
        kind="symlink",
        link="{outside}/decoy.txt",
        never=("{outside}/decoy.txt",),
    ),
    Case(
        "20d-fifo-swapped-in",
        "unit",
        b"swapped-fifo",
        "Pipeline.deliver on a Claim whose file was replaced by a fifo with no writer",
        {
            "level": "^WARNING$",
            "event": r"name='swapped-fifo': skipped, not a regular file "
            r"\(returned to incoming/\)$",
        },
        "incoming",
        kind="fifo",
        note="deliver must return within 5s (O_NONBLOCK)",
    ),
    Case(
        "21-done-unwritable",
        "done_ro",
        b"stuck-done",
        "done/ chowned to root 0755 while running; the file arrives; done/ given back",
        {
            "level": "^ERROR$",
            "event": r"^spool=\S+: cannot move 'stuck-done' in \S+/done: Permission denied "
            r"\(EACCES\); this spool takes no new files until it works again$",
        },
        "done",
        key=PREFIX + "stuck-done",
        data=b"settled late",
        note="while done/ is unwritable: object stored, file in working/<instance>/files/, "
        "one line for the fault, moved within 2s of done/ working again (checked "
        "during the run)",
    ),
    Case(
        "22-failed-unwritable",
        "failed_ro",
        b"stuck-failed",
        "FAIL_RATE=1; failed/ chowned to root 0755 while running; the file arrives",
        {
            "level": "^ERROR$",
            "event": r"^spool=\S+: cannot move 'stuck-failed' in \S+/failed: Permission denied "
            r"\(EACCES\); this spool takes no new files until it works again$",
        },
        "working",
        data=b"kept in working",
    ),
    Case(
        "23-growing-during-upload",
        "done_ro",
        b"growing.log",
        "renamed in with 1000 bytes, fd kept open; 500 more appended while its PUT is held "
        "by a 1s proxy latency",
        {
            "level": "^WARNING$",
            "event": r"name='growing\.log': changed during upload \(size 1000->1500\); "
            r"uploading again$",
        },
        "done",
        key=PREFIX + "growing.log",
        data=b"A" * 1000 + b"B" * 500,
    ),
    # -- ENOSPC: a whole spool on a tmpfs with every inode used
    Case(
        "25-enospc-key-record",
        "enospc",
        b"good-on-full-disk",
        "KEY_FORMAT={now}/{fname} (key record needed); no free inode on the spool's tmpfs",
        {
            "level": "^ERROR$",
            "event": r"^spool=\S+: cannot record the key of 'good-on-full-disk' in \S+/keys: No "
            r"space left on device \(ENOSPC\); files that need space wait until it works "
            r"again$",
        },
        "incoming",
        data=b"good file",
        make=regular(b"good file"),
        note="nothing was sent: the claim should be given back (or kept), not failed",
    ),
    Case(
        "25b-enospc-reason-file",
        "enospc",
        b"unreadable-full",
        "root-owned 0600 file; no free inode for failed/NAME.reason.json",
        {
            "level": "^WARNING$",
            "event": r"name='unreadable-full': could not write unreadable-full\.reason\.json: "
            r"No space left on device$",
        },
        "failed",
        data=b"unreadable and disk full",
        make=regular(b"unreadable and disk full", mode=0o600, root_only=AS_ROOT),
        note="the reason cannot be written, so it is only in the log (reason=unreadable)",
    ),
]
