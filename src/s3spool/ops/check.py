"""``s3spool check``: settings, directories, inotify and the store, one verdict each."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from s3spool.config.load import Config
from s3spool.config.settings import Settings
from s3spool.config.spools import SpoolDirs, spool_layouts
from s3spool.errors import (
    EXIT_CONFIG,
    EXIT_NOT_OK,
    EXIT_OK,
    BadRequest,
    ConfigError,
    PermanentError,
    PreconditionFailed,
    Unsupported,
    UploadError,
)
from s3spool.spool.keys import KeyTemplate
from s3spool.spool.scan import plural
from s3spool.spool.spool import Source, Spool
from s3spool.spool.watch import INOTIFY_HELP
from s3spool.store import clock
from s3spool.store.s3errors import no_answer, s3_errors
from s3spool.store.tar import END, header

if TYPE_CHECKING:
    from s3spool.store.s3 import S3Store

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
#: Below these (the kernel's defaults), some other program may already have used them up.
INOTIFY_MIN_WATCHES = 8192
INOTIFY_MIN_INSTANCES = 128
INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify")


@dataclass(slots=True)
class Report:
    out: TextIO
    failed: bool = False

    def __call__(self, what: str, verdict: str, detail: str) -> None:
        self.failed |= verdict == FAIL
        print(f"{verdict} {what}{': ' + detail if detail else ''}", file=self.out, flush=True)


async def check(config: Config, *, read_only: bool = False, out: TextIO | None = None) -> int:
    """One PASS/WARN/FAIL line per check (per route, when there are several); exit 0 if nothing
    failed, 1 if a check failed, 78 if the settings are invalid."""
    report = Report(out or sys.stdout)
    for warning in config.warnings:
        report("settings", WARN, warning)
    for route in config.routes:
        if len(config.routes) > 1:
            print(f"# route {route.name}", file=report.out, flush=True)
        if not await _check_route(route.s, report, read_only=read_only):
            return EXIT_CONFIG
    return EXIT_NOT_OK if report.failed else EXIT_OK


async def _check_route(settings: Settings, report: Report, *, read_only: bool) -> bool:
    """False if the settings are invalid."""
    try:
        KeyTemplate(settings.key_format, settings.prefix, settings.hostname_field)
        layouts = spool_layouts(settings)
    except (ConfigError, ValueError) as exc:
        report("settings", FAIL, str(exc))
        return False
    report("settings", PASS, f"{plural(len(layouts), 'spool')} -> {settings.destination}")
    for dirs in layouts:
        report("directories", *await asyncio.to_thread(check_directories, dirs, settings))
    report("inotify", *await asyncio.to_thread(check_inotify, layouts))
    verdict, detail, found = await check_store(settings, read_only=read_only)
    report("store", verdict, detail)
    for topic, finding in found:
        print(f"  {topic}: {finding}", file=report.out, flush=True)
    return True


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
    """Create and remove a scratch entry; the reason it failed, or None.  In incoming/ it is a
    directory: mkdir raises no event the service watches, whatever IGNORE says."""
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
        pass  # created, then removed by someone else: the write itself worked
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def check_inotify(layouts: Sequence[SpoolDirs]) -> tuple[str, str]:
    from asyncinotify import Inotify, Mask

    watches = _read_int(INOTIFY_SYSCTL / "max_user_watches")
    instances = _read_int(INOTIFY_SYSCTL / "max_user_instances")
    limits = f"fs.inotify.max_user_watches={watches} fs.inotify.max_user_instances={instances}"
    try:
        inotify = Inotify()
    except OSError as exc:
        hint = INOTIFY_HELP.get(exc.errno or 0, "")
        return FAIL, f"cannot create an inotify instance: {exc.strerror}; {hint} ({limits})"
    watched = 0
    with inotify:
        for dirs in layouts:
            if not dirs.incoming.is_dir():
                continue
            try:
                inotify.add_watch(dirs.incoming, Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.ONLYDIR)
            except OSError as exc:
                hint = INOTIFY_HELP.get(exc.errno or 0, "")
                return FAIL, f"cannot watch {dirs.incoming}: {exc.strerror}; {hint} ({limits})"
            watched += 1
    low = []
    if watches is not None and watches < INOTIFY_MIN_WATCHES:
        low.append(f"raise fs.inotify.max_user_watches (now {watches}) to at least 65536")
    if instances is not None and instances < INOTIFY_MIN_INSTANCES:
        low.append(f"raise fs.inotify.max_user_instances (now {instances}) to at least 512")
    if watches is None or instances is None:
        low.append(f"cannot read the limits in {INOTIFY_SYSCTL}")
    detail = f"watched {plural(watched, 'incoming/ directory')}; {limits}"
    return (WARN, "; ".join([detail, *low])) if low else (PASS, detail)


async def check_store(s: Settings, *, read_only: bool) -> tuple[str, str, list[tuple[str, str]]]:
    """(verdict, detail, what the store supports as (topic, finding) lines)."""
    from s3spool.store.s3 import S3Store

    if s.scheme == "noop":
        return PASS, "noop:// stores nothing; nothing to check", []
    where = f"s3://{s.bucket}/{s.prefix}"
    # botocore makes up to 3 attempts, each bounded by connect + read timeout.
    limit = 3 * (s.connect_timeout + s.read_timeout) + 5
    try:
        async with asyncio.timeout(limit), S3Store(s) as store:
            found = await store.survey()
            if read_only:
                verdict = PASS
                detail = "bucket reachable (HeadBucket); write not tested (--read-only)"
            else:
                try:
                    key = await test_write(store)
                    verdict = PASS
                    detail = f"HeadBucket, PutObject, multipart and DeleteObject of {key!r} work"
                    if s.overwrite == "never" and store.verifier.facts.conditional_writes is False:
                        verdict = WARN
                        detail += "; but the store ignores If-None-Match (OVERWRITE=never)"
                except _TestObjectLeft as exc:
                    verdict, detail = WARN, f"PutObject works, but {exc}"
                except UploadError as exc:
                    verdict, detail = FAIL, f"cannot write: {exc}{_checksum_hint(exc, s)}"
                found = store.verifier.describe()
                if s.batch == "extract" and verdict != FAIL:
                    try:
                        unpacks = await test_extract(store)
                    except UploadError as exc:
                        verdict, detail = WARN, f"{detail}; but the extract test failed: {exc}"
                    else:
                        found.append(("auto-extract", "yes" if unpacks else _NO_EXTRACT))
                        if not unpacks:
                            verdict = WARN
                            detail += "; but the store does not unpack tars (BATCH=extract)"
            if abs(clock.offset) > clock.TOLERANCE:
                verdict = FAIL if verdict == FAIL else WARN
                detail += (
                    f"; but {clock.words(clock.offset)} (requests are signed with the store's "
                    "time; set this host's clock right: NTP)"
                )
            return verdict, f"{where}: {detail}", found
    except TimeoutError:
        return FAIL, f"{where}: {no_answer('the store check', limit)}", []
    except (UploadError, ConfigError) as exc:  # ConfigError: PROFILE, AWS_CA_BUNDLE
        return FAIL, f"{where}: {exc}", []


def _checksum_hint(exc: UploadError, s: Settings) -> str:
    sends_checksum = not s.checksum_compat and s.checksum not in ("md5", "none")
    if sends_checksum and isinstance(exc, BadRequest | Unsupported):
        return (
            " (if this store rejects x-amz-checksum-* headers, set S3SPOOL_CHECKSUM_COMPAT=true "
            "or --checksum-compat)"
        )
    return ""


class _TestObjectLeft(PermanentError):
    """A test object could not be deleted (uploads need no s3:DeleteObject)."""


async def test_write(s3: S3Store) -> str:
    """Write test objects under the prefix and delete them; returns the PUT's key.  The PUT goes
    as a real upload does, so a store or policy that would refuse uploads refuses this too; on
    the way the verifier learns what the store's answers allow.  The service never does this."""
    key = f"{s3.prefix}.s3spool-check-{secrets.token_hex(8)}"
    data = b"s3spool check: safe to delete\n"
    src = Source("check.txt", size=len(data), mtime_ns=time.time_ns(), key=key)
    left: list[str] = []
    try:
        await s3.send_put(src, data, s3.ck.body(data), None)
        left.append(key)
        await _learn_conditional(s3, src, data)
        mpu_key = key + "-multipart"
        left.append(mpu_key)
        await _learn_multipart(s3, src, mpu_key, data)
        with s3_errors("CreateMultipartUpload"):
            created = await s3.client.create_multipart_upload(Bucket=s3.bucket, Key=mpu_key)
        await s3.abort_upload(mpu_key, created["UploadId"])
    finally:
        await _remove_test_objects(s3, left)
    return key


