"""The spool on disk: layout, claims, settling to done/ and failed/, instance locks.

The boundary with the filesystem: ``OSError`` becomes ``errors.py``'s classes here.
Layout of one spool (directories are created if missing)::

    incoming/                  producers rename files in here
    working/<instance>/        flock'ed by a live instance (the directory: starting writes no file)
    working/<instance>/files/  files this instance claimed (rename is the lock)
    working/<instance>/keys/   per-claim JSON: the key fixed at claim time, an open upload's id
    working/.resubmit/         resubmit mode: each name's attempts and next try (wall clock)
    done/                      delivered files (unless REMOVE_ON_SUCCESS)
    failed/                    undeliverable files + NAME.reason.json

A RECURSIVE claim keeps its relpath (``a/b/NAME``) below files/, keys/, done/ and failed/.
An instance whose directory can be locked is dead: a live one adopts its claims and keys.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import filecmp
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3spool.config.spools import SpoolDirs
from s3spool.errors import (
    Busy,
    ConfigError,
    FileVanished,
    LocalFault,
    NotAFile,
    PermanentError,
    TransientError,
)
from s3spool.spool import dirs as tree

if TYPE_CHECKING:
    from s3spool.spool.pieces import Pieces

log = logging.getLogger("s3spool.spool")

#: failed/NAME's reason file is failed/NAME.reason.json (``requeue`` removes it with the file)
REASON_SUFFIX = ".reason.json"

# --- atomic rename that never replaces ---------------------------------------------------------
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2: Any = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - glibc < 2.28 or not Linux
    _renameat2 = None
_noreplace_ok = _renameat2 is not None


def rename_noreplace(src: str | Path, dst: str | Path, *, src_dir_fd: int | None = None) -> None:
    """rename(2) that raises ``FileExistsError`` instead of replacing ``dst`` (renameat2, else
    link+unlink: one racer's unlink wins); ``src`` may be relative to ``src_dir_fd``."""
    global _noreplace_ok
    if _noreplace_ok:
        sfd = _AT_FDCWD if src_dir_fd is None else src_dir_fd
        if _renameat2(sfd, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))
        _noreplace_ok = False
        log.info("filesystem lacks RENAME_NOREPLACE; using link+unlink")
    os.link(src, dst, src_dir_fd=src_dir_fd, follow_symlinks=False)
    try:
        os.unlink(src, dir_fd=src_dir_fd)
    except FileNotFoundError:
        # someone else moved it first: they own it, undo our link
        os.unlink(dst)
        raise


#: errno values that mean "this directory does not work now", not "this file is bad"
_LOCAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT}
    | {errno.EXDEV}  # a filesystem mounted over one directory of the spool
)


def local_fault(exc: OSError, what: str, directory: str | Path) -> TransientError:
    """``LocalFault`` for a directory's errno (see ``_LOCAL_ERRNOS``), else ``TransientError``."""
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    msg = f"cannot {what} in {directory}: {exc.strerror} ({name})"
    if exc.errno in _LOCAL_ERRNOS:
        return LocalFault(msg, reason=name, path=os.fspath(directory))
    return TransientError(msg, reason=name)


def writable(path: Path) -> LocalFault | None:
    """Why ``path`` cannot take new entries now (read-only filesystem, permissions), or None."""
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        fault = local_fault(exc, "look at the directory", path)
        return fault if isinstance(fault, LocalFault) else None
    if vfs.f_flag & os.ST_RDONLY:
        return LocalFault(
            f"{path} is on a read-only filesystem (EROFS)", reason="EROFS", path=str(path)
        )
    if not os.access(path, os.W_OK | os.X_OK):
        return LocalFault(
            f"{path} is not writable by uid {os.getuid()} (EACCES)", reason="EACCES", path=str(path)
        )
    return None


