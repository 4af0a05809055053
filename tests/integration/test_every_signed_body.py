"""Every validly signed body gets 201 with its record (or a dead letter) in Kafka; nothing loops on 503."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bridge.dev.samples import sample
from bridge.envelope import MAX_DEPTH

pytestmark = pytest.mark.integration


async def only_dead_letter(kafka, running, webhook_id: str) -> str:
    (record,) = await kafka.read_all(running.deadletter_topic)
    assert record.header("webhook-id") == webhook_id.encode()
    return record.header("deadletter-reason").decode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"id":"evt_1","type":"role.created","data":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}", "nested deeper"),
        (b'{"id":"evt_1","type":"role.created","data":{"n":NaN}}', "NaN and Infinity"),
        (b'{"id":"evt_1","type":"role.created","data":{"s":"\\ud800"}}', "lone surrogate escape"),
        (b'{"id":"evt_1","type":"role.created\\n","data":{}}', "not a valid topic name"),
        (b'{"id":"evt_1","type":"deadletter","data":{}}', "would be the dead-letter topic"),
    ],
)
async def test_a_signed_body_that_is_no_event_is_dead_lettered_with_its_reason(start_bridge, kafka, body, reason):
    running = await start_bridge()
    status, answer = await running.deliver(body, webhook_id="msg_hostile")

    assert (status, answer) == (201, {"received": True, "outcome": "deadlettered"})
    assert reason in await only_dead_letter(kafka, running, "msg_hostile")
    (record,) = await kafka.read_all(running.deadletter_topic)
    assert record.value == body


async def too_big_for_its_topic(running, kafka) -> tuple[str, dict]:
    """A topic an operator made with a 2 KiB limit, and a delivery inside the bridge's limit but over the topic's."""
    topic = await kafka.create_topic(running.topic("organization.directory.group_updated"),
                                     configs={"max.message.bytes": "2048"})
    delivery = sample("organization.directory.group_updated")
    delivery["data"]["description"] = "x" * 4000
    return topic, delivery


async def test_a_record_too_large_for_its_existing_topic_is_dead_lettered_not_retried(start_bridge, kafka):
    """The body fits the bridge's limit, but the topic an operator made takes less: no retry can help."""
    running = await start_bridge()
    topic, delivery = await too_big_for_its_topic(running, kafka)

    status, _ = await running.deliver(delivery, webhook_id="msg_too_big_for_topic")

    assert status == 201
    assert await kafka.read_all(topic) == []
    reason = await only_dead_letter(kafka, running, "msg_too_big_for_topic")
    assert reason.startswith("Kafka refused the record: the record is ") and "2048-byte limit" in reason


async def test_after_an_operator_raises_a_topics_limit_a_record_that_fits_now_is_published(start_bridge, kafka):
    """The limit read when the topic was first used is read again before a record is dead-lettered for it."""
    running = await start_bridge()
    topic, delivery = await too_big_for_its_topic(running, kafka)
    assert (await running.deliver(delivery | {"id": "evt_before"}))[1]["outcome"] == "deadlettered"

    await kafka.set_topic_config(topic, {"max.message.bytes": "65536"})
    status, answer = await running.deliver(delivery | {"id": "evt_after"})

    assert (status, answer["outcome"]) == (201, "published")
    assert [record.header("ce_id") for record in await kafka.read_all(topic)] == [b"evt_after"]


async def test_a_type_whose_topic_collides_with_an_existing_one_is_dead_lettered(start_bridge, kafka):
    """Kafka refuses `a.b` where `a_b` exists; the delivery must not loop on 503 for ever."""
    running = await start_bridge()
    await kafka.create_topic(running.topic("role_created"))

    status, _ = await running.deliver(sample("role.created"), webhook_id="msg_collides")

    assert status == 201
    assert "collides with an existing name" in await only_dead_letter(kafka, running, "msg_collides")


async def test_a_missing_topic_the_bridge_may_not_create_is_dead_lettered(start_bridge, kafka):
    running = await start_bridge(BRIDGE_CREATE_TOPICS="false")
    await kafka.create_topic(running.deadletter_topic)

    status, _ = await running.deliver(sample("role.deleted"), webhook_id="msg_no_topic")

    assert status == 201
    assert "does not exist and the bridge may not create it" in await only_dead_letter(kafka, running, "msg_no_topic")


async def test_a_big_extra_field_moved_into_headers_is_sized_on_the_real_record(start_bridge, kafka):
    """Top-level extras travel in a header; the record is sized as written, headers included."""
    running = await start_bridge(BRIDGE_MAX_BODY_BYTES="8192")
    topic = await kafka.create_topic(running.topic("permission.updated"), configs={"max.message.bytes": "6000"})
    delivery = sample("permission.updated") | {"display_name": "y" * 5800}

    status, _ = await running.deliver(json.dumps(delivery).encode(), webhook_id="msg_header_heavy")

    assert status == 201
    assert await kafka.read_all(topic) == []
    assert "6000-byte limit" in await only_dead_letter(kafka, running, "msg_header_heavy")


async def test_a_bug_while_mapping_a_verified_delivery_dead_letters_it_instead_of_answering_500(
    start_bridge, kafka, monkeypatch
):
    running = await start_bridge()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug whose message quotes the input: v1,c2VjcmV0")

    monkeypatch.setattr("bridge.pipeline.build_record", broken)
    status, _ = await running.deliver(sample("role.created"), webhook_id="msg_hits_a_bug")

    assert status == 201
    assert await only_dead_letter(kafka, running, "msg_hits_a_bug") == "internal error: RuntimeError"
    assert running.bridge.metrics.registry.get_sample_value("scalekit_bridge_internal_errors_total") == 1


TOPIC_AUTHORIZATION_FAILED = 29


@pytest.mark.parametrize("denied", ["CreateTopics", "DescribeConfigs"])
async def test_a_tight_acl_on_topic_admin_still_publishes_to_an_existing_topic(start_bridge, kafka, monkeypatch,
                                                                              denied):
    """Clusters that let the bridge write but not create topics or read their configs (MSK, Confluent ACLs)."""
    running = await start_bridge()
    topic = await kafka.create_topic(running.topic("organization.sso_deleted"))
    admin = running.bridge.publisher._admin

    async def refuse_creation(new_topics):
        return SimpleNamespace(topic_errors=[(t.name, TOPIC_AUTHORIZATION_FAILED, "denied") for t in new_topics])

    async def refuse_description(resources):
        return [SimpleNamespace(resources=[(TOPIC_AUTHORIZATION_FAILED, "denied", 2, r.name, []) for r in resources])]

    if denied == "CreateTopics":
        monkeypatch.setattr(admin, "create_topics", refuse_creation)
    else:
        monkeypatch.setattr(admin, "describe_configs", refuse_description)

    status, _ = await running.deliver(sample("organization.sso_deleted"), webhook_id=f"msg_acl_{denied}")

    assert status == 201
    (record,) = await kafka.read_all(topic)
    assert record.header("ce_webhookid") == f"msg_acl_{denied}".encode()
