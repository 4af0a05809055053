"""A verified delivery becomes a CloudEvent record that the official SDK reads and that rebuilds the original."""

from __future__ import annotations

import json

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from bridge.contract import Contract
from bridge.dev.samples import sample, sample_types
from bridge.dev.tail import describe
from bridge.envelope import (
    Replayed,
    build_record,
    deadletter_message,
    is_event_topic,
    partition_key,
    rebuild_delivery,
)
from bridge.errors import MalformedDelivery
from bridge.verify import VerifiedDelivery

# Where Scalekit's documented examples of each family keep the organization id (docs/consuming/topics.md).
EXPECTED_KEY_SOURCE = {
    "organization.directory": ("organization_id",),
    "organization.sso": ("organization_id",),
    "organization.domain_": ("organization_id",),
    "organization.created": ("organization_id",),
    "organization.updated": ("organization_id",),
    "organization.deleted": ("organization_id",),
    "user.signup": ("data", "organization", "id"),
    "user.login": ("organization_id",),
    "user.logout": ("organization_id",),
    "user.organization": ("data", "organization", "id"),
    "role.": ("environment_id",),
    "permission.": ("environment_id",),
    "connected_account.": ("environment_id",),
}


def delivery(envelope: object, webhook_id: str = "msg_1") -> VerifiedDelivery:
    return VerifiedDelivery(webhook_id=webhook_id, timestamp="1760000000", body=json.dumps(envelope).encode())


def as_ce_message(route):
    message = route.message
    return ce_kafka.KafkaMessage(headers=dict(message.headers), key=message.key, value=message.value)


def lookup(envelope, path):
    for step in path:
        envelope = envelope[step]
    return envelope


@pytest.mark.parametrize("event_type", sample_types())
def test_each_sample_is_named_for_the_type_it_carries(event_type):
    assert sample(event_type)["type"] == event_type


@pytest.mark.parametrize("event_type", sample_types())
def test_every_sample_is_keyed_by_its_organization_or_environment(event_type):
    envelope = sample(event_type)
    (path,) = [p for prefix, p in EXPECTED_KEY_SOURCE.items() if event_type.startswith(prefix)]
    assert partition_key(envelope) == lookup(envelope, path)
    assert partition_key(envelope).startswith("env_" if path == ("environment_id",) else "org_")


@pytest.mark.parametrize("event_type", ["user.login", "user.logout"])
def test_a_session_event_without_the_top_level_organization_is_keyed_by_its_session(event_type):
    envelope = sample(event_type)
    del envelope["organization_id"]
    assert partition_key(envelope) == envelope["data"]["user_session"]["organization_id"]


@pytest.mark.parametrize("event_type", ["user.login", "user.logout"])
def test_a_session_event_of_the_shape_before_2025_11_is_keyed_by_the_membership(event_type):
    envelope = sample(event_type)
    del envelope["organization_id"], envelope["display_name"]
    envelope["data"] = {"user": {"id": "usr_1", "membership": {"organization_id": "org_member"}}}
    assert partition_key(envelope) == "org_member"
    assert Contract.load().check(envelope, validate=True).violation is None


@pytest.mark.parametrize("event_type", [t for t in sample_types() if t.startswith(("connected_account.", "role."))])
def test_an_environment_level_event_that_names_an_organization_is_keyed_by_it(event_type):
    envelope = sample(event_type) | {"organization_id": "org_named"}
    assert partition_key(envelope) == "org_named"


@pytest.mark.parametrize("event_type", sample_types())
def test_every_sample_maps_to_a_binary_cloudevent_the_sdk_reads(event_type):
    envelope = sample(event_type)
    route = build_record(delivery(envelope), topic_prefix="scalekit.", mode="binary")
    event = ce_kafka.from_binary(as_ce_message(route), JSONFormat())

    assert route.message.topic == f"scalekit.{event_type}"
    assert route.message.key == partition_key(envelope).encode()
    assert event.get_id() == envelope["id"]
    assert event.get_type() == event_type
    assert event.get_specversion() == "1.0"
    assert envelope["environment_id"] in event.get_source()
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == envelope["data"]
    assert event.get_extension("partitionkey") == partition_key(envelope)
    assert event.get_extension("webhookid") == "msg_1"
    assert event.get_extension("environmentid") == envelope["environment_id"]
    assert event.get_extension("scalekitobject") == envelope["object"]
    assert event.get_extension("scalekitspecversion") == envelope["spec_version"]


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("event_type", sample_types())
def test_the_original_envelope_is_rebuilt_exactly_from_the_record(event_type, mode):
    envelope = sample(event_type)
    message = build_record(delivery(envelope), topic_prefix="scalekit.", mode=mode).message
    assert rebuild_delivery(message.headers, message.value) == envelope