@dataclass(slots=True)
class Source:
    """An open file to deliver; a ``Claim`` is one, carried to the end."""

    name: str  # for logs
    fd: int = -1
    size: int = 0
    mtime_ns: int = 0
    key: str = ""  # "" until rendered: never a valid object key
    #: a recorded multipart upload to continue, and the part size it was started with
    upload_id: str | None = None
    part_size: int | None = None
    #: COMPRESS: the codec this file is stored with, decided with its key and fixed with it
    codec: str | None = None
    #: what the object says it holds, where that is not the file as it is (the compressed
    #: copy, run/compress.py): the store sends what is set
    content_type: str | None = None
    content_encoding: str | None = None
    metadata: dict[str, str] | None = None
    #: BATCH=extract: a tar the store unpacks; its answer describes no object of ours
    unpacked: bool = False
    #: METADATA, TAGS and CONTENT_DISPOSITION render from this file's name; not a bundle's
    #: (each member's are in its index line)
    per_file_options: bool = True

    def uploading(self, upload_id: str | None, part_size: int) -> None:
        """A multipart upload got its id (or ended): a claim records it durably."""
        self.upload_id, self.part_size = upload_id, part_size

    def file(self) -> Source:
        """The file whose name and times the object's options render from (a copy's claim)."""
        return self

    def reader(self) -> int | Pieces:
        """What the store reads the body from: the open file (a bundle's: its ``Pieces``)."""
        return self.fd


def about(emit: Callable[..., None], spool: Spool, name: str, msg: str, *args: object) -> None:
    """Log a line about one file, with the prefix operators' filters know (``name``: the
    file's relpath below incoming/, which is its name unless the spool is RECURSIVE)."""
    emit("spool=%s name=%r: " + msg, spool.label, name, *args)


@dataclass(slots=True, eq=False, kw_only=True)
class Claim(Source):
    """A file this instance renamed into working/, the one record of it until it is settled
    (``name``: its relpath, ``a/b/NAME`` in a RECURSIVE spool; surrogateescape str)."""

    spool: Spool
    path: str  # working/<instance>/files/RELPATH (a str: built for every file, cheaply)
    mtime: float = 0.0
    ctime: float = 0.0
    recovered: bool = False  # adopted from a dead instance: check the store first
    key_saved: bool = False  # a keys/NAME record exists for this claim
    attempts: int = 0

    def changed(self) -> str | None:
        """How the file changed since it was opened (size, mtime), or None."""
        st = os.fstat(self.fd)
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            return f"changed during upload (size {self.size}->{st.st_size})"
        return None

    def restat(self) -> None:
        """Take the file as it is now, to upload it again."""
        st = os.fstat(self.fd)
        self.size, self.mtime, self.mtime_ns = st.st_size, st.st_mtime, st.st_mtime_ns

    def uploading(self, upload_id: str | None, part_size: int) -> None:
        if (upload_id, part_size) == (self.upload_id, self.part_size):
            return
        self.upload_id, self.part_size = upload_id, part_size
        try:
            self.spool.save_key(self)
        except TransientError as exc:
            # the stale-upload sweep still finds it if we crash before completing
            log.warning("%s", exc)


