"""Logging: text or JSON lines on stderr, with secrets scrubbed from every record.

Per-file events carry their fields in ``extra={"fields": {...}}``; the text
formatter appends them as ``k=v``, the JSON formatter merges them in.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_SECRETS = re.compile(
    r"(?i)(X-Amz-Signature=|X-Amz-Credential=|X-Amz-Security-Token=|Signature=|"
    r"aws_secret_access_key\s*[=:]\s*|Authorization['\"]?\s*[:=]\s*['\"]?|"
    r"x-amz-security-token['\"]?\s*[:=]\s*['\"]?)([^\s&'\",]+)"
)


def scrub(text: str) -> str:
    return _SECRETS.sub(lambda m: m.group(1) + "***", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    text = str(v)
    if not text or any(c.isspace() or c in '"=' for c in text) or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_fmt_value(v)}" for k, v in fields.items())
        return scrub(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, ensure_ascii=False, default=str))


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # botocore's DEBUG output includes request headers; keep it quiet unless asked twice.
    for noisy in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
