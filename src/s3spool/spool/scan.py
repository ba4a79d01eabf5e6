"""Read-only surveys of a spool, shared by ``status``, ``run --dry-run`` and the gauges.

Nothing here writes, claims or talks to the store.  ``hold_left`` is the one rule for
when a regular file may be taken; the pipeline, dry-run, status and the gauges all use it.
A RECURSIVE spool's files are counted in every subdirectory, as discovery walks them
(``tree.walk``: symlinks never followed, subdirectories matching IGNORE not entered).
"""

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
from s3spool.spool.spool import Spool


def hold_left(mtime: float, hold_for: float, now: float, seen_for: float = 0.0) -> float:
    """Seconds until a regular file with this mtime may be taken (0: now).

    ``HOLD_FOR`` counts from the mtime; a file dated more than a second in the future (a
    producer's clock ahead of ours, or ours stepped back) would never become old enough,
    so its hold counts from when it was first seen instead (``seen_for`` seconds ago).
    """
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


def scan_dir(
    path: Path | None,
    *,
    recursive: bool = False,
    skip_dir: Callable[[str], bool] | None = None,
) -> Iterator[os.DirEntry[str]]:
    """Entries of a directory (with ``recursive``: below it, but the subdirectories walked
    into); nothing if it is missing or unreadable (gauges must not fail)."""
    if path is None:
        return
    try:
        for _rel, entry in walk(path, recursive=recursive, skip_dir=skip_dir):
            yield entry
    except OSError:
        return


def work_waiting(spools: Iterable[Spool], is_ignored: Callable[[str], bool]) -> bool:
    """Does an open spool hold a file to take (any entry of incoming/ not ignored; an empty
    subdirectory of a RECURSIVE spool is not one) or a claim to recover?  Stops at the first."""
    return any(
        any(
            not is_ignored(entry.name)
            for entry in scan_dir(sp.dirs.incoming, recursive=sp.recursive, skip_dir=is_ignored)
        )
        or claimed_count(sp.dirs)
        for sp in spools
        if sp.opened
    )


def regular_files(
    incoming: Path,
    is_ignored: Callable[[str], bool],
    *,
    recursive: bool = False,
    each_entry: Callable[[], None] | None = None,
) -> Iterator[os.stat_result]:
    """The lstat of each regular file in incoming/ whose name is not ignored (what the
    pipeline would consider); ``each_entry`` is called for every entry looked at."""
    for entry in scan_dir(incoming, recursive=recursive, skip_dir=is_ignored):
        if each_entry is not None:
            each_entry()
        if is_ignored(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield st


def spool_gauges(
    dirs: SpoolDirs,
    is_ignored: Callable[[str], bool],
    hold_for: float,
    now: float,
    *,
    recursive: bool = False,
) -> SpoolGauges:
    """One pass over incoming/ (count + lag) and a count of working/ and failed/.

    Lag is the age of the oldest file the service would take right now: a
    regular file, not ignored, whose mtime is at least HOLD_FOR old.  Only
    those entries are stat()ed, so a scrape of a 100k-file spool costs one
    readdir and one lstat per candidate, in a thread.
    """
    g = SpoolGauges()
    oldest: float | None = None

    def seen() -> None:
        g.incoming += 1

    for st in regular_files(dirs.incoming, is_ignored, recursive=recursive, each_entry=seen):
        if hold_left(st.st_mtime, hold_for, now) > 0:
            continue
        if oldest is None or st.st_mtime < oldest:
            oldest = st.st_mtime
    g.lag = max(now - oldest, 0.0) if oldest is not None else 0.0
    g.working = claimed_count(dirs)
    if dirs.failed is not None and not dirs.resubmit:
        # reason files sit next to the failed files; they are not files of their own
        failed = scan_dir(dirs.failed, recursive=recursive)
        g.failed = sum(1 for e in failed if not e.name.endswith(".reason.json"))
    return g


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
    recursive: bool = False,
) -> DirSurvey:
    """Regular files (and their bytes) directly in ``path`` (``recursive``: below it, not
    entering directories ``is_ignored`` names); ``is_ignored`` names counted apart."""
    out = into or DirSurvey(str(path))
    try:
        for _rel, entry in walk(path, recursive=recursive, skip_dir=is_ignored):
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
    except FileNotFoundError:
        if into is None:
            out.exists = False
    except OSError as exc:
        out.error = f"{path}: {exc.strerror}"
    return out


@dataclass(slots=True)
class InstanceSurvey:
    id: str
    live: bool
    files: int
    bytes: int


def survey_spool(
    dirs: SpoolDirs, is_ignored: Callable[[str], bool], *, recursive: bool = False
) -> dict[str, Any]:
    incoming = survey_dir(dirs.incoming, is_ignored=is_ignored, recursive=recursive)
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
        mine = survey_dir(Path(entry.path) / "files", recursive=True)
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
    done = survey_dir(dirs.done, recursive=recursive) if dirs.done is not None else None
    failed: DirSurvey | None = None
    if dirs.failed is not None and not dirs.resubmit:
        reason = ".reason.json"
        failed = survey_dir(dirs.failed, skip=lambda n: n.endswith(reason), recursive=recursive)
    return {
        "incoming": incoming,
        "working": working,
        "done": done,
        "failed": failed,
        "instances": instances,
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


def claimed_count(dirs: SpoolDirs) -> int:
    n = 0
    for inst in scan_dir(dirs.working):
        if inst.is_dir(follow_symlinks=False):
            # RECURSIVE claims keep their subdirectories: count the files below
            n += sum(1 for _ in scan_dir(Path(inst.path) / "files", recursive=True))
    return n