async def _remove_test_objects(s3: S3Store, names: list[str]) -> None:
    for name in names:
        try:
            await s3.delete(name)
        except UploadError as err:
            raise _TestObjectLeft(
                f"the test object {name!r} was left behind ({err}); remove it by hand",
                reason="test_object_left",
            ) from None


_NO_EXTRACT = "no (it keeps a tar as one object: BATCH=extract would upload file by file)"


async def test_extract(s3: S3Store) -> bool:
    """Does the store unpack a tar sent with Snowball auto-extract?  One tar of one member,
    both keys deleted after (BATCH=extract)."""
    key = f"{s3.prefix}.s3spool-check-{secrets.token_hex(8)}"
    member, data = key + "-extracted", b"s3spool check: safe to delete\n"
    body = header(member, len(data), time.time_ns()) + data + bytes(-len(data) % 512) + END
    src = Source(
        "check.tar",
        size=len(body),
        mtime_ns=time.time_ns(),
        key=key + ".tar",
        metadata={"snowball-auto-extract": "true"},
        unpacked=True,
    )
    try:
        await s3.send_put(src, body, s3.ck.body(body), None)
        found = await s3.listed(sorted([member, src.key]))
    finally:
        await _remove_test_objects(s3, [member, src.key])
    return member in found and src.key not in found


