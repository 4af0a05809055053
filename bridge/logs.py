"""Logging set-up: one JSON object per line (or plain text for people at a terminal).

Structured fields travel in a record's `extra`; bodies, secrets and signatures
are never handed to a logger anywhere in the bridge.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

# Attributes every LogRecord has; anything else was passed in `extra`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD:
                if isinstance(value, dict):
                    entry.update(value)
                else:
                    entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
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
