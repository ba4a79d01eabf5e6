"""Where each spool's directories are, as the settings name them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from s3spool.config.settings import Settings
from s3spool.errors import ConfigError

#: the name of the one route of a configuration without [[route]] tables
DEFAULT_ROUTE = "default"


@dataclass(frozen=True, slots=True)
class SpoolDirs:
    """Where one spool's directories are."""

    label: str
    root: Path | None
    incoming: Path
    working: Path
    done: Path | None
    failed: Path | None
    route: str = DEFAULT_ROUTE
    #: failed/ is incoming/: failed files are resubmitted (read per file: set once)
    resubmit: bool = field(init=False)

    def __post_init__(self) -> None:
        failed = self.failed
        same = failed is not None and os.path.abspath(failed) == os.path.abspath(self.incoming)
        object.__setattr__(self, "resubmit", same)

    @classmethod
    def below(
        cls,
        root: Path,
        *,
        incoming: str = "incoming",
        working: str = "working",
        done: str | None = "done",
        failed: str | None = "failed",
        route: str = DEFAULT_ROUTE,
    ) -> SpoolDirs:
        """A spool root's layout: its directories below it, by name (None: not kept)."""
        return cls(
            label=str(root),
            root=root,
            incoming=root / incoming,
            working=root / working,
            done=root / done if done else None,
            failed=root / failed if failed else None,
            route=route,
        )


def _abs(path: Path | None) -> Path | None:
    return Path(os.path.abspath(path)) if path else None


def spool_layouts(s: Settings, *, route: str = DEFAULT_ROUTE) -> list[SpoolDirs]:
    if not s.spool_dirs:
        assert s.incoming_dir is not None
        assert s.working_dir is not None
        incoming = Path(os.path.abspath(s.incoming_dir))
        return [
            SpoolDirs(
                label=str(incoming),
                root=None,
                incoming=incoming,
                working=Path(os.path.abspath(s.working_dir)),
                done=None if s.remove_on_success else _abs(s.done_dir),
                failed=None if s.remove_on_failure else _abs(s.failed_dir),
                route=route,
            )
        ]
    out = [
        SpoolDirs.below(
            Path(os.path.abspath(root)),
            incoming=s.incoming_name,
            working=s.working_name,
            done=None if s.remove_on_success else s.done_name,
            failed=None if s.remove_on_failure else s.failed_name,
            route=route,
        )
        for root in s.spool_dirs
    ]
    if len({d.label for d in out}) != len(out):
        raise ConfigError("S3SPOOL_SPOOL_DIRS (--spool-dirs): a spool is listed twice")
    return out
