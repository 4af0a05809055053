"""BRIDGE_SCHEMA_VALIDATION off|warn|enforce, each outcome read back from the real broker."""

from __future__ import annotations

import logging

import pytest

from bridge.contract import Contract
from bridge.dev.samples import sample
from bridge.envelope import rebuild_delivery

pytestmark = pytest.mark.integration

CONTRACT = Contract.load()
USER_CREATED = "organization.directory.user_created"


def off_contract() -> dict:
    """A documented type whose data breaks its schema: the email is a number."""
    delivery = sample(USER_CREATED)
    delivery["data"]["email"] = 12345
    return delivery


def counter(running, name: str, event_type: str) -> float:
    value = running.bridge.metrics.registry.get_sample_value(f"{name}_total", {"event_type": event_type})
    return value or 0.0


@pytest.mark.parametrize("mode", ["off", "warn", "enforce"])
async def test_a_valid_event_names_its_schema_in_ce_dataschema(start_bridge, kafka, mode):
    running = await start_bridge(BRIDGE_SCHEMA_VALIDATION=mode)
    assert (await running.deliver(sample(USER_CREATED)))[0] == 201

    (record,) = await kafka.read_all(running.topic(USER_CREATED))
    assert record.header("ce_dataschema") == CONTRACT.dataschema(USER_CREATED).encode()
    assert rebuild_delivery(record.headers, record.value) == sample(USER_CREATED)


async def test_structured_mode_carries_the_dataschema_attribute(start_bridge, kafka):
    running = await start_bridge(BRIDGE_CLOUDEVENTS_MODE="structured")
    assert (await running.deliver(sample("role.created")))[0] == 201

    (record,) = await kafka.read_all(running.topic("role.created"))
    assert b'"dataschema":"urn:scalekit-bridge:schema:v1:data:role.created"' in record.value


async def test_warn_publishes_an_invalid_event_without_claiming_a_schema_and_counts_it(
    start_bridge, kafka, caplog
):
    running = await start_bridge()  # warn is the default
    delivery = off_contract()
    with caplog.at_level(logging.INFO, logger="bridge.delivery"):
        assert (await running.deliver(delivery))[0] == 201

    (record,) = await kafka.read_all(running.topic(USER_CREATED))
    assert rebuild_delivery(record.headers, record.value) == delivery
    assert record.header("ce_dataschema") is None
    assert counter(running, "scalekit_bridge_schema_violations", USER_CREATED) == 1
    (line,) = [r.delivery for r in caplog.records if hasattr(r, "delivery")]
    assert (line["outcome"], line["schema"]) == ("published", "invalid")
    assert line["schema_violation"] == '/data/email: must be null or string'
    assert await kafka.read_all(running.deadletter_topic) == []


async def test_enforce_dead_letters_an_invalid_event_with_the_violation_as_reason(start_bridge, kafka, caplog):
    running = await start_bridge(BRIDGE_SCHEMA_VALIDATION="enforce")
    delivery = off_contract()
    with caplog.at_level(logging.INFO, logger="bridge.delivery"):
        status, answer = await running.deliver(delivery, webhook_id="msg_off_contract")

    assert (status, answer) == (201, {"received": True, "outcome": "deadlettered"})
    (record,) = await kafka.read_all(running.deadletter_topic)
    assert record.header("deadletter-reason") == b'schema violation: /data/email: must be null or string'
    assert record.header("webhook-id") == b"msg_off_contract"
    assert await kafka.read_all(running.topic(USER_CREATED)) == []
    assert counter(running, "scalekit_bridge_schema_violations", USER_CREATED) == 1
    (line,) = [r.delivery for r in caplog.records if hasattr(r, "delivery")]
    assert (line["outcome"], line["schema"], line["event_type"]) == ("deadlettered", "invalid", USER_CREATED)
    assert line["reason"] == 'schema violation: /data/email: must be null or string'
    assert "schema_violation" not in line


async def test_enforce_also_checks_the_envelope(start_bridge, kafka):
    running = await start_bridge(BRIDGE_SCHEMA_VALIDATION="enforce")
    delivery = sample("role.created")
    del delivery["environment_id"]
    assert (await running.deliver(delivery))[0] == 201

    (record,) = await kafka.read_all(running.deadletter_topic)
    assert record.header("deadletter-reason") == b"schema violation: /: missing required 'environment_id'"


async def test_off_publishes_an_invalid_event_unchecked_and_counts_nothing(start_bridge, kafka):
    running = await start_bridge(BRIDGE_SCHEMA_VALIDATION="off")
    assert (await running.deliver(off_contract()))[0] == 201

    (record,) = await kafka.read_all(running.topic(USER_CREATED))
    assert record.header("ce_dataschema") == CONTRACT.dataschema(USER_CREATED).encode()
    assert counter(running, "scalekit_bridge_schema_violations", USER_CREATED) == 0


@pytest.mark.parametrize("mode", ["off", "warn", "enforce"])
async def test_an_unknown_event_type_is_published_to_its_own_topic_and_counted(start_bridge, kafka, mode):
    running = await start_bridge(BRIDGE_SCHEMA_VALIDATION=mode)
    delivery = sample("organization.directory_enabled") | {"type": "organization.directory_created"}
    assert (await running.deliver(delivery))[0] == 201

    (record,) = await kafka.read_all(running.topic("organization.directory_created"))
    assert rebuild_delivery(record.headers, record.value) == delivery
    assert record.header("ce_dataschema") is None
    assert counter(running, "scalekit_bridge_unknown_event_types", "organization.directory_created") == 1
    assert await kafka.read_all(running.deadletter_topic) == []


async def test_past_the_cap_an_undocumented_type_is_dead_lettered_and_gets_no_topic(start_bridge, kafka):
    running = await start_bridge(BRIDGE_MAX_UNKNOWN_TYPES="1")
    first = sample("organization.directory_enabled") | {"id": "evt_first", "type": "organization.directory_created"}
    second = sample("organization.directory_enabled") | {"id": "evt_second", "type": "organization.directory_renamed"}

    assert (await running.deliver(first))[1]["outcome"] == "published"
    assert (await running.deliver(second))[1]["outcome"] == "deadlettered"

    assert len(await kafka.read_all(running.topic("organization.directory_created"))) == 1
    assert running.topic("organization.directory_renamed") not in await kafka.topics()
    (letter,) = await kafka.read_all(running.deadletter_topic)
    assert letter.header("deadletter-reason").startswith(b"undocumented event type past the 1")
    assert counter(running, "scalekit_bridge_unknown_event_types", "other") == 1
