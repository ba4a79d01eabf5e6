"""Logging: text or JSON lines on stderr, secrets scrubbed; lines below WARNING are written in
batches within ``FLUSH_AFTER`` seconds, and ``flush`` writes what is held."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

FLUSH_AFTER = 0.1

_SECRETS = re.compile(
    r"(?i)(X-Amz-Signature=|X-Amz-Credential=|X-Amz-Security-Token=|Signature=|"
    r"aws_secret_access_key\s*[=:]\s*|Authorization['\"]?\s*[:=]\s*['\"]?|"
    r"x-amz-security-token['\"]?\s*[:=]\s*['\"]?)([^\s&'\",]+)"
)


def scrub(text: str) -> str:
    if text.isascii():
        # Every match of _SECRETS holds one of these, in any case; in ASCII text lower()
        # finds them all (not so beyond: the long s, U+017F, matches "s" under (?i)).
        low = text.lower()
        if not (
            "signature=" in low
            or "credential=" in low
            or "security-token" in low
            or "aws_secret_access_key" in low
            or "authorization" in low
        ):
            return text  # the common case, without the regex
    return _SECRETS.sub(lambda m: m.group(1) + "***", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _pairs(fields: dict[str, Any]) -> str:
    """``k=v k=v``: a value that is empty, or holds a space, a quote, an equals sign or an
    unprintable character (every other whitespace is one), in JSON quotes."""
    out = []
    for k, v in fields.items():
        if isinstance(v, float):
            text = f"{v:.3f}"
        else:
            text = v if v.__class__ is str else str(v)
            if not text or " " in text or '"' in text or "=" in text or not text.isprintable():
                text = json.dumps(text, ensure_ascii=False)
        out.append(f"{k}={text}")
    return " ".join(out)


class TextFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)-7s %(name)s: %(message)s``, a traceback, then the fields:
    Formatter.format's output, without its generic steps, as it runs once per file."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        if int(record.created) != self._second:  # strftime once a second, not once a line
            self._second = int(record.created)
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
        line = (
            f"{self._stamp},{int(record.msecs):03d} {record.levelname:<7} {record.name}: "
            + record.getMessage()
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        fields = _fields(record)
        if fields:
            line += " " + _pairs(fields)
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


class LineWriter(logging.Handler):
    """Writes lines in batches, one write per ``FLUSH_AFTER`` seconds; WARNING and above, a
    record outside an event loop or after ``FLUSH_AFTER`` without a write (the first upload's
    line), and any on a terminal write what is held at once. A line per file (``log_fields``,
    plain values) is formatted with its batch, where it costs a third."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.held: list[str | _FileRecord] = []  # lines with their "\n", or file records
        self.hold = not stream.isatty()  # the progress bar redraws between lines there
        self.wrote = 0.0  # monotonic time of the last write

    def emit(self, record: logging.LogRecord) -> None:
        if type(record) is _FileRecord:
            self.held.append(record)
        else:
            try:
                self.held.append(self.format(record) + "\n")
            except Exception:
                self.handleError(record)
                return
        if record.levelno >= logging.WARNING or not self.hold:
            self.flush()
        elif len(self.held) == 1:  # the first line held: arm the one timer for the batch
            from asyncio import _get_running_loop

            loop = _get_running_loop()
            if loop is None or time.monotonic() - self.wrote >= FLUSH_AFTER:
                self.flush()  # after a quiet spell a line waits for no batch
            else:
                loop.call_later(FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if not self.held:
                return
            text = "".join([x if isinstance(x, str) else self._line(x) for x in self.held])
            self.held.clear()
            self.wrote = time.monotonic()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a reader gone, or stderr closed: nothing left to tell

    def _line(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return ""


class _FileRecord(logging.LogRecord):
    """What the formatters read of a record, and no more: built in a fraction of the time."""

    args = ()
    exc_info = stack_info = None

    def __init__(self, name: str, level: int, msg: str, fields: dict[str, Any]) -> None:
        self.name, self.levelno, self.levelname = name, level, logging.getLevelName(level)
        self.msg, self.fields = msg, fields
        self.created = time.time()
        self.msecs = (self.created - int(self.created)) * 1000


def log_fields(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, msg, extra={"fields": fields})`` for a caller that checked the level;
    to a lone root LineWriter without logging's dispatch. ``fields``: plain values only."""
    root = logging.root
    if (
        logger.parent is not root
        or logger.handlers
        or logger.filters
        or logger.disabled
        or not logger.propagate
        or len(root.handlers) != 1
        or type(root.handlers[0]) is not LineWriter
    ):
        logger.log(level, msg, extra={"fields": fields})  # others listen: pytest's capture
        return
    root.handlers[0].handle(_FileRecord(logger.name, level, msg, fields))


def flush() -> None:
    """Write every line held (before an exit, a traceback, or output of its own)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = LineWriter(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # no line shows the caller's file, thread or process: don't look them up per record
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # botocore's DEBUG output includes request headers; keep it quiet unless asked twice.
    for noisy in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
