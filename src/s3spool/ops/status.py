"""``s3spool status`` and ``s3spool run --dry-run``: what is in the spools, read only."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from typing import Any, TextIO

from s3spool.config.codecs import choose
from s3spool.config.load import Config
from s3spool.config.spools import spool_layouts
from s3spool.errors import EXIT_NOT_OK, EXIT_OK, UploadError
from s3spool.run.compress import rules_for
from s3spool.spool.cleanup import cautious_now
from s3spool.spool.dirs import walk
from s3spool.spool.keys import DRAWN_FIELDS, KeyInput, KeyTemplate, spool_dir_field
from s3spool.spool.scan import (
    claimed,
    dir_json,
    entry_kind,
    hold_left,
    human_age,
    human_size,
    plural,
    show_name,
    survey_spool,
)
from s3spool.spool.watch import compile_ignore

STATES = ("incoming", "working", "done", "failed")


def status(config: Config, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """Per spool: files and bytes per state, oldest incoming file, live instances; exit 1 if a
    directory could not be read, else 0."""
    out = out or sys.stdout
    now = time.time()
    report: list[dict[str, Any]] = []
    errors: list[str] = []
    routes = config.routes
    for route, dirs in ((r, d) for r in routes for d in spool_layouts(r.s, route=r.name)):
        s = survey_spool(dirs, compile_ignore(route.s.ignore), recursive=route.s.recursive)
        errors += [s[k].error for k in STATES if s[k] is not None and s[k].error]
        spool: dict[str, Any] = {"spool": dirs.label, "route": route.name}
        spool.update((k, dir_json(s[k], now)) for k in STATES)
        spool["incoming"].update(
            ignored=s["incoming"].ignored, not_regular=s["incoming"].not_regular
        )
        spool["failed_resubmitted_to_incoming"] = s["resubmit"]
        spool["instances"] = [
            {"id": i.id, "live": i.live, "files": i.files, "bytes": i.bytes} for i in s["instances"]
        ]
        report.append(spool)
    if as_json:
        json.dump({"time": round(now, 3), "spools": report}, out, indent=1)
        out.write("\n")
    else:
        for spool in report:
            _status_text(spool, out, with_route=len(routes) > 1)
    for e in errors:
        print(f"s3spool status: cannot read {e}", file=sys.stderr)
    return EXIT_NOT_OK if errors else EXIT_OK


def _status_text(spool: dict[str, Any], out: TextIO, *, with_route: bool) -> None:
    route = f" (route {spool['route']})" if with_route else ""
    print(f"spool {spool['spool']}{route}", file=out)
    for state in STATES:
        d = spool[state]
        if d is None:
            if state == "failed" and spool["failed_resubmitted_to_incoming"]:
                note = "(same as incoming/: failed files are resubmitted)"
            else:
                note = f"(off: S3SPOOL_REMOVE_ON_{'SUCCESS' if state == 'done' else 'FAILURE'})"
            print(f"  {state:<9} {note}", file=out)
            continue
        if not d["exists"]:
            running = any(i["live"] for i in spool["instances"])
            why = "missing: the running service lays it out again" if running else "not created yet"
            print(f"  {state:<9} ({why}: {d['path']})", file=out)
            continue
        line = f"  {state:<9} {plural(d['files'], 'file'):>12} {human_size(d['bytes']):>11}"
        if state == "incoming":
            age = d["oldest_age_seconds"]
            line += f"  oldest {human_age(age) if age is not None else '-'}"
            extra = [f"{d[k]} {k.replace('_', ' ')}" for k in ("ignored", "not_regular") if d[k]]
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
            f"  {head:<9} {inst['id']}  {state}  {plural(inst['files'], 'file')} "
            f"({human_size(inst['bytes'])})",
            file=out,
        )


def dry_run(config: Config, *, out: TextIO | None = None) -> int:
    """Print what one pass would upload, and under which key (tab-separated lines ``upload NAME
    SIZE KEY`` or ``skip NAME REASON``); change nothing.  Exit 1 if an incoming/ could not be
    read or a key cannot be rendered."""
    out = out or sys.stdout
    code = EXIT_OK
    files = size = skipped = 0
    for route in config.routes:
        s = route.s
        template = KeyTemplate(s.key_format, s.prefix, s.hostname_field)
        rules = rules_for(s)
        is_ignored = compile_ignore(s.ignore)
        drawn = template.fields & DRAWN_FIELDS
        if drawn:
            fields = ", ".join(f"{{{f}}}" for f in sorted(drawn))
            note = f"KEY_FORMAT uses {fields}, drawn anew as each file is claimed"
            print(f"# note: {note}; real keys will differ", file=out)
        for dirs in spool_layouts(s, route=route.name):
            print(f"# spool {dirs.label}: {dirs.incoming} -> {s.destination}", file=out)
            try:
                found = walk(dirs.incoming, recursive=s.recursive, skip_dir=is_ignored)
                names = sorted(rel for rel, _entry in found)
            except FileNotFoundError:
                print("# incoming/ does not exist yet; nothing to upload", file=out)
                continue
            except OSError as exc:
                print(f"# cannot list {dirs.incoming}: {exc.strerror}", file=out)
                code = EXIT_NOT_OK
                continue
            spool_dir = spool_dir_field(dirs.root or dirs.incoming)
            now = cautious_now()
            for name in names:
                dirname, _, base = name.rpartition("/")
                why = "ignored (matches IGNORE)" if is_ignored(base) else ""
                if not why:
                    try:
                        st = os.lstat(dirs.incoming / name)
                    except FileNotFoundError:
                        continue
                    why = _unfit(st, s.hold_for, now)
                if not why:
                    facts = KeyInput(
                        os.fsencode(base), spool_dir, st.st_mtime, st.st_ctime, os.fsencode(dirname)
                    )
                    try:  # COMPRESS_MODE=suffix: the key gets .gz, .zst
                        key = template.render(facts, choose(rules, name, st.st_size)[1])
                    except UploadError as exc:
                        why, code = f"would fail: {exc}", EXIT_NOT_OK
                if why:
                    print(f"skip\t{show_name(name)}\t{why}", file=out)
                    skipped += 1
                    continue
                print(f"upload\t{show_name(name)}\t{st.st_size}\t{key}", file=out)
                files += 1
                size += st.st_size
            held = claimed(dirs).count
            if held:
                print(
                    f"# plus {plural(held, 'file')} already claimed in {dirs.working}/*/files/ "
                    "(delivered by their instance, or recovered if it is dead)",
                    file=out,
                )
    print(
        f"# {plural(files, 'file')} ({human_size(size)}) would be uploaded, {skipped} skipped",
        file=out,
    )
    return code


def _unfit(st: os.stat_result, hold_for: float, now: float) -> str:
    """Why a file would not be uploaded now ("": it would)."""
    if stat.S_ISLNK(st.st_mode):
        return "symlink (never followed)"
    if not stat.S_ISREG(st.st_mode):
        return f"{entry_kind(st.st_mode)} (left in place)"
    wait = hold_left(st.st_mtime, hold_for, now)
    return f"held by HOLD_FOR (eligible in {wait:.0f}s)" if wait > 0 else ""
