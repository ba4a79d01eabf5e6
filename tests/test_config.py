"""Config file errors: every problem is reported at once, naming its route and key; and the
warnings of valid settings that are likely not meant."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from proc import cli
from s3spool.config.catalog import env_name, flag_name
from s3spool.config.load import load_config
from s3spool.config.settings import Settings
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
    "bad-top-value-said-once": (  # not once per route
        "part_size = '1MiB'\n{r1}{r2}",
        [r"\A[^\n]*\n  key part_size \(top of .*c\.toml\): must be between 5MiB and 5GiB[^\n]*\Z"],
    ),
    "routes-for-route": (
        "[[routes]]\nname = 'r1'\n",
        [r"c\.toml: unknown key 'routes'; did you mean route\?"],
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
    for root in ("web", "bill"):
        (tmp_path / root).mkdir()
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


# --- every setting against values a person mistypes -----------------------------------------
#: as flags and variables give them (text), and as a TOML file can (typed)
TYPOS: list[object] = [
    *("", " ", "\t", "a\nb", "\x1b[1m", "{", "}", "{fname", "%", "%Y", "-1", "-5s"),
    *("5 parsecs", "10XiB", "1e9", "9" * 30, "9" * 30 + "d", "nan", "é"),
    *(-1, 2**63 - 1, 1.5, math.inf, math.nan, True, [], {"a": {}}),
]
EXPLICIT = ("incoming_dir", "working_dir", "done_dir", "failed_dir")


@pytest.mark.parametrize("field", list(Settings.model_fields))
@pytest.mark.usefixtures("clean_env")
def test_every_setting_refuses_a_typo_by_name_or_takes_it(field: str, tmp_path: Path) -> None:
    """Each value is refused with a ConfigError naming the setting, or accepted and what the
    service builds at start-up from it builds (no other exception: it would be a traceback)."""
    from botocore.exceptions import InvalidRegionError
    from botocore.utils import (
        is_valid_endpoint_url,
        is_valid_ipv6_endpoint_url,
        validate_region_name,
    )

    from s3spool.run.service import Service
    from s3spool.store.s3 import S3Store

    (tmp_path / "s").mkdir()
    base: dict[str, object] = {"destination": "s3://bucket/p/", "spool_dirs": str(tmp_path / "s")}
    if field in EXPLICIT:
        base = {"destination": "noop://", **{f: str(tmp_path / f) for f in EXPLICIT}}
    for value in TYPOS:
        try:
            config = load_config({**base, field: value})
        except ConfigError as exc:
            refused = str(exc)
        else:
            refused = ""
        if refused:
            assert env_name(field) in refused or flag_name(field) in refused, (value, refused)
            continue
        s = config.s
        Service(config, once=True)
        if s.scheme == "s3":
            S3Store(s)
        if s.endpoint_url is not None:
            url = s.endpoint_url
            assert is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url), url
        try:
            validate_region_name(s.region)
        except InvalidRegionError:
            pytest.fail(f"region {s.region!r} taken, which botocore refuses")


@pytest.mark.usefixtures("clean_env")
def test_relative_paths_and_missing_roots_name_their_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's relative paths are taken from its directory, a flag's from the working
    directory; a missing root is named with the key (and route) that gave it."""
    from s3spool.config.load import missing_spools

    (tmp_path / "etc" / "one").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    path = tmp_path / "etc" / "c.toml"
    path.write_text(
        "ca_bundle = 'ca.pem'\n"
        + ROUTE.format(name="r1", root=".", dir="one")
        + ROUTE.format(name="r2", root="..", dir="two")
    )
    (tmp_path / "etc" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config({"config": "../etc/c.toml"})
    assert config.path == path
    assert [r.s.spool_dirs for r in config.routes] == [[path.parent / "one"], [tmp_path / "two"]]
    assert config.s.ca_bundle == path.parent / "ca.pem"
    with pytest.raises(ConfigError) as err:
        missing_spools(config)
    assert str(err.value) == (
        f"invalid settings:\n  route 'r2': key spool_dirs: spool root {tmp_path / 'two'} "
        "does not exist"
    )
    (flagged,) = load_config({"spool_dirs": "one,two", "destination": "noop://"}).routes
    assert flagged.s.spool_dirs == [tmp_path / "cwd" / "one", tmp_path / "cwd" / "two"]