class Spool:
    """One spool as seen by this instance."""

    def __init__(self, dirs: SpoolDirs, instance_id: str, *, recursive: bool = False) -> None:
        self.dirs = dirs
        #: RECURSIVE: files in subdirectories of incoming/ are taken too (dirs.py)
        self.recursive = recursive
        self.label = dirs.label
        self.instance_id = instance_id
        self.me = dirs.working / instance_id
        self.files = self.me / "files"
        self.keys = self.me / "keys"
        # str prefixes for the per-file hot path (pathlib joins cost more than the syscalls)
        self.incoming_s = os.fspath(dirs.incoming) + "/"
        self._files_s = os.fspath(self.files) + "/"
        self._lock_fd: int | None = None

    # --- start / stop ---------------------------------------------------------------------
    def prepare(self, *, create: bool = True) -> None:
        """Create and check the directories; raise ``ConfigError`` naming what is wrong."""
        try:
            self.check_dirs(create=create)
        except TransientError as exc:
            raise ConfigError(f"spool {self.label}: {exc}") from None
        d = self.dirs
        named = [("working", d.working), ("done", d.done), ("failed", d.failed)]
        for role, path in named if self.recursive else ():
            if path and tree.inside(path, d.incoming) and not (role == "failed" and d.resubmit):
                raise ConfigError(
                    f"spool {self.label}: the {role} directory {path} is inside {d.incoming}; "
                    "with RECURSIVE its files would be taken again — move it out"
                )

    def check_dirs(self, *, create: bool = True) -> None:
        """Create (``create``: in an existing parent) and check the directories: ``LocalFault``
        naming the first that cannot take new entries, or the filesystems they are split
        across (EXDEV)."""
        d = self.dirs
        devs: dict[int, list[str]] = {}
        for role in ("incoming", "working", "done", "failed"):
            path = getattr(d, role)
            if path is None:
                continue
            try:
                # one level: a missing root or parent is a mistake, not a spool; a file in
                # the directory's place is named below
                if create:
                    with contextlib.suppress(FileExistsError):
                        path.mkdir()
                st = os.stat(path)
            except OSError as exc:
                where = path.parent
                fault = writable(where) or local_fault(exc, f"make the {role} directory", where)
                raise fault from None
            if not stat.S_ISDIR(st.st_mode):
                raise TransientError(f"{role} directory {path}: not a directory", reason="ENOTDIR")
            problem = writable(path)
            if problem is not None:
                raise problem
            devs.setdefault(st.st_dev, []).append(f"{role}={path}")
        if len(devs) > 1:
            groups = "; ".join(", ".join(v) for v in devs.values())
            raise LocalFault(
                f"directories are on different filesystems ({groups}); rename(2) cannot "
                "move files between them (EXDEV) — put them on one filesystem",
                reason="EXDEV",
                path=str(d.root or d.incoming.parent),
            )

    def open(self) -> None:
        """Create and flock this instance's directory (no file written: a full filesystem still
        starts); ``LocalFault`` if it cannot be made, ``ConfigError`` if a live process has it."""
        try:
            self.files.mkdir(parents=True, exist_ok=True)
            self.keys.mkdir(exist_ok=True)
            fd = os.open(self.me, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise local_fault(exc, "create this instance's directory", self.me.parent) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"spool {self.label}: instance id {self.instance_id!r} is in use by a live "
                "process (S3SPOOL_INSTANCE_ID must be unique)"
            ) from None
        self._lock_fd = fd

    @property
    def opened(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        """Release the lock; remove the claim directory if nothing is left in it."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            tree.prune_empty(self.files)  # subdirectories of RECURSIVE claims
            if not any(self.files.iterdir()):
                for rel in tree.files_below(self.keys):
                    os.unlink(self.keys / rel)
                tree.prune_empty(self.keys)
                self.keys.rmdir()
                self.files.rmdir()
                batches = self.me / "batches"  # records of batches with no member left
                if batches.exists():
                    for rel in tree.files_below(batches):
                        os.unlink(batches / rel)
                    batches.rmdir()
                outbox = self.me / "outbox"  # events not yet accepted keep the directory
                if outbox.exists():
                    tree.prune_empty(outbox)
                    outbox.rmdir()
                self.me.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = None

    def relock(self) -> None:
        """Make and lock this instance's directory again if it was removed by hand."""
        if self._lock_fd is not None:
            try:
                same = os.path.samestat(os.fstat(self._lock_fd), os.stat(self.me))
            except OSError:
                same = False
            if not same:
                os.close(self._lock_fd)
                self._lock_fd = None
        if self._lock_fd is None:
            self.open()
        try:
            self.files.mkdir(exist_ok=True)
            self.keys.mkdir(exist_ok=True)
        except OSError as exc:
            raise local_fault(exc, "recreate this instance's directories", self.me) from None

    # --- claims ----------------------------------------------------------------------------
    def claim(self, name: str) -> Claim | None:
        """Rename ``incoming/name`` into our claim directory; ``None`` if another took it first.
        ``Busy`` if a claim of the same name is still in flight here (try later)."""
        src, dst = self.incoming_s + name, self._files_s + name
        try:
            if "/" in name:  # RECURSIVE: never through a directory swapped for a symlink
                tree.move_from_below(
                    rename_noreplace, self.incoming_s[:-1], name, self._files_s[:-1]
                )
            else:
                rename_noreplace(src, dst)
        except FileNotFoundError:
            if not os.path.isdir(self.files):  # our claim directory is gone, not the file
                raise LocalFault(
                    f"cannot claim {name!r}: {self.files} is gone (ENOENT)",
                    reason="ENOENT",
                    path=str(self.files),
                ) from None
            tree.prune_parents(self._files_s[:-1], name)  # if made for a file another took
            return None
        except (FileExistsError, NotADirectoryError):  # NOTDIR: a claim of a/ vs one of a/b
            if not os.path.lexists(src):
                return None
            raise Busy(f"a file named {name!r} is still in flight", reason="busy") from None
        except OSError as exc:
            where = self.files if writable(self.dirs.incoming) is None else self.dirs.incoming
            raise local_fault(exc, f"claim {name!r}", where) from None
        return Claim(name, spool=self, path=dst)

    def unclaim(self, claim: Claim) -> bool:
        """Put a claimed, not yet uploaded file back into incoming/."""
        try:
            tree.move_into(rename_noreplace, claim.path, self.incoming_s[:-1], claim.name)
        except (FileExistsError, NotADirectoryError):
            msg = "a new file of the same name is in incoming/; the claimed one stays in %s "
            about(log.warning, self, claim.name, msg + "and is recovered on next start", self.files)
            return False
        except FileNotFoundError:
            pass
        tree.prune_parents(self._files_s[:-1], claim.name)
        self.forget_key(claim)
        return True

    def save_key(self, claim: Claim) -> None:
        """Persist the claim's key (and open multipart upload) atomically."""
        record = {
            "key": claim.key or None,
            "upload_id": claim.upload_id,
            "part_size": claim.part_size,
            "size": claim.size,
            "mtime_ns": claim.mtime_ns,
            "codec": claim.codec,  # COMPRESS: stored compressed, as its key says
        }
        try:
            tree.write_atomic(self.keys, claim.name, json.dumps(record).encode())
            claim.key_saved = True
        except OSError as exc:
            raise local_fault(exc, f"record the key of {claim.name!r}", self.keys) from None

    def recovered(self, keys_dir: Path, name: str) -> Claim:
        """A claim left in working/ (by a cancelled upload or a dead instance) with what
        its key record in ``keys_dir`` says."""
        claim = Claim(name, spool=self, path=self._files_s + name, recovered=True)
        record = self.load_key(keys_dir, name)
        if record is not None:
            claim.key = record.get("key") or ""
            claim.upload_id = record.get("upload_id")
            claim.part_size, claim.codec = record.get("part_size"), record.get("codec")
            claim.key_saved = keys_dir == self.keys
        return claim

    def load_key(self, keys_dir: Path, name: str) -> dict[str, Any] | None:
        try:
            with open(keys_dir / name, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            about(log.warning, self, name, "unreadable key record (%s); key is recomputed", exc)
            return None
        return data if isinstance(data, dict) else None

    def forget_key(self, claim: Claim) -> None:
        if not claim.key_saved:
            return  # most claims never write one: skip a failing unlink per file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.keys / claim.name)
        tree.prune_parents(os.fspath(self.keys), claim.name)
        claim.key_saved = False

    # --- settling --------------------------------------------------------------------------
    def settle_done(self, claim: Claim) -> Path | None:
        """Move a delivered file to done/ (or unlink it); returns where it went."""
        return self._move_out(claim, self.dirs.done)

    def _move_out(self, claim: Claim, directory: Path | None) -> Path | None:
        """Move a claim to ``directory`` (None: unlink it) and drop its key record; ``LocalFault``
        names a directory that refuses, ``FileVanished`` a claim that is gone."""
        try:
            if directory is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(claim.path)
                dest = None
            else:
                try:
                    dest = _place(claim.path, directory, claim.name, self.label)
                except FileNotFoundError:
                    if "/" not in claim.name:
                        raise
                    # its directory was empty and old, and cleanup removed it just now
                    dest = _place(claim.path, directory, claim.name, self.label)
        except OSError as exc:
            if not os.path.lexists(claim.path):
                raise FileVanished(f"{claim.name!r} vanished from {self.files}") from None
            where = directory if directory and writable(self.files) is None else self.files
            raise local_fault(exc, f"move {claim.name!r}", where) from None
        tree.prune_parents(self._files_s[:-1], claim.name)  # a RECURSIVE claim's directories
        self.forget_key(claim)
        return dest

    def settle_failed(self, claim: Claim, reason: dict[str, Any]) -> Path | None:
        """Move an undeliverable file to failed/ with a reason file (or unlink it)."""
        dest = self._move_out(claim, self.dirs.failed)
        if dest is None or self.dirs.resubmit:
            return dest
        note = dest.name + REASON_SUFFIX
        try:
            body = json.dumps(reason, indent=1, default=str) + "\n"
            tree.write_atomic(dest.parent, note, body.encode())
        except OSError as exc:
            about(log.warning, self, claim.name, "could not write %s: %s", note, exc.strerror)
        return dest


def open_claimed(claim: Claim) -> None:
    """Open a claimed file without following links or blocking on fifos; fill its fd and stat."""
    try:
        fd = os.open(claim.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileVanished(f"{claim.name!r} vanished after it was claimed") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile("is a symlink (never followed)", reason="symlink") from None
        with contextlib.suppress(OSError):  # its size still goes into the log and reason file
            claim.size = os.lstat(claim.path).st_size
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermanentError(f"cannot read: {exc.strerror}", reason="unreadable") from None
        raise PermanentError(f"cannot open: {exc.strerror}", reason="unreadable") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotAFile("not a regular file", reason="not_regular")
    claim.size = st.st_size
    claim.mtime = st.st_mtime
    claim.mtime_ns = st.st_mtime_ns
    claim.fd = fd


def _place(src: str, directory: Path, name: str, label: str) -> Path:
    """rename src → directory/name (a relpath: a non-directory in the way of one of its
    directories is sidestepped, ``a~1/``); an existing *different* file is never replaced."""
    reldir, name = tree.split(name)
    if reldir:
        directory = Path(tree.make_dirs(os.fspath(directory), reldir, sidestep=True))
    try:
        rename_noreplace(src, f"{directory}/{name}")
        return directory / name
    except FileExistsError:
        pass
    dest = directory / name
    if _same_file_content(src, dest):
        os.replace(src, dest)
        return dest
    for n in range(1, 100000):
        alt = directory / f"{name}~{n}"
        try:
            rename_noreplace(src, alt)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                alt = directory / f"{name[:200]}~{secrets.token_hex(4)}"
                rename_noreplace(src, alt)
            else:
                raise
        log.info(
            "spool=%s: %s/%s exists with other content; kept both, new one is %s",
            label,
            directory.name,
            name,
            alt.name,
        )
        return alt
    raise PermanentError(f"no free name for {name!r} in {directory}")  # pragma: no cover


def _same_file_content(a: str | Path, b: str | Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if not stat.S_ISREG(sb.st_mode) or sa.st_size != sb.st_size:
        return False
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False
