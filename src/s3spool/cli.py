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
from s3spool.config.catalog import SETTINGS, env_name, flag_name, suggest
from s3spool.errors import EXIT_CONFIG, ConfigError
from s3spool.logs import flush as flush_logs
from s3spool.logs import setup as setup_logging

# What a command needs is imported when it runs: botocore, aiohttp and pydantic cost
# most of a cold start, and --help or an empty `run --once` needs none or few of them.
if TYPE_CHECKING:
    from s3spool.config.load import Config

log = logging.getLogger("s3spool.cli")


_EXIT_CODES = "Exit codes: docs/operations.md#exit-codes."
#: where the help of a setting starts, and how wide it may be to stay on one line at 80 columns
_HELP_AT, _HELP_WIDTH = 33, 78 - 33


def _setting_help(field: str, default: str) -> str:
    text = f"{env_name(field)}, default "
    if len(text + default) > _HELP_WIDTH:  # COMPRESS_SKIP's 19 patterns
        head = default[: _HELP_WIDTH - len(text) - 3]
        default = head.rsplit(",", 1)[0] + ",..." if "," in head else head + "..."
    return (text + default).replace("%", "%%")


def _add_settings(parser: argparse.ArgumentParser, *, shown: bool) -> None:
    """Every setting as a flag; ``shown``: one line each in --help, group by group (run).
    ``--config`` comes first everywhere, as ``-c`` too."""
    groups: dict[str, Any] = {}
    for field, switch, default, _description, group_name in SETTINGS:
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name) if shown else parser
        target = groups[group_name]
        if field == "config":
            target.add_argument(
                *("-c", "--config"),
                dest="config",
                default=None,
                metavar="FILE",
                help="TOML file of settings and [[route]] tables (S3SPOOL_CONFIG)",
            )
            if shown:
                _add_run_options(target)
            continue
        kind: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if switch else {"metavar": "VALUE"}
        )
        help_text = _setting_help(field, default) if shown else argparse.SUPPRESS
        target.add_argument(flag_name(field), dest=field, default=None, help=help_text, **kind)


def _add_run_options(group: Any) -> None:
    group.add_argument("--once", action="store_true", help="upload what is eligible now, then exit")
    group.add_argument(
        *("-n", "--dry-run"),
        action="store_true",
        help="list each file and its key (or why it is skipped); touch nothing",
    )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """One line per setting at 80 columns: the help column starts after the longest flag."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=_HELP_AT)


_RUN_EPILOG = (
    "Each setting is a flag, a variable S3SPOOL_<NAME> and a key of the config file;\n"
    "a flag wins over a variable. docs/configuration.md describes each setting, in\n"
    "these groups. Durations: 30s, 5m, 1h. Sizes: bytes, 8MiB, 1GiB.\n" + _EXIT_CODES
)
_SETTINGS_NOTE = (
    "Every setting of `s3spool run --help` is a flag here too (and a variable S3SPOOL_<NAME>).\n"
    + _EXIT_CODES
)
_EXAMPLES = (
    """\
examples:
  # check the settings, the spools and the store
  s3spool check -c /etc/s3spool/s3spool.toml
  # from cron: upload what waits, then exit
  s3spool run --once -c /etc/s3spool/s3spool.toml
  # the service, with flags instead of a config file
  s3spool run --spool-dirs /var/spool/up --destination s3://bucket/logs

Settings: `s3spool run --help`, docs/configuration.md.
"""
    + _EXIT_CODES
)

#: command -> (help, description, usage after the command)
_COMMANDS = {
    "run": (
        "run the service (or drain once with --once)",
        "Watch the spools and upload every file that arrives.",
        "[options]",
    ),
    "check": (
        "check settings, directories, inotify and the store",
        "Check the settings, the spool directories (created in an existing root if missing, as "
        "the service would), "
        "inotify limits and the store (HeadBucket, then a PUT and DELETE of a small test object "
        "under the prefix). One PASS/WARN/FAIL line per check.",
        "[options]",
    ),
    "status": (
        "files per state, oldest waiting file and instances of each spool",
        "Read the spool directories (never the store) and report files and bytes in incoming/, "
        "working/, done/, failed/, the age of the oldest file in incoming/, and the instances "
        "in working/ (live: its lock is held).",
        "[options]",
    ),
    "enqueue": (
        "put files into a spool safely (atomic: never seen half-written)",
        "Copy (or --move) each FILE into the spool's incoming/: the data is written to a staging "
        "file next to incoming/, fsynced, then renamed in without replacing an existing file. "
        "A name that already exists fails and keeps both files.",
        "[options] FILE [FILE ...]",
    ),
    "requeue": (
        "move failed files back to incoming/ (by name, by reason, or --all)",
        "Move the files of failed/ that match back to incoming/ (the same path below it), each "
        "with one rename that never replaces a file, and remove their reason files. A PATTERN "
        "(glob) matches the path below failed/ or the file's name; --reason matches the reason "
        "code of NAME.reason.json. Several patterns (or reasons) match any of them; patterns "
        "and reasons together must both match. A name already in incoming/ stays in failed/. "
        "Every spool of the settings, or --spool DIR.",
        "[options] [PATTERN ...]",
    ),
    "config": (
        "print the effective configuration, route by route",
        "Print every setting of every route with where its value came from (flag, env, route "
        "table, file, default); secrets are masked. The text form is TOML that loads as a "
        "config file.",
        "[options]",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3spool",
        description="Drain Unix spool directories into S3 and S3-compatible stores.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"s3spool {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    cmd = {}
    for name, (help_text, description, usage) in _COMMANDS.items():
        cmd[name] = sub.add_parser(
            name,
            help=help_text,
            description=description,
            usage=f"%(prog)s {usage}",
            epilog=_RUN_EPILOG if name == "run" else _SETTINGS_NOTE,
            formatter_class=_Formatter if name == "run" else argparse.HelpFormatter,
        )
        if name != "run":
            # the settings' text; run's shows each in its group (_add_settings)
            _add_settings(cmd[name], shown=False)
    _add_settings(cmd["run"], shown=True)
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
        help="reason code in NAME.reason.json (as the per-file log line shows it), e.g. bad_key",
    )
    requeue.add_argument("--all", action="store_true", help="every failed file")
    requeue.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would move; move nothing"
    )
    requeue.add_argument(
        "--spool", metavar="DIR", type=Path, help="spool root; default: every spool of the settings"
    )
    cmd["config"].add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, with "did you mean" for a mistyped flag, as for a mistyped variable, and
    the usage of the command only (not every flag)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = _command_parser(parser, args.command)
        flag = extra[0].partition("=")[0]
        hint = suggest(flag, target._option_string_actions) if flag.startswith("--") else ""
        target.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _command_parser(
    parser: argparse.ArgumentParser, command: str | None
) -> argparse.ArgumentParser:
    """The parser of ``command`` (its usage line is short), else the top one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            found: argparse.ArgumentParser = action.choices[command]
            return found
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
    args = _parse(parser, argv)
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
        _command_parser(parser, "requeue").error("give PATTERN or --reason CODE, or --all (alone)")
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
