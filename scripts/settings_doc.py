"""Generate the README's configuration reference from the settings model.

    python scripts/settings_doc.py            print the table (markdown)
    python scripts/settings_doc.py --write    rewrite the README section and config/catalog.py
    python scripts/settings_doc.py --check    exit 1 if either is out of date

The rows come from ``settings_table()`` below (the same rows ``s3spool --help`` prints,
through ``catalog.py``), so the README cannot drift from the code: ``tests/test_docs.py``
fails when the section between the markers differs from this script's output.
``src/s3spool/config/catalog.py`` (the same settings as plain data, so the command line needs
no pydantic) is written alongside.  The "Value" column and the human-readable defaults
(``16MiB``, ``1h``) are derived from the field types of ``s3spool.config.settings.Settings``.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FLAGS = ROOT / "src" / "s3spool" / "config" / "catalog.py"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"

try:
    import s3spool  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
from s3spool.config.catalog import ENV_PREFIX, env_name, flag_name  # noqa: E402
from s3spool.config.settings import Settings  # noqa: E402

KIB = 1024
UNITS = (("GiB", KIB**3), ("MiB", KIB**2), ("KiB", KIB))


def _validator_names(annotation: Any, metadata: list[Any]) -> set[str]:
    """Names of the BeforeValidator functions on a field (parse_size, parse_duration, ...)."""
    names: set[str] = set()
    stack: list[Any] = [*metadata, annotation]
    while stack:
        item = stack.pop()
        func = getattr(item, "func", None)
        if func is not None:
            names.add(getattr(func, "__name__", ""))
        stack.extend(getattr(item, "__metadata__", ()))
        stack.extend(typing.get_args(item))
    return names


def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _strip_optional(rest[0])
    if origin is typing.Annotated:
        return _strip_optional(args[0])
    return annotation


def value_kind(field: str) -> str:
    """What kind of value a setting takes: size, duration, list, boolean, choice, ..."""
    info = Settings.model_fields.get(field)
    if info is None:
        return ""
    validators = _validator_names(info.annotation, list(info.metadata))
    if "parse_size" in validators:
        return "size"
    if "parse_duration" in validators:
        return "duration"
    if "parse_list" in validators:
        return "list"
    if "parse_bandwidth_limit" in validators:
        return "rate, `off` or schedule"
    base = _strip_optional(info.annotation)
    if typing.get_origin(base) is typing.Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(base))
    bounds = {
        name: getattr(m, name)
        for m in info.metadata
        for name in ("ge", "le")
        if getattr(m, name, None) is not None
    }
    if base is bool:
        return "boolean"
    if base in (int, float):
        word = "integer" if base is int else "number"
        if "ge" in bounds and "le" in bounds:
            return f"{word}, {_num(bounds['ge'])} to {_num(bounds['le'])}"
        if "ge" in bounds:
            return f"{word}, at least {_num(bounds['ge'])}"
        return word
    if base is Path:
        return "path"
    return "string"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _exact_size(n: int) -> str:
    for unit, scale in UNITS:
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _exact_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, scale in (("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{seconds:g}s"


def format_default(kind: str, text: str) -> str:
    """Show size and duration defaults the way an operator would write them."""
    try:
        if kind == "size":
            return _exact_size(int(text))
        if kind == "duration":
            return _exact_duration(float(text))
        if kind.startswith("number"):
            return f"{float(text):g}"
    except ValueError:
        pass
    return text


def default_text(field: str) -> str:
    """A setting's default as an operator would write it (``16MiB``, ``30s``, ``none``)."""
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
    return format_default(value_kind(field), str(value))


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env var, flag, default, description) for every setting: the CLI help and the README."""
    rows = []
    for field, info in Settings.model_fields.items():
        rows.append(
            (env_name(field), flag_name(field), default_text(field), info.description or "")
        )
    return rows


def flags_table() -> str:
    """The generated part of ``flags.py``: each setting's name, whether it is a switch,
    its default and its help."""
    rows = "".join(
        f"    ({field!r}, {info.annotation is bool}, {default_text(field)!r}, "
        f"{info.description or ''!r}),\n"
        for field, info in Settings.model_fields.items()
    )
    return "SETTINGS: tuple[tuple[str, bool, str, str], ...] = (\n" + rows + ")\n"


HEADER = ("Environment variable", "Flag", "Default", "Value", "Meaning")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text and text != "none" else "none"


def render() -> str:
    """The configuration reference as a markdown table (ends with a newline)."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for env, flag, default, description in settings_table():
        field = env.removeprefix(ENV_PREFIX).lower()
        kind = value_kind(field)
        cells = (
            f"`{env}`",
            f"`{flag}`",
            _code(format_default(kind, default)),
            kind,
            description,
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def section(table: str) -> str:
    """What the README holds between (and including) the markers."""
    return f"{BEGIN}\n\n{table}\n{END}"


def current_section(text: str) -> str | None:
    """The README's section between the markers, markers included; None if missing."""
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[start : end + len(END)]


def rewrite(text: str, table: str) -> str:
    old = current_section(text)
    if old is None:
        raise SystemExit(f"README has no {BEGIN} ... {END} markers")
    return text.replace(old, section(table), 1)


FLAGS_BEGIN = "# --- generated: settings_doc.py ---\n"
FLAGS_END = "# --- end generated ---\n"


def rewrite_flags(text: str) -> str:
    """config/catalog.py with its generated part (between the marker lines) made anew."""
    start = text.index(FLAGS_BEGIN) + len(FLAGS_BEGIN)
    return text[:start] + flags_table() + text[text.index(FLAGS_END, start) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the README section in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    parser.add_argument("--readme", type=Path, default=README, help="README to read or rewrite")
    args = parser.parse_args(argv)
    table = render()
    if not (args.write or args.check):
        sys.stdout.write(table)
        return 0
    old_flags = FLAGS.read_text(encoding="utf-8")
    flags = rewrite_flags(old_flags)
    if flags != old_flags:
        if args.check:
            print(f"{FLAGS}: out of date; run `python scripts/settings_doc.py --write`")
            return 1
        FLAGS.write_text(flags, encoding="utf-8")
        print(f"{FLAGS}: rewritten")
    text = args.readme.read_text(encoding="utf-8")
    new = rewrite(text, table)
    if args.check:
        if new != text:
            print(
                f"{args.readme}: settings section is out of date; run "
                "`python scripts/settings_doc.py --write`",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: settings section rewritten")
    else:
        print(f"{args.readme}: settings section already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
