"""Routes from a config file: several spools, each to its own store, in one process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest

from proc import cli
from s3servers import S3Target
from s3spool.config.load import Config, Route
from svc import drop, running, settings_for, wait_until

MTIME = 1577934245.0  # 2020-01-02 03:04:05 UTC


def _credentials(path: Path, **profiles: S3Target) -> Path:
    path.write_text(
        "".join(
            f"[{name}]\naws_access_key_id = {t.access_key}\n"
            f"aws_secret_access_key = {t.secret_key}\n\n"
            for name, t in profiles.items()
        )
    )
    return path


def _put(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    os.utime(path, (MTIME, MTIME))


def test_two_routes_to_two_stores_in_one_process(
    moto_s3: S3Target, rclone_s3: S3Target, tmp_path: Path
) -> None:
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    files_a = {f"a{i}.log": f"alpha {i}\n".encode() * (i + 1) for i in range(5)}
    files_b = {f"b{i}.csv": f"beta,{i}\n".encode() * (i + 3) for i in range(4)}
    for name, data in files_a.items():
        _put(alpha / "incoming", name, data)
    for name, data in files_b.items():
        _put(beta / "new", name, data)  # the older spool tool's layout, in place
    config = tmp_path / "s3spool.toml"
    config.write_text(
        f"""
http_addr = ""
addressing_style = "path"
region = "{moto_s3.region}"
key_format = "{{fname}}"

[[route]]
name = "alpha"
spool_dirs = ["{alpha}"]
destination = "s3://{moto_s3.bucket}/logs"
endpoint_url = "{moto_s3.endpoint_url}"
profile = "moto"
key_format = "{{m_YYYY}}/{{m_MM}}/{{fname}}"
content_type = "text/x-alpha"
storage_class = "STANDARD_IA"
checksum = "sha256"

