"""Delivery notifications: webhook, SQS, SNS, exec, manifest, and the crash-safe outbox."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proc import SpoolProc
from s3servers import S3Target
from svc import drop, running, settings_for, wait_until
from webhook import SECRET, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "event.schema.json").read_text())


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def _webhook(r: WebhookReceiver, **kw: Any) -> dict[str, Any]:
    return {"kind": "webhook", "url": r.hook_url, "secret": SECRET, "timeout": "3s", **kw}


def _check_schema(event: dict[str, Any]) -> None:
    props = SCHEMA["properties"]
    assert set(SCHEMA["required"]) <= set(event), event
    assert set(event) <= set(props), set(event) - set(props)
    types = {"string": str, "integer": int, "null": type(None)}
    for name, value in event.items():
        allowed = props[name]["type"]
        allowed = allowed if isinstance(allowed, list) else [allowed]
        assert isinstance(value, tuple(types[t] for t in allowed)), (name, value)


async def test_webhook_gets_one_event_id_per_delivered_file(
    moto_s3: S3Target, spool: Path, receiver: WebhookReceiver
) -> None:
    """30 % of requests fail and some stall; files that fail get no event (on: delivered)."""
    receiver.fail, receiver.stall, receiver.stall_s = 0.3, 0.05, 1.0
    settings = settings_for(
        spool, moto_s3, notify=json.dumps([_webhook(receiver, retries=8)]), fail_rate=0.2
    )
    n = 120
    async with running(settings) as svc:
        for i in range(n):
            drop(spool / "incoming", f"f{i:03d}.txt", f"file {i}\n".encode())
        await wait_until(lambda: svc.counts.delivered + svc.counts.failed == n, 30, "all handled")
        await wait_until(
            lambda: len(receiver.by_relpath()) == svc.counts.delivered, 60, "every event"
        )
        await asyncio.sleep(0.3)  # nothing more arrives for a file that failed
    done = set(os.listdir(spool / "done"))
    failed = {f for f in os.listdir(spool / "failed") if not f.endswith(".reason.json")}
    assert failed, "FAIL_RATE failed no file: the test proves nothing about failed files"
    got = receiver.by_relpath()
    assert set(got) == done
    assert all(len(ids) == 1 for ids in got.values()), "a file got two different event ids"
    assert receiver.counts["failed"] > 0
    assert receiver.bad_signatures == 0
    for event in receiver.events:
        _check_schema(event)
        assert event["outcome"] == "delivered"
        assert event["key"] == event["relpath"]
        assert event["bucket"] == moto_s3.bucket
        assert event["size"] == len(f"file {int(event['name'][1:4])}\n")
    assert not list((spool / "working").rglob("outbox/*/*.json")), "outbox not emptied"


async def test_sqs_and_sns_on_moto(moto_s3: S3Target, spool: Path) -> None:
    import boto3

    kw = {
        "endpoint_url": moto_s3.endpoint_url,
        "region_name": moto_s3.region,
        "aws_access_key_id": moto_s3.access_key,
        "aws_secret_access_key": moto_s3.secret_key,
    }
    sqs, sns = boto3.client("sqs", **kw), boto3.client("sns", **kw)
    direct = sqs.create_queue(QueueName=f"direct-{os.getpid()}")["QueueUrl"]
    fanout = sqs.create_queue(QueueName=f"fanout-{os.getpid()}")["QueueUrl"]
    topic = sns.create_topic(Name=f"files-{os.getpid()}")["TopicArn"]
    arn = sqs.get_queue_attributes(QueueUrl=fanout, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
    endpoint = moto_s3.endpoint_url
    notify = [
        {"kind": "sqs", "queue_url": direct, "endpoint_url": endpoint},
        {
            "kind": "sns",
            "topic_arn": topic,
            "endpoint_url": endpoint,
            "on": ["delivered", "failed"],
        },
    ]
    names = {f"m{i}.log" for i in range(5)}
    async with running(settings_for(spool, moto_s3, notify=json.dumps(notify))) as svc:
        for name in names:
            drop(spool / "incoming", name, name.encode())
        await wait_until(lambda: svc.counts.delivered == 5, 20, "delivered")
        await wait_until(lambda: not list((spool / "working").rglob("outbox/*/*.json")), 20)

    def drain(url: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(20):
            resp = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            )
            msgs = resp.get("Messages", [])
            if not msgs and len(out) >= 5:
                break
            for msg in msgs:
                out.append(msg)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
        return out

    direct_msgs = drain(direct)
    events = [json.loads(m["Body"]) for m in direct_msgs]
    assert {e["name"] for e in events} == names
    for m, e in zip(direct_msgs, events, strict=True):
        assert m["MessageAttributes"]["s3spool-event-id"]["StringValue"] == e["id"]
    via_sns = [json.loads(json.loads(m["Body"])["Message"]) for m in drain(fanout)]
    assert {e["id"] for e in via_sns} == {e["id"] for e in events}


async def test_exec_and_manifest(
    moto_s3: S3Target, spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "hook-out"
    out.mkdir()
    script = tmp_path / "hook.sh"
    script.write_text(
        "#!/bin/sh\n"
        'cat > "$HOOK_OUT/$S3SPOOL_EVENT_ID.json"\n'
        'printf "%s %s %s" "$S3SPOOL_EVENT_KEY" "$S3SPOOL_EVENT_SIZE" "$S3SPOOL_EVENT_OUTCOME"'
        ' > "$HOOK_OUT/$S3SPOOL_EVENT_ID.env"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("HOOK_OUT", str(out))
    notify = [
        {"kind": "exec", "command": [str(script)], "concurrency": 2, "timeout": "5s"},
        {"kind": "manifest"},
    ]
    async with running(settings_for(spool, moto_s3, notify=json.dumps(notify))) as svc:
        for i in range(6):
            drop(spool / "incoming", f"x{i}", b"y" * i)
        await wait_until(lambda: svc.counts.delivered == 6, 20, "delivered")
        await wait_until(lambda: len(list(out.glob("*.env"))) == 6, 20, "exec ran")
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        manifest = spool / "manifest" / f"{day}.jsonl"
        await wait_until(
            lambda: manifest.exists() and len(manifest.read_text().splitlines()) == 6, 20
        )
    by_exec = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {e["id"] for e in lines} == set(by_exec)
    for event_id, event in by_exec.items():
        env_line = (out / f"{event_id}.env").read_text()
        assert env_line == f"{event['key']} {event['size']} delivered"


def _notify_env(target: S3Target, spool: Path, receiver: WebhookReceiver) -> dict[str, str]:
    return {
        **target.env(),
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_KEY_FORMAT": "{fname}",
        "S3SPOOL_LOG_LEVEL": "INFO",
        "S3SPOOL_CLEANUP_INTERVAL": "1",
        "S3SPOOL_WORKERS": "8",
        "S3SPOOL_NOTIFY": json.dumps([_webhook(receiver, retries=3)]),
    }


def _drop_many(incoming: Path, names: list[str]) -> None:
    incoming.mkdir(parents=True, exist_ok=True)
    tmp = incoming.parent / "producer-tmp"
    tmp.mkdir(exist_ok=True)
    for name in names:
        (tmp / name).write_bytes(name.encode() * 10)
        os.rename(tmp / name, incoming / name)


@pytest.mark.slow
def test_kill9_never_loses_an_event(
    tmp_path: Path, rclone_s3: S3Target, receiver: WebhookReceiver
) -> None:
    """kill -9 at random moments: afterwards every delivered file's event has arrived."""
    from faultproxy import FaultProxy

    spool = tmp_path / "spool"
    names = [f"e{i:04d}" for i in range(400)]
    _drop_many(spool / "incoming", names)
    receiver.fail = 0.1
    rng = random.Random(5)
    with FaultProxy(rclone_s3.endpoint_url) as proxy:
        proxy.latency_s = 0.05  # spread the drain so kills land mid-upload and mid-commit
        env = _notify_env(rclone_s3.via(proxy.url), spool, receiver)
        env["S3SPOOL_WORKERS"] = "4"
        progress = []
        for round_ in range(8):
            with SpoolProc(["run"], env, cwd=tmp_path, log_path=tmp_path / f"r{round_}.log") as p:
                time.sleep(rng.uniform(0.7, 1.5))
                assert p.alive(), p.log_tail()
                p.kill()
                progress.append(len(os.listdir(spool / "done")))
        # most kills landed while files were left (not after the drain had finished)
        assert sum(1 for n in progress if n < len(names)) >= 5, progress
        with SpoolProc(["run"], env, cwd=tmp_path, log_path=tmp_path / "final.log") as p:
            p.wait_for_log("watching 1 spool", 20)  # a SIGTERM before that would kill it
            p.wait_until(lambda: len(os.listdir(spool / "done")) == len(names), 90, "drained")
            p.wait_until(lambda: set(receiver.by_relpath()) == set(names), 60, "every event")
            p.signal(signal.SIGTERM)
            assert p.wait(30) == 0, p.log_tail()
    got = receiver.by_relpath()
    assert all(len(ids) == 1 for ids in got.values()), "duplicates must carry the same id"
    assert sum(receiver.ids().values()) >= len(names)
    assert receiver.bad_signatures == 0


