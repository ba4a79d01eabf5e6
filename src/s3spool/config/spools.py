"""Where each spool's directories are, as the settings name them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from s3spool.config.settings import Settings
from s3spool.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SpoolDirs:
    """Where one spool's directories are."""

    label: str
    root: Path | None
    incoming: Path
    working: Path
    done: Path | None
    failed: Path | None
    #: the route that serves this spool (config.py); "default" without [[route]] tables
    route: str = "default"

    @property
    def resubmit(self) -> bool:
        return self.failed is not None and _same_path(self.failed, self.incoming)


def _abs(path: Path | None) -> Path | None:
    return Path(os.path.abspath(path)) if path else None


def _same_path(a: Path, b: Path) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


#: the name of the one route of a configuration without [[route]] tables
DEFAULT_ROUTE = "default"


def spool_layouts(s: Settings, *, route: str = DEFAULT_ROUTE) -> list[SpoolDirs]:
    if s.spool_dirs:
        out = []
        for root in s.spool_dirs:
            root = Path(os.path.abspath(root))
            out.append(
                SpoolDirs(
                    label=str(root),
                    root=root,
                    incoming=root / s.incoming_name,
                    working=root / s.working_name,
                    done=None if s.remove_on_success else root / s.done_name,
                    failed=None if s.remove_on_failure else root / s.failed_name,
                    route=route,
                )
            )
        labels = [d.label for d in out]
        if len(set(labels)) != len(labels):
            raise ConfigError("S3SPOOL_SPOOL_DIRS (--spool-dirs): a spool is listed twice")
        return out
    assert s.incoming_dir is not None
    assert s.working_dir is not None
    incoming = _abs(s.incoming_dir)
    assert incoming is not None
    return [
        SpoolDirs(
            label=str(incoming),
            root=None,
            incoming=incoming,
            working=_abs(s.working_dir) or incoming,
            done=None if s.remove_on_success else _abs(s.done_dir),
            failed=None if s.remove_on_failure else _abs(s.failed_dir),
            route=route,
        )
    ]
