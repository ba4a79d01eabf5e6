"""Relpaths (``a/b/NAME``, kept by a claim wherever it goes): walking, making and pruning the
subdirectories of a spool directory. Symlinks are never followed; only rmdir removes."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path


def split(relpath: str) -> tuple[str, str]:
    """``("a/b", "NAME")`` for ``a/b/NAME``; ``("", NAME)`` for a name in the top directory."""
    reldir, _, name = relpath.rpartition("/")
    return reldir, name


def walk(
    top: str | os.PathLike[str],
    *,
    recursive: bool = True,
    skip_dir: Callable[[str], bool] | None = None,
    enter: Callable[[str], None] | None = None,
    onerror: Callable[[str, OSError], None] | None = None,
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``(relpath, entry)`` for every entry below ``top`` but the directories walked into (not
    symlinks, nor ``skip_dir(name)``; ``recursive=False``: none). ``enter(reldir)`` runs before
    a directory is read (``""``: ``top``). One directory is open at a time: memory grows with
    directories, not files. ``top`` unreadable raises; a subdirectory goes to ``onerror``."""
    root = os.fspath(top)
    pending = [""]
    while pending:
        reldir = pending.pop()
        if enter is not None:
            enter(reldir)
        try:
            it = os.scandir(f"{root}/{reldir}" if reldir else root)
        except OSError as exc:
            if not reldir:
                raise
            if onerror is not None:
                onerror(reldir, exc)
            continue
        prefix = f"{reldir}/" if reldir else ""
        with it:
            for entry in it:
                if (
                    recursive
                    and entry.is_dir(follow_symlinks=False)
                    and (skip_dir is None or not skip_dir(entry.name))
                ):
                    pending.append(prefix + entry.name)
                else:
                    yield prefix + entry.name, entry


def files_below(top: str | os.PathLike[str]) -> list[str]:
    """Relpaths of everything below ``top`` but its directories; ``[]`` if it is missing."""
    try:
        return [rel for rel, _entry in walk(top)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def make_dirs(top: str, reldir: str, *, sidestep: bool = False) -> str:
    """Create the directories of ``reldir`` below ``top`` (never ``top``: a claim directory that
    vanished stays a fault); returns the last. A non-directory in the way raises
    ``NotADirectoryError``, or with ``sidestep`` the first free ``SEGMENT~N`` is taken."""
    path = top
    for segment in reldir.split("/"):
        for n in range(100_000):
            candidate = f"{path}/{segment}" if n == 0 else f"{path}/{segment}~{n}"
            try:
                os.mkdir(candidate)
            except FileExistsError:
                if not os.path.isdir(candidate) or os.path.islink(candidate):
                    if sidestep:
                        continue
                    raise NotADirectoryError(
                        f"{candidate} is in the way and is not a directory"
                    ) from None
            break
        path = candidate
    return path


def move_into(rename: Callable[[str, str], None], src: str, top: str, rel: str) -> None:
    """``rename(src, top/rel)``, making the directories of ``rel`` if the rename says they are
    missing; ``FileNotFoundError`` when ``src`` (or ``top``) is gone, else ``make_dirs``' errors."""
    try:
        rename(src, f"{top}/{rel}")
        return
    except FileNotFoundError:
        reldir = split(rel)[0]
        if not reldir or not os.path.lexists(src):
            raise
        make_dirs(top, reldir)
    rename(src, f"{top}/{rel}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    top: str | os.PathLike[str], rel: str, body: bytes, *, sync: bool = False, mode: int = 0o666
) -> None:
    """Write ``body`` to ``top/rel`` whole or not at all (a temporary file renamed over it);
    ``sync``: file and directory are on disk when it returns (to survive a power cut)."""
    root = os.fspath(top)
    tmp = f"{root}/.tmp.{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.write(fd, body)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        move_into(os.replace, tmp, root, rel)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(os.path.dirname(f"{root}/{rel}"))


def move_from_below(rename: Callable[..., None], top: str, rel: str, to: str) -> None:
    """``rename(top/rel, to/rel)`` (a claim out of ``incoming/a/b/``) never through a symlink:
    each directory of ``rel`` is opened with ``O_NOFOLLOW`` and the rename is relative to the
    last (a symlink raises ``FileNotFoundError``, as a file that is gone does)."""
    reldir, name = split(rel)
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(top, flags)
    try:
        for segment in reldir.split("/"):
            try:
                below = os.open(segment, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise FileNotFoundError(errno.ENOENT, "a symlink now", f"{top}/{rel}") from None
            os.close(fd)
            fd = below
        try:
            rename(name, f"{to}/{rel}", src_dir_fd=fd)
            return
        except FileNotFoundError:
            try:
                os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "gone", f"{top}/{rel}") from None
        make_dirs(to, reldir)
        rename(name, f"{to}/{rel}", src_dir_fd=fd)
    finally:
        os.close(fd)


def prune_parents(top: str, rel: str) -> None:
    """Remove the directories of ``rel`` below ``top``, deepest first, while they are empty."""
    reldir = split(rel)[0]
    while reldir:
        try:
            os.rmdir(f"{top}/{reldir}")
        except OSError:
            return
        reldir = split(reldir)[0]


def prune_empty(
    top: str | os.PathLike[str],
    *,
    unchanged_since: float | None = None,
    skip_dir: Callable[[str], bool] | None = None,
) -> int:
    """Remove the empty directories below ``top`` (never ``top``), children first; returns how
    many. ``unchanged_since``: only those not changed (mtime, ctime) since, so a producer that
    just made one may still rename a file in."""
    root = os.fspath(top)
    found: list[tuple[str, float]] = []

    def note(reldir: str) -> None:
        if not reldir:
            return
        try:
            st = os.lstat(f"{root}/{reldir}")
        except OSError:
            return
        found.append((reldir, max(st.st_mtime, st.st_ctime)))

    try:
        for _ in walk(root, skip_dir=skip_dir, enter=note):
            pass
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for reldir, changed in reversed(found):  # walk order lists a parent before its children
        if unchanged_since is not None and changed > unchanged_since:
            continue
        try:
            os.rmdir(f"{root}/{reldir}")
            removed += 1
        except OSError:
            continue
    return removed


def inside(path: Path, directory: Path) -> bool:
    """Is ``path`` ``directory`` or below it (both absolute, not resolved)?"""
    a, b = os.path.normpath(path), os.path.normpath(directory)
    return a == b or a.startswith(b.rstrip("/") + "/")