@pytest.mark.slow
def test_a_webhook_down_for_a_minute_slows_nothing(
    tmp_path: Path, rclone_s3: S3Target, receiver: WebhookReceiver
) -> None:
    """2,000 files arrive while the webhook is down for 60 s: all delivered on time, every
    event sent once it is back, memory bounded."""
    spool = tmp_path / "spool"
    spool.mkdir()
    receiver.down = True
    names = [f"d{i:04d}" for i in range(2000)]
    env = _notify_env(rclone_s3, spool, receiver)
    with SpoolProc(["run"], env, cwd=tmp_path) as p:
        p.wait_for_log("watching 1 spool", 20)
        started = time.monotonic()
        for i in range(0, len(names), 100):
            _drop_many(spool / "incoming", names[i : i + 100])
            time.sleep(0.5)
        p.wait_until(lambda: len(os.listdir(spool / "done")) == len(names), 30, "delivered")
        delivered_in = time.monotonic() - started
        rss = _rss_kib(p.pid)
        waiting = len(list((spool / "working").rglob("outbox/*/*.json")))
        assert waiting == len(names), waiting
        time.sleep(max(0.0, 60 - (time.monotonic() - started)))
        receiver.down = False
        p.wait_until(lambda: set(receiver.by_relpath()) == set(names), 60, "events after")
        peak = _hwm_kib(p.pid)
        p.signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.log_tail()
    assert delivered_in < 25, f"delivery took {delivered_in:.1f}s with the webhook down"
    assert receiver.counts["down"] > 0
    assert peak < 200 * 1024, f"peak RSS {peak / 1024:.0f} MiB (RSS while down {rss / 1024:.0f})"


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _rss_kib(pid: int) -> int:
    return _status(pid, "VmRSS")


