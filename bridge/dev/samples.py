"""One sample delivery per documented Scalekit event type, kept beside the schemas they exemplify.

They live in `schemas/samples/` (packaged as `bridge/schemas/samples/`): the AsyncAPI document
shows them as examples, `send-test` sends them, and the test kit builds its events from them.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from importlib import resources
from typing import Any

_SAMPLES = resources.files("bridge") / "schemas" / "samples"


def sample_types() -> list[str]:
    """Every documented Scalekit event type we carry a sample of."""
    return sorted(entry.name.removesuffix(".json") for entry in _SAMPLES.iterdir() if entry.name.endswith(".json"))


def sample(event_type: str) -> dict[str, Any]:
    """The packaged sample envelope for `event_type`; KeyError if there is none."""
    if event_type not in sample_types():
        raise KeyError(event_type)
    document: dict[str, Any] = json.loads((_SAMPLES / f"{event_type}.json").read_text(encoding="utf-8"))
    return document


def fresh_delivery(event_type: str) -> dict[str, Any]:
    """A sample with a new event id and time, so each test event is a distinct event."""
    envelope = sample(event_type)
    envelope["id"] = f"evt_test_{secrets.token_hex(8)}"
    envelope["occurred_at"] = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return envelope
