"""The notifiers (webhook, SQS, SNS, exec, manifest); a failed ``send`` raises ``NotifyFailed``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from s3spool.config.notifiers import (
    ExecSpec,
    ManifestSpec,
    NotifierSpec,
    SnsSpec,
    SqsSpec,
    WebhookSpec,
)
from s3spool.config.settings import Settings, tls_verify
from s3spool.errors import S3SpoolError
from s3spool.notify.events import env_of

log = logging.getLogger("s3spool.notify")

SIGNATURE_HEADER = "X-S3spool-Signature"
EVENT_ID_HEADER = "X-S3spool-Event-Id"


class NotifyFailed(S3SpoolError):
    """A notifier did not accept an event (it stays in the outbox)."""


class NotifyRefused(NotifyFailed):
    """The receiver refused our credentials (HTTP 401 or 403): a wrong secret or token."""


class Notifier(Protocol):
    """Webhook and Aws are async context managers too (a session, a client)."""

    @property
    def spec(self) -> NotifierSpec: ...

    async def send(self, event: dict[str, Any], body: bytes) -> None: ...


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the exact body bytes with the configured secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhook:
    """POST the event as JSON; any 2xx accepts it."""

    def __init__(self, spec: WebhookSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self._session: Any = None

    async def __aenter__(self) -> Webhook:
        import ssl

        import aiohttp

        verify = tls_verify(self.settings)
        ctx: ssl.SSLContext | bool = verify is not False
        if isinstance(verify, str):
            ctx = ssl.create_default_context(cafile=verify)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.spec.timeout),
            connector=aiohttp.TCPConnector(ssl=ctx, limit=self.spec.concurrency),
            trust_env=True,  # HTTPS_PROXY / NO_PROXY, as for the store
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def send(self, event: dict[str, Any], body: bytes) -> None:
        import aiohttp

        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event["id"]}
        headers.update(self.spec.headers)
        if self.spec.secret:
            headers[SIGNATURE_HEADER] = signature(self.spec.secret, body)
        try:
            async with self._session.post(self.spec.url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status in (401, 403):
                    raise NotifyRefused(f"webhook answered HTTP {resp.status} {resp.reason}")
                if not 200 <= resp.status < 300:
                    raise NotifyFailed(f"webhook answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyFailed(f"webhook: {type(exc).__name__}: {exc}") from None


#: per kind: the client's method, its target parameter (and the spec field that gives it),
#: and the parameter that carries the event
_AWS_CALLS = {
    "sqs": ("send_message", "QueueUrl", "queue_url", "MessageBody"),
    "sns": ("publish", "TopicArn", "topic_arn", "Message"),
}


class Aws:
    """SQS and SNS through aiobotocore, with the route's credentials and connection settings."""

    def __init__(self, spec: SqsSpec | SnsSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self._stack = contextlib.AsyncExitStack()
        self.client: Any = None

    async def __aenter__(self) -> Aws:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        s = self.settings
        config = AioConfig(
            region_name=self.spec.region or s.region,
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=s.connect_timeout,
            read_timeout=self.spec.timeout,
            max_pool_connections=self.spec.concurrency + 2,
        )
        self.client = await self._stack.enter_async_context(
            AioSession(profile=s.profile).create_client(
                self.spec.kind,
                endpoint_url=self.spec.endpoint_url,
                config=config,
                verify=tls_verify(s),
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def message(self, event: dict[str, Any], text: str) -> dict[str, Any]:
        """The call's parameters.  A FIFO queue or topic (name ending in .fifo) drops a second
        message with the same deduplication id within 5 minutes: the event id makes a resent
        event one message."""
        _method, target_param, field, body_param = _AWS_CALLS[self.spec.kind]
        target = str(getattr(self.spec, field))
        params: dict[str, Any] = {
            target_param: target,
            body_param: text,
            "MessageAttributes": {
                "s3spool-event-id": {"DataType": "String", "StringValue": event["id"]},
                "s3spool-outcome": {"DataType": "String", "StringValue": event["outcome"]},
            },
        }
        if target.endswith(".fifo"):
            params["MessageDeduplicationId"] = event["id"]
            params["MessageGroupId"] = event["route"]
        return params

    async def send(self, event: dict[str, Any], body: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        call = getattr(self.client, _AWS_CALLS[self.spec.kind][0])
        try:
            await call(**self.message(event, body.decode()))
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (401, 403):
                raise NotifyRefused(f"{self.spec.kind}: HTTP {status}: {exc}") from None
            raise NotifyFailed(f"{self.spec.kind}: {exc}") from None
        except BotoCoreError as exc:
            raise NotifyFailed(f"{self.spec.kind}: {exc}") from None


class Exec:
    """Run a command with the event as JSON on stdin and as ``S3SPOOL_EVENT_*`` variables."""

    def __init__(self, spec: ExecSpec, settings: Settings) -> None:
        self.spec = spec

    async def send(self, event: dict[str, Any], body: bytes) -> None:
        env = {**os.environ, **env_of(event)}
        # stdin is a file, not a pipe: a command that exits without reading it (it may use
        # only the variables) must not meet a write to a closed pipe (uvloop: RuntimeError)
        try:
            stdin = os.memfd_create("s3spool-event")
        except OSError as exc:
            raise NotifyFailed(f"exec: no file for the event: {exc.strerror}") from None
        try:
            os.write(stdin, body)
            os.lseek(stdin, 0, os.SEEK_SET)
            proc = await asyncio.create_subprocess_exec(
                *self.spec.command,
                stdin=stdin,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # a signal to s3spool's group must not reach it
            )
        except OSError as exc:
            raise NotifyFailed(f"exec {self.spec.command[0]}: {exc.strerror}") from None
        finally:
            os.close(stdin)
        try:
            async with asyncio.timeout(self.spec.timeout):
                _, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise NotifyFailed(f"exec: no exit within {self.spec.timeout:g}s (killed)") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
            raise NotifyFailed(
                f"exec exited with {proc.returncode}" + (f": {tail[0][:200]}" if tail else "")
            )


class Manifest:
    """Append the event as a JSON line to ``manifest/YYYY-MM-DD.jsonl`` beside the spool's
    done/ (UTC day), fsynced; files older than ``keep`` are removed."""

    def __init__(self, spec: ManifestSpec, settings: Settings, directory_of: Any) -> None:
        self.spec = spec
        self.directory_of = directory_of  # spool label -> manifest directory
        self._lock = asyncio.Lock()
        self._pruned = 0.0

    async def send(self, event: dict[str, Any], body: bytes) -> None:
        directory: Path = self.directory_of(event["spool"])
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        async with self._lock:  # whole lines, in order
            try:
                await asyncio.to_thread(_append, directory / f"{day}.jsonl", body)
            except OSError as exc:
                raise NotifyFailed(f"manifest {directory}: {exc.strerror}") from None
            if time.monotonic() - self._pruned > 3600:
                self._pruned = time.monotonic()
                await asyncio.to_thread(_prune, directory, self.spec.keep)


def _append(path: Path, line: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line if line.endswith(b"\n") else line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(directory: Path, keep: float) -> None:
    cutoff = time.time() - keep
    for entry in os.scandir(directory):
        if entry.name.endswith(".jsonl") and entry.stat().st_mtime < cutoff:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def make_notifier(spec: NotifierSpec, settings: Settings, directory_of: Any) -> Notifier:
    match spec:
        case WebhookSpec():
            return Webhook(spec, settings)
        case SqsSpec() | SnsSpec():
            return Aws(spec, settings)
        case ExecSpec():
            return Exec(spec, settings)
        case ManifestSpec():
            return Manifest(spec, settings, directory_of)