def _hwm_kib(pid: int) -> int:
    return _status(pid, "VmHWM")


def test_the_example_receiver_gets_every_event(tmp_path: Path) -> None:
    """docs/examples/webhook_receiver.py against a real `run --once` (noop destination), its
    variable exported to both, as in one shell."""
    import subprocess
    import sys

    from proc import clean_env, cli
    from s3servers import free_port

    port = free_port()
    out = tmp_path / "events.jsonl"
    log = (tmp_path / "receiver.log").open("w")
    receiver = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "docs" / "examples" / "webhook_receiver.py"),
            str(port),
            str(out),
        ],
        env=clean_env({"WEBHOOK_SECRET": "s3cret"}),
        stderr=log,
    )
    try:
        spool = tmp_path / "spool"
        _drop_many(spool / "incoming", [f"n{i}" for i in range(5)])
        hook = {"kind": "webhook", "url": f"http://127.0.0.1:{port}/", "secret": "s3cret"}
        env = {
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_DESTINATION": "noop://",
            "S3SPOOL_HTTP_ADDR": "",
            "S3SPOOL_NOTIFY": json.dumps([hook]),
            "WEBHOOK_SECRET": "s3cret",
        }
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the receiver listens
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        r = cli(["run", "--once"], env)
        assert r.returncode == 0, r.stderr
    finally:
        receiver.terminate()
        receiver.wait(10)
        log.close()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    logged = (tmp_path / "receiver.log").read_text()
    assert logged.count("new event ") == 5, logged
    assert sorted(e["name"] for e in events) == [f"n{i}" for i in range(5)]
    assert all(e["bucket"] is None for e in events)  # noop://


