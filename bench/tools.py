"""The tools under test: how to install, invoke and verify each one."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The S3 server is the tests' rclone (bench/server.py): its credentials and region.
from tests.s3servers import ACCESS_KEY, REGION, SECRET_KEY, free_port

from bench.config import BUCKET, PREFIX, RCLONE, REPO, S3SPOOL, S5CMD, clean_env
from bench.data import count_entries

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    # Keep any ~/.aws config of the machine out of the measurement.
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"n/a ({e.__class__.__name__})"
    # aws cli v1 prints its version on stderr in some releases.
    text = (r.stdout.strip() or r.stderr.strip()).splitlines()
    if r.returncode != 0 or not text:
        return "n/a"
    return text[0]


@dataclass
class Tool:
    """Base: a peer CLI that moves every file of a plain directory."""

    name: str
    unavailable: str | None = None  # reason, when the tool cannot run
    # What the tool's per-file output line holds (b"": none at its defaults): the harness
    # notes when the first one arrives (Measured.first_line_s).
    marker = b""

    # Where the workload's files go, relative to the run directory.
    def source_dir(self, rundir: Path) -> Path:
        return rundir / "src"

    def argv(self, rundir: Path, url: str) -> list[str]:
        raise NotImplementedError

    def env(self, rundir: Path, url: str) -> dict[str, str]:
        return clean_env(_AWS_ENV)

    def command_template(self) -> str:
        return " ".join(self.argv(Path("<RUN>"), "<URL>"))

    def version(self) -> str:
        raise NotImplementedError

    def check_source(self, rundir: Path, expected: int) -> str | None:
        """None if the source side looks fully drained."""
        left = count_entries(self.source_dir(rundir))
        return f"{left} files left in source dir" if left else None


class S5cmd(Tool):
    marker = b"mv "

    def argv(self, rundir: Path, url: str) -> list[str]:
        # Defaults: 256 workers, and one "mv SRC DST" line per file on stdout (--log info),
        # as s3spool writes one INFO line per file on stderr.
        return [
            str(S5CMD),
            "--endpoint-url",
            url,
            "mv",
            f"{self.source_dir(rundir)}/*",
            f"s3://{BUCKET}/{PREFIX}",
        ]

    def version(self) -> str:
        return _first_line([str(S5CMD), "version"])


class Rclone(Tool):
    def argv(self, rundir: Path, url: str) -> list[str]:
        # 16/16 instead of the 4/8 defaults: comparable to the other tools'
        # concurrency on a local server.
        return [
            str(RCLONE),
            "move",
            str(self.source_dir(rundir)),
            f"T:{BUCKET}/{PREFIX.rstrip('/')}",
            "--transfers",
            "16",
            "--checkers",
            "16",
        ]

    def env(self, rundir: Path, url: str) -> dict[str, str]:
        return clean_env(
            {
                "RCLONE_CONFIG_T_TYPE": "s3",
                "RCLONE_CONFIG_T_PROVIDER": "Other",
                "RCLONE_CONFIG_T_ENDPOINT": url,
                "RCLONE_CONFIG_T_ACCESS_KEY_ID": ACCESS_KEY,
                "RCLONE_CONFIG_T_SECRET_ACCESS_KEY": SECRET_KEY,
                "RCLONE_CONFIG_T_FORCE_PATH_STYLE": "true",
            }
        )

    def version(self) -> str:
        return _first_line([str(RCLONE), "version"])


class Aws(Tool):
    marker = b"move: "

    def __init__(self, name: str, venv: Path) -> None:
        super().__init__(name)
        self.venv = venv

    @property
    def binary(self) -> Path:
        return self.venv / "bin" / "aws"

    def ensure_installed(self) -> None:
        """aws cli v1 pins botocore, so it gets its own venv, created on first use."""
        if _first_line([str(self.binary), "--version"]).startswith("aws-cli/"):
            return
        print(f"[bench] installing awscli into {self.venv} ...", file=sys.stderr, flush=True)
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(self.venv)],
            [str(self.venv / "bin" / "pip"), "install", "--quiet", "awscli"],
        ]
        for step in steps:
            r = subprocess.run(step, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:]
                self.unavailable = f"not installed ({' '.join(step[:3])} failed: {tail})"
                return
        if not _first_line([str(self.binary), "--version"]).startswith("aws-cli/"):
            self.unavailable = "not installed (aws --version fails after pip install)"

    def argv(self, rundir: Path, url: str) -> list[str]:
        # Defaults: a "move: SRC to DST" line per file, as s3spool and s5cmd write one.
        return [
            str(self.binary),
            "--endpoint-url",
            url,
            "s3",
            "mv",
            "--recursive",
            str(self.source_dir(rundir)),
            f"s3://{BUCKET}/{PREFIX}",
        ]

    def version(self) -> str:
        return _first_line([str(self.binary), "--version"])


# The settings every s3spool run has: where the spool is, where it goes, and the metrics
# endpoint on a free port (on, as by default, but a test run on :9108 cannot make it fail).
# Any other S3SPOOL_* variable is a non-default setting and labels the row (nondefault).
BASE_SETTINGS = (
    "S3SPOOL_SPOOL_DIRS",
    "S3SPOOL_DESTINATION",
    "S3SPOOL_ENDPOINT_URL",
    "S3SPOOL_HTTP_ADDR",
)


def nondefault(env: dict[str, str]) -> str:
    """The S3SPOOL_* settings of ``env`` beyond BASE_SETTINGS, as ``NAME=VALUE ...``."""
    return " ".join(
        f"{k.removeprefix('S3SPOOL_')}={v}"
        for k, v in env.items()
        if k.startswith("S3SPOOL_") and k not in BASE_SETTINGS
    )


class S3spool(Tool):
    """``s3spool run --once``: drain incoming/ and exit, 0 = all delivered."""

    marker = b"outcome"  # text and JSON formats alike
    # Settings overrides from --s3spool-env (e.g. tuning experiments).
    extra_env: dict[str, str] = {}  # noqa: RUF012 - replaced, never mutated

    def spool_root(self, rundir: Path) -> Path:
        return rundir / "spool"

    def source_dir(self, rundir: Path) -> Path:
        return self.spool_root(rundir) / "incoming"

    def argv(self, rundir: Path, url: str) -> list[str]:
        return [str(S3SPOOL), "run", "--once"]

    def env(self, rundir: Path, url: str, settings: dict[str, str] | None = None) -> dict[str, str]:
        """True defaults: the credentials and region as the peers get them, BASE_SETTINGS
        (``url`` "": ``noop://``, no store), then --s3spool-env and the ``settings`` a case
        needs by its definition (last: a case cannot run without them)."""
        base = {
            **_AWS_ENV,
            "S3SPOOL_SPOOL_DIRS": str(self.spool_root(rundir)),
            "S3SPOOL_DESTINATION": f"s3://{BUCKET}/{PREFIX}" if url else "noop://",
            "S3SPOOL_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        }
        if url:
            base["S3SPOOL_ENDPOINT_URL"] = url
        return clean_env({**base, **self.extra_env, **(settings or {})})

    def command_template(self) -> str:
        env = self.env(Path("<RUN>"), "<URL>")
        env["S3SPOOL_HTTP_ADDR"] = "127.0.0.1:<FREE_PORT>"
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("S3SPOOL_"))
        return f"{shown} {' '.join(self.argv(Path('<RUN>'), '<URL>'))}"

    def version(self) -> str:
        # The service changes under the benchmark: pin the numbers to a commit.
        version = _first_line([str(S3SPOOL), "--version"])
        sha = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], check=False
        ).returncode
        return f"{version} (git {sha}{', src/ modified' if dirty else ''})"

    def done_count(self, rundir: Path) -> int:
        return count_entries(self.spool_root(rundir) / "done")

    def check_source(self, rundir: Path, expected: int) -> str | None:
        root = self.spool_root(rundir)
        problems = []
        for sub in ("incoming", "failed"):
            n = count_entries(root / sub)
            if n:
                problems.append(f"{n} files in {sub}/")
        # working/<instance>/files/ holds claimed, not yet settled files.
        claimed = sum(count_entries(d / "files") for d in _subdirs(root / "working"))
        if claimed:
            problems.append(f"{claimed} files still claimed in working/")
        done = count_entries(root / "done")
        if done != expected:
            problems.append(f"done/ holds {done}/{expected}")
        return "; ".join(problems) or None


class S3spoolRun(S3spool):
    """Long-running ``s3spool run``, stopped with SIGTERM once done/ is full."""

    def argv(self, rundir: Path, url: str) -> list[str]:
        return [str(S3SPOOL), "run"]


def _subdirs(directory: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(directory) if e.is_dir()]
    except FileNotFoundError:
        return []


def s3spool_unavailable() -> str | None:
    try:
        r = subprocess.run(
            [str(S3SPOOL), "run", "--help"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not installed ({e.__class__.__name__})"
    if r.returncode != 0:
        return "not installed (`s3spool run --help` fails)"
    return None


def make_tools(
    out_dir: Path, wanted: set[str], s3spool_env: dict[str, str] | None = None
) -> dict[str, Tool]:
    tools: dict[str, Tool] = {
        "s3spool": S3spool("s3spool"),
        "s3spool-run": S3spoolRun("s3spool-run"),
        "s5cmd": S5cmd("s5cmd"),
        "rclone": Rclone("rclone"),
        # A dot-directory: `mypy bench` skips those, and must not type-check
        # the scripts of aws cli's venv.
        "aws": Aws("aws", out_dir / ".awscli-venv"),
    }
    tools = {k: v for k, v in tools.items() if k in wanted}
    reason = s3spool_unavailable()
    for t in tools.values():
        if isinstance(t, S3spool):
            t.unavailable = reason
            t.extra_env = dict(s3spool_env or {})
    for name, binary in (("s5cmd", S5CMD), ("rclone", RCLONE)):
        if name in tools and not binary.exists():
            tools[name].unavailable = f"not installed ({binary} missing)"
    aws = tools.get("aws")
    if isinstance(aws, Aws):
        aws.ensure_installed()
    return tools
