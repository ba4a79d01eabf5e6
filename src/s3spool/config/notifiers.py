"""Notifier settings: ``NOTIFY`` is a list of notifier tables (``[[route.notify]]`` in the
config file, a JSON list in ``S3SPOOL_NOTIFY``).  One flat model with per-kind checks, so
an error names the field (``notify.0.url: required for kind webhook``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_settings import NoDecode

from s3spool.config.formats import Duration

Kind = Literal["webhook", "sqs", "sns", "exec", "manifest"]
Outcome = Literal["delivered", "failed"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: what each kind needs, and what only it may set
_REQUIRED: dict[str, tuple[str, ...]] = {
    "webhook": ("url",),
    "sqs": ("queue_url",),
    "sns": ("topic_arn",),
    "exec": ("command",),
    "manifest": (),
}
_ONLY: dict[str, tuple[str, ...]] = {
    "url": ("webhook",),
    "headers": ("webhook",),
    "secret": ("webhook",),
    "queue_url": ("sqs",),
    "topic_arn": ("sns",),
    "endpoint_url": ("sqs", "sns"),
    "region": ("sqs", "sns"),
    "command": ("exec",),
    "keep": ("manifest",),
}


class NotifierSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    #: names the notifier in metrics, logs and its outbox directory; default: the kind
    name: str = ""
    on: list[Outcome] = Field(default_factory=lambda: list[Outcome](["delivered"]))
    timeout: Duration = 10.0
    #: tries within one pass before the event waits for the next sweep (never dropped)
    retries: int = Field(6, ge=1, le=100)
    concurrency: int = Field(4, ge=1, le=256)
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    secret: str | None = None
    queue_url: str | None = None
    topic_arn: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    command: list[str] = Field(default_factory=list)
    keep: Duration = 30 * 86400.0

    @model_validator(mode="after")
    def _check(self) -> NotifierSpec:
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: letters, digits, '-' and '_' only")
        for field in _REQUIRED[self.kind]:
            if not getattr(self, field):
                raise ValueError(f"{field}: required for kind {self.kind}")
        for field, kinds in _ONLY.items():
            if field in self.model_fields_set and self.kind not in kinds:
                raise ValueError(f"{field}: not a setting of kind {self.kind}")
        if self.url is not None and not re.match(r"https?://", self.url):
            raise ValueError(f"url: {self.url!r} must be http:// or https://")
        if self.kind == "exec" and not Path(self.command[0]).is_absolute():
            raise ValueError(f"command: {self.command[0]!r} must be an absolute path")
        if not self.on:
            raise ValueError("on: name at least one of delivered, failed")
        return self


def parse_notify(value: Any) -> Any:
    """A JSON list of tables (environment, flag) or the list itself (config file)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list of notifier tables: {exc}") from None
    return value


def check_names(specs: list[NotifierSpec]) -> list[NotifierSpec]:
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"two notifiers named {name!r}: give each a name")
    return specs


Notifiers = Annotated[
    list[NotifierSpec], NoDecode, BeforeValidator(parse_notify), AfterValidator(check_names)
]
