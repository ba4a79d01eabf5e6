"""How test_inputs.py runs the table of inputs_cases.py and checks the outcome.

A run has its own directory tree (``new_spot``), entries made from its rows (``make_entries``)
and one service process (``service`` / ``run_once``), run as the service user when the tests
run as root.  What the run left behind is a ``Result``: exit code, log records, objects in the
bucket, files something opened.  ``check_case`` compares a row with it, ``check_run`` a run as a
whole; both return the problems found, so every row passes or fails on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inputs_cases import ACCESS, AS_ROOT, CASES, GID, PREFIX, RUNS, SECRET, UID, Case, Spot, own
from proc import SpoolProc, as_user
from s3servers import S3Target
from s3spool.spool.keys import encode_name

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
LEAK = re.compile(
    r"(?i)(Signature|Credential|X-Amz-Security-Token|Authorization)['\"]?\s*[=:]\s*['\"]?"
    r"(?!\*\*\*)[A-Za-z0-9/+]"
)


def _as_service() -> list[str] | None:
    """The service's command prefix: as UID where we are root (asked per run: as_user may
    skip the test, which only a running test can do)."""
    return as_user(UID, GID) if AS_ROOT else None


# --- setting a run up ---------------------------------------------------------------------
@dataclass
class Result:
    """What one run left behind (and what its fixture saw on the way, in ``problems``)."""

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


def new_spot(base: Path, run: str) -> Spot:
    root = base / run
    spot = Spot(root, root / "spool", root / "outside")
    for d in (root, spot.outside, spot.producer):
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


def new_run(base: Path, run: str) -> Result:
    """A fresh spot for ``run``, with the entries of its rows made in incoming/."""
    spot = new_spot(base, run)
    make_entries(spot, run)
    return Result(run, spot)


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


# --- running the service ------------------------------------------------------------------
def service_env(target: S3Target, spool: Path, **settings: str) -> dict[str, str]:
    env = target.env(PREFIX)
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS,
        AWS_SECRET_ACCESS_KEY=SECRET,
        S3SPOOL_SPOOL_DIRS=str(spool),
        S3SPOOL_LOG_FORMAT="json",
        S3SPOOL_RETRY_BACKOFF="0.05",
        S3SPOOL_RETRY_BACKOFF_MAX="0.2",
        S3SPOOL_CONNECT_TIMEOUT="3",
        S3SPOOL_READ_TIMEOUT="15",
        PYTHONDONTWRITEBYTECODE="1",  # no __pycache__ from the service (as nobody, when root)
    )
    env.update({f"S3SPOOL_{k.upper()}": v for k, v in settings.items()})
    return env


@contextlib.contextmanager
def watch_opens(paths: list[Path], res: Result) -> Iterator[None]:
    """Record (in ``res.opened``) any open(2) of these files while the block runs."""
    if not paths:
        yield
        return
    from asyncinotify import Inotify, Mask

    with contextlib.closing(Inotify(sync_timeout=0)) as inotify:
        for p in paths:
            inotify.add_watch(p, Mask.OPEN)
        yield
        res.opened |= {str(ev.watch.path) for ev in inotify if ev.watch is not None}


@contextlib.contextmanager
def service(
    res: Result,
    target: S3Target,
    *,
    once: bool = False,
    via: str | None = None,
    env: dict[str, str] | None = None,
    watched: list[Path] | None = None,
    **settings: str,
) -> Iterator[SpoolProc]:
    """The service over ``res.spot`` for the block; then ``res`` holds what it left behind.

    ``run --once`` (``once``: awaited after the block) or ``run`` (the block starts once it
    watches its spool; SIGTERM after the block).  ``settings``: S3SPOOL_* settings by
    lower-case name (``log_format`` also says how the log is parsed); ``env``: variables set
    over those of ``service_env``; ``via``: the endpoint to use instead of the target's (a
    FaultProxy), objects are still read from the target; ``watched``: files whose open(2) is
    recorded in ``res.opened``.
    """
    spot = res.spot
    environ = service_env(target.via(via) if via else target, spot.spool, **settings)
    environ.update(env or {})
    args = ["run", "--once"] if once else ["run"]
    started = time.monotonic()
    with (
        watch_opens(watched or [], res),
        SpoolProc(args, environ, spot.root, spot.root / "log", wrapper=_as_service()) as proc,
    ):
        try:
            if not once:
                proc.wait_for_log(r"watching 1 spool", 20)
            yield proc
        finally:
            if not once:
                proc.signal(signal.SIGTERM)
            res.exit_code = proc.wait(40 if once else 30)
    res.elapsed = time.monotonic() - started
    parse_log(res, proc.log_text(), settings.get("log_format", "json"))
    listed = target.keys()
    res.objects = {key: target.get(key) for key in listed}


def run_once(res: Result, target: S3Target, **kw: Any) -> Result:
    """``run --once`` over the entries already made (``service``'s keywords)."""
    with service(res, target, once=True, **kw):
        pass
    return res


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


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        self.records.append(
            {
                "level": record.levelname,
                "logger": record.name,
                "event": record.getMessage(),
                **(fields if isinstance(fields, dict) else {}),
            }
        )


@contextlib.contextmanager
def recording(res: Result) -> Iterator[None]:
    """For an in-process run: the s3spool loggers' records, at DEBUG, into ``res.records``."""
    handler = _Collect()
    logger = logging.getLogger("s3spool")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        res.records = handler.records


# --- checks ---------------------------------------------------------------------------------
def entry_kind(path: bytes) -> str:
    mode = os.lstat(path).st_mode
    for kind, test in (
        ("symlink", stat.S_ISLNK),
        ("fifo", stat.S_ISFIFO),
        ("socket", stat.S_ISSOCK),
        ("dir", stat.S_ISDIR),
        ("chr", stat.S_ISCHR),
        ("blk", stat.S_ISBLK),
        ("file", stat.S_ISREG),
    ):
        if test(mode):
            return kind
    return "?"


def locate(spot: Spot, raw: bytes) -> list[tuple[str, bytes]]:
    found = [
        (p, spot.path(p, raw))
        for p in ("incoming", "done", "failed")
        if os.path.lexists(spot.path(p, raw))
    ]
    for inst in sorted((spot.spool / "working").iterdir()):
        path = os.path.join(os.fsencode(inst / "files"), raw)
        if os.path.lexists(path):
            found.append(("working", path))
    return found


def matching(records: list[dict[str, Any]], want: dict[str, str]) -> list[dict[str, Any]]:
    return [
        r for r in records if all(k in r and re.search(v, str(r[k]), re.S) for k, v in want.items())
    ]


def mentions(rec: dict[str, Any], raw: bytes) -> bool:
    name = os.fsdecode(raw)
    return rec.get("name") == name or any(
        isinstance(v, str) and (repr(name) in v or f"/{name}" in v) for v in rec.values()
    )


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
    # by the key's last segment (unquote_to_bytes would take a name's literal %41 for an A)
    keys = [k for k in res.objects if k.rsplit("/", 1)[-1] == encode_name(raw)]
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


def check_run(res: Result) -> list[str]:
    """A run as a whole: exit code, time, one record per line, no crash, no leak, no object
    that no row expects."""
    code, seconds = RUNS[res.run]
    problems = []
    if res.run != "unit" and res.exit_code != code:
        problems.append(f"exit code {res.exit_code}, expected {code}")
    if res.elapsed > seconds:
        problems.append(f"took {res.elapsed:.1f}s (limit {seconds}s)")
    if res.bad_lines:
        problems.append(f"output lines that are not one record each: {res.bad_lines[:5]}")
    crashes = [
        r
        for r in res.records
        if "exc" in r or "unexpected error" in str(r) or "Traceback" in str(r)
    ]
    if crashes:
        problems.append(f"crash records: {crashes[:3]}")
    if SECRET in res.log or SECRET in str(res.records):
        problems.append("the secret access key is in the output")
    leaks = [m.group(0) for m in LEAK.finditer(res.log)]
    if leaks:
        problems.append(f"signature material in the output: {leaks[:3]}")
    expected = {c.key for c in CASES if c.run == res.run and c.key is not None}
    extra = set(res.objects) - expected
    if extra:
        problems.append(f"objects no case expects: {sorted(extra)}")
    return problems
