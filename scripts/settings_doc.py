"""Generate the README's configuration reference from the settings model.

    python scripts/settings_doc.py            print the table (markdown)
    python scripts/settings_doc.py --write    rewrite the README section and config/catalog.py
    python scripts/settings_doc.py --check    exit 1 if either is out of date

The rows come from ``s3spool.settings_help.settings_table()`` (the same rows ``s3spool --help``
prints), so the README cannot drift from the code: ``tests/test_docs.py`` fails when the
section between the markers differs from this script's output.  ``src/s3spool/config/catalog.py``
(the same settings as plain data, so the command line needs no pydantic) is written
alongside.  The "Value" column and the human-readable defaults (``16MiB``, ``1h``) are
derived from the field types of ``s3spool.settings.Settings``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FLAGS = ROOT / "src" / "s3spool" / "config" / "catalog.py"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"

try:
    from s3spool.config.settings import ENV_PREFIX
    from s3spool.config.settings_help import flags_table, format_default, settings_table, value_kind
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
    from s3spool.config.settings import ENV_PREFIX
    from s3spool.config.settings_help import flags_table, format_default, settings_table, value_kind

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