def test_time_keeps_its_nanoseconds():
    """The SDK parses ce_time to microseconds; the header itself keeps what Scalekit sent."""
    envelope = sample("role.created") | {"occurred_at": "2025-01-15T08:55:22.802860294Z"}
    message = build_record(delivery(envelope), topic_prefix="scalekit.", mode="binary").message
    assert dict(message.headers)["ce_time"] == b"2025-01-15T08:55:22.802860294Z"


def test_structured_mode_is_one_json_cloudevent_the_sdk_reads():
    envelope = sample("organization.directory.user_created")
    route = build_record(delivery(envelope), topic_prefix="scalekit.", mode="structured")
    event = ce_kafka.from_structured(as_ce_message(route), JSONFormat())
    assert dict(route.message.headers) == {"content-type": b"application/cloudevents+json"}
    assert (event.get_id(), event.get_type(), event.get_data()) == (envelope["id"], envelope["type"], envelope["data"])
    assert event.get_extension("organizationid") == envelope["organization_id"]


def test_unusual_envelope_fields_survive_the_round_trip():
    """Non-string spec_version, unknown fields, no time and no data: nothing is lost."""
    envelope = {
        "id": "evt_9", "type": "organization.created", "spec_version": 1,
        "display_name": "Org created", "future_field": {"nested": [1, 2.5, None]}, "environment_id": "env_1",
    }
    for mode in ("binary", "structured"):
        message = build_record(delivery(envelope), topic_prefix="scalekit.", mode=mode).message
        assert rebuild_delivery(message.headers, message.value) == envelope
    binary = build_record(delivery(envelope), topic_prefix="scalekit.", mode="binary").message
    assert binary.value is None and binary.key == b"env_1"
    assert "ce_time" not in dict(binary.headers)


def test_the_topic_prefix_is_configurable():
    route = build_record(delivery(sample("role.created")), topic_prefix="acme-prod.", mode="binary")
    assert route.message.topic == "acme-prod.role.created"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'{"type": "role.created"}', "envelope has no string 'id'"),
        (b'{"id": "evt_1"}', "envelope has no string 'type'"),
        (b'{"id": "", "type": "role.created"}', "envelope has no string 'id'"),
        (b'{"id": "evt_1", "type": 7}', "envelope has no string 'type'"),
        (b'{"id": "evt_1", "type": "Role Created"}', "event type is not a valid topic name"),
        (b'{"id": "evt_1", "type": "role/created"}', "event type is not a valid topic name"),
        (json.dumps({"id": "e", "type": "a" * 250}).encode(), "event type is not a valid topic name"),
    ],
)
def test_unroutable_bodies_are_malformed_with_a_reason(body, reason):
    with pytest.raises(MalformedDelivery) as caught:
        build_record(VerifiedDelivery("msg_1", "1760000000", body), topic_prefix="scalekit.", mode="binary")
    assert caught.value.reason == reason


def test_the_dead_letter_record_keeps_the_raw_body_and_says_why():
    raw = VerifiedDelivery("msg_7", "1760000000", b"\x7bnot json")
    message = deadletter_message(raw, topic="scalekit.deadletter", reason="body is not JSON")
    assert (message.topic, message.key, message.value) == ("scalekit.deadletter", b"msg_7", b"\x7bnot json")
    assert dict(message.headers) == {
        "webhook-id": b"msg_7",
        "webhook-timestamp": b"1760000000",
        "deadletter-reason": b"body is not JSON",
    }


def test_a_dead_letter_keeps_the_signature_that_verified_the_delivery():
    """Enough to verify it again later (`replay`): the matching entry, an HMAC, not a secret."""
    signed = VerifiedDelivery("msg_7", "1760000000", b"{}", signature="v1,c2lnbmF0dXJl")
    message = deadletter_message(signed, topic="scalekit.deadletter", reason="why")
    assert dict(message.headers)["webhook-signature"] == b"v1,c2lnbmF0dXJl"


