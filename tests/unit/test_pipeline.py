"""A webhook delivery's way through the pipeline, with a recording publisher in place of Kafka.

Verify, claim against redelivery, write: what each step lets through, what it writes, and the
receipt it returns. That a 201 means a record in a real broker is proven in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from bridge.core import Outcome
from bridge.dev.samples import sample
from bridge.errors import PublishFailed, VerificationFailed
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.redelivery import RedeliveryCache
from bridge.verify import SigningKey, Verifier
from tests.fakes import DEADLETTER, RecordingProducer, writer_for
from tests.helpers import signed_headers

SECRET = "whsec_" + "cGlwZWxpbmUtdGVzdC1zZWNyZXQtMzItYnl0ZXMhIQ=="
BODY = json.dumps(sample("organization.directory.user_created")).encode()


def pipeline_for(producer: RecordingProducer, metrics: Metrics | None = None) -> Pipeline:
    return Pipeline(
        verifier=Verifier((SigningKey.from_secret(SECRET),), tolerance_seconds=300),
        cache=RedeliveryCache(max_entries=100, ttl_seconds=60),
        writer=writer_for(producer, metrics),
    )


def delivered(metrics: Metrics, outcome: Outcome, event_type: str) -> float:
    value = metrics.registry.get_sample_value(
        "scalekit_bridge_deliveries_total", {"outcome": outcome, "event_type": event_type}
    )
    return value or 0.0


async def test_a_verified_delivery_is_written_once_and_its_receipt_says_where():
    producer = RecordingProducer()
    receipt = await pipeline_for(producer).handle(signed_headers(SECRET, BODY, webhook_id="msg_1"), BODY)

    (message,) = producer.handed
    assert message.topic == "scalekit.organization.directory.user_created"
    assert json.loads(message.value or b"") == sample("organization.directory.user_created")["data"]
    assert (receipt.outcome, receipt.webhook_id, receipt.event_type) == (
        Outcome.PUBLISHED, "msg_1", "organization.directory.user_created"
    )
    assert receipt.ack is not None and (receipt.ack.topic, receipt.ack.offset) == (message.topic, 0)


async def test_a_delivery_signed_with_another_secret_is_refused_and_nothing_is_written():
    producer, metrics = RecordingProducer(), Metrics(process_metrics=False)
    other = "whsec_" + "b3RoZXItc2VjcmV0LWZvci10aGUtcGlwZWxpbmUtdGVzdA=="

    with pytest.raises(VerificationFailed) as refused:
        await pipeline_for(producer, metrics).handle(signed_headers(other, BODY), BODY)

    assert refused.value.code == "no_matching_signature"
    assert producer.handed == []
    assert delivered(metrics, Outcome.REJECTED, "unknown") == 1.0


async def test_a_redelivery_of_an_acknowledged_webhook_id_writes_nothing_new():
    producer = RecordingProducer()
    pipeline = pipeline_for(producer)
    headers = signed_headers(SECRET, BODY, webhook_id="msg_again")

    first = await pipeline.handle(headers, BODY)
    again = await pipeline.handle(headers, BODY)

    assert (first.outcome, again.outcome) == (Outcome.PUBLISHED, Outcome.DUPLICATE)
    assert len(producer.handed) == 1


async def test_a_write_that_failed_does_not_count_as_seen_so_the_retry_is_written():
    producer, metrics = RecordingProducer(), Metrics(process_metrics=False)
    pipeline = pipeline_for(producer, metrics)
    headers = signed_headers(SECRET, BODY, webhook_id="msg_retried")

    producer.down = True
    with pytest.raises(PublishFailed):
        await pipeline.handle(headers, BODY)
    producer.down = False
    retried = await pipeline.handle(headers, BODY)

    assert retried.outcome == Outcome.PUBLISHED
    assert len(producer.handed) == 1
    event_type = "organization.directory.user_created"
    assert (delivered(metrics, Outcome.FAILED, event_type), delivered(metrics, Outcome.PUBLISHED, event_type)) == (1, 1)


async def test_a_copy_arriving_while_the_first_awaits_its_ack_waits_and_is_a_duplicate_once_acked():
    producer = RecordingProducer()
    producer.hold = asyncio.Event()
    pipeline = pipeline_for(producer)
    headers = signed_headers(SECRET, BODY, webhook_id="msg_concurrent")

    first = asyncio.create_task(pipeline.handle(headers, BODY))
    copy = asyncio.create_task(pipeline.handle(headers, BODY))
    await asyncio.sleep(0.05)
    assert not first.done() and not copy.done()  # neither may answer before the ack exists
    producer.hold.set()

    assert {(await first).outcome, (await copy).outcome} == {Outcome.PUBLISHED, Outcome.DUPLICATE}
    assert len(producer.handed) == 1


async def test_a_verified_body_that_is_no_event_is_dead_lettered_raw_with_its_reason():
    producer = RecordingProducer()
    body = b'{"id": "evt_1"}'
    receipt = await pipeline_for(producer).handle(signed_headers(SECRET, body, webhook_id="msg_bad"), body)

    (letter,) = producer.handed
    assert (letter.topic, letter.value, receipt.outcome) == (DEADLETTER, body, Outcome.DEADLETTERED)
    assert dict(letter.headers)["deadletter-reason"].decode() == "envelope has no string 'type'"


def unknown_type_pipeline(producer: RecordingProducer, metrics: Metrics, cap: int) -> Pipeline:
    return Pipeline(
        verifier=Verifier((SigningKey.from_secret(SECRET),), tolerance_seconds=300),
        cache=RedeliveryCache(max_entries=100, ttl_seconds=60),
        writer=writer_for(producer, metrics, max_unknown_types=cap),
    )


async def deliver_type(pipeline: Pipeline, event_type: str, n: int):
    body = json.dumps(sample("role.created") | {"id": f"evt_{n}", "type": event_type}).encode()
    return await pipeline.handle(signed_headers(SECRET, body, webhook_id=f"msg_{n}"), body)


async def test_undocumented_types_get_topics_up_to_the_cap_and_dead_letters_past_it():
    producer, metrics = RecordingProducer(), Metrics(process_metrics=False)
    pipeline = unknown_type_pipeline(producer, metrics, cap=2)

    outcomes = [
        (await deliver_type(pipeline, event_type, n)).outcome
        for n, event_type in enumerate(["role.renamed", "role.merged", "role.split", "role.renamed", "role.created"])
    ]

    assert outcomes == [Outcome.PUBLISHED, Outcome.PUBLISHED, Outcome.DEADLETTERED, Outcome.PUBLISHED,
                        Outcome.PUBLISHED]
    assert [m.topic for m in producer.handed] == [
        "scalekit.role.renamed", "scalekit.role.merged", DEADLETTER, "scalekit.role.renamed", "scalekit.role.created"
    ]
    assert dict(producer.handed[2].headers)["deadletter-reason"].startswith(b"undocumented event type past the 2")
    (family,) = [f for f in metrics.registry.collect() if f.name == "scalekit_bridge_unknown_event_types"]
    unknown = {sample.labels["event_type"]: sample.value for sample in family.samples if sample.name.endswith("_total")}
    assert unknown == {"other": 1.0, "role.renamed": 2.0, "role.merged": 1.0}


async def test_a_cap_of_zero_dead_letters_every_undocumented_type_and_no_documented_one():
    producer, metrics = RecordingProducer(), Metrics(process_metrics=False)
    pipeline = unknown_type_pipeline(producer, metrics, cap=0)

    assert (await deliver_type(pipeline, "role.renamed", 1)).outcome == Outcome.DEADLETTERED
    assert (await deliver_type(pipeline, "role.created", 2)).outcome == Outcome.PUBLISHED
    assert dict(producer.handed[0].headers)["deadletter-reason"] == (
        b"undocumented event type (BRIDGE_MAX_UNKNOWN_TYPES=0 publishes none)"
    )


async def test_a_delivery_cancelled_while_awaiting_its_ack_is_counted_and_logged(caplog):
    """The shutdown grace ran out (or the client went away) before Kafka answered: no 201, and it is said."""
    caplog.set_level(logging.INFO, logger="bridge.delivery")
    producer, metrics = RecordingProducer(), Metrics(process_metrics=False)
    producer.hold = asyncio.Event()  # the acknowledgement never comes
    handling = asyncio.create_task(pipeline_for(producer, metrics).handle(signed_headers(SECRET, BODY), BODY))
    while not producer.handed:
        await asyncio.sleep(0.01)

    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling

    assert delivered(metrics, Outcome.FAILED, "organization.directory.user_created") == 1.0
    (line,) = [record for record in caplog.records if record.name == "bridge.delivery"]
    assert line.getMessage() == "delivery failed"
    assert line.__dict__["delivery"]["reason"] == "cancelled while awaiting the broker's acknowledgement"
