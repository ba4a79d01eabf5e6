"""The docs agree with the code: the generated tables (settings, metrics, exit codes), key
fields, links and cited tests."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from s3spool.config.catalog import env_name
from s3spool.config.settings import KEY_FIELDS, Settings
from s3spool.errors import EXIT_MEANINGS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUARANTEES = DOCS / "guarantees.md"
ARCHITECTURE = DOCS / "architecture.md"
ALL_DOCS = [README, *sorted(DOCS.glob("*.md"))]
FIX = "run `python scripts/settings_doc.py --write` and commit docs/"


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


@pytest.mark.parametrize("name", ["settings", "metrics", "exit-codes"])
def test_generated_tables_match_the_code(settings_doc: ModuleType, name: str) -> None:
    file, renderer = settings_doc.TABLES[name]
    text = (DOCS / file).read_text(encoding="utf-8")
    current = settings_doc.current_section(text, name)
    begin, end = settings_doc.markers(name)
    assert current is not None, f"docs/{file} lacks the {begin} / {end} markers"
    wanted = settings_doc.section(renderer(), name)
    if current != wanted:
        diff = "\n".join(
            difflib.unified_diff(
                current.splitlines(), wanted.splitlines(), file, "generated", lineterm=""
            )
        )
        pytest.fail(f"docs/{file}'s {name} table is out of date: {FIX}\n{diff}")


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


def test_generated_tables_cover_metrics_and_exit_codes(settings_doc: ModuleType) -> None:
    metrics = settings_doc.render_metrics()
    for name in ("s3spool_files_total", "s3spool_notify_sent_total", "s3spool_outbox_events"):
        assert f"| `{name}` |" in metrics
    codes = settings_doc.render_exit_codes()
    assert all(f"| `{code}` |" in codes for code in EXIT_MEANINGS)


def test_write_replaces_only_the_sections(settings_doc: ModuleType, tmp_path: Path) -> None:
    before = "# Title\n\nintro\n\n"
    after = "\n\n## Next\n\ntext\n"
    files = {}
    for name, (file, _renderer) in settings_doc.TABLES.items():
        begin, end = settings_doc.markers(name)
        files[file] = files.get(file, before) + f"{begin}\n| old | table |\n{end}" + after
    for file, text in files.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    args = ["--docs", str(tmp_path)]
    assert settings_doc.main(["--check", *args]) == 1
    assert settings_doc.main(["--write", *args]) == 0
    config = (tmp_path / "configuration.md").read_text(encoding="utf-8")
    assert config == before + settings_doc.section(settings_doc.render()) + after
    assert settings_doc.main(["--check", *args]) == 0
    assert settings_doc.main(["--write", *args]) == 0
    assert (tmp_path / "configuration.md").read_text(encoding="utf-8") == config  # idempotent


def test_keys_doc_documents_every_key_field() -> None:
    text = (DOCS / "keys.md").read_text(encoding="utf-8")
    missing = sorted(f for f in KEY_FIELDS if f"`{{{f}}}`" not in text)
    assert not missing, f"docs/keys.md does not document key fields {missing}"


def _cited_tests(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)


@pytest.mark.parametrize("doc", [GUARANTEES, ARCHITECTURE], ids=lambda p: p.name)
def test_cited_tests_exist(doc: Path) -> None:
    """guarantees.md names the test that proves each guarantee; architecture.md may cite
    tests for contributors. Every such test must exist."""
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


def test_user_docs_cite_no_test_ids() -> None:
    """Test node ids are for contributors: only guarantees.md and architecture.md carry them."""
    cited = {
        doc.name: _cited_tests(doc) for doc in ALL_DOCS if doc not in (GUARANTEES, ARCHITECTURE)
    }
    assert not any(cited.values()), (
        f"user docs cite test ids: { {k: v for k, v in cited.items() if v} }"
    )


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link names a file that exists, and a heading of it after a '#'."""
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = doc.parent / target if target else doc
        if not path.exists():
            missing.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            missing.append(f"{target}#{anchor}")
    assert not missing, f"{doc.name} links to files or headings that do not exist: {missing}"
