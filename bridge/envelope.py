"""Scalekit delivery → CloudEvent → a neutral Kafka message (topic, key, value, headers).

Nothing here knows a Kafka client. The mapping is lossless: `rebuild_delivery`
turns a record back into the envelope Scalekit sent (see docs/consuming/topics.md,
"Consuming the topics" for the header table).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal
from urllib.parse import quote

import msgspec

from bridge.errors import MalformedDelivery
from bridge.tracing import TraceContext
from bridge.verify import VerifiedDelivery

# Scalekit event types are dotted lower-case words; they become topic names. Patterns are
# matched whole (fullmatch): `$` would let a trailing newline through into a topic name.
_EVENT_TYPE = re.compile(r"[a-z0-9._]+")
# Kafka's longest legal topic name.
MAX_TOPIC_LENGTH = 249
# How a CloudEvent is laid on a record: attributes as `ce_*` headers, or the whole event as the value.
CloudEventsMode = Literal["binary", "structured"]
CLOUDEVENTS_MODES: tuple[CloudEventsMode, ...] = ("binary", "structured")
# RFC 3339 as CloudEvents requires for `time`, in ASCII digits (`\d` would take any script's);
# fractions of any length are kept as sent. The ranges are checked by `_is_rfc3339`.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
_OUT_OF_RANGE = "a number is out of JSON's range"
# Scalekit's envelopes nest a handful of levels; anything deeper is not one of theirs, and
# JSON libraries downstream (and our schema validator) refuse depths far below Python's limit.
MAX_DEPTH = 64

JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"

# Envelope string fields and the CloudEvents extension that carries each one.
_EXTENSIONS = {
    "organization_id": "organizationid",
    "environment_id": "environmentid",
    "object": "scalekitobject",
    "spec_version": "scalekitspecversion",
}
# Everything else at the top level of the envelope (other than the fields that
# become core attributes) travels as a JSON object in this one extension.
EXTRA_EXTENSION = "scalekitextra"
# How the event reached the bridge: a webhook delivery's id, or when a backfill run recovered it.
WEBHOOK_ID_EXTENSION = "webhookid"
BACKFILLED_AT_EXTENSION = "backfilledat"
# When a `replay` run published the event from its dead letter (beside its webhookid).
REPLAYED_AT_EXTENSION = "replayedat"
PARTITION_KEY_EXTENSION = "partitionkey"
# CloudEvents' distributed-tracing extension: the context of the span that created the record (BRIDGE_TRACING=true).
TRACEPARENT_EXTENSION = "traceparent"
TRACESTATE_EXTENSION = "tracestate"

# Where each event keeps its organization, first found wins (docs/consuming/topics.md); the one rule
# for "which organization", for the record key and for `backfill --organization` alike.
ORGANIZATION_PATHS: tuple[tuple[str, ...], ...] = (
    ("organization_id",),
    ("data", "organization_id"),
    ("data", "organization", "id"),
    ("data", "user", "membership", "organization_id"),  # user.* deliveries before 2025-11
    ("data", "user_session", "organization_id"),  # user.login and user.logout since
)
# Events of no organization (roles, permissions, connected accounts unless the delivery names one) are keyed by
# their environment instead.
_KEY_PATHS = (*ORGANIZATION_PATHS, ("environment_id",))

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class KafkaMessage:
    """A record ready to be written; independent of any Kafka client library."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class Recovered:
    """An event read back from Scalekit's Events API by a backfill run, not delivered by webhook."""

    event_id: str
    body: bytes  # the envelope as JSON, shaped like a webhook delivery's body
    backfilled_at: str  # RFC 3339: when the backfill run began


@dataclass(frozen=True)
class Replayed:
    """A webhook delivery kept in a dead letter, verified again and published by a `replay` run."""

    delivery: VerifiedDelivery
    replayed_at: str  # RFC 3339: when the replay run began

    @property
    def body(self) -> bytes:
        return self.delivery.body


# Where an event came from; it says so in its record and in a dead letter.
Origin = VerifiedDelivery | Recovered | Replayed

# A dead letter's headers: how its body arrived (a webhook delivery's own headers, signature included, or
# when backfill recovered it) and why it could not be routed.
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
BACKFILLED_AT_HEADER = "backfilled-at"
DEADLETTER_REASON_HEADER = "deadletter-reason"


