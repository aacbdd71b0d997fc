"""Log set-up: a human format on a TTY, JSON lines otherwise or on request.

Every lifecycle record carries a stable ``action`` key plus the ids it concerns,
passed as ``extra``::

    log.info("worker checked in", extra={"action": "worker_checked_in", "worker": w, ...})

In JSON every line is one object with the keys ``ts`` (Unix time, seconds),
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``msg``, then the ``extra``
keys (``action``, ``group``, ``id``, ``attempt``, ``worker``, ``pod``, ``epoch``,
…) and ``exc`` when an exception is logged. The text format prints the same
keys as ``key=value`` after the message. ``docs/operations.md`` lists the
actions.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

FORMATS = ("auto", "text", "json")
LEVELS = ("debug", "info", "warning", "error")

_LEVEL_COLOURS = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_RESET = "\x1b[0m"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` keys of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` key."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extras(record).items():
            body.setdefault(key, value)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...`` for people (coloured on a terminal)."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        clock += f".{int(record.created % 1 * 1000):03d}"
        level = f"{record.levelname:<7}"
        if self.colour:
            level = _LEVEL_COLOURS.get(record.levelname, "") + level + _RESET
        line = f"{clock} {level} {record.name:<13} {record.getMessage()}"
        fields = extras(record)
        if fields:
            line += "  " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text)
    return text


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``auto`` is ``text`` on a terminal and ``json`` otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return fmt


def make_handler(fmt: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler writing ``fmt`` (``auto``, ``text`` or ``json``) to ``stream``."""
    stream = stream if stream is not None else sys.stderr
    chosen = resolve_format(fmt, stream)
    handler = logging.StreamHandler(stream)
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
    else:
        isatty = getattr(stream, "isatty", None)
        handler.setFormatter(TextFormatter(colour=bool(isatty and isatty())))
    return handler


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure the ``mawex`` loggers; ``fmt`` is ``text``, ``json`` or ``auto`` (TTY → text)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    root = logging.getLogger("mawex")
    root.handlers[:] = [make_handler(fmt, stream)]
    root.setLevel(level.upper())
    root.propagate = False