def test_config_shows_notifiers_with_secrets_masked(tmp_path: Path) -> None:
    from proc import cli

    path = tmp_path / "c.toml"
    path.write_text(
        f"""
[[route]]
name = "r"
spool_dirs = ["{tmp_path / "s"}"]
destination = "noop://"
[[route.notify]]
kind = "webhook"
url = "https://hooks.example/x"
secret = "hunter2"
headers = {{ Authorization = "Bearer tok3n", X-Trace = "on" }}
"""
    )
    r = cli(["config", "--json", "--config", str(path)], {})
    assert r.returncode == 0, r.stderr
    (hook,) = json.loads(r.stdout)["routes"][0]["settings"]["notify"]["value"]
    assert hook["secret"] == "***"
    assert hook["headers"] == {"Authorization": "***", "X-Trace": "on"}
    assert "hunter2" not in r.stdout
    assert "tok3n" not in r.stdout
    bad = path.read_text().replace('kind = "webhook"', 'kind = "webhook"\nqueue_url = "x"')
    path.write_text(bad)
    r = cli(["run", "--once", "--config", str(path)], {})
    assert r.returncode == 78
    assert "route 'r': key notify: queue_url: not a setting of kind webhook" in r.stderr


def test_cron_runs_send_what_earlier_runs_left(tmp_path: Path) -> None:
    """`run --once` from cron: the webhook down, then up, then refusing the secret; and a
    notifier dropped from the configuration."""
    import re

    from proc import cli
    from s3servers import free_port

    port = free_port()
    spool = tmp_path / "spool"
    _drop_many(spool / "incoming", ["a.csv"])
    hook = {"kind": "webhook", "url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}
    hook |= {"retries": 2, "timeout": "2s"}
    old = {"kind": "exec", "name": "old", "command": ["/bin/false"], "retries": 1}
    env = {
        "S3SPOOL_SPOOL_DIRS": str(spool),
        "S3SPOOL_DESTINATION": "noop://",
        "S3SPOOL_HTTP_ADDR": "",
        "S3SPOOL_SHUTDOWN_GRACE": "20s",
        "S3SPOOL_NOTIFY": json.dumps([hook, old]),
    }
    # 1. nothing listens: the file is delivered, its events wait; exit 75, each one named
    started = time.monotonic()
    r = cli(["run", "--once"], env)
    assert r.returncode == 75, r.stderr
    assert time.monotonic() - started < 15, "waited out SHUTDOWN_GRACE for a dead receiver"
    assert "next try in" not in r.stderr
    (event_id,) = [p.stem for p in (spool / "working").rglob("outbox/webhook/*.json")]
    for name in ("webhook", "old"):
        assert re.search(rf"WARNING.*notifier {name} \(route default\): 1 events not sent "
                         rf"\({event_id}\); last error: \S", r.stderr), r.stderr  # fmt: skip
    (left,) = os.listdir(spool / "working")
    # 2. the receiver is up, nothing to upload, "old" no longer configured: the event is sent,
    # exit 0; old's event stays where it is, with one warning naming its directory
    env["S3SPOOL_NOTIFY"] = json.dumps([hook])
    with WebhookReceiver(port=port) as receiver:
        r = cli(["run", "--once"], env)
        assert r.returncode == 0, r.stderr
        assert [e["id"] for e in receiver.events] == [event_id]
        stray = spool / "working" / left / "outbox" / "old"
        assert r.stderr.count(f"wait in {stray} for notifier 'old', which is not configured") == 1
        assert os.listdir(spool / "working") == [left], "adoption moved the directory"
        assert os.listdir(stray) == [f"{event_id}.json"]
        # 3. a wrong secret: a WARNING names the status, the event waits (exit 75)
        receiver.secret = "rotated"
        _drop_many(spool / "incoming", ["b.csv"])
        r = cli(["run", "--once", "--log-level", "WARNING"], env)
        assert r.returncode == 75, r.stderr
        assert re.search(r"WARNING.*notifier webhook .*HTTP 401 Unauthorized", r.stderr), r.stderr
        assert receiver.bad_signatures == 1, "a refused secret was tried again within the pass"
