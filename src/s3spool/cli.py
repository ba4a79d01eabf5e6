"""Command line: ``s3spool run`` and friends.

Every setting of ``settings.Settings`` becomes a flag of the same name
(``S3SPOOL_KEY_FORMAT`` ↔ ``--key-format``); a flag wins over the variable.

Exit codes: 0 success · 1 some file failed (``run --once``) · 2 usage error ·
3 store unavailable (``run --once``) · 78 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from . import __version__, logs
from .errors import ConfigError
from .service import EXIT_CONFIG, run_service
from .settings import Settings, env_name, flag_name, load_settings

log = logging.getLogger(__name__)


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None or value == "" or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env var, flag, default, description) for every setting: the CLI help and the README."""
    rows = []
    for field, info in Settings.model_fields.items():
        rows.append(
            (env_name(field), flag_name(field), _default_text(field), info.description or "")
        )
    return rows


def _add_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings", "each flag overrides the S3SPOOL_* environment variable of the same name"
    )
    for field, info in Settings.model_fields.items():
        help_text = f"{info.description} [env {env_name(field)}; default {_default_text(field)}]"
        help_text = help_text.replace("%", "%%")
        if info.annotation is bool:
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
    for env, flag, default, _desc in settings_table():
        lines.append(f"  {env:<30} {flag:<24} {default}")
    lines.append("")
    lines.append("Durations: seconds or 30s/5m/1h. Sizes: bytes or 8MiB/1GiB.")
    lines.append(
        "Exit codes: 0 ok, 1 files failed (--once), 2 usage, 3 store unavailable "
        "(--once), 78 bad configuration."
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3spool",
        description="Drain Unix spool directories into S3 and S3-compatible stores.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"s3spool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the service (or drain once with --once)",
        description="Watch the spools and upload every file that arrives.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="drain every file eligible now, then exit (0 if none failed)",
    )
    _add_settings(run)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {f: getattr(args, f, None) for f in Settings.model_fields}
    return load_settings(**overrides)


def run_async(coro: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop where installed: it halves the loop's per-request overhead."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional on non-Linux
        return asyncio.run(coro())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        print(f"s3spool: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(settings.log_level, settings.log_format)
    try:
        if args.command == "run":
            return run_async(lambda: run_service(settings, once=args.once))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 130
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover
