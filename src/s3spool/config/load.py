"""The effective configuration: every route's settings from flags, ``S3SPOOL_*`` variables and
the TOML file, each value with where it came from.  The first that sets a value wins: flag >
variable > the route's table > the file's top level > default."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from s3spool.config.catalog import ENV_PREFIX, env_name, flag_name, suggest
from s3spool.config.formats import parse_paths
from s3spool.config.options import key_format_hint
from s3spool.config.settings import GLOBAL_FIELDS, Settings, field_parsers, validation_problems
from s3spool.config.spools import DEFAULT_ROUTE, spool_layouts
from s3spool.errors import ConfigError

FIELDS = frozenset(Settings.model_fields)
ROUTE_FIELDS = FIELDS - GLOBAL_FIELDS
VARIABLES = frozenset(env_name(f) for f in FIELDS)


#: settings that are paths (or lists of paths): relative ones are made absolute as they are read
PATH_FIELDS = frozenset(f for f in FIELDS if field_parsers(f) & {"parse_path", "parse_paths"})
PATH_LISTS = frozenset(f for f in FIELDS if "parse_paths" in field_parsers(f))

#: S3SPOOL_* variables of our own tooling (docker/smoke.sh, the image build) and the prefix of
#: what the exec notifier passes to its command: the strict check leaves them alone.
TOOL_VARIABLES = (
    *("S3SPOOL_SMOKE", "S3SPOOL_ENGINE", "S3SPOOL_IMAGE", "S3SPOOL_BASE_IMAGE", "S3SPOOL_PIP_"),
    *("S3SPOOL_DEBIAN_", "S3SPOOL_ULIMITS", "S3SPOOL_OCI_RUNTIME", "S3SPOOL_EVENT_"),
)

#: Where a value came from, for ``s3spool config`` and for error messages.
FLAG, ENV, ROUTE, FILE, DEFAULT = "flag", "env", "route", "file", "default"


class RouteSettings(Settings):
    """One route's settings, validated from values gathered by ``load_config``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@dataclass(frozen=True, slots=True)
class Route:
    """A named group of spools and where their files go."""

    name: str
    s: Settings
    #: field -> FLAG, ENV, ROUTE, FILE or DEFAULT
    origin: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Config:
    routes: tuple[Route, ...]
    path: Path | None = None
    #: the flags it was loaded with: SIGHUP loads it again from them (``reload.py``); None
    #: for settings built elsewhere, which cannot be re-read
    flags: Mapping[str, Any] | None = None
    #: what is valid but likely not meant, one line each (``run`` logs them at start)
    warnings: tuple[str, ...] = ()

    @property
    def s(self) -> Settings:
        """The process-wide settings (the same in every route)."""
        return self.routes[0].s


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One problem line per ``S3SPOOL_*`` variable that names no setting."""
    known = VARIABLES
    problems = []
    for var in sorted(environ):
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(TOOL_VARIABLES):
            continue
        problems.append(f"{var}: unknown variable{suggest(upper, known)}")
    return problems


def setting_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``S3SPOOL_*`` variables that name a setting, by field, in any case (what
    pydantic-settings' ``EnvSettingsSource`` reads, in a fraction of its start-up time)."""
    n = len(ENV_PREFIX)
    return {
        var[n:].lower(): value
        for var, value in environ.items()
        if var.upper().startswith(ENV_PREFIX) and var[n:].lower() in FIELDS
    }


def read_file(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """The file's top level, its ``[[route]]`` tables, and what is wrong with their keys."""
    setting = "S3SPOOL_CONFIG (--config)"
    if path.is_dir():
        raise ConfigError(f"{setting}: {path} is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"{setting}: {path}: no such file")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{setting}: {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    tables = data.pop("route", [])
    problems = [
        f"{path}: unknown key {key!r}{suggest(key, FIELDS | {'route'})}"
        for key in data
        if key not in FIELDS
    ]
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(f"{path}: 'route' must be [[route]] tables")
        return data, [], problems
    seen: set[str] = set()
    for i, table in enumerate(tables, 1):
        name = table.setdefault("name", f"route{i}")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"route {i}: name {name!r} must be letters, digits, '-' or '_'")
            continue
        if name in seen:
            problems.append(f"route {name!r}: the name is used by another route")
        seen.add(name)
        for key in table:
            if key in GLOBAL_FIELDS:
                problems.append(
                    f"route {name!r}: key {key} is a setting of the whole process; "
                    "set it at the top of the file"
                )
            elif key not in FIELDS and key != "name":
                problems.append(
                    f"route {name!r}: unknown key {key!r}{suggest(key, ROUTE_FIELDS | {'name'})}"
                )
    return data, tables, problems


def load_config(flags: Mapping[str, Any], *, need_destination: bool = True) -> Config:
    """Every route's settings from flags, the environment and the file; ``ConfigError`` lists
    every problem found.  Relative paths are taken from the file's directory when the file
    gives them, else from the working directory.  ``need_destination=False``: commands that
    never contact the store (status, enqueue) run without one."""
    given = {k: v for k, v in flags.items() if v is not None}
    problems = unknown_variables(os.environ)
    env = setting_variables(os.environ)
    raw_path = given.get("config", env.get("config"))
    path = Path(os.path.abspath(raw_path)) if isinstance(raw_path, str) and raw_path else None
    top, tables, found = read_file(path) if path is not None else ({}, [], [])
    problems += found
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    file_dir = str(path.parent) if path else ""
    routes = []
    overridden: dict[str, list[str]] = {}  # field -> routes whose file value a variable replaces
    top_problems: dict[str, list[str]] = {}  # a bad value at the top: said once, not per route
    for table in tables or [{"name": DEFAULT_ROUTE}]:
        name = table["name"]
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for where, layer in ((FILE, top), (ROUTE, table), (ENV, env), (FLAG, given)):
            for key, value in layer.items():
                if key == "name":
                    continue
                if key in PATH_FIELDS:
                    base = file_dir if where in (FILE, ROUTE) else ""
                    value = _absolute(value, base, many=key in PATH_LISTS)
                if (
                    where == ENV
                    and origin.get(key) in (FILE, ROUTE)
                    and not _same(value, values[key])
                ):
                    overridden.setdefault(key, []).append(name)
                values[key], origin[key] = value, where
        if not need_destination:
            values.setdefault("destination", "noop://")
        try:
            settings = RouteSettings(**values)
        except ValidationError as exc:
            for field, msg in validation_problems(exc):
                where = origin.get(field, DEFAULT)
                if where == FILE and path is not None:
                    text = f"key {field} (top of {path}): {msg}"
                    top_problems.setdefault(text, []).append(name)
                else:
                    problems.append(_locate(field, where, name, path) + msg)
            continue
        routes.append(Route(name, settings, {**dict.fromkeys(FIELDS, DEFAULT), **origin}))
    for text, names in top_problems.items():
        if len(names) == max(len(tables), 1):
            problems.append(text)
        else:
            problems += [f"route {n!r}: {text}" for n in names]
    problems += _shared_spools(routes)
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return Config(tuple(routes), path, given, _warnings(routes, overridden, path))


def _absolute(value: Any, base: str, *, many: bool = False) -> Any:
    """A path setting's value (``many``: a list of paths) with relative paths joined to
    ``base`` ("": the working directory); what is not a path is left for the settings to
    refuse."""
    if many:
        try:
            items = parse_paths(value)
        except ValueError:
            return value
        return [_absolute(i, base) for i in items] if isinstance(items, list) else items
    if isinstance(value, str | os.PathLike) and os.fspath(value) and "\0" not in str(value):
        return os.path.abspath(os.path.join(base, value))
    return value


def load_settings(**flags: Any) -> Settings:
    """The settings of a single route from ``flags`` and the environment (tests, tools)."""
    return load_config(flags).s


def _same(env_value: Any, file_value: Any) -> bool:
    """Does a variable's text say what the file's TOML value says (``8`` and ``"8"``)?"""
    if isinstance(file_value, bool):
        file_value = str(file_value).lower()
    return str(env_value).strip() == str(file_value).strip()


def _warnings(
    routes: list[Route], overridden: Mapping[str, list[str]], path: Path | None
) -> tuple[str, ...]:
    """A variable that replaces values of the file (it applies to every route), and
    ``KEY_FORMAT`` text meant as fields."""
    out = [
        f"{env_name(field)} overrides {field} of route{'s' if len(names) > 1 else ''} "
        f"{', '.join(names)} in {path}: a variable applies to every route; unset it to use "
        "the file's values"
        for field, names in overridden.items()
    ]
    hints: dict[str, list[Route]] = {}
    for route in routes:
        hint = key_format_hint(route.s.key_format)
        if hint is not None:
            hints.setdefault(hint, []).append(route)
    for hint, same in hints.items():
        label = _locate("key_format", same[0].origin["key_format"], same[0].name, path)
        if len(same) > 1:
            label = f"KEY_FORMAT of routes {', '.join(r.name for r in same)}: "
        out.append(label + hint)
    return tuple(out)


def missing_spools(config: Config) -> None:
    """``ConfigError`` listing each spool root, or parent of an explicit directory, that does
    not exist: a typo (or a relative path) would otherwise start an empty spool, forever."""
    problems = []
    for route in config.routes:
        for dirs in spool_layouts(route.s, route=route.name):
            if dirs.root is not None:
                wanted = [("spool_dirs", dirs.root, "spool root ")]
            else:  # an explicit directory is made if missing, in a parent that exists
                roles = ("incoming", "working", "done", "failed")
                paths = [(f"{r}_dir", getattr(dirs, r)) for r in roles if getattr(dirs, r)]
                wanted = [(f, p.parent, f"{p}: its directory ") for f, p in paths if not p.is_dir()]
            for field, need, what in wanted:
                if not need.is_dir():
                    why = "is not a directory" if need.exists() else "does not exist"
                    where = _locate(field, route.origin[field], route.name, config.path)
                    problems.append(f"{where}{what}{need} {why}")
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(dict.fromkeys(problems)))


def _locate(field: str, where: str, route: str, path: Path | None) -> str:
    """How an error names the value at fault: the place it was written."""
    if path is None:
        return f"{env_name(field)} ({flag_name(field)}): " if field else "settings: "
    if not field:
        return f"route {route!r}: "
    if where == FLAG:
        label = flag_name(field)
    elif where == ENV:
        label = env_name(field)
    elif where == ROUTE:
        label = f"key {field}"
    elif where == FILE:
        label = f"key {field} (top of {path})"
    else:
        label = f"{env_name(field)} ({flag_name(field)})"
    return f"route {route!r}: {label}: "


def _shared_spools(routes: list[Route]) -> list[str]:
    """A spool directory served by two routes would be claimed by both."""
    owner: dict[str, str] = {}
    problems = []
    for route in routes:
        try:
            layouts = spool_layouts(route.s)
        except ConfigError as exc:
            problems.append(f"route {route.name!r}: {exc}")
            continue
        for dirs in layouts:
            key = os.path.normpath(dirs.incoming)
            if key in owner and owner[key] != route.name:
                problems.append(
                    f"route {route.name!r}: spool {dirs.label} is also in route {owner[key]!r}"
                )
            owner.setdefault(key, route.name)
    return problems
