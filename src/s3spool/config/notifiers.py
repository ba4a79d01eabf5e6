"""Notifier settings: ``NOTIFY`` is a list of notifier tables, one model per ``kind``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from s3spool.config.formats import Duration, EndpointUrl, Region
from s3spool.config.options import check_header_name, check_header_value

Outcome = Literal["delivered", "failed"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Spec(BaseModel):
    """What every kind has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    #: names the notifier in metrics, logs and its outbox directory; default: the kind
    name: str = ""
    on: list[Outcome] = Field(default_factory=lambda: list[Outcome](["delivered"]))
    timeout: Duration = Field(10.0, gt=0)
    #: tries within one pass before the event waits for the next sweep (never dropped)
    retries: int = Field(6, ge=1, le=100)
    concurrency: int = Field(4, ge=1, le=256)

    @field_validator("on")
    @classmethod
    def _some(cls, on: list[Outcome]) -> list[Outcome]:
        if not on:
            raise ValueError("name at least one of delivered, failed")
        return on

    @model_validator(mode="after")
    def _named(self) -> _Spec:
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: letters, digits, '-' and '_' only")
        return self


class WebhookSpec(_Spec):
    kind: Literal["webhook"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    secret: str | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not re.match(r"https?://", url):
            raise ValueError(f"{url!r} must be http:// or https://")
        if any(not "!" <= c <= "~" for c in url):
            raise ValueError(f"{url!r} holds white space or a control character")
        return url

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            check_header_name(f"header {name!r}:", name)
            check_header_value(f"header {name!r}:", value)
        return headers


class SqsSpec(_Spec):
    kind: Literal["sqs"]
    queue_url: str = Field(min_length=1)
    endpoint_url: EndpointUrl = None
    region: Region = None


class SnsSpec(_Spec):
    kind: Literal["sns"]
    topic_arn: str = Field(min_length=1)
    endpoint_url: EndpointUrl = None
    region: Region = None


class ExecSpec(_Spec):
    kind: Literal["exec"]
    command: list[str]

    @field_validator("command")
    @classmethod
    def _absolute(cls, command: list[str]) -> list[str]:
        if not command:
            raise ValueError("required for kind exec")
        if not Path(command[0]).is_absolute():
            raise ValueError(f"{command[0]!r} must be an absolute path")
        if any("\0" in arg for arg in command):
            raise ValueError("an argument holds a NUL character")
        return command


class ManifestSpec(_Spec):
    kind: Literal["manifest"]
    keep: Duration = 30 * 86400.0


NotifierSpec = WebhookSpec | SqsSpec | SnsSpec | ExecSpec | ManifestSpec
_KINDS = "webhook, sqs, sns, exec, manifest"


def _named_errors(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Each error as ``field: problem`` of its notifier's kind (``url: required for kind
    webhook``), not pydantic's location path."""
    try:
        return handler(value)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            kind, *path = [str(p) for p in err["loc"] if not isinstance(p, int)] or [""]
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = f"required for kind {kind}"
            elif err["type"] == "extra_forbidden":
                msg = f"not a setting of kind {kind}"
            elif err["type"].startswith("union_tag"):
                path, msg = ["kind"], f"one of {_KINDS}"
            problems.append(f"{'.'.join(path)}: {msg}" if path else msg)
        raise ValueError("; ".join(problems)) from None


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
    list[Annotated[NotifierSpec, Field(discriminator="kind")]],
    NoDecode,
    BeforeValidator(parse_notify),
    WrapValidator(_named_errors),
    AfterValidator(check_names),
]
