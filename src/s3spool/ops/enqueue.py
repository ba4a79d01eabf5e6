"""``s3spool enqueue``: put files into a spool the safe way (stage, fsync, one rename)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from s3spool.config.load import Config
from s3spool.config.settings import Settings
from s3spool.config.spools import SpoolDirs, spool_layouts
from s3spool.errors import EXIT_NOT_OK, EXIT_OK, ConfigError
from s3spool.run.progress import DRAW_INTERVAL, Counts, Progress
from s3spool.spool.dirs import fsync_dir
from s3spool.spool.spool import rename_noreplace
from s3spool.spool.watch import compile_ignore

#: Where enqueue stages copies: next to incoming/, so the final rename is atomic,
#: and outside it, so a watcher never sees a partial file whatever IGNORE says.
STAGE_DIR = ".s3spool-enqueue"
COPY_CHUNK = 8 * 1024 * 1024
#: Show the progress line (on a TTY) from this many files or bytes on.
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


def spools_of(config: Config | None, spool: Path | None) -> list[tuple[Settings, SpoolDirs]]:
    """The spools of every route; ``--spool DIR``: only the one whose root or incoming/ it is."""
    routes = config.routes if config is not None else ()
    layouts = [(r.s, d) for r in routes for d in spool_layouts(r.s, route=r.name)]
    if spool is None:
        return layouts
    path = Path(os.path.abspath(spool))
    return [(s, d) for s, d in layouts if path in (d.root, d.incoming)]


_NO_INCOMING = (
    "has no incoming/ directory (a spool root holds incoming/; the service creates it when it "
    "starts, or create it)"
)


def enqueue_target(config: Config | None, spool: Path | None) -> EnqueueTarget:
    """Which incoming/ to deliver into: ``--spool DIR`` or the settings' only spool."""
    layouts = spools_of(config, spool)
    if spool is None:
        if config is None:
            raise ConfigError(
                "enqueue: no spool: pass --spool DIR, or set S3SPOOL_SPOOL_DIRS / "
                "S3SPOOL_INCOMING_DIR (with valid settings)"
            )
        if len(layouts) != 1:
            spools = ", ".join(d.label for _s, d in layouts)
            raise ConfigError(
                f"the settings name {len(layouts)} spools ({spools}); choose one with --spool DIR"
            )
    else:
        path = Path(os.path.abspath(spool))
        if not layouts and (path / "incoming").is_dir():
            ignore = tuple(Settings.model_fields["ignore"].get_default(call_default_factory=True))
            return EnqueueTarget(str(path), path / "incoming", compile_ignore(ignore), ignore)
        if not layouts:
            raise ConfigError(f"--spool {path}: {_NO_INCOMING}")
    s, d = layouts[0]
    if not d.incoming.is_dir():  # the same answer whichever way the spool was named
        raise ConfigError(f"{d.label}: {_NO_INCOMING}")
    return EnqueueTarget(d.label, d.incoming, compile_ignore(s.ignore), tuple(s.ignore))


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
    counts = Counts()
    bar = Progress(counts, [], stream=err, tty=True)
    bar.total = (len(files), sum(sizes))
    drawn = 0.0

    def advance(n: int) -> None:
        nonlocal drawn
        counts.bytes += n
        if show and time.monotonic() - drawn >= DRAW_INTERVAL:
            drawn = time.monotonic()
            bar.tick()

    for src, size in zip(files, sizes, strict=True):
        handled = counts.bytes + size
        try:
            dest = enqueue_one(src, target, move=move, on_bytes=advance)
        except EnqueueError as exc:
            counts.failed += 1
            bar.clear()
            print(f"s3spool enqueue: {src}: {exc}", file=err)
            continue
        finally:
            counts.bytes = handled  # a failed or partial file still counts as handled
        counts.delivered += 1
        bar.clear()
        print(f"enqueued {src} -> {dest}", file=out)
        advance(0)
    bar.clear()
    return EXIT_NOT_OK if counts.failed else EXIT_OK


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
    fsync_dir(dest.parent)
    with contextlib.suppress(OSError):
        fsync_dir(src.parent)


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
            fsync_dir(dest.parent)
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
    now = (cur.st_dev, cur.st_ino, cur.st_size, cur.st_mtime_ns)
    if now != (copied.st_dev, copied.st_ino, copied.st_size, copied.st_mtime_ns):
        raise EnqueueError("was enqueued, but changed afterwards, so the source was kept")
    try:
        os.unlink(src)
    except OSError as exc:
        raise EnqueueError(
            f"was enqueued, but the source could not be removed: {exc.strerror}"
        ) from None
    with contextlib.suppress(OSError):
        fsync_dir(src.parent)


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
