"""The example consumer's store: exactly once per event, newest wins, in whatever order Kafka hands them over."""

from __future__ import annotations

import json
import random

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from bridge.dev.samples import sample
from bridge.envelope import build_record
from bridge.verify import VerifiedDelivery
from examples.directory_sync.store import DirectoryStore
from examples.directory_sync.story import expected_directory, provisioning_story

ORG = "org_story"


def as_event(envelope: dict, mode: str = "binary"):
    """The CloudEvent a consumer decodes from the record the bridge writes for this delivery."""
    delivery = VerifiedDelivery("msg_1", "1760000000", json.dumps(envelope).encode())
    message = build_record(delivery, topic_prefix="scalekit.", mode=mode).message
    return ce_kafka.from_kafka(
        ce_kafka.KafkaMessage(headers=dict(message.headers), key=message.key, value=message.value), JSONFormat()
    )


@pytest.fixture
def store():
    store = DirectoryStore()
    yield store
    store.close()


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_the_story_in_order_leaves_the_expected_directory(store, mode):
    for envelope in provisioning_story(ORG):
        assert store.apply(as_event(envelope, mode)) == "applied"
    assert store.snapshot(ORG) == expected_directory()


@pytest.mark.parametrize("seed", range(40))
def test_any_interleaving_of_the_topics_leaves_the_same_directory(store, seed):
    events = [as_event(envelope) for envelope in provisioning_story(ORG)]
    random.Random(seed).shuffle(events)
    for event in events:
        store.apply(event)
    assert store.snapshot(ORG) == expected_directory()


def test_a_redelivered_event_changes_nothing(store):
    events = [as_event(envelope) for envelope in provisioning_story(ORG)]
    for event in events:
        store.apply(event)
    jane_created = events[3]

    assert store.apply(jane_created) == "duplicate"
    assert store.snapshot(ORG) == expected_directory()
    assert len(store.processed()) == len(events)


def test_an_older_event_arriving_late_is_recorded_as_stale(store):
    created, updated = (as_event(e) for e in provisioning_story(ORG)[4:6])
    assert store.apply(updated) == "applied"
    assert store.apply(created) == "stale"
    assert store.snapshot(ORG).users["diruser_john"].name == "John Roe-Smith"
    assert store.processed()[created.get_id()] == "stale"


def test_a_deleted_user_comes_back_only_through_a_newer_event(store):
    story = provisioning_story(ORG)
    for envelope in story:
        store.apply(as_event(envelope))
    recreated = story[3] | {"id": "evt_recreated", "occurred_at": "2026-03-02T10:00:00Z"}

    assert store.apply(as_event(recreated)) == "applied"
    assert "diruser_jane" in store.snapshot(ORG).users


def test_a_deleted_group_has_no_members(store):
    story = provisioning_story(ORG)
    for envelope in story:
        store.apply(as_event(envelope))
    deleted = sample("organization.directory.group_deleted") | {"id": "evt_gone", "occurred_at": "2026-03-02T10:00:00Z"}
    deleted["data"] = deleted["data"] | {"id": "dirgroup_design", "organization_id": ORG}

    assert store.apply(as_event(deleted)) == "applied"
    assert store.snapshot(ORG).users["diruser_john"].groups == ()
    assert "dirgroup_design" not in store.snapshot(ORG).groups


def test_an_event_type_it_does_not_know_is_skipped_not_fatal(store):
    unknown = sample("organization.directory_enabled") | {"type": "organization.directory_created", "id": "evt_new"}
    assert store.apply(as_event(unknown)) == "ignored"
    assert store.processed() == {"evt_new": "ignored"}
    assert store.snapshot(unknown["organization_id"]).directory_enabled is None


def test_organizations_do_not_see_each_others_directories(store):
    for envelope in provisioning_story(ORG):
        store.apply(as_event(envelope))
    other = store.snapshot("org_other")
    assert (other.directory_enabled, other.users, other.groups) == (None, {}, {})
