"""The AsyncAPI 3.0 description of every topic the bridge writes, generated, never hand-edited.

Built from the same sources the bridge itself uses: the contract's event types
and schemas (`bridge.contract`), the topic and key rules (`bridge.envelope`)
and the default topic names (`bridge.config`). `schemas/asyncapi.yaml` is this
module's output; a test fails when the committed file differs. Regenerate with
`make asyncapi` (`python -m bridge.dev.asyncapi schemas/asyncapi.yaml`).

The document is self-contained: each data schema is also bundled under
`components/schemas` (its `$id` references rewritten to local ones), so AsyncAPI
tools need no resolver for the schemas' URNs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from bridge import __version__
from bridge.config import Settings
from bridge.contract import OBJECTS_SCHEMA, Contract, read_schemas
from bridge.dev.samples import sample
from bridge.envelope import JSON_CONTENT_TYPE, partition_key_source, topic_for

BINDING_VERSION = "0.5.0"
DEADLETTER = "deadletter"
HEADERS_SCHEMA = "CloudEventHeaders"

# The binary-mode headers of every event record, and what each holds (also the table in docs/consuming/topics.md).
HEADERS: dict[str, str] = {
    "content-type": "`application/json`; absent when the delivery had no `data` (the record has no value then).",
    "ce_specversion": "CloudEvents spec version, `1.0`.",
    "ce_id": "Scalekit event id (`evt_...`); the same event redelivered keeps it, so deduplicate on it.",
    "ce_type": "Scalekit event type; the topic is the prefix plus this.",
    "ce_source": "`/scalekit/environments/<environment_id>`.",
    "ce_time": "Envelope `occurred_at` exactly as sent (nanoseconds kept); absent if it is not RFC 3339.",
    "ce_dataschema": "`$id` of the data's JSON Schema; absent for unknown types and for data that failed validation.",
    "ce_organizationid": "Envelope `organization_id`, when the envelope has one.",
    "ce_environmentid": "Envelope `environment_id`.",
    "ce_scalekitobject": "Envelope `object` (informational; route on `ce_type`).",
    "ce_scalekitspecversion": "Envelope `spec_version`.",
    "ce_scalekitextra": "JSON object of any other top-level envelope field (or of the above when not strings).",
    "ce_partitionkey": "The record key.",
    "ce_webhookid": "The delivery's `webhook-id` header; absent on a backfilled record.",
    "ce_backfilledat": (
        "Present only on a record written by `scalekit-bridge backfill` from Scalekit's Events API "
        "(RFC 3339: when that run began); such a record has no `ce_webhookid`."
    ),
    "ce_replayedat": (
        "Present only on a record written by `scalekit-bridge replay` from a dead letter whose webhook "
        "signature it verified again (RFC 3339: when that run began); beside the delivery's `ce_webhookid`."
    ),
    "ce_traceparent": (
        "Only with `BRIDGE_TRACING=true`: the W3C `traceparent` of the bridge's span that wrote the record (the "
        "CloudEvents distributed-tracing extension); a consumer's process span continues the trace from it."
    ),
    "ce_tracestate": "Only with `BRIDGE_TRACING=true`, when the trace carries vendor state: its W3C `tracestate`.",
    "traceparent": (
        "Only with `BRIDGE_TRACING=true`: the same context as a transport header, where OpenTelemetry's Kafka "
        "instrumentations look for it."
    ),
    "tracestate": "Only with `BRIDGE_TRACING=true`, beside `traceparent` when the trace carries vendor state.",
}
# W3C Trace Context, version 00 as written by the bridge.
TRACEPARENT_PATTERN = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_TRACE_HEADERS = ("ce_traceparent", "traceparent")
_REQUIRED_HEADERS = ["ce_specversion", "ce_id", "ce_type", "ce_source"]
# Every record says how it reached the bridge: delivered by webhook (perhaps replayed later from its dead
# letter), or recovered by a backfill.
_PROVENANCE_HEADERS = ("ce_webhookid", "ce_backfilledat")
_REPLAYED_HEADER = "ce_replayedat"

DEADLETTER_HEADERS: dict[str, str] = {
    "webhook-id": "The delivery's `webhook-id` (also the record key); absent on a backfilled dead letter.",
    "webhook-timestamp": "The delivery's `webhook-timestamp` (Unix seconds); absent on a backfilled dead letter.",
    "webhook-signature": (
        "The `webhook-signature` entry that verified the delivery (`v1,<base64>`, an HMAC, not a secret), so "
        "that `replay` can verify it again; absent on a backfilled dead letter and on one written before "
        "dead letters kept it."
    ),
    "backfilled-at": "Only on a dead letter written by `backfill` (RFC 3339: when that run began).",
    "deadletter-reason": "Why the delivery could not be published as an event.",
    "traceparent": "Only with `BRIDGE_TRACING=true`: the W3C `traceparent` of the bridge's span that wrote the letter.",
    "tracestate": "Only with `BRIDGE_TRACING=true`, beside `traceparent` when the trace carries vendor state.",
}
_DEADLETTER_PROVENANCE: tuple[list[str], ...] = (["webhook-id", "webhook-timestamp"], ["backfilled-at"])


def document(contract: Contract | None = None) -> dict[str, Any]:
    """The whole AsyncAPI document as plain data (topic names use the default prefix)."""
    contract = contract if contract is not None else Contract.load()
    prefix, deadletter_topic = Settings.topic_prefix, Settings.deadletter_topic  # the defaults
    schemas = _bundled_schemas(contract)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type in contract.event_types:
        channels[event_type] = _channel(
            topic_for(prefix, event_type), event_type, f"Every `{event_type}` delivery, as a CloudEvent. {ONCE}"
        )
        operations[f"send.{event_type}"] = _operation(event_type)
        messages[event_type] = _event_message(event_type, contract)
    channels[DEADLETTER] = _channel(
        deadletter_topic,
        DEADLETTER,
        "Verified deliveries that could not be published as events (not JSON, no id or type, a type that is "
        "not a legal topic name, or, with BRIDGE_SCHEMA_VALIDATION=enforce, data that breaks its schema). "
        "Set by BRIDGE_DEADLETTER_TOPIC. Not deduplicated: a delivery Scalekit retries after its dead letter "
        "was written is dead-lettered again, each with its own `deadletter-reason`.",
    )
    operations[f"send.{DEADLETTER}"] = _operation(DEADLETTER)
    messages[DEADLETTER] = _deadletter_message()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "scalekit-bridge topics",
            "version": __version__,
            "description": (
                "What scalekit-bridge writes to Kafka: one topic per Scalekit event type (BRIDGE_TOPIC_PREFIX, "
                f"default `{prefix}`, plus the type) and a dead-letter topic. Records are CloudEvents in binary "
                "content mode: the value is the delivery's `data` as JSON and the attributes are `ce_*` headers "
                "(BRIDGE_CLOUDEVENTS_MODE=structured puts the whole CloudEvent in the value instead). "
                "Each record was acknowledged by all in-sync replicas before Scalekit got its 201. "
                f"{ONCE} Event types not documented when this bridge was built "
                "are published to their own topic too, without `ce_dataschema`. Events that Scalekit stopped "
                "retrying can be recovered from its Events API by `scalekit-bridge backfill`: such a record is "
                "the one the webhook would have written, with `ce_backfilledat` in place of `ce_webhookid`. "
                "Dead letters whose cause was fixed are published by `scalekit-bridge replay` once their webhook "
                "signature verifies again: such a record is the one the webhook writes now, with `ce_replayedat` "
                "beside `ce_webhookid`. Fields that hold personal data carry `x-personal-data` (what kind) and fields "
                "that hold secrets `x-secret` in the bundled schemas; each message sums them up in its `summary`, "
                "`x-personal-data` and `x-secrets`, for ACLs and retention per topic. The dead-letter topic holds "
                "whole deliveries of every type."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": JSON_CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": "The cluster named by KAFKA_BOOTSTRAP_SERVERS.",
                "variables": {"bootstrap": {"default": "localhost:9092"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


# What "one record per event" covers, said on every event channel (docs/guarantees.md has the whole of it).
ONCE = (
    "One record per Scalekit event id (BRIDGE_DEDUP, on by default): a retry, a redelivery from Scalekit's "
    "dashboard, a backfill or a replay of an event the release wrote within BRIDGE_DEDUP_WINDOW (a day) writes "
    "nothing, whichever replica takes it. Not covered: the same event reaching two replicas within a fraction "
    "of a second, a pod killed between a record and its receipt, events older than the window, and a release "
    "run with BRIDGE_DEDUP=off. A consumer that must never see an event twice still deduplicates on `ce_id`."
)


def _channel(topic: str, message: str, description: str) -> dict[str, Any]:
    return {
        "address": topic,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "bindings": {"kafka": {"topic": topic, "bindingVersion": BINDING_VERSION}},
    }


def _operation(channel: str) -> dict[str, Any]:
    return {
        "action": "send",
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{channel}"}],
        "bindings": {
            "kafka": {"clientId": {"type": "string", "const": "scalekit-bridge"}, "bindingVersion": BINDING_VERSION}
        },
    }


def _event_message(event_type: str, contract: Contract) -> dict[str, Any]:
    source = partition_key_source(sample(event_type))
    if source is None or source[0] == "environment_id":
        key = (
            "The environment id (`environment_id`): this type's documented deliveries name no organization. A "
            "delivery that does carry a top-level `organization_id` is keyed by it."
        )
    else:
        key = f"The organization id, from `{source[0]}` in this type's documented deliveries."
    headers = {
        "allOf": [
            {"$ref": f"#/components/schemas/{HEADERS_SCHEMA}"},
            {
                "properties": {
                    "ce_type": {"const": event_type},
                    "ce_dataschema": {"const": contract.dataschema(event_type)},
                }
            },
        ]
    }
    fields = contract.fields(event_type).values()
    personal = sorted({field.personal_data for field in fields if field.personal_data})
    secrets = sorted(field.path for field in fields if field.secret)
    return {
        "name": event_type,
        "title": event_type,
        "summary": (
            f"Personal data: {', '.join(personal) if personal else 'none declared'}. "
            f"Secrets: {', '.join(f'`{path}`' for path in secrets) if secrets else 'none'}."
        ),
        "contentType": JSON_CONTENT_TYPE,
        "headers": headers,
        "payload": {"$ref": f"#/components/schemas/{event_type}"},
        "correlationId": {"location": "$message.header#/ce_id"},
        "bindings": {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": BINDING_VERSION}},
        "x-personal-data": personal,
        "x-secrets": secrets,
    }


def _deadletter_message() -> dict[str, Any]:
    return {
        "name": DEADLETTER,
        "title": "dead letter",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "required": ["deadletter-reason"],
            "oneOf": [{"required": names} for names in _DEADLETTER_PROVENANCE],
            "properties": {name: {"type": "string", "description": text} for name, text in DEADLETTER_HEADERS.items()},
        },
        "payload": {
            "description": (
                "The delivery's body exactly as received: any bytes, possibly not JSON. A backfilled dead "
                "letter holds the event as Scalekit's Events API returned it, shaped like a delivery's body."
            )
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The delivery's `webhook-id`; the event id for a backfilled dead letter.",
                },
                "bindingVersion": BINDING_VERSION,
            }
        },
    }


def _bundled_schemas(contract: Contract) -> dict[str, Any]:
    """Data schemas and their shared definitions under local names; URN references rewritten."""
    documents = dict(read_schemas())
    objects = documents[OBJECTS_SCHEMA]
    local = {f"{objects['$id']}#/$defs/{name}": f"#/components/schemas/{name}" for name in objects["$defs"]}
    local.update({f"#/$defs/{name}": f"#/components/schemas/{name}" for name in objects["$defs"]})
    bundled: dict[str, Any] = {HEADERS_SCHEMA: _headers_schema()}
    bundled.update((name, _rewrite(schema, local)) for name, schema in objects["$defs"].items())
    for event_type in contract.event_types:
        schema = _rewrite(documents[f"data/{event_type}.json"], local)
        bundled[event_type] = {key: value for key, value in schema.items() if key not in ("$id", "$schema")}
    return bundled


def _headers_schema() -> dict[str, Any]:
    properties = {name: {"type": "string", "description": text} for name, text in HEADERS.items()}
    properties["content-type"]["const"] = JSON_CONTENT_TYPE
    properties["ce_specversion"]["const"] = "1.0"
    for name in _TRACE_HEADERS:
        properties[name]["pattern"] = TRACEPARENT_PATTERN
    return {
        "description": "The Kafka headers of an event record in binary content mode.",
        "type": "object",
        "required": list(_REQUIRED_HEADERS),
        "oneOf": [{"required": [name]} for name in _PROVENANCE_HEADERS],
        # Only a webhook delivery is replayed: a replayed record has ce_webhookid, never ce_backfilledat.
        "dependencies": {
            _REPLAYED_HEADER: ["ce_webhookid"],
            "ce_tracestate": ["ce_traceparent"],
            "ce_traceparent": ["traceparent"],
        },
        "properties": properties,
    }


def _rewrite(node: Any, local: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: local.get(value, value) if key == "$ref" else _rewrite(value, local) for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(item, local) for item in node]
    return node


def render() -> str:
    """The document as YAML, in a stable order (needs PyYAML, a development dependency)."""
    import yaml

    header = "# Generated by `make asyncapi` from bridge/dev/asyncapi.py and schemas/. Do not edit.\n"
    return header + yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args:
        with open(args[0], "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
