"""Logging set-up: one JSON object per line (or logfmt-style text for people at a terminal).

Structured fields travel in a record's `extra`; bodies, secrets and signatures
are never handed to a logger anywhere in the bridge.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import msgspec

# Attributes every LogRecord has; anything else was passed in `extra`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields a record carries in `extra` (a dict value contributes its items)."""
    fields: dict[str, object] = {}
    for name, value in vars(record).items():
        if name not in _STANDARD:
            if isinstance(value, dict):
                fields.update(value)
            else:
                fields[name] = value
    return fields


class _Clock:
    """RFC 3339 UTC with milliseconds; the part up to the second is formatted once a second, not once a line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, record: logging.LogRecord) -> str:
        second, millisecond = divmod(int(record.created * 1000), 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{millisecond:03d}+00:00"


_time = _Clock()


# Values of a type JSON has no word for are written as their str(), as json.dumps(default=str) did.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry).decode("utf-8")


class TextFormatter(logging.Formatter):
    """One line for people: time, level, logger, message, then the same fields as logfmt `key=value`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname} {record.name} {record.getMessage()}"
        pairs = [f"{name}={_logfmt(value)}" for name, value in _fields(record).items() if value is not None]
        if pairs:
            line += " " + " ".join(pairs)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _logfmt(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(char in text for char in ' ="\\') or not text.isprintable():
        return json.dumps(text)
    return text


def configure(level: str, fmt: str) -> None:
    # Neither format prints where a call was made, or the thread or process: the logging module's
    # documented switches skip gathering them (a stack walk per record, on the delivery path).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka narrates every reconnect at INFO, and every failed bootstrap at ERROR; our own
    # readiness lines say it once, with the cause.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiokafka.client").addFilter(_no_bootstrap_chatter)
    # The producer's metadata does not know a topic the bridge has just created: aiokafka says so at
    # ERROR once per new topic, then refreshes. A missing topic the bridge may not create is
    # dead-lettered with its own reason before anything is sent, so this line never means trouble.
    logging.getLogger("aiokafka.cluster").addFilter(_no_unknown_topic_chatter)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _no_bootstrap_chatter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Unable connect to")


def _no_unknown_topic_chatter(record: logging.LogRecord) -> bool:
    return "not found in cluster metadata" not in str(record.msg)

