"""``s3spool check``: settings, directories, inotify and the store, one verdict each."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from s3spool.config.load import Config, routes_of
from s3spool.config.settings import Settings
from s3spool.config.spools import SpoolDirs, spool_layouts
from s3spool.errors import (
    EXIT_CONFIG,
    EXIT_NOT_OK,
    EXIT_OK,
    ConfigError,
    StoreUnavailable,
    UploadError,
)
from s3spool.spool.keys import KeyTemplate
from s3spool.spool.scan import plural
from s3spool.spool.spool import Spool
from s3spool.spool.watch import INOTIFY_HELP

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


async def check(
    config: Config | Settings, *, read_only: bool = False, out: TextIO | None = None
) -> int:
    """Settings, directories, inotify and the store; one PASS/WARN/FAIL line each (per
    route, when there are several).

    Exit 0 if nothing failed, 1 if a check failed, 78 if the settings are invalid.
    """
    report = Report(out or sys.stdout)
    routes = routes_of(config)
    for route in routes:
        if len(routes) > 1:
            print(f"# route {route.name}", file=report.out, flush=True)
        if await _check_route(route.s, report, read_only=read_only) == EXIT_CONFIG:
            return EXIT_CONFIG
    return EXIT_NOT_OK if report.failed else EXIT_OK


async def _check_route(settings: Settings, report: Report, *, read_only: bool) -> int:
    try:
        prefix = settings.prefix
        KeyTemplate(settings.key_format, prefix)
        layouts = spool_layouts(settings)
    except (ConfigError, ValueError) as exc:
        report(FAIL, "settings", str(exc))
        return EXIT_CONFIG
    report(
        PASS,
        "settings",
        f"{plural(len(layouts), 'spool')} -> {settings.destination}",
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
    return EXIT_OK


def check_directories(dirs: SpoolDirs, settings: Settings) -> tuple[str, str]:
    """Spool.prepare() (creates missing dirs, like the service), then a real write test."""
    spool = Spool(dirs, settings.resolved_instance_id, recursive=settings.recursive)
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
    from asyncinotify import Inotify, Mask

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
    detail = f"watched {plural(watched, 'incoming/ directory')}; {limits}"
    if low:
        return WARN, detail + "; " + "; ".join(low)
    return PASS, detail


async def check_store(
    settings: Settings, *, read_only: bool
) -> tuple[str, str, list[tuple[str, str]]]:
    """(verdict, detail, what the store supports as (topic, finding) lines)."""
    from s3spool.store.open import open_store

    scheme, bucket, prefix = settings.scheme, settings.bucket, settings.prefix
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
    except ConfigError as exc:  # found when the client is made (PROFILE, AWS_CA_BUNDLE)
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
