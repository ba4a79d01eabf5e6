"""Shared fixtures: local S3 servers (moto, rclone, rclone over HTTPS, JuiceFS), a fresh
bucket per test, spool paths.

Servers are session-scoped because starting them costs ~0.5-1 s; isolation comes from a
unique bucket per test. Tests that stop/start a server use `rclone_private` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make the helper modules importable as top-level modules regardless of rootdir/--import-mode.
sys.path.insert(0, str(Path(__file__).parent))

from s3servers import (
    JuiceFSServer,
    RcloneServer,
    S3Server,
    S3Target,
    juicefs_server,
    moto_server,
    rclone_server,
)
from svc import use_credentials
from tlsca import TLSFiles, make_tls_files


@pytest.fixture(scope="session")
def moto_srv() -> Iterator[S3Server]:
    with moto_server() as srv:
        yield srv


@pytest.fixture(scope="session")
def rclone_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneServer]:
    with rclone_server(tmp_path_factory.mktemp("rclone") / "data") as srv:
        yield srv


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A private CA (ca_pem) and a server certificate for 127.0.0.1 and localhost."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def rclone_tls_srv(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles
) -> Iterator[RcloneServer]:
    """rclone on https://127.0.0.1:PORT; its certificate is signed by tls_files.ca_pem.

    Its helper clients trust the CA (srv.ca_bundle); s3spool must be told to, e.g. through
    AWS_CA_BUNDLE or S3SPOOL_CA_BUNDLE. rclone over HTTPS rejects botocore's aws-chunked
    uploads: clients need request_checksum_calculation="when_required".
    """
    with rclone_server(tmp_path_factory.mktemp("rclone-tls") / "data", tls=tls_files) as srv:
        yield srv


@pytest.fixture(scope="session")
def juicefs_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JuiceFSServer]:
    """The JuiceFS S3 gateway (MinIO-derived), started with --keep-etag."""
    with juicefs_server(tmp_path_factory.mktemp("juicefs")) as srv:
        yield srv


@pytest.fixture(params=["moto", "rclone"], ids=["moto", "rclone"])
def s3(request: pytest.FixtureRequest) -> S3Target:
    """A fresh bucket on each server kind; servers start lazily, only when a test needs one."""
    srv: S3Server = request.getfixturevalue(f"{request.param}_srv")
    return srv.new_target()


@pytest.fixture
def moto_s3(moto_srv: S3Server) -> S3Target:
    return moto_srv.new_target()


@pytest.fixture
def rclone_s3(rclone_srv: RcloneServer) -> S3Target:
    return rclone_srv.new_target()


@pytest.fixture
def rclone_tls_s3(rclone_tls_srv: RcloneServer) -> S3Target:
    return rclone_tls_srv.new_target()


@pytest.fixture
def juicefs_s3(juicefs_srv: JuiceFSServer) -> S3Target:
    return juicefs_srv.new_target()


@pytest.fixture
def rclone_private(tmp_path: Path) -> Iterator[RcloneServer]:
    """An rclone server owned by one test, which may stop()/start() it (same port and data)."""
    with rclone_server(tmp_path / "rclone-data") as srv:
        yield srv


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool root, empty: the service lays out incoming/ and the rest in it."""
    root = tmp_path / "spool"
    root.mkdir()
    return root


@pytest.fixture(autouse=True)
def _creds(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """In-process services read credentials from the environment, as botocore does."""
    for name in ("s3", "moto_s3", "rclone_s3", "rclone_tls_s3", "juicefs_s3"):
        if name in request.fixturenames:
            use_credentials(monkeypatch, request.getfixturevalue(name))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first: the whole set takes well under a second, and fails cheapest."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/unit/"))
