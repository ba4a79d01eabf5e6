"""Every example in README.md and docs/ runs: each fenced toml, sh and python block, against a
local store, with the real `s3spool` (the convention: docs/architecture.md, "Examples in the
docs"). One test per document; its blocks run in order in one fresh directory."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from proc import clean_env
from s3servers import S3Target

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"toml": "toml", "sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}
NO_RUN = re.compile(r"<!-- example: no-run \((.+)\) -->")
FENCE = re.compile(r"^```(\w*)\s*$")
# paths an operator would use, read below the test's directory
PLACES = re.compile(r"(?<![\w./-])/(?=(?:var/spool|etc/s3spool|srv)\b)")
SPOOL_ROOT = re.compile(r"(?<![\w./-])/var/spool/[\w.-]+")
BUCKET = re.compile(r"s3://[^/\s\"'`]+")
# a config file written by a shell example: cat >FILE.toml <<'EOF' ... EOF
HEREDOC = re.compile(r"cat\s*>\s*(\S+\.toml)\s*<<'?(\w+)'?\n(.*?\n)\2\n", re.DOTALL)
# `s3spool run` as a service runs until stopped: here it runs one pass with the same settings
SHIM = """set -euo pipefail
s3spool() {
  if [ "${1-}" = run ]; then
    case " $* " in *" --once "*|*" --dry-run "*) ;; *) set -- "$@" --once ;; esac
  fi
  command s3spool "$@"
}
"""


@dataclass
class Block:
    lang: str
    text: str
    line: int
    no_run: str | None  # the reason, if marked


def blocks(doc: Path) -> list[Block]:
    found, lang, start, body, reason, prev = [], None, 0, [], None, ""
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if lang is None and fence:
            lang, start, body = fence.group(1), number, []
            match = NO_RUN.search(prev)
            reason = match.group(1) if match else None
        elif lang is not None and line.startswith("```"):
            if lang in LANGS:
                found.append(Block(LANGS[lang], "\n".join(body) + "\n", start, reason))
            lang = None
        elif lang is not None:
            body.append(line)
        if line.strip():
            prev = line
    return found


def with_examples() -> list[Path]:
    return [doc for doc in DOCS if blocks(doc)]


def test_the_convention_is_followed() -> None:
    """Each doc with examples is collected, and a no-run marker always says why."""
    assert {p.name for p in with_examples()} >= {"README.md", "configuration.md", "migration.md"}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert text.count("<!-- example:") == len(NO_RUN.findall(text)), doc.name


def _keys(data: dict[str, object]) -> set[str]:
    keys = set(data)
    for route in data.get("route", []):  # type: ignore[attr-defined]
        keys |= set(route)
    return keys


@pytest.mark.parametrize("doc", with_examples(), ids=lambda p: p.name)
def test_examples_run(doc: Path, rclone_s3: S3Target, tmp_path: Path) -> None:
    here = str(tmp_path)

    def local(text: str) -> str:
        return BUCKET.sub(f"s3://{rclone_s3.bucket}", PLACES.sub(here + "/", text))

    env = clean_env(rclone_s3.env())
    del env["S3SPOOL_DESTINATION"]  # the examples name their own
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["HOME"] = here
    found = blocks(doc)
    for block in found:  # the spool roots the examples use exist, as an operator makes them
        for spool in SPOOL_ROOT.findall(block.text):
            (tmp_path / spool.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc" / "s3spool").mkdir(parents=True, exist_ok=True)
    fallback_spool = tmp_path / "var" / "spool" / "example"
    fallback_spool.mkdir(parents=True, exist_ok=True)

    def run(
        cmd: list[str], extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, env={**env, **(extra or {})}, cwd=here, capture_output=True, text=True, timeout=60
        )

    def load(text: str, path: Path) -> subprocess.CompletedProcess[str]:
        """`s3spool config` of a config file; a fragment gets what it lacks from the env."""
        path.write_text(text, encoding="utf-8")
        keys = _keys(tomllib.loads(text))
        extra = {}
        if "destination" not in keys:
            extra["S3SPOOL_DESTINATION"] = f"s3://{rclone_s3.bucket}/"
        if not keys & {"spool_dirs", "incoming_dir"}:
            extra["S3SPOOL_SPOOL_DIRS"] = str(fallback_spool)
        return run(["s3spool", "config", "--config", str(path)], extra)

    for number, block in enumerate(found):
        where = f"{doc.name}:{block.line}"
        text = local(block.text)
        if block.lang == "toml":
            first = text.splitlines()[0]
            path = Path(first[2:].strip()) if first.startswith(f"# {here}/") else None
            proc = load(text, path or tmp_path / f"example-{number}.toml")
        elif block.lang == "sh":
            proc = run(["bash", *(["-n"] if block.no_run else []), "-c", SHIM + text])
            if block.no_run and proc.returncode == 0:
                for index, (_file, _end, toml) in enumerate(HEREDOC.findall(text)):
                    proc = load(toml, tmp_path / f"example-{number}-{index}.toml")
                    if proc.returncode:
                        break
        elif block.no_run:
            compile(text, where, "exec")
            continue
        else:
            proc = run([sys.executable, "-c", text])
        assert proc.returncode == 0, (
            f"{where}: {block.lang} example exits {proc.returncode}\n{text}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )
