"""Command line: ``s3spool run``, ``check``, ``status``, ``enqueue``, ``requeue``, ``config``;
every setting is a flag too (``S3SPOOL_KEY_FORMAT`` ↔ ``--key-format``), which wins over the
variable.
Exit codes: ``errors.EXIT_MEANINGS`` (docs/operations.md "Exit codes" is generated from it)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3spool import __version__
from s3spool.config.catalog import SETTINGS, env_name, flag_name
from s3spool.errors import EXIT_CONFIG, ConfigError
from s3spool.logs import flush as flush_logs
from s3spool.logs import setup as setup_logging

# What a command needs is imported when it runs: botocore, aiohttp and pydantic cost
# most of a cold start, and --help or an empty `run --once` needs none or few of them.
if TYPE_CHECKING:
    from s3spool.config.load import Config

log = logging.getLogger("s3spool.cli")


def _add_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings", "each flag overrides the S3SPOOL_* environment variable of the same name"
    )
    for field, switch, default, description in SETTINGS:
        help_text = f"{description} [env {env_name(field)}; default {default}]"
        help_text = help_text.replace("%", "%%")
        if switch:
            group.add_argument(
                flag_name(field),
                dest=field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                flag_name(field), dest=field, default=None, metavar="VALUE", help=help_text
            )


def _epilog() -> str:
    lines = ["settings (environment variable, flag, default):"]
    for field, _switch, default, _desc in SETTINGS:
        lines.append(f"  {env_name(field):<30} {flag_name(field):<24} {default}")
    lines.append("")
    lines.append("Durations: seconds or 30s/5m/1h. Sizes: bytes or 8MiB/1GiB.")
    lines.append("Exit codes: docs/operations.md#exit-codes (0: ok).")
    return "\n".join(lines)


#: command -> (help, description, epilog: None for the settings table)
_COMMANDS = {
    "run": (
        "run the service (or drain once with --once)",
        "Watch the spools and upload every file that arrives.",
        None,
    ),
    "check": (
        "check settings, directories, inotify and the store",
        "Check the settings, the spool directories (created in an existing root if missing, as "
        "the service would), "
        "inotify limits and the store (HeadBucket, then a PUT and DELETE of a small test object "
        "under the prefix). One PASS/WARN/FAIL line per check.",
        "Exit codes: 0 all passed (warnings allowed), 1 a check failed, 78 invalid settings.",
    ),
    "status": (
        "files per state, oldest waiting file and instances of each spool",
        "Read the spool directories (never the store) and report files and bytes in incoming/, "
        "working/, done/, failed/, the age of the oldest file in incoming/, and the instances "
        "in working/ (live: its lock is held).",
        "Exit codes: 0 ok, 1 a directory could not be read, 78 invalid settings.",
    ),
    "enqueue": (
        "put files into a spool safely (atomic: never seen half-written)",
        "Copy (or --move) each FILE into the spool's incoming/: the data is written to a staging "
        "file next to incoming/, fsynced, then renamed in without replacing an existing file. "
        "A name that already exists fails and keeps both files.",
        "Exit codes: 0 all enqueued, 1 some file was not enqueued, 78 no usable spool.",
    ),
    "requeue": (
        "move failed files back to incoming/ (by name, by reason, or --all)",
        "Move the files of failed/ that match back to incoming/ (the same path below it), each "
        "with one rename that never replaces a file, and remove their reason files. A PATTERN "
        "(glob) matches the path below failed/ or the file's name; --reason matches the reason "
        "code of NAME.reason.json. Several patterns (or reasons) match any of them; patterns "
        "and reasons together must both match. A name already in incoming/ stays in failed/. "
        "Every spool of the settings, or --spool DIR.",
        "Exit codes: 0 all matching files requeued, 1 some stayed in failed/, 2 no selector, "
        "78 no usable spool.",
    ),
    "config": (
        "print the effective configuration, route by route",
        "Print every setting of every route with where its value came from (flag, env, route "
        "table, file, default); secrets are masked. The text form is TOML.",
        "Exit codes: 0 ok, 78 invalid settings (each problem names its route and key).",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="s3spool",
        description="Drain Unix spool directories into S3 and S3-compatible stores.",
        epilog=_epilog(),
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"s3spool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cmd = {}
    for name, (help_text, description, epilog) in _COMMANDS.items():
        cmd[name] = sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=epilog or _epilog(),
            formatter_class=argparse.HelpFormatter if epilog else raw,
        )
    run = cmd["run"]
    run.add_argument(
        "--once",
        action="store_true",
        help="drain every file eligible now, then exit (0 if none failed)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list each file that would be uploaded and its key (or why it is skipped); "
        "touch nothing: no directory, claim or store request",
    )
    cmd["check"].add_argument(
        "--read-only",
        action="store_true",
        help="do not write a test object to the store (HeadBucket only)",
    )
    cmd["status"].add_argument("--json", action="store_true", help="machine-readable output")
    enqueue = cmd["enqueue"]
    enqueue.add_argument("files", nargs="+", metavar="FILE", type=Path, help="files to enqueue")
    enqueue.add_argument(
        "--spool",
        metavar="DIR",
        type=Path,
        help="spool root (holding incoming/); default: the only spool of the settings",
    )
    enqueue.add_argument(
        "--move",
        action="store_true",
        help="remove each source once it is safely in incoming/ (a rename on one filesystem)",
    )
    requeue = cmd["requeue"]
    requeue.add_argument("patterns", nargs="*", metavar="PATTERN", help="glob, e.g. '*.csv'")
    requeue.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="CODE",
        help="reason code in NAME.reason.json (as `status` and the logs show it), e.g. bad_key",
    )
    requeue.add_argument("--all", action="store_true", help="every failed file")
    requeue.add_argument("--dry-run", action="store_true", help="say what would move; move nothing")
    requeue.add_argument(
        "--spool", metavar="DIR", type=Path, help="spool root; default: every spool of the settings"
    )
    cmd["config"].add_argument("--json", action="store_true", help="machine-readable output")
    for each in cmd.values():
        _add_settings(each)
    return parser


def _config_from(args: argparse.Namespace) -> Config:
    """The settings; for run and check also the spool roots, which must exist."""
    from s3spool.config.load import load_config, missing_spools

    flags = {f[0]: getattr(args, f[0], None) for f in SETTINGS}
    # status and enqueue never contact the store: they need no destination
    config = load_config(flags, need_destination=args.command in ("run", "check", "config"))
    if args.command in ("run", "check"):
        missing_spools(config)
    return config


def _config_failed(exc: BaseException | str) -> int:
    """Every exit-78 error says ``s3spool: what: why`` on stderr, without a log prefix."""
    flush_logs()
    print(f"s3spool: {exc}", file=sys.stderr, flush=True)
    return EXIT_CONFIG


def run_async(coro: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop where installed: it halves the loop's per-request overhead."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional on non-Linux
        return asyncio.run(coro())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro())


def main(argv: Sequence[str] | None = None, *, early_signals: list[int] | None = None) -> int:
    """Parse, configure, dispatch.

    ``early_signals``: SIGTERM/SIGINT caught by ``__main__`` before the event loop
    existed; the service treats them as a drain request (SIGHUP: as a reload).
    """
    early = early_signals if early_signals is not None else []
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.command == "run" and not args.dry_run):
        gc.enable()  # off since __main__: only the service's start-up runs without it
        # Only the service drains on signals: Ctrl-C must still interrupt check, status
        # and enqueue at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if early:
            return 128 + early[0]
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "requeue" and args.all == bool(args.patterns or args.reason):
        parser.error("requeue: give PATTERN or --reason CODE, or --all (alone)")
    try:
        config = _config_from(args)
    except ConfigError as exc:
        if args.command == "check":
            print(f"FAIL settings: {exc}", flush=True)
            return EXIT_CONFIG
        if args.command in ("enqueue", "requeue"):
            if args.spool is not None:
                # A producer needs only the spool; it need not know the destination.
                setup_logging("INFO", "text")
                return _enqueue(args, None) if args.command == "enqueue" else _requeue(args, None)
            return _config_failed(
                f"{args.command}: no spool: pass --spool DIR, or fix the settings: {exc}"
            )
        return _config_failed(exc)
    setup_logging(config.s.log_level, config.s.log_format)
    if args.command == "run":
        for warning in config.warnings:  # valid settings that are likely not what was meant
            log.warning("%s", warning)
    try:
        if args.command == "run":
            if args.dry_run:
                from s3spool.ops.status import dry_run

                return dry_run(config)
            from s3spool.run.service import Service

            for bound in ("max_files", "max_duration"):
                if getattr(config.s, bound) is not None and not args.once:
                    raise ConfigError(
                        f"{env_name(bound)} ({flag_name(bound)}): only with run --once "
                        "(it bounds one cron run; the service runs until stopped)"
                    )
            service = Service(config, once=args.once)
            service.early_signals = early
            if config.s.http_addr and not args.once:
                from s3spool.web import serve_http

                service.http = serve_http
            return run_async(service.run)
        if args.command == "check":
            from s3spool.ops.check import check

            return run_async(lambda: check(config, read_only=args.read_only))
        if args.command == "status":
            from s3spool.ops.status import status

            return status(config, as_json=args.json)
        if args.command == "enqueue":
            return _enqueue(args, config)
        if args.command == "requeue":
            return _requeue(args, config)
        if args.command == "config":
            from s3spool.ops.show_config import show_config

            return show_config(config, as_json=args.json)
    except ConfigError as exc:
        return _config_failed(exc)
    except BaseExceptionGroup as group:
        # A task of the service's TaskGroup (e.g. the HTTP server) could not start.
        found: BaseException | None = group.subgroup(ConfigError)
        if found is None:
            raise
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]  # the first ConfigError, however deep
        return _config_failed(found)
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 130
    except BrokenPipeError:
        # the reader went away (s3spool status | head): stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        flush_logs()  # the lines held, before an exit code or a traceback
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


def _enqueue(args: argparse.Namespace, config: Config | None) -> int:
    from s3spool.ops import enqueue

    try:
        target = enqueue.enqueue_target(config, args.spool)
    except ConfigError as exc:
        return _config_failed(exc)
    return enqueue.enqueue(args.files, target, move=args.move)


def _requeue(args: argparse.Namespace, config: Config | None) -> int:
    from s3spool.ops import requeue

    try:
        spools = requeue.requeue_spools(config, args.spool)
    except ConfigError as exc:
        return _config_failed(exc)
    return requeue.requeue(
        spools, patterns=args.patterns, reasons=args.reason, dry_run=args.dry_run
    )
