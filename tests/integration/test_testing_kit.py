"""The test kit against the real broker: a consumer team's view of the bridge, through `bridge.testing`."""

from __future__ import annotations

import os

import pytest

from bridge.testing import docker_engine_answers, event_types, scalekit_event

pytestmark = pytest.mark.integration


def test_every_documented_type_sent_lands_where_the_kit_says_and_reads_back_as_a_cloudevent(scalekit_bridge):
    sent = {event_type: scalekit_event(event_type, organization_id="org_kit") for event_type in event_types()}
    for event_type, event in sent.items():
        delivered = scalekit_bridge.send(event)
        assert delivered.status == 201, event_type
        assert delivered.record is not None and delivered.record.topic == scalekit_bridge.topic_prefix + event_type

    read = {event.get_id(): event for event in scalekit_bridge.records("*")}
    for event_type, event in sent.items():
        cloudevent = read[event["id"]]
        assert (cloudevent.get_type(), cloudevent.get_data()) == (event_type, event["data"])
        assert cloudevent.get_extension("partitionkey") == "org_kit"


def test_records_take_a_glob_of_types(scalekit_bridge):
    user = scalekit_event("organization.directory.user_created", organization_id="org_glob")
    role = scalekit_event("role.created")
    for event in (user, role):
        assert scalekit_bridge.send(event).status == 201

    directory_ids = {event.get_id() for event in scalekit_bridge.records("organization.directory.*")}
    assert user["id"] in directory_ids and role["id"] not in directory_ids


def test_a_verified_but_malformed_delivery_is_reported_in_the_dead_letter_topic(start_scalekit_bridge):
    bridge = start_scalekit_bridge(BRIDGE_SCHEMA_VALIDATION="enforce")
    broken = scalekit_event("organization.directory.user_created", data={"active": "not a boolean"})

    delivered = bridge.send(broken)

    assert delivered.status == 201
    assert delivered.record is not None and delivered.record.topic == bridge.deadletter_topic
    assert [event.get_id() for event in bridge.records("organization.directory.user_created")] == []


@pytest.mark.skipif(
    not docker_engine_answers(), reason="no Docker engine answers here: the container test runs where one does"
)
def test_the_image_under_testcontainers_answers_and_publishes():  # pragma: no cover - needs Docker
    from testcontainers.core.network import Network
    from testcontainers.kafka import KafkaContainer

    from bridge.testing.container import ScalekitBridgeContainer

    image = os.environ.get("SCALEKIT_BRIDGE_IMAGE", "scalekit-bridge:latest")
    with (
        Network() as network,
        KafkaContainer().with_kraft().with_network(network).with_network_aliases("kafka") as kafka,
        ScalekitBridgeContainer(image, kafka=kafka, network=network) as bridge,
    ):
        event = scalekit_event("organization.created", organization_id="org_container")
        delivered = bridge.send(event)
        assert delivered.status == 201 and delivered.record is not None
        assert [e.get_id() for e in bridge.records("organization.created")] == [event["id"]]
