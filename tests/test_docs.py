"""The docs agree with the code: settings table, key fields, exit codes, cited tests."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

import s3spool.cli
from s3spool.config.catalog import env_name
from s3spool.config.settings import KEY_FIELDS, Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUARANTEES = ROOT / "docs" / "guarantees.md"
FIX = "run `python scripts/settings_doc.py --write` and commit README.md"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_doc", ROOT / "scripts" / "settings_doc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def settings_doc() -> ModuleType:
    return _load_script()


def test_readme_settings_section_matches_the_settings_model(settings_doc: ModuleType) -> None:
    text = README.read_text(encoding="utf-8")
    current = settings_doc.current_section(text)
    assert current is not None, (
        f"README.md lacks the {settings_doc.BEGIN} / {settings_doc.END} markers"
    )
    wanted = settings_doc.section(settings_doc.render())
    if current != wanted:
        diff = "\n".join(
            difflib.unified_diff(
                current.splitlines(), wanted.splitlines(), "README.md", "generated", lineterm=""
            )
        )
        pytest.fail(f"README.md's configuration reference is out of date: {FIX}\n{diff}")


def test_flags_module_matches_the_settings_model(settings_doc: ModuleType) -> None:
    """The command line reads flags.py, not the model: it must say what the model says."""
    text = settings_doc.FLAGS.read_text(encoding="utf-8")
    assert settings_doc.rewrite_flags(text) == text, FIX


def test_generated_table_has_every_setting(settings_doc: ModuleType) -> None:
    table = settings_doc.render()
    rows = [line for line in table.splitlines() if line.startswith("| `S3SPOOL_")]
    assert len(rows) == len(Settings.model_fields)
    for field in Settings.model_fields:
        assert f"| `{env_name(field)}` |" in table, field


def test_write_replaces_only_the_section(settings_doc: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before = "# Title\n\nintro\n\n"
    after = "\n\n## Next\n\ntext\n"
    stale = f"{settings_doc.BEGIN}\n| old | table |\n{settings_doc.END}"
    readme.write_text(before + stale + after, encoding="utf-8")
    assert settings_doc.main(["--check", "--readme", str(readme)]) == 1
    assert settings_doc.main(["--write", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text == before + settings_doc.section(settings_doc.render()) + after
    assert settings_doc.main(["--check", "--readme", str(readme)]) == 0
    assert settings_doc.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == text  # idempotent


def test_readme_documents_every_key_field() -> None:
    text = README.read_text(encoding="utf-8")
    missing = sorted(f for f in KEY_FIELDS if f"`{{{f}}}`" not in text)
    assert not missing, f"README.md does not document key fields {missing}"


def test_readme_documents_every_exit_code() -> None:
    doc = s3spool.cli.__doc__ or ""
    codes = re.findall(r"(?:^|·|:)\s*(\d+)\s", doc.split("Exit codes:", 1)[-1])
    assert codes, "cli.py's docstring no longer lists the exit codes"
    text = README.read_text(encoding="utf-8")
    missing = [c for c in codes if f"| `{c}` |" not in text]
    assert not missing, f"README.md's exit code table lacks {missing} (see cli.py's docstring)"


def _cited_tests(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)


@pytest.mark.parametrize("doc", [README, GUARANTEES], ids=["README", "guarantees"])
def test_cited_tests_exist(doc: Path) -> None:
    cited = _cited_tests(doc)
    if doc == GUARANTEES:
        assert cited, "docs/guarantees.md cites no tests"
    missing = []
    for file, name in cited:
        source = ROOT / file
        pattern = rf"^\s*(?:async\s+)?def {re.escape(name)}\("
        if not source.exists() or not re.search(pattern, source.read_text(), re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc.name} cites tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", [README, GUARANTEES], ids=["README", "guarantees"])
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [
        t
        for t in targets
        if "://" not in t and not t.startswith("mailto:") and not (doc.parent / t).exists()
    ]
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"
