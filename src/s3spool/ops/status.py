"""``s3spool status`` and ``s3spool run --dry-run``: what is in the spools, read only."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from typing import Any, TextIO

from s3spool.config.codecs import choose
from s3spool.config.load import Config, Route
from s3spool.config.spools import spool_layouts
from s3spool.errors import EXIT_NOT_OK, EXIT_OK, UploadError
from s3spool.run.compress import rules_for
from s3spool.spool.cleanup import cautious_now
from s3spool.spool.dirs import walk
from s3spool.spool.keys import STABLE_FIELDS, KeyInput, KeyTemplate, spool_dir_field
from s3spool.spool.scan import (
    claimed,
    dir_json,
    hold_left,
    human_age,
    human_size,
    plural,
    show_name,
    survey_spool,
)
from s3spool.spool.watch import compile_ignore


def status(config: Config, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """Per spool: files and bytes per state, oldest incoming file, live instances.

    Exit 1 if a directory could not be read, else 0.
    """
    out = out or sys.stdout
    now = time.time()
    report: list[dict[str, Any]] = []
    errors: list[str] = []
    routes = config.routes
    for route, dirs in ((r, d) for r in routes for d in spool_layouts(r.s, route=r.name)):
        s = survey_spool(dirs, compile_ignore(route.s.ignore), recursive=route.s.recursive)
        for key in ("incoming", "working", "done", "failed"):
            d = s[key]
            if d is not None and d.error:
                errors.append(d.error)
        incoming_json = dir_json(s["incoming"], now)
        assert incoming_json is not None
        incoming_json["ignored"] = s["incoming"].ignored
        incoming_json["not_regular"] = s["incoming"].not_regular
        report.append(
            {
                "spool": dirs.label,
                "route": route.name,
                "incoming": incoming_json,
                "working": dir_json(s["working"], now),
                "done": dir_json(s["done"], now),
                "failed": dir_json(s["failed"], now),
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
            _status_text(spool, out, with_route=len(routes) > 1)
    for e in errors:
        print(f"s3spool status: cannot read {e}", file=sys.stderr)
    return EXIT_NOT_OK if errors else EXIT_OK


def _status_text(spool: dict[str, Any], out: TextIO, *, with_route: bool) -> None:
    print(
        f"spool {spool['spool']}" + (f" (route {spool['route']})" if with_route else ""), file=out
    )
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
            running = any(i["live"] for i in spool["instances"])
            why = "missing: the running service lays it out again" if running else "not created yet"
            print(f"  {state:<9} ({why}: {d['path']})", file=out)
            continue
        line = f"  {state:<9} {plural(d['files'], 'file'):>12} {human_size(d['bytes']):>11}"
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
            f"  {head:<9} {inst['id']}  {state}  {plural(inst['files'], 'file')} "
            f"({human_size(inst['bytes'])})",
            file=out,
        )


# --- run --dry-run -----------------------------------------------------------------------------


def dry_run(config: Config, *, out: TextIO | None = None) -> int:
    """Print what one pass would upload, and under which key; change nothing anywhere.

    Lines are tab-separated: ``upload NAME SIZE KEY`` or ``skip NAME REASON``.
    Exit 1 if an incoming/ could not be read or a key cannot be rendered.
    """
    out = out or sys.stdout
    totals = [0, 0, 0]
    worst = EXIT_OK
    for route in config.routes:
        worst = max(worst, _dry_run_route(route, out, totals))
    total_files, total_bytes, skipped = totals
    print(
        f"# {plural(total_files, 'file')} ({human_size(total_bytes)}) would be uploaded, "
        f"{skipped} skipped",
        file=out,
    )
    return worst


def _dry_run_route(route: Route, out: TextIO, totals: list[int]) -> int:
    settings = route.s
    prefix = settings.prefix
    template = KeyTemplate(settings.key_format, prefix)
    rules = rules_for(settings)
    is_ignored = compile_ignore(settings.ignore)
    status_code = EXIT_OK
    if not template.stable:
        print(
            "# note: KEY_FORMAT uses fields that change per upload "
            f"({', '.join(sorted(template.fields - STABLE_FIELDS))}); "
            "real keys will differ",
            file=out,
        )
    total_files = total_bytes = skipped = 0
    for dirs in spool_layouts(settings, route=route.name):
        spool_dir = spool_dir_field(dirs.root or dirs.incoming)
        print(f"# spool {dirs.label}: {dirs.incoming} -> {settings.destination}", file=out)
        try:
            # RECURSIVE: relpaths below incoming/, as discovery walks them (tree.walk)
            found = walk(dirs.incoming, recursive=settings.recursive, skip_dir=is_ignored)
            names = sorted(rel for rel, _entry in found)
        except FileNotFoundError:
            print("# incoming/ does not exist yet; nothing to upload", file=out)
            continue
        except OSError as exc:
            print(f"# cannot list {dirs.incoming}: {exc.strerror}", file=out)
            status_code = EXIT_NOT_OK
            continue
        now = cautious_now()
        for name in names:
            shown = show_name(name)
            dirname, _, base = name.rpartition("/")
            if is_ignored(base):
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
            wait = hold_left(st.st_mtime, settings.hold_for, now)
            if wait > 0:
                print(f"skip\t{shown}\theld by HOLD_FOR (eligible in {wait:.0f}s)", file=out)
                skipped += 1
                continue
            try:
                key = template.render(
                    KeyInput(
                        os.fsencode(base),
                        spool_dir,
                        st.st_mtime,
                        st.st_ctime,
                        os.fsencode(dirname),
                    ),
                    choose(rules, name, st.st_size)[1],  # COMPRESS_MODE=suffix: .gz, .zst
                )
            except UploadError as exc:
                print(f"skip\t{shown}\twould fail: {exc}", file=out)
                skipped += 1
                status_code = EXIT_NOT_OK
                continue
            print(f"upload\t{shown}\t{st.st_size}\t{key}", file=out)
            total_files += 1
            total_bytes += st.st_size
        held = claimed(dirs).count
        if held:
            print(
                f"# plus {plural(held, 'file')} already claimed in {dirs.working}/*/files/ "
                "(delivered by their instance, or recovered if it is dead)",
                file=out,
            )
    totals[0] += total_files
    totals[1] += total_bytes
    totals[2] += skipped
    return status_code
