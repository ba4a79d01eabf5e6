"""Generate the reference tables in docs/ from the code: settings, metrics, exit codes.

    python scripts/settings_doc.py            print the settings table (markdown)
    python scripts/settings_doc.py --write    rewrite the tables in docs/ and config/catalog.py
    python scripts/settings_doc.py --check    exit 1 if any of them is out of date

Each table sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers: the
settings in docs/configuration.md (from the settings model; the same rows ``s3spool --help``
prints, through ``catalog.py``), the metrics and the exit codes in docs/operations.md (from
``s3spool.metrics.Metrics`` and ``s3spool.errors.EXIT_MEANINGS``).  ``tests/test_docs.py`` fails
when a section differs from this script's output.
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
DOCS = ROOT / "docs"
FLAGS = ROOT / "src" / "s3spool" / "config" / "catalog.py"

try:
    import s3spool  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
from s3spool.config.catalog import env_name, flag_name  # noqa: E402
from s3spool.config.formats import format_duration, format_size  # noqa: E402
from s3spool.config.settings import GROUPS, Settings, field_parsers  # noqa: E402
from s3spool.errors import EXIT_MEANINGS  # noqa: E402
from s3spool.metrics import Metrics  # noqa: E402


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
    validators = field_parsers(field)
    if "parse_size" in validators:
        return "size"
    if "parse_duration" in validators:
        return "duration"
    if validators & {"parse_list", "parse_paths"}:
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


def format_default(kind: str, text: str) -> str:
    """Show size and duration defaults the way an operator would write them."""
    try:
        if kind == "size":
            return format_size(int(text))
        if kind == "duration":
            return format_duration(float(text))
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


def flags_table() -> str:
    """The generated part of ``catalog.py``: each setting's name, whether it is a switch, its
    default, its help and its group, group by group."""
    rows = "".join(
        f"    ({field!r}, {Settings.model_fields[field].annotation is bool}, "
        f"{default_text(field)!r}, {Settings.model_fields[field].description or ''!r}, "
        f"{group!r}),\n"
        for group, fields in GROUPS.items()
        for field in fields
    )
    return "SETTINGS: tuple[tuple[str, bool, str, str, str], ...] = (\n" + rows + ")\n"


HEADER = ("Environment variable", "Flag", "Default", "Value", "Meaning")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text and text != "none" else "none"


def render() -> str:
    """The configuration reference: one markdown table per group (ends with a newline)."""
    lines = []
    for group, fields in GROUPS.items():
        lines += [
            f"### {group[0].upper()}{group[1:]}",
            "",
            "| " + " | ".join(HEADER) + " |",
            "|" + "|".join("---" for _ in HEADER) + "|",
        ]
        for field in fields:
            description = Settings.model_fields[field].description or ""
            kind = value_kind(field)
            cells = (
                f"`{env_name(field)}`",
                f"`{flag_name(field)}`",
                _code(default_text(field)),
                kind,
                description,
            )
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"


def render_metrics() -> str:
    """Every s3spool_* metric of ``Metrics``: exposed name, type, labels, HELP text."""
    from prometheus_client.metrics import MetricWrapperBase

    lines = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, kind = metric._name, metric._type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name, kind = name + "_info", "gauge"
        labels = ", ".join(f"`{label}`" for label in metric._labelnames)
        cells = (f"`{name}`", kind, labels, metric._documentation)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_exit_codes() -> str:
    """``errors.EXIT_MEANINGS`` as a table."""
    lines = ["| Code | Meaning |", "|---|---|"]
    lines += [f"| `{code}` | {_cell(text)} |" for code, text in sorted(EXIT_MEANINGS.items())]
    return "\n".join(lines) + "\n"


#: name -> (file below docs/, renderer): each table and where it lives
TABLES = {
    "settings": ("configuration.md", render),
    "metrics": ("operations.md", render_metrics),
    "exit-codes": ("operations.md", render_exit_codes),
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def section(table: str, name: str = "settings") -> str:
    """What a doc holds between (and including) the markers of table ``name``."""
    begin, end = markers(name)
    return f"{begin}\n\n{table}\n{end}"


def current_section(text: str, name: str = "settings") -> str | None:
    """The section of table ``name``, markers included; None if missing."""
    begin, end = markers(name)
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        return None
    return text[start : stop + len(end)]


def rewrite(text: str, table: str, name: str = "settings") -> str:
    old = current_section(text, name)
    if old is None:
        begin, end = markers(name)
        raise SystemExit(f"no {begin} ... {end} markers")
    return text.replace(old, section(table, name), 1)


FLAGS_BEGIN = "# --- generated: settings_doc.py ---\n"
FLAGS_END = "# --- end generated ---\n"


def rewrite_flags(text: str) -> str:
    """config/catalog.py with its generated part (between the marker lines) made anew."""
    start = text.index(FLAGS_BEGIN) + len(FLAGS_BEGIN)
    return text[:start] + flags_table() + text[text.index(FLAGS_END, start) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the tables in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a table is out of date")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs/ directory to use")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(render())
        return 0
    old_flags = FLAGS.read_text(encoding="utf-8")
    flags = rewrite_flags(old_flags)
    stale = 0
    if flags != old_flags:
        if args.check:
            print(f"{FLAGS}: out of date; run `python scripts/settings_doc.py --write`")
            return 1
        FLAGS.write_text(flags, encoding="utf-8")
        print(f"{FLAGS}: rewritten")
    for name, (file, renderer) in TABLES.items():
        path = args.docs / file
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, renderer(), name)
        if new == text:
            continue
        if args.check:
            print(
                f"{path}: the {name} table is out of date; run "
                "`python scripts/settings_doc.py --write`",
                file=sys.stderr,
            )
            stale = 1
        else:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: {name} table rewritten")
    return stale


if __name__ == "__main__":
    raise SystemExit(main())