@dataclass(frozen=True)
class EventRecord:
    """An event's whole record (topic, key, value, headers), and the id and type it carries."""

    event_id: str
    event_type: str
    message: KafkaMessage


class _NotJsonNumber(ValueError):
    """NaN, Infinity and -Infinity: Python reads them, JSON (RFC 8259) has no such numbers."""


class _OutOfRange(ValueError):
    """A number such as 1e400, which reads as infinity and which JSON cannot write back."""


def _refuse_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _OutOfRange(text)
    return number


# msgspec (compiled, about three times faster here) reads what Scalekit sends, UTF-8 JSON, exactly as the
# standard library would, big integers included (orjson turns those into floats), and refuses the rest:
# other encodings, a BOM, NaN, out-of-range numbers, lone surrogates, deep nesting. The standard library
# then reads what it can of that and says why it cannot. One of each per process.
_FAST = msgspec.json.Decoder()
_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)
_ENCODER = msgspec.json.Encoder()


def parse_envelope(body: bytes) -> dict[str, Any]:
    """Decode a verified body into an envelope, or raise MalformedDelivery."""
    try:
        envelope = _FAST.decode(body)
    except (msgspec.DecodeError, RecursionError):
        envelope = _strict_decode(body)
    # Counting brackets is cheap and bounds the depth from above; walk only when it might be deep.
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and _depth(envelope) > MAX_DEPTH:
        raise MalformedDelivery(f"body is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(envelope, dict):
        raise MalformedDelivery("body is not a JSON object")
    for name in ("id", "type"):
        if not isinstance(envelope.get(name), str) or not envelope[name]:
            raise MalformedDelivery(f"envelope has no string '{name}'")
    return envelope


def _strict_decode(body: bytes) -> Any:
    try:
        return _STRICT.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except _NotJsonNumber:
        raise MalformedDelivery("body is not JSON: NaN and Infinity are not JSON numbers") from None
    except _OutOfRange:
        raise MalformedDelivery(_OUT_OF_RANGE) from None
    except RecursionError:
        raise MalformedDelivery(f"body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise MalformedDelivery("body is not JSON") from None


def topic_for(prefix: str, event_type: str, *, deadletter_topic: str | None = None) -> str:
    """The topic an event type is published to; raises MalformedDelivery for unroutable types."""
    topic = prefix + event_type
    if not _EVENT_TYPE.fullmatch(event_type) or len(topic) > MAX_TOPIC_LENGTH:
        raise MalformedDelivery("event type is not a valid topic name")
    if deadletter_topic is not None and topics_collide(topic, deadletter_topic):
        raise MalformedDelivery("event type's topic would be the dead-letter topic")
    return topic


def is_event_topic(prefix: str, topic: str) -> bool:
    """Whether `topic` is one of the event topics under `prefix`: the release's own topics (`<prefix>deadletter`
    aside) have a '-' in their names, which no event type has."""
    return topic.startswith(prefix) and _EVENT_TYPE.fullmatch(topic[len(prefix) :]) is not None


def topics_collide(first: str, second: str) -> bool:
    """Kafka refuses two topics whose names differ only in '.' against '_' (metric names clash)."""
    return first.replace(".", "_") == second.replace(".", "_")


def partition_key(envelope: Mapping[str, Any]) -> str | None:
    """The first organization (or, failing that, environment) id found in the envelope."""
    found = partition_key_source(envelope)
    return found[1] if found is not None else None


def partition_key_source(envelope: Mapping[str, Any]) -> tuple[str, str] | None:
    """Where the key was found (a dotted envelope path) and its value; None if nowhere."""
    return _first_found(envelope, _KEY_PATHS)


def organization_of(envelope: Mapping[str, Any]) -> str | None:
    """The organization an event belongs to, wherever its type keeps it; None for environment-wide events."""
    found = _first_found(envelope, ORGANIZATION_PATHS)
    return found[1] if found is not None else None


def _first_found(envelope: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> tuple[str, str] | None:
    for path in paths:
        node: Any = envelope
        for step in path:
            node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, str) and node:
            return ".".join(path), node
    return None


def build_record(
    delivery: Origin,
    *,
    topic_prefix: str,
    mode: CloudEventsMode,
    envelope: Mapping[str, Any] | None = None,
    dataschema: str | None = None,
    deadletter_topic: str | None = None,
    trace: TraceContext | None = None,
) -> EventRecord:
    """Map a verified delivery or a recovered event (and its envelope, if parsed) to its record.

    Raises MalformedDelivery. `dataschema` is the `$id` of the schema the data adheres to; `trace`, the
    context of the span creating the record, becomes the distributed-tracing extension.
    """
    if envelope is None:
        envelope = parse_envelope(delivery.body)
    topic = topic_for(topic_prefix, envelope["type"], deadletter_topic=deadletter_topic)
    try:
        return _encode(envelope, _provenance(delivery), topic, mode, dataschema, trace)
    except UnicodeEncodeError:
        raise MalformedDelivery(MalformedDelivery.LONE_SURROGATE) from None


def _encode(
    envelope: Mapping[str, Any],
    provenance: tuple[tuple[str, str], ...],
    topic: str,
    mode: CloudEventsMode,
    dataschema: str | None,
    trace: TraceContext | None,
) -> EventRecord:
    key = partition_key(envelope)
    attributes = _attributes(envelope, provenance, key)
    if trace is not None:
        attributes[TRACEPARENT_EXTENSION] = trace.traceparent
        if trace.tracestate:
            attributes[TRACESTATE_EXTENSION] = trace.tracestate
    has_data = "data" in envelope
    if has_data and dataschema is not None:
        attributes["dataschema"] = dataschema
    if mode == "structured":
        event: dict[str, Any] = dict(attributes)
        if has_data:
            event["datacontenttype"] = JSON_CONTENT_TYPE
            event["data"] = envelope["data"]
        value: bytes | None = _dumps(event)
        headers: Headers = (("content-type", STRUCTURED_CONTENT_TYPE.encode()),)
    else:
        value = _dumps(envelope["data"]) if has_data else None
        if value is None and key is None:
            # Kafka clients refuse a record with neither; Scalekit's envelopes always carry an environment.
            raise MalformedDelivery("envelope has no data and no organization or environment id")
        headers = tuple([(_ce(name), text.encode("utf-8")) for name, text in attributes.items()])
        if has_data:
            headers += (("content-type", JSON_CONTENT_TYPE.encode()),)
    return EventRecord(
        event_id=envelope["id"],
        event_type=envelope["type"],
        message=KafkaMessage(
            topic=topic,
            key=key.encode("utf-8") if key is not None else None,
            value=value,
            headers=headers,
        ),
    )


def deadletter_message(delivery: Origin, *, topic: str, reason: str) -> KafkaMessage:
    """The raw delivery (or recovered envelope), untouched, with why it could not be routed."""
    if isinstance(delivery, Replayed):
        delivery = delivery.delivery
    if isinstance(delivery, Recovered):
        key = delivery.event_id
        origin: Headers = ((BACKFILLED_AT_HEADER, delivery.backfilled_at.encode("ascii")),)
    else:
        key = delivery.webhook_id
        origin = (
            (WEBHOOK_ID_HEADER, delivery.webhook_id.encode("utf-8")),
            (WEBHOOK_TIMESTAMP_HEADER, delivery.timestamp.encode("ascii")),
        )
        if delivery.signature is not None:
            origin += ((WEBHOOK_SIGNATURE_HEADER, delivery.signature.encode("ascii")),)
    return KafkaMessage(
        topic=topic,
        key=key.encode("utf-8"),
        value=delivery.body,
        headers=(*origin, (DEADLETTER_REASON_HEADER, reason.encode("utf-8"))),
    )


def _provenance(origin: Origin) -> tuple[tuple[str, str], ...]:
    """The CloudEvents extensions that say how the event reached the bridge."""
    if isinstance(origin, Recovered):
        return ((BACKFILLED_AT_EXTENSION, origin.backfilled_at),)
    if isinstance(origin, Replayed):
        return (WEBHOOK_ID_EXTENSION, origin.delivery.webhook_id), (REPLAYED_AT_EXTENSION, origin.replayed_at)
    return ((WEBHOOK_ID_EXTENSION, origin.webhook_id),)


def rebuild_delivery(headers: Iterable[tuple[str, bytes]], value: bytes | None) -> dict[str, Any]:
    """Turn a binary- or structured-mode record back into the envelope Scalekit sent."""
    header_map = {name.lower(): raw.decode("utf-8") for name, raw in headers}
    if header_map.get("content-type") == STRUCTURED_CONTENT_TYPE:
        if value is None:
            raise ValueError("a structured-mode record must have a value")
        attributes = json.loads(value)
        data_present = "data" in attributes
        data = attributes.pop("data", None)
    else:
        attributes = {
            name[3:]: text for name, text in header_map.items() if name.startswith("ce_")
        }
        data_present = value is not None
        data = json.loads(value) if value is not None else None

    envelope: dict[str, Any] = {"id": attributes["id"], "type": attributes["type"]}
    if "time" in attributes:
        envelope["occurred_at"] = attributes["time"]
    for field_name, extension in _EXTENSIONS.items():
        if extension in attributes:
            envelope[field_name] = attributes[extension]
    if EXTRA_EXTENSION in attributes:
        envelope.update(json.loads(attributes[EXTRA_EXTENSION]))
    if data_present:
        envelope["data"] = data
    return envelope


def _attributes(
    envelope: Mapping[str, Any], provenance: tuple[tuple[str, str], ...], key: str | None
) -> dict[str, str]:
    environment = envelope.get("environment_id")
    source = _source(environment) if isinstance(environment, str) and environment else "/scalekit"
    attributes = {
        "specversion": "1.0",
        "id": envelope["id"],
        "source": source,
        "type": envelope["type"],
    }
    extra: dict[str, Any] = {}
    for name, value in envelope.items():
        if name in ("id", "type", "data"):
            continue
        if name == "occurred_at":
            if not (isinstance(value, str) and _is_rfc3339(value)):
                # CloudEvents consumers refuse such a `time`; Scalekit's own are always RFC 3339.
                raise MalformedDelivery("occurred_at is not an RFC 3339 date and time")
            attributes["time"] = value
        elif name in _EXTENSIONS and isinstance(value, str):
            attributes[_EXTENSIONS[name]] = value
        else:
            extra[name] = value
    if extra:
        attributes[EXTRA_EXTENSION] = _dumps(extra).decode("utf-8")
    attributes.update(provenance)
    if key is not None:
        attributes[PARTITION_KEY_EXTENSION] = key
    return attributes


@functools.lru_cache(maxsize=256)
def _source(environment: str) -> str:
    """The CloudEvents source of an environment's events (a handful of environments, many events each)."""
    return "/scalekit/environments/" + quote(environment, safe="")


@functools.lru_cache(maxsize=64)
def _ce(attribute: str) -> str:
    """The binary-mode header of a CloudEvents attribute (the attribute names are a small fixed set)."""
    return "ce_" + attribute


def _is_rfc3339(text: str) -> bool:
    """A real date and time of day (a leap second allowed), with a real offset."""
    found = _RFC3339.fullmatch(text)
    if found is None:
        return False
    year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
    try:
        date(year, month, day)
    except ValueError:
        return False
    offset_hours, offset_minutes = found[7], found[8]
    if offset_hours is not None and (int(offset_hours) > 23 or int(offset_minutes) > 59):
        return False
    return hour <= 23 and minute <= 59 and second <= 60


def _dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; raises UnicodeEncodeError for a lone surrogate. Decoded envelopes hold no
    NaN or infinity (see `parse_envelope`), which msgspec would write as null."""
    return _ENCODER.encode(value)


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in node)
    return deepest


def event_id_of_record(headers: Iterable[tuple[str, bytes]], value: bytes | None) -> str | None:
    """The Scalekit event id a record carries, whatever wrote it; None if it names none.

    Event records in binary mode have `ce_id`; in structured mode the value's `id`.
    A dead letter holds the body as received, whose `id` is read when it is JSON.
    """
    structured = False
    for name, raw in headers:
        lowered = name.lower()
        if lowered == "ce_id":
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None
        if lowered == "content-type" and raw == STRUCTURED_CONTENT_TYPE.encode():
            structured = True
    if value is None or (not structured and not value.lstrip().startswith(b"{")):
        return None
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        return None
    found = document.get("id") if isinstance(document, dict) else None
    return found if isinstance(found, str) and found else None
