"""Operator tools: ``check``, ``status``, ``enqueue``, ``run --dry-run``, and the
spool gauges that ``/metrics`` refreshes at scrape time.

Everything here except ``check`` works on the filesystem alone and never
touches the store.  ``status`` and ``run --dry-run`` only read; ``enqueue``
only ever adds a file to ``incoming/`` with one atomic rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import secrets
import stat
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ConfigError, StoreUnavailable, UploadError
from .keys import KeyInput, KeyTemplate, encode_name, spool_dir_field
from .settings import Settings, parse_destination
from .spool import Spool, SpoolDirs, instance_is_live, rename_noreplace, spool_layouts
from .watch import INOTIFY_HELP, compile_ignore

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_CONFIG = 78

# --- spool gauges for /metrics ------------------------------------------------------------------

#: A scrape re-reads the spools at most this often; scrapes in between reuse the values.
GAUGE_REFRESH_INTERVAL = 1.0


@dataclass(slots=True)
class SpoolGauges:
    """Files per state of one spool (working: every instance's claims) and its lag."""

    incoming: int = 0
    working: int = 0
    failed: int = 0
    lag: float = 0.0


def _scan(path: Path | None) -> Iterator[os.DirEntry[str]]:
    """Entries of a directory; nothing if it is missing or unreadable (gauges must not fail)."""
    if path is None:
        return
    try:
        it = os.scandir(path)
    except OSError:
        return
    with it:
        yield from it


def spool_gauges(
    dirs: SpoolDirs, is_ignored: Callable[[str], bool], hold_for: float, now: float
) -> SpoolGauges:
    """One pass over incoming/ (count + lag) and a count of working/ and failed/.

    Lag is the age of the oldest file the service would take right now: a
    regular file, not ignored, whose mtime is at least HOLD_FOR old.  Only
    those entries are stat()ed, so a scrape of a 100k-file spool costs one
    readdir and one lstat per candidate, in a thread.
    """
    g = SpoolGauges()
    oldest: float | None = None
    for entry in _scan(dirs.incoming):
        g.incoming += 1
        if is_ignored(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < hold_for:
            continue
        if oldest is None or st.st_mtime < oldest:
            oldest = st.st_mtime
    g.lag = max(now - oldest, 0.0) if oldest is not None else 0.0
    for inst in _scan(dirs.working):
        if inst.is_dir(follow_symlinks=False):
            g.working += sum(1 for _ in _scan(Path(inst.path) / "files"))
    if dirs.failed is not None and not dirs.resubmit:
        # reason files sit next to the failed files; they are not files of their own
        g.failed = sum(1 for e in _scan(dirs.failed) if not e.name.endswith(".reason.json"))
    return g


@dataclass(slots=True)
class _GaugeState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    at: float = -math.inf
    lags: dict[str, float] = field(default_factory=dict)


_gauge_states: weakref.WeakKeyDictionary[Service, _GaugeState] = weakref.WeakKeyDictionary()


async def refresh_spool_gauges(service: Service) -> dict[str, float]:
    """Refresh ``s3spool_spool_files`` and ``s3spool_spool_lag_seconds``; returns lag per spool.

    At most once per ``GAUGE_REFRESH_INTERVAL``: concurrent or frequent scrapes
    wait for / reuse the last pass instead of walking the spools again.
    """
    state = _gauge_states.get(service)
    if state is None:
        state = _gauge_states[service] = _GaugeState()
    async with state.lock:
        if time.monotonic() - state.at < GAUGE_REFRESH_INTERVAL:
            return dict(state.lags)
        layouts = [sp.dirs for sp in service.spools]
        is_ignored = service.discovery.is_ignored
        hold_for = service.s.hold_for

        def work() -> list[SpoolGauges]:
            now = time.time()
            return [spool_gauges(d, is_ignored, hold_for, now) for d in layouts]

        values = await asyncio.to_thread(work)
        lags: dict[str, float] = {}
        m = service.metrics
        for dirs, g in zip(layouts, values, strict=True):
            m.spool_files.labels(dirs.label, "incoming").set(g.incoming)
            m.spool_files.labels(dirs.label, "working").set(g.working)
            m.spool_files.labels(dirs.label, "failed").set(g.failed)
            m.lag.labels(dirs.label).set(g.lag)
            lags[dirs.label] = g.lag
        state.lags = lags
        state.at = time.monotonic()
        return dict(lags)


# --- formatting --------------------------------------------------------------------------------


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def human_age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _show_name(name: str) -> str:
    """A file name as it appears in keys: printable, lossless for odd bytes."""
    return encode_name(os.fsencode(name))


# --- status ------------------------------------------------------------------------------------


@dataclass(slots=True)
class DirSurvey:
    path: str
    exists: bool = True
    files: int = 0
    bytes: int = 0
    oldest_mtime: float | None = None
    ignored: int = 0
    not_regular: int = 0
    error: str | None = None

    def add(self, st: os.stat_result) -> None:
        self.files += 1
        self.bytes += st.st_size
        if self.oldest_mtime is None or st.st_mtime < self.oldest_mtime:
            self.oldest_mtime = st.st_mtime


def survey_dir(
    path: Path,
    *,
    is_ignored: Callable[[str], bool] | None = None,
    skip: Callable[[str], bool] | None = None,
    into: DirSurvey | None = None,
) -> DirSurvey:
    """Regular files (and their bytes) directly in ``path``; ``is_ignored`` names counted apart."""
    out = into or DirSurvey(str(path))
    try:
        it = os.scandir(path)
    except FileNotFoundError:
        if into is None:
            out.exists = False
        return out
    except OSError as exc:
        out.error = f"{path}: {exc.strerror}"
        return out
    with it:
        for entry in it:
            if skip is not None and skip(entry.name):
                continue
            if is_ignored is not None and is_ignored(entry.name):
                out.ignored += 1
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between readdir and stat: a service took it
            if stat.S_ISREG(st.st_mode):
                out.add(st)
            else:
                out.not_regular += 1
    return out


@dataclass(slots=True)
class InstanceSurvey:
    id: str
    live: bool
    files: int
    bytes: int


def survey_spool(dirs: SpoolDirs, is_ignored: Callable[[str], bool]) -> dict[str, Any]:
    incoming = survey_dir(dirs.incoming, is_ignored=is_ignored)
    working = DirSurvey(str(dirs.working))
    instances: list[InstanceSurvey] = []
    try:
        entries = sorted(os.scandir(dirs.working), key=lambda e: e.name)
    except FileNotFoundError:
        working.exists = False
        entries = []
    except OSError as exc:
        working.error = f"{dirs.working}: {exc.strerror}"
        entries = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue  # .resubmit/ holds backoff records, not an instance
        mine = survey_dir(Path(entry.path) / "files")
        if mine.error:
            working.error = mine.error
        working.files += mine.files
        working.bytes += mine.bytes
        if mine.oldest_mtime is not None and (
            working.oldest_mtime is None or mine.oldest_mtime < working.oldest_mtime
        ):
            working.oldest_mtime = mine.oldest_mtime
        live = instance_is_live(Path(entry.path))
        instances.append(InstanceSurvey(entry.name, live, mine.files, mine.bytes))
    done = survey_dir(dirs.done) if dirs.done is not None else None
    failed: DirSurvey | None = None
    if dirs.failed is not None and not dirs.resubmit:
        failed = survey_dir(dirs.failed, skip=lambda n: n.endswith(".reason.json"))
    return {
        "incoming": incoming,
        "working": working,
        "done": done,
        "failed": failed,
        "instances": instances,
        "resubmit": dirs.resubmit,
    }


def _dir_json(d: DirSurvey | None, now: float) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "path": d.path,
        "exists": d.exists,
        "files": d.files,
        "bytes": d.bytes,
        "oldest_age_seconds": round(now - d.oldest_mtime, 3)
        if d.oldest_mtime is not None
        else None,
        **({"error": d.error} if d.error else {}),
    }


def status(settings: Settings, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """Per spool: files and bytes per state, oldest incoming file, live instances.

    Exit 1 if a directory could not be read, else 0.
    """
    out = out or sys.stdout
    is_ignored = compile_ignore(settings.ignore)
    now = time.time()
    report: list[dict[str, Any]] = []
    errors: list[str] = []
    for dirs in spool_layouts(settings):
        s = survey_spool(dirs, is_ignored)
        for key in ("incoming", "working", "done", "failed"):
            d = s[key]
            if d is not None and d.error:
                errors.append(d.error)
        incoming_json = _dir_json(s["incoming"], now)
        assert incoming_json is not None
        incoming_json["ignored"] = s["incoming"].ignored
        incoming_json["not_regular"] = s["incoming"].not_regular
        report.append(
            {
                "spool": dirs.label,
                "incoming": incoming_json,
                "working": _dir_json(s["working"], now),
                "done": _dir_json(s["done"], now),
                "failed": _dir_json(s["failed"], now),
                "failed_resubmitted_to_incoming": s["resubmit"],
                "instances": [
                    {"id": i.id, "live": i.live, "files": i.files, "bytes": i.bytes}
                    for i in s["instances"]
                ],
            }
        )
    if as_json:
        json.dump({"time": round(now, 3), "spools": report}, out, indent=1)
        out.write("\n")
    else:
        for spool in report:
            _status_text(spool, out)
    for e in errors:
        print(f"s3spool status: cannot read {e}", file=sys.stderr)
    return EXIT_NOT_OK if errors else EXIT_OK


def _status_text(spool: dict[str, Any], out: TextIO) -> None:
    print(f"spool {spool['spool']}", file=out)
    for state in ("incoming", "working", "done", "failed"):
        d = spool[state]
        if d is None:
            if state == "failed" and spool["failed_resubmitted_to_incoming"]:
                note = "(same as incoming/: failed files are resubmitted)"
            else:
                note = f"(off: S3SPOOL_REMOVE_ON_{'SUCCESS' if state == 'done' else 'FAILURE'})"
            print(f"  {state:<9} {note}", file=out)
            continue
        if not d["exists"]:
            print(f"  {state:<9} (not created yet: {d['path']})", file=out)
            continue
        line = f"  {state:<9} {_plural(d['files'], 'file'):>12} {human_size(d['bytes']):>11}"
        if state == "incoming":
            age = d["oldest_age_seconds"]
            line += f"  oldest {human_age(age) if age is not None else '-'}"
            extra = []
            if d["ignored"]:
                extra.append(f"{d['ignored']} ignored")
            if d["not_regular"]:
                extra.append(f"{d['not_regular']} not regular")
            if extra:
                line += f"  ({', '.join(extra)})"
        if "error" in d:
            line += f"  [cannot read: {d['error']}]"
        print(line, file=out)
    instances = spool["instances"]
    if not instances:
        print("  instances (none)", file=out)
    for n, inst in enumerate(instances):
        head = "instances" if n == 0 else ""
        state = "live" if inst["live"] else "dead (its files are recovered by a live instance)"
        print(
            f"  {head:<9} {inst['id']}  {state}  {_plural(inst['files'], 'file')} "
            f"({human_size(inst['bytes'])})",
            file=out,
        )


# --- run --dry-run -----------------------------------------------------------------------------


def dry_run(settings: Settings, *, out: TextIO | None = None) -> int:
    """Print what one pass would upload, and under which key; change nothing anywhere.

    Lines are tab-separated: ``upload NAME SIZE KEY`` or ``skip NAME REASON``.
    Exit 1 if an incoming/ could not be read or a key cannot be rendered.
    """
    out = out or sys.stdout
    _, _, prefix = parse_destination(settings.destination)
    template = KeyTemplate(settings.key_format, prefix)
    is_ignored = compile_ignore(settings.ignore)
    status_code = EXIT_OK
    if not template.stable:
        print(
            "# note: KEY_FORMAT uses fields that change per upload "
            f"({', '.join(sorted(template.fields - {'fname', 'spool_dir'}))}); "
            "real keys will differ",
            file=out,
        )
    total_files = total_bytes = skipped = 0
    for dirs in spool_layouts(settings):
        spool_dir = spool_dir_field(dirs.root or dirs.incoming)
        print(f"# spool {dirs.label}: {dirs.incoming} -> {settings.destination}", file=out)
        try:
            names = sorted(os.listdir(dirs.incoming))
        except FileNotFoundError:
            print("# incoming/ does not exist yet; nothing to upload", file=out)
            continue
        except OSError as exc:
            print(f"# cannot list {dirs.incoming}: {exc.strerror}", file=out)
            status_code = EXIT_NOT_OK
            continue
        now = time.time()
        for name in names:
            shown = _show_name(name)
            if is_ignored(name):
                print(f"skip\t{shown}\tignored (matches IGNORE)", file=out)
                skipped += 1
                continue
            try:
                st = os.lstat(dirs.incoming / name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                print(f"skip\t{shown}\tsymlink (never followed)", file=out)
                skipped += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                print(f"skip\t{shown}\tnot a regular file", file=out)
                skipped += 1
                continue
            wait = st.st_mtime + settings.hold_for - now
            if wait > 0:
                print(f"skip\t{shown}\theld by HOLD_FOR (eligible in {wait:.0f}s)", file=out)
                skipped += 1
                continue
            try:
                key = template.render(
                    KeyInput(os.fsencode(name), spool_dir, st.st_mtime, st.st_ctime)
                )
            except UploadError as exc:
                print(f"skip\t{shown}\twould fail: {exc}", file=out)
                skipped += 1
                status_code = EXIT_NOT_OK
                continue
            print(f"upload\t{shown}\t{st.st_size}\t{key}", file=out)
            total_files += 1
            total_bytes += st.st_size
        claimed = _claimed_elsewhere(dirs)
        if claimed:
            print(
                f"# plus {_plural(claimed, 'file')} already claimed in {dirs.working}/*/files/ "
                "(delivered by their instance, or recovered if it is dead)",
                file=out,
            )
    print(
        f"# {_plural(total_files, 'file')} ({human_size(total_bytes)}) would be uploaded, "
        f"{skipped} skipped",
        file=out,
    )
    return status_code


def _claimed_elsewhere(dirs: SpoolDirs) -> int:
    n = 0
    for inst in _scan(dirs.working):
        if inst.is_dir(follow_symlinks=False):
            n += sum(1 for _ in _scan(Path(inst.path) / "files"))
    return n


# --- check -------------------------------------------------------------------------------------

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
#: Below these (the kernel's defaults), some other program may already have used them up.
INOTIFY_MIN_WATCHES = 8192
INOTIFY_MIN_INSTANCES = 128
INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify")


class Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = False

    def __call__(self, verdict: str, what: str, detail: str = "") -> None:
        if verdict == FAIL:
            self.failed = True
        print(f"{verdict} {what}{': ' + detail if detail else ''}", file=self.out, flush=True)


async def check(settings: Settings, *, read_only: bool = False, out: TextIO | None = None) -> int:
    """Settings, directories, inotify and the store; one PASS/WARN/FAIL line each.

    Exit 0 if nothing failed, 1 if a check failed, 78 if the settings are invalid.
    """
    report = Report(out or sys.stdout)
    try:
        _, _, prefix = parse_destination(settings.destination)
        KeyTemplate(settings.key_format, prefix)
        layouts = spool_layouts(settings)
    except (ConfigError, ValueError) as exc:
        report(FAIL, "settings", str(exc))
        return EXIT_CONFIG
    report(
        PASS,
        "settings",
        f"{_plural(len(layouts), 'spool')} -> {settings.destination}",
    )
    for dirs in layouts:
        verdict, detail = await asyncio.to_thread(check_directories, dirs, settings)
        report(verdict, "directories", detail)
    verdict, detail = await asyncio.to_thread(check_inotify, layouts)
    report(verdict, "inotify", detail)
    verdict, detail, found = await check_store(settings, read_only=read_only)
    report(verdict, "store", detail)
    for topic, finding in found:
        print(f"  {topic}: {finding}", file=report.out, flush=True)
    return EXIT_NOT_OK if report.failed else EXIT_OK


def check_directories(dirs: SpoolDirs, settings: Settings) -> tuple[str, str]:
    """Spool.prepare() (creates missing dirs, like the service), then a real write test."""
    spool = Spool(dirs, settings.resolved_instance_id)
    try:
        spool.prepare()
    except ConfigError as exc:
        return FAIL, str(exc)
    roles = [("incoming", dirs.incoming), ("working", dirs.working)]
    roles += [(r, p) for r, p in (("done", dirs.done), ("failed", dirs.failed)) if p is not None]
    for role, path in roles:
        # As root, access(2) says yes to everything; only a write shows a read-only
        # mount, an immutable directory or an LSM denial.
        problem = _try_write(path, as_dir=role == "incoming" or path == dirs.incoming)
        if problem:
            return FAIL, f"{role} directory {path}: cannot create a file: {problem}"
    where = ", ".join(f"{role}/" for role, _ in roles)
    return PASS, f"spool {dirs.label}: {where} exist, are writable and on one filesystem"


def _try_write(path: Path, *, as_dir: bool) -> str | None:
    """Create and remove a scratch entry; the reason it failed, or None.

    In incoming/ the scratch entry is a directory: mkdir raises no event a
    running service watches (MOVED_TO, CLOSE_WRITE), so it is never picked up
    whatever IGNORE says.
    """
    scratch = path / f".s3spool-check-{secrets.token_hex(6)}"
    try:
        if as_dir:
            os.mkdir(scratch, 0o700)
            os.rmdir(scratch)
        else:
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.unlink(scratch)
    except FileNotFoundError:
        return None  # created, then removed by someone else: the write itself worked
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def check_inotify(layouts: Sequence[SpoolDirs]) -> tuple[str, str]:
    watches = _read_int(INOTIFY_SYSCTL / "max_user_watches")
    instances = _read_int(INOTIFY_SYSCTL / "max_user_instances")
    limits = f"fs.inotify.max_user_watches={watches} fs.inotify.max_user_instances={instances}"
    try:
        from asyncinotify import Inotify, Mask
    except ImportError as exc:  # pragma: no cover - a dependency
        return FAIL, f"asyncinotify unavailable: {exc}"
    try:
        inotify = Inotify()
    except OSError as exc:
        hint = INOTIFY_HELP.get(exc.errno or 0, "")
        return FAIL, f"cannot create an inotify instance: {exc.strerror}; {hint} ({limits})"
    watched = 0
    try:
        for dirs in layouts:
            if not dirs.incoming.is_dir():
                continue
            try:
                inotify.add_watch(dirs.incoming, Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.ONLYDIR)
            except OSError as exc:
                hint = INOTIFY_HELP.get(exc.errno or 0, "")
                return FAIL, f"cannot watch {dirs.incoming}: {exc.strerror}; {hint} ({limits})"
            watched += 1
    finally:
        inotify.close()
    low = []
    if watches is not None and watches < INOTIFY_MIN_WATCHES:
        low.append(f"raise fs.inotify.max_user_watches (now {watches}) to at least 65536")
    if instances is not None and instances < INOTIFY_MIN_INSTANCES:
        low.append(f"raise fs.inotify.max_user_instances (now {instances}) to at least 512")
    if watches is None or instances is None:
        low.append(f"cannot read the limits in {INOTIFY_SYSCTL}")
    detail = f"watched {_plural(watched, 'incoming/ directory')}; {limits}"
    if low:
        return WARN, detail + "; " + "; ".join(low)
    return PASS, detail


async def check_store(
    settings: Settings, *, read_only: bool
) -> tuple[str, str, list[tuple[str, str]]]:
    """(verdict, detail, what the store supports as (topic, finding) lines)."""
    from .store import open_store

    scheme, bucket, prefix = parse_destination(settings.destination)
    if scheme == "noop":
        return PASS, "noop:// stores nothing; nothing to check", []
    where = f"s3://{bucket}/{prefix}"
    # Fault injection is for exercising the service, not for judging the store.
    s = settings.model_copy(update={"fail_rate": 0.0})
    # botocore makes up to 3 attempts, each bounded by connect + read timeout.
    limit = 3 * (s.connect_timeout + s.read_timeout) + 5
    try:
        async with asyncio.timeout(limit), open_store(s) as store:
            try:
                found = await store.survey()
            except StoreUnavailable as exc:
                return FAIL, _explain_probe(exc, bucket), []
            if read_only:
                return (
                    PASS,
                    f"{where}: bucket reachable (HeadBucket); write not tested (--read-only)",
                    found,
                )
            try:
                key = await store.test_write()
            except UploadError as exc:
                if exc.reason == "test_object_left":
                    return WARN, f"{where}: PutObject works, but {exc}", store.describe()
                found = store.describe()
                return FAIL, f"{where}: cannot write: {exc}{_checksum_hint(exc, s)}", found
            found = store.describe()
            detail = f"{where}: HeadBucket, PutObject, multipart and DeleteObject of {key!r} work"
            if s.overwrite == "never" and store.facts.conditional_writes is False:
                return (
                    WARN,
                    detail + "; but the store ignores If-None-Match (OVERWRITE=never)",
                    found,
                )
            return PASS, detail, found
    except TimeoutError:
        return (
            FAIL,
            f"{where}: no answer within {limit:.0f}s (S3SPOOL_ENDPOINT_URL, network?)",
            [],
        )
    except UploadError as exc:
        return FAIL, f"{where}: {exc}", []


def _explain_probe(exc: StoreUnavailable, bucket: str) -> str:
    if exc.reason in ("404", "http_404", "NoSuchBucket", "NotFound"):
        return f"bucket {bucket!r} does not exist (S3SPOOL_DESTINATION): {exc}"
    if exc.reason in ("403", "http_403", "AccessDenied", "forbidden"):
        return (
            f"access to bucket {bucket!r} denied: {exc} "
            "(check the credentials and the bucket policy: s3:ListBucket is needed for HeadBucket)"
        )
    return f"bucket {bucket!r} unreachable: {exc}"


def _checksum_hint(exc: UploadError, s: Settings) -> str:
    if s.checksum_compat or s.checksum in ("md5", "none"):
        return ""
    if exc.reason in (
        "InvalidArgument",
        "InvalidRequest",
        "NotImplemented",
        "http_400",
        "http_501",
    ):
        return (
            " (if this store rejects x-amz-checksum-* headers, set S3SPOOL_CHECKSUM_COMPAT=true "
            "or --checksum-compat)"
        )
    return ""


# --- enqueue -----------------------------------------------------------------------------------

#: Where enqueue stages copies: next to incoming/, so the final rename is atomic,
#: and outside it, so a watcher never sees a partial file whatever IGNORE says.
STAGE_DIR = ".s3spool-enqueue"
COPY_CHUNK = 8 * 1024 * 1024
#: Show a progress bar (on a TTY) from this many files or bytes on.
PROGRESS_MIN_FILES = 10
PROGRESS_MIN_BYTES = 64 * 1024 * 1024


class EnqueueError(Exception):
    """One file could not be enqueued; the message says why and what was left where."""


@dataclass(frozen=True, slots=True)
class EnqueueTarget:
    label: str
    incoming: Path
    is_ignored: Callable[[str], bool]
    ignore: tuple[str, ...]


def enqueue_target(settings: Settings | None, spool: Path | None) -> EnqueueTarget:
    """Which incoming/ to deliver into: ``--spool DIR`` or the settings' only spool."""
    ignore = tuple(settings.ignore if settings else _default_ignore())
    is_ignored = compile_ignore(ignore)
    layouts = spool_layouts(settings) if settings is not None else []
    if spool is None:
        if settings is None:
            raise ConfigError(
                "enqueue: no spool: pass --spool DIR, or set S3SPOOL_SPOOL_DIRS / "
                "S3SPOOL_INCOMING_DIR (with valid settings)"
            )
        if len(layouts) != 1:
            raise ConfigError(
                f"S3SPOOL_SPOOL_DIRS (--spool-dirs) lists {len(layouts)} spools; "
                "choose one with --spool DIR"
            )
        d = layouts[0]
        return EnqueueTarget(d.label, d.incoming, is_ignored, ignore)
    path = Path(os.path.abspath(spool))
    for d in layouts:
        if path in (d.root, d.incoming):
            return EnqueueTarget(d.label, d.incoming, is_ignored, ignore)
    if (path / "incoming").is_dir():
        return EnqueueTarget(str(path), path / "incoming", is_ignored, ignore)
    raise ConfigError(
        f"--spool {path}: has no incoming/ directory (a spool root holds incoming/; "
        "the service creates it when it starts)"
    )


def _default_ignore() -> list[str]:
    factory = Settings.model_fields["ignore"].default_factory
    assert factory is not None
    value: list[str] = factory()  # type: ignore[call-arg]
    return value


def enqueue(
    files: Sequence[Path],
    target: EnqueueTarget,
    *,
    move: bool = False,
    progress: bool | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Deliver each file into incoming/ atomically; exit 1 if any file was not enqueued."""
    out = out or sys.stdout
    err = err or sys.stderr
    if progress is None:
        progress = err.isatty()
    sizes = []
    for f in files:
        try:
            sizes.append(os.stat(f).st_size)
        except OSError:
            sizes.append(0)
    show = progress and (len(files) >= PROGRESS_MIN_FILES or sum(sizes) >= PROGRESS_MIN_BYTES)
    failed = 0
    with _Progress(show, sum(sizes), err) as bar:
        for src, size in zip(files, sizes, strict=True):
            bar.start(src.name, size)
            try:
                dest = enqueue_one(src, target, move=move, on_bytes=bar.advance)
            except EnqueueError as exc:
                failed += 1
                bar.print(f"s3spool enqueue: {src}: {exc}")
                continue
            finally:
                bar.finish()
            print(f"enqueued {src} -> {dest}", file=out)
    return EXIT_NOT_OK if failed else EXIT_OK


def enqueue_one(
    src: Path,
    target: EnqueueTarget,
    *,
    move: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Put ``src`` into incoming/ under its own name, complete or not at all.

    Same filesystem with ``move``: fsync, then rename(2) without replacing.
    Otherwise: copy to a staging file next to incoming/, fsync, rename into
    incoming/ without replacing; with ``move`` the source is unlinked only
    after that rename is durable and only if it is still the file we copied.
    """
    name = src.name
    if not name or name in (".", ".."):
        raise EnqueueError("has no file name")
    if target.is_ignored(name):
        raise EnqueueError(
            f"the name {name!r} matches S3SPOOL_IGNORE ({', '.join(target.ignore)}); "
            "the service would never pick it up; rename it first (nothing was changed)"
        )
    dest = target.incoming / name
    try:
        lst = os.lstat(src)
    except OSError as exc:
        raise EnqueueError(f"cannot stat: {exc.strerror}") from None
    if stat.S_ISLNK(lst.st_mode) and move:
        raise EnqueueError(
            "is a symlink; --move would move the link, not its data "
            "(enqueue it without --move to copy the data it points to)"
        )
    if os.path.lexists(dest):
        raise EnqueueError(_exists_msg(dest))
    try:
        incoming_dev = os.stat(target.incoming).st_dev
    except OSError as exc:
        raise EnqueueError(f"cannot use {target.incoming}: {exc.strerror}") from None
    if move and lst.st_dev == incoming_dev and stat.S_ISREG(lst.st_mode):
        _move_same_fs(src, dest)
        if on_bytes:
            on_bytes(lst.st_size)
        return dest
    _copy_in(src, dest, incoming_dev, move=move, on_bytes=on_bytes)
    return dest


def _exists_msg(dest: Path) -> str:
    return f"{dest} already exists; not replaced (both files are unchanged)"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_same_fs(src: Path, dest: Path) -> None:
    # The producer may not have synced it; a rename of unsynced data can surface
    # as an empty file after a crash, which the service would then upload.
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        rename_noreplace(src, dest)
    except FileExistsError:
        raise EnqueueError(_exists_msg(dest)) from None
    except OSError as exc:
        raise EnqueueError(f"cannot move into {dest.parent}: {exc.strerror}") from None
    _fsync_dir(dest.parent)
    with contextlib.suppress(OSError):
        _fsync_dir(src.parent)


def _stage_dir(incoming: Path, incoming_dev: int) -> Path:
    stage = incoming.parent / STAGE_DIR
    try:
        stage.mkdir(exist_ok=True)
        st = os.stat(stage)
    except OSError as exc:
        raise EnqueueError(
            f"cannot create the staging directory {stage}: {exc.strerror} "
            "(enqueue copies files there first so the service never sees a partial file; "
            "create it writable for this user)"
        ) from None
    if st.st_dev != incoming_dev:
        raise EnqueueError(
            f"staging directory {stage} is on another filesystem than {incoming}; "
            "rename(2) cannot move the copy in atomically"
        )
    return stage


def _copy_in(
    src: Path,
    dest: Path,
    incoming_dev: int,
    *,
    move: bool,
    on_bytes: Callable[[int], None] | None,
) -> None:
    stage = _stage_dir(dest.parent, incoming_dev)
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise EnqueueError(f"cannot open: {exc.strerror}") from None
    tmp = stage / f"tmp.{secrets.token_hex(8)}"
    renamed = False
    dst_fd = -1
    try:
        st = os.fstat(src_fd)
        if not stat.S_ISREG(st.st_mode):
            raise EnqueueError("not a regular file (nothing was changed)")
        try:
            dst_fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                stat.S_IMODE(st.st_mode),
            )
            _copy_fd(src_fd, dst_fd, st.st_size, on_bytes)
        except OSError as exc:
            raise EnqueueError(f"copy to {stage} failed: {exc.strerror}") from None
        now = os.fstat(src_fd)
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise EnqueueError("changed while it was copied; not enqueued (try again)")
        try:
            # keep the producer's mtime, as mv does: {m_*} key fields and HOLD_FOR use it
            os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(dst_fd)
            os.close(dst_fd)
            dst_fd = -1
            rename_noreplace(tmp, dest)
            renamed = True
            _fsync_dir(dest.parent)
        except FileExistsError:
            raise EnqueueError(_exists_msg(dest)) from None
        except OSError as exc:
            raise EnqueueError(f"cannot move the copy into {dest.parent}: {exc.strerror}") from None
    finally:
        if dst_fd >= 0:
            os.close(dst_fd)
        os.close(src_fd)
        if not renamed:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    if move:
        _unlink_source(src, st)


def _unlink_source(src: Path, copied: os.stat_result) -> None:
    """Remove the moved source, but only if it is still exactly the file that was copied."""
    try:
        cur = os.lstat(src)
    except FileNotFoundError:
        return
    same = (cur.st_dev, cur.st_ino, cur.st_size, cur.st_mtime_ns) == (
        copied.st_dev,
        copied.st_ino,
        copied.st_size,
        copied.st_mtime_ns,
    )
    if not same:
        raise EnqueueError("was enqueued, but changed afterwards, so the source was kept")
    try:
        os.unlink(src)
    except OSError as exc:
        raise EnqueueError(
            f"was enqueued, but the source could not be removed: {exc.strerror}"
        ) from None
    with contextlib.suppress(OSError):
        _fsync_dir(src.parent)


def _copy_fd(src: int, dst: int, size: int, on_bytes: Callable[[int], None] | None) -> None:
    offset = 0
    fast = hasattr(os, "copy_file_range")
    while offset < size:
        want = min(COPY_CHUNK, size - offset)
        n = 0
        if fast:
            try:
                n = os.copy_file_range(src, dst, want, offset, offset)
            except OSError as exc:
                # not across these filesystems / not supported here: plain copy
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                fast = False
                continue
        else:
            data = os.pread(src, want, offset)
            n = len(data)
            view = memoryview(data)
            written = 0
            while written < n:
                written += os.pwrite(dst, view[written:], offset + written)
        if n == 0:
            break  # shrank while copying: the caller's size check reports it
        offset += n
        if on_bytes:
            on_bytes(n)


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, err: TextIO) -> None:
        self.enabled = enabled
        self.total = total
        self.err = err
        self._bar: Any = None
        self._task: Any = None
        self._done = 0
        self._expected = 0

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.err),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("enqueue", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def start(self, name: str, size: int) -> None:
        self._expected = self._done + size
        if self._bar is not None:
            self._bar.update(self._task, description=name[:40])

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done)

    def finish(self) -> None:
        # a failed or partial file still counts as handled for the total
        self._done = self._expected
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done)

    def print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.err)
