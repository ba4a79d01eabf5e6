"""Config file errors: every problem is reported at once, naming its route and key; and the
warnings of valid settings that are likely not meant."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proc import cli
from s3spool.config.load import load_config
from s3spool.errors import ConfigError

ROUTE = """
[[route]]
name = "{name}"
spool_dirs = ["{root}/{dir}"]
destination = "noop://"
"""

# (file text after "{routes}" substitution, expected lines as regexes)
CASES: dict[str, tuple[str, list[str]]] = {
    "unknown-top-key": (
        "workerz = 3\n{r1}",
        [r"c\.toml: unknown key 'workerz'; did you mean workers\?"],
    ),
    "unknown-route-key": (
        "{r1}destinaton = 's3://b/'\n",
        [r"route 'r1': unknown key 'destinaton'; did you mean destination\?"],
    ),
    "global-key-in-route": (
        "{r1}workers = 3\n",
        [r"route 'r1': key workers is a setting of the whole process; set it at the top"],
    ),
    "bad-route-value": (
        "{r1}hold_for = 'soon'\n",
        [r"route 'r1': key hold_for: 'soon' is not a duration"],
    ),
    "bad-top-value-names-each-route": (
        "part_size = '1MiB'\n{r1}{r2}",
        [
            r"route 'r1': key part_size \(top of .*c\.toml\): must be between 5MiB and 5GiB",
            r"route 'r2': key part_size \(top of .*c\.toml\): must be between 5MiB and 5GiB",
        ],
    ),
    "missing-destination": (
        "[[route]]\nname = 'r1'\nspool_dirs = ['{root}/x']\n",
        [r"route 'r1': S3SPOOL_DESTINATION \(--destination\): required"],
    ),
    "spool-in-two-routes": (
        "{r1}[[route]]\nname = 'r2'\nspool_dirs = ['{root}/r1']\ndestination = 'noop://'\n",
        [r"route 'r2': spool .*/r1 is also in route 'r1'"],
    ),
    "same-name-twice": ("{r1}{r1b}", [r"route 'r1': the name is used by another route"]),
    "bad-name": ("[[route]]\nname = 'a b'\n", [r"route 1: name 'a b' must be letters, digits"]),
    "route-not-a-table": ("route = 3\n", [r"c\.toml: 'route' must be \[\[route\]\] tables"]),
    "key-format-attribute": (
        "{r1}key_format = '{{fname.upper}}'\n",
        [r"route 'r1': key key_format: .*attribute"],
    ),
    "key-format-unknown-field": (
        "{r1}key_format = '{{fnam}}'\n",
        [r"route 'r1': key key_format: unknown field \{fnam\}"],
    ),
    "several-at-once": (
        "workerz = 1\n{r1}hold_for = 'x'\n{r2}sse = 'rot13'\n",
        [r"unknown key 'workerz'"],  # key errors first: values are checked once keys are sound
    ),
    "several-values-at-once": (
        "{r1}hold_for = 'x'\n{r2}sse = 'rot13'\n",
        [r"route 'r1': key hold_for:", r"route 'r2': key sse:"],
    ),
    "not-toml": ("workers = = 3\n", [r"S3SPOOL_CONFIG \(--config\): .*c\.toml is not valid TOML"]),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("S3SPOOL_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.usefixtures("clean_env")
def test_config_errors_name_route_and_key(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    routes = {
        "r1": ROUTE.format(name="r1", dir="r1", root=tmp_path),
        "r2": ROUTE.format(name="r2", dir="r2", root=tmp_path),
        "r1b": ROUTE.format(name="r1", dir="other", root=tmp_path),  # a second 'r1'
    }
    path = tmp_path / "c.toml"
    path.write_text(text.format(root=tmp_path, **routes))
    with pytest.raises(ConfigError) as err:
        load_config({"config": str(path)})
    message = str(err.value)
    for pattern in expected:
        assert re.search(pattern, message), message


@pytest.mark.usefixtures("clean_env")
def test_no_file_and_a_file_without_routes_mean_one_default_route(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"spool_dirs = ['{tmp_path}/s']\ndestination = 'noop://'\nworkers = 5\n")
    (route,) = load_config({"config": str(path)}).routes
    assert (route.name, route.s.workers, route.origin["workers"]) == ("default", 5, "file")
    (plain,) = load_config({"spool_dirs": f"{tmp_path}/s", "destination": "noop://"}).routes
    assert (plain.name, plain.s.workers, plain.origin["workers"]) == ("default", 64, "default")


@pytest.mark.usefixtures("clean_env")
def test_without_a_file_errors_read_as_before(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"spool_dirs": f"{tmp_path}/s", "destination": "ftp://x"})
    assert str(err.value) == (
        "invalid settings:\n  S3SPOOL_DESTINATION (--destination): 'ftp://x' must start "
        "with s3:// or noop://"
    )


@pytest.mark.usefixtures("clean_env")
def test_start_warns_of_variables_over_the_file_and_strftime_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "workers = 8\nhold_for = '2s'\n"
        + ROUTE.format(name="web", dir="web", root=tmp_path)
        + "key_format = '%Y/%m/{fname}'\n"
        + ROUTE.format(name="bill", dir="bill", root=tmp_path)
        + "key_format = '${fname}'\n"
    )
    env = {
        "S3SPOOL_DESTINATION": "noop://elsewhere",  # replaces both routes' destination
        "S3SPOOL_WORKERS": "8",  # what the file says: changes nothing
        "S3SPOOL_IGNORE": "*.tmp",  # the file sets no ignore: the variable is the only value
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    warnings = load_config({"config": str(path)}).warnings
    assert warnings == (
        f"S3SPOOL_DESTINATION overrides destination of routes web, bill in {path}: a variable "
        "applies to every route; unset it to use the file's values",
        "route 'web': key key_format: '%Y/%m/{fname}' holds %Y, %m, which keys carry as "
        "written (strftime codes are not expanded): use {m_YYYY}, {m_MM} (the file's mtime; "
        "{c_*} for its ctime, {now:%Y} for the upload time)",
        "route 'bill': key key_format: '${fname}' holds '$', which keys carry as written: a "
        "field is {fname}, without '$'",
    )
    # the real `run` says them at start, before anything else (here a dry run)
    r = cli(["run", "--dry-run", "--config", str(path)], env)
    assert r.returncode == 0, r.stderr
    logged = [line.split(" s3spool.cli: ", 1)[1] for line in r.stderr.splitlines()[:3]]
    assert tuple(logged) == warnings, r.stderr
    assert all(" WARNING " in line for line in r.stderr.splitlines()[:3])
    c = cli(["check", "--config", str(path)], env)
    assert c.returncode == 0, c.stdout + c.stderr
    assert tuple(c.stdout.splitlines()[:3]) == tuple(f"WARN settings: {w}" for w in warnings)