def test_a_replayed_event_says_when_beside_the_webhook_delivery_it_came_from():
    envelope = sample("organization.created")
    original = build_record(delivery(envelope, "msg_9"), topic_prefix="scalekit.", mode="binary").message
    replayed = build_record(
        Replayed(delivery(envelope, "msg_9"), "2026-11-30T12:00:00Z"), topic_prefix="scalekit.", mode="binary"
    )
    event = ce_kafka.from_binary(as_ce_message(replayed), JSONFormat())
    assert (event.get_extension("replayedat"), event.get_extension("webhookid")) == ("2026-11-30T12:00:00Z", "msg_9")
    assert dict(replayed.message.headers) == dict(original.headers) | {"ce_replayedat": b"2026-11-30T12:00:00Z"}
    assert (replayed.message.topic, replayed.message.key, replayed.message.value) == (
        original.topic, original.key, original.value
    )


def test_a_replayed_event_in_structured_mode_carries_the_same_mark():
    envelope = sample("organization.created")
    original = build_record(delivery(envelope, "msg_9"), topic_prefix="scalekit.", mode="structured").message
    replayed = build_record(
        Replayed(delivery(envelope, "msg_9"), "2026-11-30T12:00:00Z"), topic_prefix="scalekit.", mode="structured"
    ).message
    assert json.loads(replayed.value) == json.loads(original.value) | {"replayedat": "2026-11-30T12:00:00Z"}


def test_key_lookup_falls_through_to_the_environment():
    assert partition_key({"environment_id": "env_1", "data": {"organization": "Acme Corp"}}) == "env_1"
    assert partition_key({"organization_id": "", "data": {"organization_id": "org_2"}}) == "org_2"
    assert partition_key({"data": None}) is None


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_tail_describes_a_record_on_one_line_with_time_type_key_id_and_data(mode):
    envelope = sample("organization.directory.user_created")
    message = build_record(delivery(envelope), topic_prefix="scalekit.", mode=mode).message

    line = describe(message.topic, "scalekit.deadletter", 0, message.key, message.headers, message.value,
                    show_data=True)

    assert line.startswith(f"{envelope['occurred_at']}  organization.directory.user_created  ")
    assert f"  key={envelope['organization_id']}  id={envelope['id']}  {{" in line
    assert "\n" not in line and len(line) < 260


@pytest.mark.parametrize(
    "occurred_at",
    ["yesterday", "٢٠٢٦-01-01T00:00:00Z", "2026-13-45T99:99:99Z", "2026-02-29T00:00:00Z", "2026-04-31T12:00:00Z",
     "2026-01-01T24:00:00Z", "2026-01-01T12:60:00Z", "2026-01-01T12:00:61Z", "2026-01-01T12:00:00+24:00",
     "2026-01-01 12:00:00Z", "2026-01-01T12:00:00", 1760000000, None],
)
def test_an_occurred_at_no_cloudevents_consumer_takes_is_dead_lettered_with_a_reason(occurred_at):
    envelope = sample("organization.created") | {"occurred_at": occurred_at}
    with pytest.raises(MalformedDelivery) as caught:
        build_record(delivery(envelope), topic_prefix="scalekit.", mode="binary")
    assert caught.value.reason == "occurred_at is not an RFC 3339 date and time"


@pytest.mark.parametrize(
    "occurred_at",
    ["2028-02-29T00:00:00Z", "2026-06-30T23:59:60Z", "2026-01-01t12:00:00.123456789z", "2026-01-01T12:00:00-09:30",
     "2024-11-03T01:59:59.5+23:59"],
)
def test_every_real_rfc3339_time_becomes_ce_time_as_sent(occurred_at):
    envelope = sample("organization.created") | {"occurred_at": occurred_at}
    record = build_record(delivery(envelope), topic_prefix="scalekit.", mode="binary")
    assert dict(record.message.headers)["ce_time"] == occurred_at.encode()


@pytest.mark.parametrize(
    ("topic", "is_one"),
    [
        ("scalekit.user.created", True),
        ("scalekit.organization.directory.user_created", True),
        ("scalekit.dedup-receipts", False),  # the release's own topics have a '-'
        ("scalekit.backfill-state", False),
        ("other.user.created", False),
    ],
)
def test_event_topics_are_told_from_the_releases_own(topic, is_one):
    assert is_event_topic("scalekit.", topic) is is_one
