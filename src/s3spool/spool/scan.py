"""Read-only surveys of a spool for ``status``, ``run --dry-run`` and the gauges; ``hold_left``
is the one rule for when a file may be taken."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3spool.config.spools import SpoolDirs
from s3spool.spool.dirs import walk
from s3spool.spool.keys import encode_name
from s3spool.spool.recovery import instance_is_live
from s3spool.spool.spool import REASON_SUFFIX, Spool

_KINDS = {
    stat.S_IFLNK: "symlink",
    stat.S_IFDIR: "directory",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "device",
    stat.S_IFBLK: "device",
}


def entry_kind(mode: int) -> str:
    """What an entry that is not a regular file is, in the words of the log and the dry run."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def hold_left(mtime: float, hold_for: float, now: float, seen_for: float = 0.0) -> float:
    """Seconds until a regular file with this mtime may be taken (0: now): ``HOLD_FOR`` from its
    mtime, or, dated more than a second ahead, from when it was first seen (``seen_for`` ago)."""
    if hold_for <= 0:
        return 0.0
    if mtime > now + 1:
        return max(hold_for - seen_for, 0.0)
    return max(mtime + hold_for - now, 0.0)


@dataclass(slots=True)
class SpoolGauges:
    """Files per state of one spool (working: every instance's claims) and its lag."""

    incoming: int = 0
    working: int = 0
    failed: int = 0
    lag: float = 0.0


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

    def merge(self, other: DirSurvey) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.not_regular += other.not_regular
        self.error = other.error or self.error
        if other.oldest_mtime is not None and (
            self.oldest_mtime is None or other.oldest_mtime < self.oldest_mtime
        ):
            self.oldest_mtime = other.oldest_mtime

    @property
    def count(self) -> int:
        """Entries that are not ignored (a claim or a failed file need not be regular)."""
        return self.files + self.not_regular


@dataclass(slots=True)
class InstanceSurvey:
    id: str
    live: bool
    files: int
    bytes: int


def files(
    path: Path | None,
    is_ignored: Callable[[str], bool] | None = None,
    *,
    recursive: bool = False,
    tally: DirSurvey | None = None,
) -> Iterator[os.stat_result]:
    """The lstat of each regular file in (``recursive``: below) ``path`` not ignored: what the
    pipeline would take; ``tally`` counts them and the rest, and whether ``path`` can be read."""
    if path is None:
        return
    t = tally if tally is not None else DirSurvey("")
    try:
        for _rel, entry in walk(path, recursive=recursive, skip_dir=is_ignored):
            if is_ignored is not None and is_ignored(entry.name):
                t.ignored += 1
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between readdir and stat: a service took it
            if not stat.S_ISREG(st.st_mode):
                t.not_regular += 1
                continue
            t.add(st)
            yield st
    except FileNotFoundError:
        t.exists = False
    except OSError as exc:
        t.error = f"{path}: {exc.strerror}"


def instances(working: Path, tally: DirSurvey | None = None) -> Iterator[tuple[str, DirSurvey]]:
    """Each instance directory in working/ (by name) with its claims counted; ``tally`` adds
    them all up, and says whether working/ can be read."""
    t = tally if tally is not None else DirSurvey("")
    try:
        entries = sorted(os.scandir(working), key=lambda e: e.name)
    except FileNotFoundError:
        t.exists = False
        return
    except OSError as exc:
        t.error = f"{working}: {exc.strerror}"
        return
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue  # .resubmit/ holds backoff records, not an instance
        mine = survey(Path(entry.path) / "files", recursive=True)
        t.merge(mine)
        yield entry.name, mine


def survey(
    path: Path, is_ignored: Callable[[str], bool] | None = None, *, recursive: bool = False
) -> DirSurvey:
    out = DirSurvey(str(path))
    for _st in files(path, is_ignored, recursive=recursive, tally=out):
        pass
    return out


def claimed(dirs: SpoolDirs) -> DirSurvey:
    """The claims of every instance of a spool (files below working/*/files/)."""
    out = DirSurvey(str(dirs.working))
    for _claims in instances(dirs.working, out):
        pass
    return out


def work_waiting(spools: Iterable[Spool], is_ignored: Callable[[str], bool]) -> bool:
    """Does an open spool hold a file to take (any entry of incoming/ not ignored; an empty
    subdirectory of a RECURSIVE spool is not one) or a claim to recover?"""
    for sp in spools:
        if not sp.opened:
            continue
        seen = DirSurvey("")
        if next(files(sp.dirs.incoming, is_ignored, recursive=sp.recursive, tally=seen), None):
            return True
        if seen.not_regular or claimed(sp.dirs).count:
            return True
    return False


def spool_gauges(
    dirs: SpoolDirs,
    is_ignored: Callable[[str], bool],
    hold_for: float,
    now: float,
    *,
    recursive: bool = False,
) -> SpoolGauges:
    """One pass over incoming/ and working/ (counts, and lag: the age of the oldest file not yet
    delivered, claimed or in incoming/ and let by HOLD_FOR be taken now) and a count of failed/.
    A claim counts: while the store is down, claimed files wait in working/."""
    incoming = survey(dirs.incoming, is_ignored, recursive=recursive)
    g = SpoolGauges(incoming.files + incoming.ignored + incoming.not_regular)
    oldest = incoming.oldest_mtime
    if oldest is not None and hold_left(oldest, hold_for, now) > 0:
        oldest = None
    claims = claimed(dirs)
    g.working = claims.count
    if claims.oldest_mtime is not None:
        oldest = min(claims.oldest_mtime, oldest or claims.oldest_mtime)
    if oldest is not None:
        g.lag = max(now - oldest, 0.0)
    if dirs.failed is not None and not dirs.resubmit:
        # reason files sit next to the failed files; they are not files of their own
        failed = survey(dirs.failed, reason_file, recursive=recursive)
        g.failed = failed.count
    return g


def reason_file(name: str) -> bool:
    return name.endswith(REASON_SUFFIX)


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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def show_name(name: str) -> str:
    """A file name as it appears in keys: printable, lossless for odd bytes."""
    return encode_name(os.fsencode(name))


def survey_spool(
    dirs: SpoolDirs, is_ignored: Callable[[str], bool], *, recursive: bool = False
) -> dict[str, Any]:
    working = DirSurvey(str(dirs.working))
    instance_list = [
        InstanceSurvey(name, instance_is_live(dirs.working / name), mine.files, mine.bytes)
        for name, mine in instances(dirs.working, working)
    ]
    failed: DirSurvey | None = None
    if dirs.failed is not None and not dirs.resubmit:
        failed = survey(dirs.failed, reason_file, recursive=recursive)
    return {
        "incoming": survey(dirs.incoming, is_ignored, recursive=recursive),
        "working": working,
        "done": survey(dirs.done, recursive=recursive) if dirs.done is not None else None,
        "failed": failed,
        "instances": instance_list,
        "resubmit": dirs.resubmit,
    }


def dir_json(d: DirSurvey | None, now: float) -> dict[str, Any] | None:
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