[[route]]
name = "beta"
spool_dirs = ["{beta}"]
incoming_name = "new"
done_name = "completed"
destination = "s3://{rclone_s3.bucket}/tables/"
endpoint_url = "{rclone_s3.endpoint_url}"
profile = "rclone"
key_format = "b-{{fname}}"
"""
    )
    creds = _credentials(tmp_path / "credentials", moto=moto_s3, rclone=rclone_s3)
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(creds),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    r = cli(["run", "--once", "--config", str(config)], env)
    assert r.returncode == 0, r.stderr

    assert sorted(moto_s3.keys()) == sorted(f"logs/2020/01/{n}" for n in files_a)
    for name, data in files_a.items():
        key = f"logs/2020/01/{name}"
        assert moto_s3.get(key) == data
        head = moto_s3.head(key)
        assert head["ContentType"] == "text/x-alpha"
        assert head["StorageClass"] == "STANDARD_IA"
        assert head["Metadata"]["s3spool-checksum"].startswith("sha256:")
    assert sorted(rclone_s3.keys()) == sorted(f"tables/b-{n}" for n in files_b)
    for name, data in files_b.items():
        assert rclone_s3.get(f"tables/b-{name}") == data
        # beta keeps the default checksum: never alpha's
        assert (
            not rclone_s3.head(f"tables/b-{name}")["Metadata"]
            .get("s3spool-checksum", "")
            .startswith("sha256:")
        )
    assert sorted(os.listdir(alpha / "done")) == sorted(files_a)
    assert sorted(os.listdir(beta / "completed")) == sorted(files_b)
    assert not list((beta / "new").iterdir())
    assert not (beta / "incoming").exists()
    assert not (beta / "done").exists()
    lines = r.stderr.splitlines()
    assert sum("route=alpha spool=" in line for line in lines) == len(files_a)
    assert sum("route=beta spool=" in line for line in lines) == len(files_b)
    for name in ("alpha", "beta"):
        # one store line per route, naming it, short, before the route's first file line
        store = [i for i, line in enumerate(lines) if f"store for route {name}: s3://" in line]
        first = min(i for i, line in enumerate(lines) if f"route={name} spool=" in line)
        assert len(store) == 1, r.stderr
        assert store[0] < first, r.stderr
        assert len(lines[store[0]].split(": ", 1)[1]) <= 160, lines[store[0]]


async def test_a_backlog_in_one_route_does_not_delay_another(
    moto_s3: S3Target, tmp_path: Path
) -> None:
    """10,000 files queued in one route; a file dropped into the other arrives within 1 s."""
    other = moto_s3.client()
    bucket_b = f"{moto_s3.bucket}-b"
    other.create_bucket(Bucket=bucket_b)
    busy, quiet = tmp_path / "busy", tmp_path / "quiet"
    (busy / "incoming").mkdir(parents=True)
    quiet.mkdir()
    for i in range(10_000):
        (busy / "incoming" / f"f{i:05d}").write_bytes(b"x" * 64)
    instance = f"fair-{os.getpid()}"
    a = settings_for(busy, moto_s3, instance_id=instance)
    b = settings_for(quiet, moto_s3, instance_id=instance, destination=f"s3://{bucket_b}/q")
    config = Config((Route("busy", a, {}), Route("quiet", b, {})))
    async with running(config) as svc:
        await wait_until(lambda: svc.counts.delivered >= 300, 60, "the busy route under way")
        started = time.monotonic()
        drop(quiet / "incoming", "urgent", b"now")
        await wait_until(lambda: (quiet / "done" / "urgent").exists(), 10, "the urgent file")
        took = time.monotonic() - started
        left = len(os.listdir(busy / "incoming"))
    assert took < 1.0, f"the quiet route's file took {took:.2f}s behind the backlog"
    assert left > 2_000, "the backlog was nearly gone: the test proved nothing"
    assert other.get_object(Bucket=bucket_b, Key="q/urgent")["Body"].read() == b"now"


def test_config_command_shows_every_origin_and_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
workers = 8
hold_for = "2s"
endpoint_url = "http://user:hunter2@127.0.0.1:9"

[[route]]
name = "one"
spool_dirs = ["{tmp_path / "one"}"]
destination = "noop://"
hold_for = "5s"
retry_attempts = 9

[[route]]
name = "two"
spool_dirs = ["{tmp_path / "two"}"]
destination = "noop://"
"""
    )
    env = {"S3SPOOL_RETRY_ATTEMPTS": "4", "S3SPOOL_LOG_LEVEL": "warning"}
    r = cli(["config", "--json", "--config", str(config), "--workers", "3"], env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["config_file"] == str(config)
    g = doc["global"]
    assert g["workers"] == {"value": 3, "from": "flag"}  # flag over file
    assert g["log_level"] == {"value": "WARNING", "from": "env"}
    assert g["queue_size"]["from"] == "default"
    one, two = doc["routes"]
    assert (one["name"], two["name"]) == ("one", "two")
    assert one["settings"]["hold_for"] == {"value": 5.0, "from": "route"}  # route over file
    assert two["settings"]["hold_for"] == {"value": 2.0, "from": "file"}
    assert one["settings"]["retry_attempts"] == {"value": 4, "from": "env"}  # env over route
    assert one["settings"]["endpoint_url"]["value"] == "http://user:***@127.0.0.1:9"
    assert "hunter2" not in r.stdout
    text = cli(["config", "--config", str(config)], env)
    assert text.returncode == 0, text.stderr
    assert "hunter2" not in text.stdout
    assert 'name = "two"' in text.stdout
    assert re.search(r'^hold_for += "5s"  # route$', text.stdout, re.M), text.stdout
    assert re.search(r"^# profile +\(not set\)  # default$", text.stdout, re.M)


def test_config_output_is_written_as_a_person_would_and_loads_as_the_same(
    tmp_path: Path,
) -> None:
    """Durations and sizes as in a config file ("24h", "128MiB"); the text, saved as a config
    file, gives the same settings (every route and value)."""
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
buffer_limit = "96MiB"
shutdown_grace = "90s"
max_lag = 1.5
delete_after = "2d"

[[route]]
name = "one"
spool_dirs = ["{tmp_path / "one"}"]
destination = "noop://"
part_size = 10485761
hold_for = "250ms"
metadata = {{ src = "{{spool_dir}}" }}

[[route]]
name = "two"
spool_dirs = ["{tmp_path / "two"}"]
destination = "s3://bucket/p"
compress = "zstd"
compress_min_size = "4KiB"
rmdir_after = "90m"
"""
    )
    text = cli(["config", "--config", str(config)], {})
    assert text.returncode == 0, text.stderr
    for line in ('buffer_limit     = "96MiB"', 'delete_after          = "48h"'):
        assert line in text.stdout
    for pattern in (r"^part_size += 10485761 ", r'^rmdir_after += "90m" ', r'^max_lag += "1.5s" '):
        assert re.search(pattern, text.stdout, re.M), pattern
    assert re.search(r'^abort_multipart_after += "24h"  # default$', text.stdout, re.M)
    assert re.search(r'^multipart_threshold += "64MiB"  # default$', text.stdout, re.M)
    again = tmp_path / "again.toml"
    again.write_text(text.stdout)

    def values(path: Path) -> dict[str, object]:
        r = cli(["config", "--json", "--config", str(path)], {})
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        shown = {f"global.{k}": v["value"] for k, v in doc["global"].items() if k != "config"}
        for route in doc["routes"]:
            shown |= {f"{route['name']}.{k}": v["value"] for k, v in route["settings"].items()}
        return shown

    assert values(again) == values(config)


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        (
            {"S3SPOOL_WORKRS": "3"},
            [],
            r"S3SPOOL_WORKRS: unknown variable; did you mean S3SPOOL_WORKERS\?",
        ),
        (
            {},
            ["--config", "/nonexistent/s3spool.toml"],
            r"S3SPOOL_CONFIG \(--config\): /nonexistent/s3spool.toml: no such file",
        ),
    ],
    ids=["unknown-variable", "missing-file"],
)
def test_the_cli_refuses_bad_configuration_with_exit_78(
    env: dict[str, str], flags: list[str], message: str, tmp_path: Path
) -> None:
    base = {"S3SPOOL_SPOOL_DIRS": str(tmp_path / "s"), "S3SPOOL_DESTINATION": "noop://"}
    r = cli(["run", "--once", *flags], {**base, **env})
    assert r.returncode == 78
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "s").exists()  # nothing was laid out


async def test_one_route_down_does_not_pause_the_other(
    moto_s3: S3Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A route whose store refuses every connection pauses alone; the other delivers."""
    instance = f"down-{os.getpid()}"
    (tmp_path / "good").mkdir()
    (tmp_path / "dead").mkdir()
    good = settings_for(tmp_path / "good", moto_s3, instance_id=instance)
    dead = settings_for(
        tmp_path / "dead",
        moto_s3,
        instance_id=instance,
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        connect_timeout=0.5,
        retry_attempts=1,
    )
    config = Config((Route("good", good, {}), Route("dead", dead, {})))
    caplog.set_level(logging.INFO, logger="s3spool.service")
    async with running(config) as svc:
        # the workers are one pool for both routes, and said so once
        assert f"{good.workers} workers for 2 routes" in caplog.text
        drop(tmp_path / "dead" / "incoming", "stuck", b"s")
        await wait_until(lambda: not svc.routes[1].gate.is_set(), 20, "the dead route paused")
        # the line says which route paused: two routes may share one bucket's words
        assert any(
            r.getMessage().startswith("route dead: store unavailable: ") for r in caplog.records
        ), caplog.text
        drop(tmp_path / "good" / "incoming", "fine", b"f")
        await wait_until(lambda: (tmp_path / "good" / "done" / "fine").exists(), 10, "delivery")
        assert svc.routes[0].gate.is_set()
        await asyncio.sleep(0.2)
        # held (claimed in working/) while its store is down: neither delivered nor failed
        assert not (tmp_path / "dead" / "done" / "stuck").exists()
        assert not (tmp_path / "dead" / "failed" / "stuck").exists()
    assert moto_s3.get("fine") == b"f"
