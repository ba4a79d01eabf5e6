"""``s3spool requeue``: move failed files back into incoming/ (by name glob, by reason, or all),
each with one rename that never replaces a file, and remove their reason files."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from s3spool.config.codecs import compile_globs
from s3spool.config.load import Config
from s3spool.config.spools import SpoolDirs
from s3spool.errors import EXIT_NOT_OK, EXIT_OK, ConfigError
from s3spool.ops.enqueue import spools_of
from s3spool.spool.dirs import move_into, prune_parents, split, walk
from s3spool.spool.scan import plural, reason_file, show_name
from s3spool.spool.spool import REASON_SUFFIX, rename_noreplace


def requeue_spools(config: Config | None, spool: Path | None) -> list[tuple[SpoolDirs, bool]]:
    """(spool, recursive) for every spool of the settings, or the one ``--spool DIR`` names."""
    found = [(d, s.recursive) for s, d in spools_of(config, spool)]
    if found or spool is None:
        return found
    path = Path(os.path.abspath(spool))
    if not (path / "incoming").is_dir() or not (path / "failed").is_dir():
        raise ConfigError(
            f"--spool {path}: is not a spool root with incoming/ and failed/ "
            "(other names or layouts: give the settings, e.g. --config FILE)"
        )
    # a failed/ holds subdirectories only if its spool was RECURSIVE
    return [(SpoolDirs.below(path), True)]


def read_reason(path: str) -> str | None:
    """The reason code in ``path``'s reason file (None: none, or unreadable)."""
    try:
        with open(path + REASON_SUFFIX, encoding="utf-8") as fh:
            reason = json.load(fh).get("reason")
    except (OSError, ValueError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


def requeue(
    spools: Sequence[tuple[SpoolDirs, bool]],
    *,
    patterns: Sequence[str] = (),
    reasons: Sequence[str] = (),
    dry_run: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Move the failed files that match a pattern (of the path below failed/ or the name) and
    a reason (each: any if none are given) to the same path below incoming/; 1 if one stayed."""
    out = out or sys.stdout
    err = err or sys.stderr
    rx = compile_globs(patterns)
    moved = stayed = 0
    code = EXIT_OK
    for dirs, recursive in spools:
        if dirs.failed is None or dirs.resubmit:
            why = "failed files are resubmitted" if dirs.resubmit else "REMOVE_ON_FAILURE is on"
            print(f"# spool {dirs.label}: no failed/ ({why})", file=out)
            continue
        failed, incoming = os.fspath(dirs.failed), os.fspath(dirs.incoming)
        try:
            # listed first: renames out of a directory while it is read may skip entries
            found = sorted(
                rel
                for rel, entry in walk(failed, recursive=recursive)
                if not reason_file(entry.name) and not entry.is_dir(follow_symlinks=False)
            )
        except FileNotFoundError:
            continue
        except OSError as exc:
            print(f"s3spool requeue: cannot list {failed}: {exc.strerror}", file=err)
            code = EXIT_NOT_OK
            continue
        for rel in found:
            src = f"{failed}/{rel}"
            if rx is not None and not (rx.match(rel) or rx.match(split(rel)[1])):
                continue
            if reasons and read_reason(src) not in reasons:
                continue
            shown = show_name(rel)
            if dry_run:
                if os.path.lexists(f"{incoming}/{rel}"):
                    print(f"s3spool requeue: {incoming}/{shown} exists; would stay", file=err)
                    stayed += 1
                else:
                    print(f"would requeue {failed}/{shown} -> {incoming}/{shown}", file=out)
                    moved += 1
                continue
            try:
                move_into(rename_noreplace, src, incoming, rel)
            except FileExistsError:
                print(
                    f"s3spool requeue: {incoming}/{shown} already exists; {failed}/{shown} "
                    "stays in failed/ (rename one of them, then requeue again)",
                    file=err,
                )
                stayed += 1
                continue
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) and not os.path.lexists(src):
                    continue  # gone meanwhile (another requeue, or a person)
                msg = f"cannot move {failed}/{shown} to {incoming}/{shown}: {exc.strerror}"
                print(f"s3spool requeue: {msg}", file=err)
                stayed += 1
                continue
            with contextlib.suppress(OSError):  # the rename just worked in this directory
                os.unlink(src + REASON_SUFFIX)
            prune_parents(failed, rel)  # a RECURSIVE spool's emptied directories
            print(f"requeued {failed}/{shown} -> {incoming}/{shown}", file=out)
            moved += 1
    verb = "would be requeued" if dry_run else "requeued"
    left = f", {stayed} left in failed/" if stayed else ""
    print(f"{plural(moved, 'file')} {verb}{left}", file=out)
    return EXIT_NOT_OK if stayed else code