async def _learn_conditional(s3: S3Store, src: Source, data: bytes) -> None:
    params = {"Bucket": s3.bucket, "Key": src.key, "IfNoneMatch": "*"}
    params.update(s3.digest_params(s3.ck.body(data)))
    try:
        await s3.sender.send("PutObject", params, data)
        s3.verifier.facts.conditional_writes = False
    except Unsupported:
        s3.verifier.facts.conditional_writes = False
    except PreconditionFailed:
        s3.verifier.facts.conditional_writes = True


async def _learn_multipart(s3: S3Store, src: Source, key: str, data: bytes) -> None:
    """A one-part multipart upload (a last part may be small): its ETag form."""
    digest = s3.ck.body(data)
    names: dict[str, Any] = {"Bucket": s3.bucket, "Key": key}
    extra: dict[str, Any] = {"ChecksumAlgorithm": s3.ck.param} if s3.verifier.send_checksum else {}
    with s3_errors("multipart test upload"):
        upload_id = (await s3.client.create_multipart_upload(**names, **extra))["UploadId"]
        params = {**names, "UploadId": upload_id, "PartNumber": 1, **s3.digest_params(digest)}
        resp = await s3.sender.send("UploadPart", params, data)
        part: Any = {"PartNumber": 1, "ETag": resp.get("ETag")}  # a CompletedPartTypeDef
        if s3.verifier.send_checksum and digest.checksum_b64:
            part[f"Checksum{s3.ck.param}"] = digest.checksum_b64
        done = await s3.client.complete_multipart_upload(
            **names, UploadId=upload_id, MultipartUpload={"Parts": [part]}
        )
    fd = os.memfd_create("s3spool-check")
    try:
        os.write(fd, data)
        one = replace(src, key=key, upload_id=None, fd=fd)
        await s3.verifier.whole_object(one, dict(done), [digest], lambda: s3.head(key))
    finally:
        os.close(fd)
