"""schemas/asyncapi.yaml: generated, valid AsyncAPI 3.0, and true to what the bridge writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from bridge.config import Settings
from bridge.contract import Contract
from bridge.dev.asyncapi import DEADLETTER, DEADLETTER_HEADERS, HEADERS, document, render
from bridge.dev.samples import sample, sample_types
from bridge.envelope import Origin, Recovered, Replayed, build_record, deadletter_message, partition_key
from bridge.tracing import TraceContext
from bridge.verify import VerifiedDelivery
from tests import tools

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "schemas" / "asyncapi.yaml"
DOC = yaml.safe_load(COMMITTED.read_text(encoding="utf-8"))
DOC_URI = "urn:test:asyncapi"
REGISTRY = jsonschema_rs.Registry([(DOC_URI, DOC)])
CONTRACT = Contract.load()


@pytest.fixture(scope="module")
def official_schema() -> dict[str, Any]:
    return tools.required(lambda: tools.asyncapi_schema("3.0.0"))


def validator(pointer: str) -> jsonschema_rs.Validator:
    """A draft-07 validator (AsyncAPI's schema dialect) for a schema inside the document."""
    return jsonschema_rs.Draft7Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=REGISTRY)


WEBHOOK = "webhook"
BACKFILL = "backfill"
REPLAY = "replay"


def origin_of(envelope: dict[str, Any], how: str = WEBHOOK) -> Origin:
    body = json.dumps(envelope).encode()
    if how == BACKFILL:
        return Recovered(envelope.get("id", "evt_1"), body, "2026-11-27T03:00:00Z")
    delivery = VerifiedDelivery("msg_1", "1760000000", body, signature="v1,c2lnbmF0dXJl")
    return Replayed(delivery, "2026-11-30T12:00:00Z") if how == REPLAY else delivery


# A context as the bridge writes it with BRIDGE_TRACING=true: in the event (ce_*) and as transport headers.
TRACED = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "vendor=abc")


def record_of(event_type: str, how: str = WEBHOOK, trace: TraceContext | None = None, **changes: Any):
    envelope = sample(event_type) | changes
    message = build_record(
        origin_of(envelope, how),
        topic_prefix=Settings.topic_prefix,
        mode="binary",
        envelope=envelope,
        dataschema=CONTRACT.dataschema(envelope["type"]),
        trace=trace,
    ).message
    return message if trace is None else dataclasses.replace(message, headers=(*message.headers, *trace.headers()))


def test_the_committed_document_is_exactly_what_the_generator_writes():
    assert COMMITTED.read_text(encoding="utf-8") == render(), "run `make asyncapi` and commit the result"


def test_the_document_is_valid_against_the_official_asyncapi_3_schema(official_schema):
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in
              jsonschema_rs.validator_for(official_schema).iter_errors(DOC)]
    assert errors == []


def test_the_official_schema_does_refuse_a_broken_document(official_schema):
    broken = document()
    broken["channels"]["role.created"]["address"] = 42
    del broken["info"]["version"]
    assert not jsonschema_rs.validator_for(official_schema).is_valid(broken)


def test_every_topic_the_bridge_can_write_has_a_channel():
    addresses = {channel["address"] for channel in DOC["channels"].values()}
    written = {record_of(event_type).topic for event_type in sample_types()}
    delivery = VerifiedDelivery("msg_1", "1760000000", b"not json")
    written.add(deadletter_message(delivery, topic=Settings.deadletter_topic, reason="x").topic)

    assert written == addresses


def test_each_channel_has_one_send_operation_with_kafka_bindings():
    for channel_id, channel in DOC["channels"].items():
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]
        (operation,) = [op for op in DOC["operations"].values() if op["channel"]["$ref"] == f"#/channels/{channel_id}"]
        assert operation["action"] == "send"


@pytest.mark.parametrize("trace", [None, TRACED], ids=["untraced", "traced"])
@pytest.mark.parametrize("how", [WEBHOOK, BACKFILL, REPLAY])
@pytest.mark.parametrize("event_type", sample_types())
def test_the_headers_the_bridge_writes_match_the_documented_headers(event_type, how, trace):
    message = record_of(event_type, how, trace)
    headers = {name: value.decode() for name, value in message.headers}
    headers_schema = validator(f"/components/messages/{event_type}/headers")

    assert set(headers) <= set(HEADERS)
    assert headers_schema.is_valid(headers)
    assert not headers_schema.is_valid(headers | {"ce_type": "role.created" if event_type != "role.created" else "x"})


def test_a_record_must_say_how_it_reached_the_bridge_and_only_one_way():
    headers = {name: value.decode() for name, value in record_of("role.created").headers}
    headers_schema = validator("/components/messages/role.created/headers")
    neither = {name: value for name, value in headers.items() if name != "ce_webhookid"}

    assert headers_schema.is_valid(headers)
    assert not headers_schema.is_valid(neither)
    assert not headers_schema.is_valid(headers | {"ce_backfilledat": "2026-11-27T03:00:00Z"})
    backfilled = {name: value.decode() for name, value in record_of("role.created", BACKFILL).headers}
    assert not headers_schema.is_valid(backfilled | {"ce_replayedat": "2026-11-30T12:00:00Z"})


@pytest.mark.parametrize("event_type", sample_types())
def test_the_bundled_payload_schema_accepts_the_data_and_refuses_a_wrong_shape(event_type):
    payload = validator(f"/components/messages/{event_type}/payload")
    assert payload.is_valid(sample(event_type)["data"])
    assert not payload.is_valid(["not", "an", "object"])
    assert not payload.is_valid({key: value for key, value in sample(event_type)["data"].items()
                                 if key not in ("id", "user")})


@pytest.mark.parametrize("event_type", sample_types())
def test_the_documented_key_is_where_the_bridge_takes_it_from(event_type):
    key_doc = DOC["components"]["messages"][event_type]["bindings"]["kafka"]["key"]["description"]
    envelope = sample(event_type)
    source = "environment_id" if "environment" in key_doc else key_doc.split("`")[1]
    node: Any = envelope
    for step in source.split("."):
        node = node[step]
    assert record_of(event_type).key == node.encode() == partition_key(envelope).encode()


def test_a_traced_record_carries_its_context_in_the_event_and_for_transport_alike():
    headers = {name: value.decode() for name, value in record_of("role.created", trace=TRACED).headers}
    headers_schema = validator("/components/messages/role.created/headers")

    assert headers_schema.is_valid(headers)
    assert not headers_schema.is_valid(headers | {"ce_traceparent": "01-garbage"})
    assert not headers_schema.is_valid({name: value for name, value in headers.items() if name != "ce_traceparent"})


def test_the_deadletter_channel_documents_the_headers_the_bridge_writes():
    schema = validator(f"/components/messages/{DEADLETTER}/headers")
    written: set[str] = set()
    for how in (WEBHOOK, BACKFILL):
        message = deadletter_message(
            origin_of({"id": "evt_1"}, how), topic=Settings.deadletter_topic, reason="body is not JSON"
        )
        headers = {name: value.decode() for name, value in (*message.headers, *TRACED.headers())}
        assert schema.is_valid(headers), how
        assert not schema.is_valid({name: v for name, v in headers.items() if name != "deadletter-reason"})
        written |= set(headers)
    assert written == set(DEADLETTER_HEADERS)


def test_the_docs_header_table_lists_every_documented_header():
    readme = (ROOT / "docs" / "consuming" / "topics.md").read_text(encoding="utf-8")
    missing = [name for name in [*HEADERS, *DEADLETTER_HEADERS] if f"| `{name}` |" not in readme]
    assert missing == []
