"""Every row of the response table (docs/how-it-works.md), checked by reading the real broker back."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from bridge.dev.samples import sample, sample_types
from bridge.envelope import partition_key, rebuild_delivery
from tests.helpers import signed_headers
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration

OTHER_SECRET = "whsec_" + base64.b64encode(b"the-next-secret-in-the-rotation!").decode()


def envelope(event_type: str = "organization.directory.user_created", **changes):
    return sample(event_type) | changes


async def test_a_verified_delivery_is_published_then_answered_201(start_bridge, kafka):
    running = await start_bridge()
    delivery = envelope()

    status, answer = await running.deliver(delivery, webhook_id="msg_published")

    assert (status, answer) == (201, {"received": True, "outcome": "published"})
    (record,) = await kafka.read_all(running.topic(delivery["type"]))
    assert record.key == delivery["organization_id"].encode()
    event = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value), JSONFormat()
    )
    assert (event.get_id(), event.get_type(), event.get_data()) == (delivery["id"], delivery["type"], delivery["data"])
    assert record.header("ce_webhookid") == b"msg_published"
    assert rebuild_delivery(record.headers, record.value) == delivery


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd", "snappy"])
async def test_every_offered_compression_writes_records_consumers_read_back(start_bridge, kafka, codec):
    running = await start_bridge(KAFKA_COMPRESSION_TYPE=codec)
    delivery = envelope(id=f"evt_{codec}")

    assert (await running.deliver(delivery))[0] == 201

    (record,) = await kafka.read_all(running.topic(delivery["type"]))
    assert rebuild_delivery(record.headers, record.value) == delivery


async def test_a_topic_is_created_on_first_use_with_the_configured_partitions(start_bridge, kafka):
    running = await start_bridge(BRIDGE_TOPIC_PARTITIONS="4")
    assert (await running.deliver(envelope("role.created")))[0] == 201
    assert await kafka.partitions(running.topic("role.created")) == [0, 1, 2, 3]


async def test_replicas_creating_the_same_new_topics_at_once_all_publish(start_bridge, kafka):
    """Every replica of a new release meets each topic for the first time together: the ones whose creation
    lost the race (the topic exists, the broker does not serve it yet) still publish, never dead-letter."""
    replicas = [await start_bridge() for _ in range(4)]
    types = sample_types()

    answers = await asyncio.gather(*(
        replica.deliver(envelope(event_type, id=f"evt_{n}_{event_type}"))
        for n, replica in enumerate(replicas)
        for event_type in types
    ))

    assert [answer for _, answer in answers] == [{"received": True, "outcome": "published"}] * len(answers)
    for event_type in types:
        assert len(await kafka.read_all(replicas[0].topic(event_type))) == len(replicas)


async def test_replication_above_the_broker_count_is_clamped_with_a_warning(start_bridge, kafka, caplog):
    running = await start_bridge(BRIDGE_TOPIC_REPLICATION="3")
    with caplog.at_level(logging.WARNING, logger="bridge.kafka.producer"):
        assert (await running.deliver(envelope("role.updated")))[0] == 201
    assert len(await kafka.read_all(running.topic("role.updated"))) == 1
    assert any("BRIDGE_TOPIC_REPLICATION=3" in message for message in caplog.messages)


async def test_every_documented_type_lands_in_their_topic_with_their_key(start_bridge, kafka):
    running = await start_bridge()
    for event_type in sample_types():
        assert (await running.deliver(sample(event_type)))[0] == 201, event_type

    for event_type in sample_types():
        (record,) = await kafka.read_all(running.topic(event_type))
        assert record.key == partition_key(sample(event_type)).encode(), event_type
        assert rebuild_delivery(record.headers, record.value) == sample(event_type)


async def test_a_redelivery_already_acknowledged_is_201_and_writes_nothing(start_bridge, kafka):
    running = await start_bridge()
    delivery = envelope()
    first = await running.deliver(delivery, webhook_id="msg_twice")
    again = await running.deliver(delivery, webhook_id="msg_twice")

    assert first == (201, {"received": True, "outcome": "published"})
    assert again == (201, {"received": True, "outcome": "duplicate"})
    assert len(await kafka.read_all(running.topic(delivery["type"]))) == 1


async def test_concurrent_copies_of_one_delivery_write_one_record(start_bridge, kafka):
    running = await start_bridge()
    delivery = envelope()
    answers = await asyncio.gather(*(running.deliver(delivery, webhook_id="msg_racing") for _ in range(5)))

    assert [status for status, _ in answers] == [201] * 5
    assert len(await kafka.read_all(running.topic(delivery["type"]))) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"this is not json", "body is not JSON"),
        (b'["an", "array"]', "body is not a JSON object"),
        (b'{"type": "role.created"}', "envelope has no string 'id'"),
        (b'{"id": "evt_1", "type": "Not A Topic!"}', "event type is not a valid topic name"),
    ],
)
async def test_a_verified_but_malformed_delivery_is_dead_lettered_then_201(start_bridge, kafka, body, reason):
    running = await start_bridge()
    status, answer = await running.deliver(body, webhook_id="msg_malformed")

    assert (status, answer) == (201, {"received": True, "outcome": "deadlettered"})
    (record,) = await kafka.read_all(running.deadletter_topic)
    assert record.value == body
    assert record.header("webhook-id") == b"msg_malformed"
    assert record.header("deadletter-reason") == reason.encode()
    assert record.header("webhook-timestamp").isdigit()
    assert await kafka.read_all(running.topic("role.created")) == []


async def test_an_unverifiable_delivery_is_401_and_nothing_is_written_anywhere(start_bridge, kafka):
    running = await start_bridge()
    wrong_secret = "whsec_" + base64.b64encode(b"an attacker's guess at a secret!").decode()
    delivery = envelope("role.deleted")

    status, answer = await running.deliver(delivery, secret=wrong_secret)

    assert (status, answer["error"]) == (401, "no_matching_signature")
    assert await kafka.read_all(running.topic("role.deleted")) == []
    assert await kafka.read_all(running.deadletter_topic) == []


async def test_an_oversized_delivery_is_413_and_nothing_is_written(start_bridge, kafka):
    running = await start_bridge(BRIDGE_MAX_BODY_BYTES="2048")
    delivery = envelope("role.created", data={"padding": "x" * 4096})

    status, answer = await running.deliver(delivery)

    assert (status, answer["error"]) == (413, "payload_too_large")
    assert await kafka.read_all(running.topic("role.created")) == []


async def test_a_write_that_kafka_cannot_take_in_time_is_503_with_retry_after(start_bridge, kafka):
    """With topic creation off and no topic, the broker never acknowledges: 503 inside the timeout."""
    running = await start_bridge(BRIDGE_CREATE_TOPICS="false", BRIDGE_PUBLISH_TIMEOUT="1")
    body = json.dumps(envelope("permission.created")).encode()

    started = asyncio.get_running_loop().time()
    response = await running.client.post("/webhooks/scalekit", data=body, headers=signed_headers(SECRET, body))
    elapsed = asyncio.get_running_loop().time() - started

    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert (await response.json())["error"] == "kafka_unavailable"
    assert elapsed < 5, "the answer must come well inside Scalekit's request deadline"
    assert await kafka.read_all(running.topic("permission.created")) == []


async def test_either_secret_works_during_rotation(start_bridge, kafka):
    running = await start_bridge(SCALEKIT_WEBHOOK_SECRET=f"{SECRET} {OTHER_SECRET}")
    first = envelope("role.created", id="evt_old_secret")
    second = envelope("role.created", id="evt_new_secret")

    assert (await running.deliver(first, secret=SECRET))[0] == 201
    assert (await running.deliver(second, secret=OTHER_SECRET))[0] == 201
    ids = [r.header("ce_id").decode() for r in await kafka.read_all(running.topic("role.created"))]
    assert sorted(ids) == ["evt_new_secret", "evt_old_secret"]


async def test_one_organizations_events_stay_in_order_in_one_partition(start_bridge, kafka):
    running = await start_bridge(BRIDGE_TOPIC_PARTITIONS="3")
    organizations = [f"org_{n}" for n in range(4)]
    sent: dict[str, list[str]] = {org: [] for org in organizations}
    for n in range(60):
        org = organizations[n % len(organizations)]
        event_id = f"evt_{n:03d}"
        delivery = envelope(organization_id=org, id=event_id)
        delivery["data"] = delivery["data"] | {"organization_id": org}
        assert (await running.deliver(delivery))[0] == 201
        sent[org].append(event_id)

    records = await kafka.read_all(running.topic("organization.directory.user_created"))
    for org in organizations:
        mine = [r for r in records if r.key == org.encode()]
        assert len({r.partition for r in mine}) == 1, f"{org} was spread over partitions"
        assert [r.header("ce_id").decode() for r in sorted(mine, key=lambda r: r.offset)] == sent[org]
    assert len({r.partition for r in records}) > 1, "four organizations should not all hash to one partition"


async def test_structured_mode_writes_whole_cloudevents(start_bridge, kafka):
    running = await start_bridge(BRIDGE_CLOUDEVENTS_MODE="structured")
    delivery = envelope("user.login")
    assert (await running.deliver(delivery))[0] == 201

    (record,) = await kafka.read_all(running.topic("user.login"))
    event = ce_kafka.from_structured(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value), JSONFormat()
    )
    assert record.header("content-type") == b"application/cloudevents+json"
    assert event.get_id() == delivery["id"]
    assert record.key == delivery["organization_id"].encode()
    assert rebuild_delivery(record.headers, record.value) == delivery


async def test_readiness_is_up_while_kafka_answers(start_bridge):
    running = await start_bridge()
    response = await running.admin.get("/readyz")
    assert response.status == 200 and (await response.json())["kafka"] == "reachable"


async def test_the_first_delivery_to_a_new_topic_waits_for_its_leaders_and_logs_no_retries(start_bridge, caplog):
    running = await start_bridge(BRIDGE_TOPIC_PARTITIONS="6")
    with caplog.at_level(logging.INFO):
        for event_type in ("role.created", "role.updated", "organization.created"):
            assert (await running.deliver(sample(event_type)))[0] == 201

    complaints = [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING]
    assert complaints == [], [r.getMessage() for r in complaints]


async def test_a_rotated_webhook_secret_file_takes_effect_without_a_restart(start_bridge, kafka, tmp_path):
    """Old and new listed: both sign; the old one removed: only the new one does. No restart between."""
    new = "whsec_" + base64.b64encode(b"the-next-secret-after-rotation!!").decode()
    path = tmp_path / "webhook-secret"
    path.write_text(SECRET + "\n")
    running = await start_bridge(SCALEKIT_WEBHOOK_SECRET="", SCALEKIT_WEBHOOK_SECRET_FILE=str(path))

    def rotate(text: str) -> None:
        staged = tmp_path / "staged"
        staged.write_text(text + "\n")
        staged.replace(path)  # atomically, as the kubelet swaps a Secret's files

    async def status_within(secret: str, wanted: int, seconds: float = 15.0) -> int:
        """Deliver signed with `secret` until it is answered `wanted` (the bridge looks every 5 s)."""
        for _ in range(int(seconds / 0.5)):
            status, _ = await running.deliver(sample("role.created") | {"id": f"evt_{len(accepted)}"}, secret=secret)
            if status == 201:
                accepted.append(f"evt_{len(accepted)}")
            if status == wanted:
                return status
            await asyncio.sleep(0.5)
        return status

    accepted: list[str] = []
    assert await status_within(SECRET, 201, seconds=0.5) == 201
    assert await status_within(new, 401, seconds=0.5) == 401

    rotate(f"{SECRET} {new}")
    assert await status_within(new, 201) == 201
    assert await status_within(SECRET, 201, seconds=0.5) == 201  # both listed: the old one still signs

    rotate(new)
    assert await status_within(SECRET, 401) == 401
    assert await status_within(new, 201, seconds=0.5) == 201

    records = await kafka.read_all(running.topic("role.created"))
    assert [record.header("ce_id").decode() for record in records] == accepted  # every 201 is in Kafka
