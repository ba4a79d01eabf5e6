"""``--help`` by task: every setting in one group, once, on one line, the groups those of
docs/configuration.md."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from s3spool.cli import _command_parser, build_parser
from s3spool.config.catalog import SETTINGS, env_name, flag_name
from s3spool.config.settings import GROUPS, Settings


def test_every_setting_has_one_group() -> None:
    grouped = Counter(field for fields in GROUPS.values() for field in fields)
    assert [f for f, n in grouped.items() if n > 1] == [], "a setting in two groups"
    assert set(Settings.model_fields) - set(grouped) == set(), "a setting without a group"
    assert set(grouped) - set(Settings.model_fields) == set(), "a group names no setting"
    # the command line shows the same groups, in the same order
    assert [(field, group) for field, *_, group in SETTINGS] == [
        (field, group) for group, fields in GROUPS.items() for field in fields
    ]


def _help(command: str) -> str:
    return _command_parser(build_parser(), command).format_help()


@pytest.mark.parametrize("columns", ["80", "200"])
def test_run_help_shows_each_setting_once_in_its_group(
    columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    text = _help("run")
    lines = text.splitlines()
    assert len(lines) <= 220
    assert max(len(line) for line in lines) <= max(80, int(columns))
    assert text.startswith("usage: s3spool run [options]\n")
    titles = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["options", *GROUPS], "the groups, in order"
    first = [line.split()[0] for line in lines if line.startswith("  -")][1:4]
    assert first == ["-c", "--once", "-n,"], "--config and --once come first"
    for field in Settings.model_fields:
        flag = re.escape(flag_name(field))
        assert len(re.findall(rf"(?<![\w-]){flag}(?![\w-])", text)) == 1, field
        if field != "config":
            # one line: the flag, its variable and its default
            line = next(line for line in lines if env_name(field) in line)
            assert ", default " in line, field
    assert "docs/configuration.md" in text


@pytest.mark.parametrize("command", ["check", "status", "enqueue", "requeue", "config"])
def test_other_commands_help_is_short(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = _help(command)
    assert len(text.splitlines()) <= 30
    assert "-c FILE, --config FILE" in text
    assert "docs/operations.md#exit-codes" in text
    assert "Exit codes: 0" not in text  # one copy of the table: in docs/operations.md
