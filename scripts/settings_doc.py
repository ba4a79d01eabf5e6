"""Generate the README's configuration reference from the settings model.

    python scripts/settings_doc.py            print the table (markdown)
    python scripts/settings_doc.py --write    rewrite the README section in place
    python scripts/settings_doc.py --check    exit 1 if the README section is out of date

The rows come from ``s3spool.cli.settings_table()`` (the same rows ``s3spool --help``
prints), so the README cannot drift from the code: ``tests/test_docs.py`` fails when the
section between the markers differs from this script's output.  The "Value" column and
the human-readable defaults (``16MiB``, ``1h``) are derived from the field types of
``s3spool.settings.Settings``.
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
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"

try:
    from s3spool.cli import settings_table
    from s3spool.settings import ENV_PREFIX, Settings
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
    from s3spool.cli import settings_table
    from s3spool.settings import ENV_PREFIX, Settings

HEADER = ("Environment variable", "Flag", "Default", "Value", "Meaning")

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


def _kind(field: str) -> str:
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


def human_size(n: int) -> str:
    for unit, scale in UNITS:
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def human_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, scale in (("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{seconds:g}s"


def _default(kind: str, text: str) -> str:
    """Show size and duration defaults the way an operator would write them."""
    try:
        if kind == "size":
            return human_size(int(text))
        if kind == "duration":
            return human_duration(float(text))
        if kind.startswith("number"):
            return f"{float(text):g}"
    except ValueError:
        pass
    return text


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
        kind = _kind(field)
        cells = (
            f"`{env}`",
            f"`{flag}`",
            _code(_default(kind, default)),
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
