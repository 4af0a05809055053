"""`scalekit-bridge replay` against the real Kafka: dead letters come back once their cause is fixed.

Every command runs in its own process, as an operator would run it: the bridge that dead-lettered
the deliveries, each replay, and (where a record is compared) the bridge as it is now.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from bridge.envelope import organization_of
from tests.conftest import Record
from tests.fake_scalekit import sample_events
from tests.helpers import body_of, signed_headers
from tests.integration.conftest import SECRET, Run, run_command

NOW = datetime.now(UTC)
# The story's type: a release without its schema dead-letters it (enforce, undocumented types refused).
NEW_TYPE = "organization.directory.user_created"
OLD_TYPE = "organization.created"
STRICT = {"BRIDGE_SCHEMA_VALIDATION": "enforce", "BRIDGE_MAX_UNKNOWN_TYPES": "0"}
ORGANIZATIONS = ("org_alpha", "org_beta", "org_gamma")
WITHOUT_SCHEMA = ("-m", "tests.integration.release_without_schema", NEW_TYPE)


class ReplayCommand:
    """`python -m bridge replay ARGS` on the session broker, for the topics under `prefix`."""

    def __init__(self, kafka_bootstrap: str, prefix: str, **env: str) -> None:
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SCALEKIT_", "BRIDGE_", "KAFKA_"))},
            "SCALEKIT_WEBHOOK_SECRET": SECRET,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "BRIDGE_TOPIC_PREFIX": prefix,  # and so <prefix>deadletter
            **env,
        }

    def __call__(self, *args: str, **env: str) -> Run:
        return run_command("replay", args, self._env | env)


async def dead_lettered_by_a_release_without_the_schema(bridge_process, kafka, events: list[dict]):
    """Deliver `events` (webhook id `msg_<event id>`) to a bridge process that has no schema for NEW_TYPE,
    under STRICT, so that those of NEW_TYPE are dead-lettered; the process is gone when this returns."""
    old_release = bridge_process("serve", program=WITHOUT_SCHEMA, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap, **STRICT)
    await old_release.wait_for_readiness(200, timeout=60)
    for envelope in events:
        assert (await old_release.deliver(envelope, webhook_id=f"msg_{envelope['id']}"))[0] == 201
    old_release.kill()
    return old_release


def event_ids(records: list[Record]) -> list[str]:
    return [record.header("ce_id").decode() for record in records]  # type: ignore[union-attr]


def per_organization(records: list[Record]) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {}
    for record in records:
        order.setdefault(record.key.decode(), []).append(record.header("ce_id").decode())  # type: ignore[union-attr]
    return order


def without_replay_mark(record: Record) -> tuple[bytes | None, bytes | None, dict[str, bytes]]:
    headers = dict(record.headers)
    assert headers.pop("ce_replayedat", None) is not None
    return record.key, record.value, headers


async def test_events_dead_lettered_for_want_of_a_schema_are_published_once_the_schema_exists(
    bridge_process, start_bridge, kafka
):
    """The story: a release without a type's schema dead-letters it under enforce; the next release has the
    schema; replay publishes exactly those events, once, in each organization's order, as written today."""
    events = sample_events(24, start=NOW - timedelta(minutes=30), types=[NEW_TYPE, OLD_TYPE],
                           organizations=ORGANIZATIONS)
    old_release = await dead_lettered_by_a_release_without_the_schema(bridge_process, kafka, events)
    prefix = old_release.prefix
    dead = [e for e in events if e["type"] == NEW_TYPE]
    assert {r.header("webhook-id").decode() for r in await kafka.read_all(prefix + "deadletter")} == {
        f"msg_{e['id']}" for e in dead
    }
    assert await kafka.read_all(prefix + NEW_TYPE) == []

    run = ReplayCommand(kafka.bootstrap, prefix, **STRICT)("--since", "1h")

    assert run.returncode == 0, run.stderr
    assert run.summary == (
        "read 12, selected 12, already in their topics 0, replayed 12, still dead 0, unverified 0, unreadable 0, "
        "failed 0"
    )
    replayed = await kafka.read_all(prefix + NEW_TYPE)
    assert sorted(event_ids(replayed)) == sorted(e["id"] for e in dead)
    assert per_organization(replayed) == {
        organization: [e["id"] for e in dead if organization_of(e) == organization]
        for organization in ORGANIZATIONS
        if any(organization_of(e) == organization for e in dead)
    }
    # What the webhook path writes today for the same deliveries, apart from the replay mark.
    today = await start_bridge(**STRICT)
    for envelope in dead:
        assert (await today.deliver(envelope, webhook_id=f"msg_{envelope['id']}"))[0] == 201
    written_today = {r.header("ce_id"): r for r in await kafka.read_all(today.topic(NEW_TYPE))}
    for record in replayed:
        key, value, headers = without_replay_mark(record)
        reference = written_today[record.header("ce_id")]
        assert (key, value, headers) == (reference.key, reference.value, dict(reference.headers))
    # The dead letters stay where they were: replay reads, it does not move.
    assert len(await kafka.read_all(prefix + "deadletter")) == len(dead)


async def test_a_second_replay_publishes_nothing(bridge_process, kafka):
    """Every event the first run published is found in its topic by the second, which writes nothing."""
    events = sample_events(5, start=NOW - timedelta(minutes=20), types=[NEW_TYPE])
    old_release = await dead_lettered_by_a_release_without_the_schema(bridge_process, kafka, events)
    replay = ReplayCommand(kafka.bootstrap, old_release.prefix, **STRICT)
    first = replay("--since", "1h")
    assert first.summary.startswith("read 5, selected 5, already in their topics 0, replayed 5,"), first.stderr
    before = await kafka.read_all(old_release.prefix + NEW_TYPE)

    second = replay("--since", "1h")

    assert second.returncode == 0, second.stderr
    assert second.summary == (
        "read 5, selected 5, already in their topics 5, replayed 0, still dead 0, unverified 0, unreadable 0, "
        "failed 0"
    )
    assert await kafka.read_all(old_release.prefix + NEW_TYPE) == before


async def test_a_dry_run_lists_exactly_what_the_real_run_then_writes(bridge_process, kafka):
    events = sample_events(9, start=NOW - timedelta(minutes=20), types=[NEW_TYPE], organizations=ORGANIZATIONS)
    old_release = await dead_lettered_by_a_release_without_the_schema(bridge_process, kafka, events)
    replay = ReplayCommand(kafka.bootstrap, old_release.prefix, **STRICT)

    dry = replay("--since", "1h", "--organization", "org_beta", "--dry-run")
    real = replay("--since", "1h", "--organization", "org_beta")

    assert dry.returncode == real.returncode == 0, dry.stderr + real.stderr
    beta = [e for e in events if organization_of(e) == "org_beta"]
    assert dry.summary == (
        "dry run: read 9, selected 3, already in their topics 0, would replay 3, still dead 0, unverified 0, "
        "unreadable 0"
    )
    assert real.summary.startswith("read 9, selected 3, already in their topics 0, replayed 3,")
    written = await kafka.read_all(old_release.prefix + NEW_TYPE)
    assert dry.lines == [
        [r.header("ce_type").decode(), r.header("ce_id").decode(), r.topic, r.key.decode()]  # type: ignore[union-attr]
        for r in written
    ]
    assert event_ids(written) == [e["id"] for e in beta]


async def test_a_missing_topic_keeps_its_dead_letters_until_the_topic_is_created(bridge_process, kafka, unique):
    """Topic creation off: the bridge dead-letters a type whose topic is missing; replay leaves them (saying
    why) until an operator creates the topic, then publishes them."""
    prefix = f"m{unique}."
    no_creation = {"BRIDGE_CREATE_TOPICS": "false"}
    await kafka.create_topic(prefix + "deadletter")
    await kafka.create_topic(prefix + "dedup-receipts")  # the operator made the release's own topics
    events = sample_events(4, start=NOW - timedelta(minutes=20), types=[OLD_TYPE])
    bridge = bridge_process("serve", prefix=prefix, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap, **no_creation)
    await bridge.wait_for_readiness(200, timeout=60)
    for envelope in events:
        assert (await bridge.deliver(envelope))[0] == 201
    bridge.kill()
    replay = ReplayCommand(kafka.bootstrap, prefix, **no_creation)

    too_soon = replay("--since", "1h", "--reason", "does not exist")

    assert too_soon.returncode == 0, too_soon.stderr
    assert too_soon.summary == (
        "read 4, selected 4, already in their topics 0, replayed 0, still dead 4, unverified 0, unreadable 0, "
        "failed 0"
    )
    assert "does not exist" in too_soon.stderr
    assert prefix + OLD_TYPE not in await kafka.topics()
    assert len(await kafka.read_all(prefix + "deadletter")) == 4  # not written again

    await kafka.create_topic(prefix + OLD_TYPE, partitions=3)
    after = replay("--since", "1h", "--reason", "does not exist")

    assert after.returncode == 0, after.stderr
    assert after.summary.startswith("read 4, selected 4, already in their topics 0, replayed 4, still dead 0,")
    assert sorted(event_ids(await kafka.read_all(prefix + OLD_TYPE))) == sorted(e["id"] for e in events)


async def test_the_day_scalekit_adds_a_type_its_deliveries_are_kept_alerted_and_replayed_once_in_order(
    bridge_process, kafka, unique
):
    """A release that does not know a type Scalekit now sends, with topic creation off as under the chart's
    KafkaTopics: each delivery is answered 201, dead-lettered and counted in the series the
    ScalekitBridgeUnknownEventType alert reads. Once the topic exists, a release that knows the type replays
    them: each event once, in each organization's order, now with its ce_dataschema."""
    added = "connected_account.created"
    prefix = f"n{unique}."
    no_creation = {"BRIDGE_CREATE_TOPICS": "false"}
    await kafka.create_topic(prefix + "deadletter")
    await kafka.create_topic(prefix + "dedup-receipts")  # the operator made the release's own topics
    events = sample_events(6, start=NOW - timedelta(minutes=20), types=[added])
    for number, envelope in enumerate(events):  # two accounts named by organization, the rest by environment
        if number % 3 == 0:
            envelope["organization_id"] = "org_named"
    old_release = bridge_process(
        "serve", prefix=prefix, program=("-m", "tests.integration.release_without_schema", added),
        KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap, **no_creation,
    )
    await old_release.wait_for_readiness(200, timeout=60)
    answers = [await old_release.deliver(envelope, webhook_id=f"msg_{envelope['id']}") for envelope in events]

    assert [(status, body["outcome"]) for status, body in answers] == [(201, "deadlettered")] * len(events)
    series = f'scalekit_bridge_unknown_event_types_total{{event_type="{added}"}}'
    assert f"{series} {float(len(events))}" in (await old_release.metrics()).splitlines()
    old_release.kill()
    letters = await kafka.read_all(prefix + "deadletter")
    assert [r.header("webhook-id").decode() for r in letters] == [f"msg_{e['id']}" for e in events]
    assert all("does not exist" in r.header("deadletter-reason").decode() for r in letters)

    await kafka.create_topic(prefix + added, partitions=3)
    replay = ReplayCommand(kafka.bootstrap, prefix, **no_creation)  # this release: it knows the type
    first, second = replay("--since", "1h", "--type", added), replay("--since", "1h", "--type", added)

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.summary.startswith("read 6, selected 6, already in their topics 0, replayed 6, still dead 0,")
    assert second.summary.startswith("read 6, selected 6, already in their topics 6, replayed 0,")
    published = await kafka.read_all(prefix + added)
    assert sorted(event_ids(published)) == sorted(e["id"] for e in events)
    keys = {e["id"]: e.get("organization_id", e["environment_id"]) for e in events}
    assert per_organization(published) == {
        key: [e["id"] for e in events if keys[e["id"]] == key] for key in dict.fromkeys(keys.values())
    }
    assert {r.header("ce_dataschema") for r in published} == {f"urn:scalekit-bridge:schema:v1:data:{added}".encode()}


async def test_two_installs_on_one_kafka_keep_their_dead_letters_and_replays_apart(bridge_process, kafka, unique):
    """Prefixes `st<unique>.` and `pr<unique>.`, nothing else named: each bridge dead-letters into its own
    prefix's topic, and each replay publishes its own install's letters only, verified with its own secret."""
    installs = {name: f"{name}{unique}." for name in ("st", "pr")}
    events = {name: sample_events(3, start=NOW - timedelta(minutes=10), types=[NEW_TYPE]) for name in installs}
    for name, prefix in installs.items():
        old = bridge_process("serve", prefix=prefix, program=WITHOUT_SCHEMA, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
                             **STRICT)
        await old.wait_for_readiness(200, timeout=60)
        for envelope in events[name]:
            assert (await old.deliver(envelope, webhook_id=f"msg_{envelope['id']}"))[0] == 201
        old.kill()

    runs = {name: ReplayCommand(kafka.bootstrap, prefix, **STRICT)("--since", "1h")
            for name, prefix in installs.items()}

    for name, prefix in installs.items():
        letters = await kafka.read_all(prefix + "deadletter")
        delivered = sorted(f"msg_{e['id']}" for e in events[name])
        assert sorted(r.header("webhook-id").decode() for r in letters) == delivered
        assert runs[name].returncode == 0, runs[name].stderr
        assert runs[name].summary.startswith("read 3, selected 3, already in their topics 0, replayed 3,")
        assert sorted(event_ids(await kafka.read_all(prefix + NEW_TYPE))) == sorted(e["id"] for e in events[name])


async def test_forged_and_unverifiable_dead_letters_are_reported_and_never_published(kafka, unique):
    """Write access to the dead-letter topic is not a way in: without a signature that verifies against the
    webhook secrets, nothing is published, however well-formed the envelope."""
    prefix = f"f{unique}."
    forged, unsigned, recovered, genuine = sample_events(4, start=NOW - timedelta(minutes=10), types=[OLD_TYPE])
    letters = []
    wrong_secret = "whsec_" + "d3JvbmctYnV0LXdlbGwtZm9ybWVkLXNlY3JldC1ieXRlcw=="
    # A forged copy of the genuine event, written first, must not shadow it; a second genuine copy counts once.
    for envelope, secret in ((forged, wrong_secret), (genuine, wrong_secret), (genuine, SECRET), (genuine, SECRET)):
        body = body_of(envelope)
        signed = signed_headers(secret, body)
        headers = [(name, signed[name].encode()) for name in ("webhook-id", "webhook-timestamp", "webhook-signature")]
        letters.append((body, [*headers, ("deadletter-reason", b"schema violation: /data: made up")]))
    body = body_of(unsigned)
    letters.append((body, [(n, v.encode()) for n, v in signed_headers(SECRET, body).items()
                           if n in ("webhook-id", "webhook-timestamp")]))
    letters.append((body_of(recovered), [("backfilled-at", b"2026-11-30T10:00:00Z")]))
    await kafka.create_topic(prefix + "deadletter")
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for value, headers in letters:
            await producer.send_and_wait(prefix + "deadletter", value=value, key=b"k", headers=headers)
    finally:
        await producer.stop()

    run = ReplayCommand(kafka.bootstrap, prefix)("--since", "1h")

    assert run.returncode == 1
    assert run.summary == (
        "read 6, selected 5, already in their topics 0, replayed 1, still dead 0, unverified 4, unreadable 0, "
        "failed 0"
    )
    assert f"(event {genuine['id']}): no_matching_signature" in run.stderr
    assert f"(event {forged['id']}): no_matching_signature" in run.stderr
    assert f"(event {unsigned['id']}): kept without its webhook-signature" in run.stderr
    assert f"(event {recovered['id']}): written by backfill" in run.stderr
    assert event_ids(await kafka.read_all(prefix + OLD_TYPE)) == [genuine["id"]]


async def write_letters(kafka, topic: str, letters: list[tuple[bytes, list[tuple[str, bytes | None]], int | None]]):
    """Write (value, headers, timestamp_ms or None for now) records to `topic`, as any producer could."""
    await kafka.create_topic(topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for value, headers, timestamp_ms in letters:
            await producer.send_and_wait(topic, value=value, key=b"k", headers=headers, timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()


def kept(envelope: dict, *, secret: str = SECRET, signed_at: datetime | None = None) -> tuple[bytes, list]:
    """A dead letter as the bridge keeps one: the body and its webhook headers, signed at `signed_at`."""
    body = body_of(envelope)
    stamp = int((signed_at or datetime.now(UTC)).timestamp())
    signed = signed_headers(secret, body, timestamp=stamp)
    headers = [(name, signed[name].encode()) for name in ("webhook-id", "webhook-timestamp", "webhook-signature")]
    return body, [*headers, ("deadletter-reason", b"schema violation: /data: made up")]


async def test_a_record_replay_cannot_read_is_named_and_the_rest_of_the_window_is_still_replayed(kafka, unique):
    """The dead-letter topic is written by other tools and people too: a header without a value, or an
    occurred_at outside the years a time can have, stops nothing but itself."""
    prefix = f"u{unique}."
    genuine, far_past = sample_events(2, start=NOW - timedelta(minutes=10), types=[OLD_TYPE])
    body, headers = kept(genuine)
    odd_body, odd_headers = kept(far_past | {"occurred_at": "0001-01-01T00:00:00+01:00"})
    await write_letters(kafka, prefix + "deadletter", [
        (body, [*headers, ("x-note", None)], None),  # null-valued header: unreadable
        (body, headers, None),
        (odd_body, odd_headers, None),  # readable: ordered by when it was dead-lettered instead
    ])

    run = ReplayCommand(kafka.bootstrap, prefix)("--since", "1h")

    assert run.returncode == 1
    assert run.summary == (
        "read 3, selected 2, already in their topics 0, replayed 2, still dead 0, unverified 0, unreadable 1, "
        "failed 0"
    )
    assert "1 dead letter(s) cannot be read and were skipped:\n  partition 0 offset 0: header x-note has no value" \
        in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(event_ids(await kafka.read_all(prefix + OLD_TYPE))) == sorted([genuine["id"], far_past["id"]])


def test_a_window_start_no_time_can_have_is_a_usage_error_not_a_traceback():
    for since in ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "99999999999w"):
        run = ReplayCommand("127.0.0.1:9", "x.")("--since", since)
        assert run.returncode == 2, (since, run.stderr)
        assert "Traceback" not in run.stderr and "scalekit-bridge: error: " in run.stderr, run.stderr


async def test_a_genuine_old_letter_copied_into_a_new_window_does_not_publish_its_event_again(kafka, unique):
    """"Already in its topic" is looked for from when Scalekit signed the event, not from the window's start."""
    prefix = f"c{unique}."
    (event,) = sample_events(1, start=NOW - timedelta(hours=3), types=[OLD_TYPE])
    three_hours_ago = NOW - timedelta(hours=3)
    published_then = int((three_hours_ago + timedelta(seconds=1)).timestamp() * 1000)
    await write_letters(kafka, prefix + OLD_TYPE, [(body_of(event), [("ce_id", event["id"].encode())], published_then)])
    body, headers = kept(event, signed_at=three_hours_ago)
    await write_letters(kafka, prefix + "deadletter", [(body, headers, None)])  # copied in just now

    run = ReplayCommand(kafka.bootstrap, prefix)("--since", "10m")

    assert run.returncode == 0, run.stderr
    assert run.summary.startswith("read 1, selected 1, already in their topics 1, replayed 0,")
    assert len(await kafka.read_all(prefix + OLD_TYPE)) == 1


async def test_an_event_signed_longer_ago_than_the_max_age_stays_a_dead_letter_and_says_why(kafka, unique):
    prefix = f"a{unique}."
    old, recent = sample_events(2, start=NOW - timedelta(days=9), types=[OLD_TYPE])
    await write_letters(kafka, prefix + "deadletter", [
        (*kept(old, signed_at=NOW - timedelta(days=8)), None),
        (*kept(recent, signed_at=NOW - timedelta(hours=1)), None),
    ])

    run = ReplayCommand(kafka.bootstrap, prefix)("--since", "1h")
    wider = ReplayCommand(kafka.bootstrap, prefix)("--since", "1h", "--max-age", "999999999d")  # the largest

    assert run.returncode == wider.returncode == 0, run.stderr + wider.stderr
    assert run.summary.startswith("read 2, selected 2, already in their topics 0, replayed 1, still dead 1,")
    assert f"{old['id']}: signed by Scalekit longer ago than --max-age" in run.stderr
    assert wider.summary.startswith("read 2, selected 2, already in their topics 1, replayed 1, still dead 0,")
    assert sorted(event_ids(await kafka.read_all(prefix + OLD_TYPE))) == sorted([old["id"], recent["id"]])


async def test_backfill_can_bring_back_what_replay_cannot_verify(kafka, unique):
    """The backfill dead letters replay refuses are written again from Scalekit by backfill
    --include-dead-lettered; without it, backfill counts them as already in Kafka, but only a letter that
    holds the event as Scalekit's API gives it: a record that merely names an event's id hides nothing."""
    pytest.importorskip("grpc")
    from bridge.eventsapi import envelope_of
    from tests.fake_scalekit import FakeScalekit

    prefix = f"b{unique}."
    event, named = sample_events(2, start=NOW - timedelta(minutes=30), types=[OLD_TYPE])
    scalekit = FakeScalekit(page_limit=7)
    scalekit.start()
    try:
        as_listed = envelope_of(scalekit.add(event))  # the event as backfill reads it from the API
        scalekit.add(named)
        backfills_own = json.dumps(as_listed, ensure_ascii=False, separators=(",", ":")).encode()
        forged = json.dumps({"id": named["id"], "type": OLD_TYPE, "data": {}}).encode()
        unsigned = [("backfilled-at", b"2026-11-30T10:00:00Z"), ("deadletter-reason", b"an old bug")]
        await write_letters(kafka, prefix + "deadletter", [(backfills_own, unsigned, None), (forged, unsigned, None)])
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SCALEKIT_", "BRIDGE_", "KAFKA_"))},
            **scalekit.env(),
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "BRIDGE_TOPIC_PREFIX": prefix,
            "BRIDGE_DEADLETTER_TOPIC": prefix + "deadletter",
            "BRIDGE_BACKFILL_STATE_TOPIC": prefix + "state",
        }

        def backfill(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "bridge", "backfill", "--since", "1h", *args], env=env,
                                  capture_output=True, text=True, timeout=120, check=True)
            return done.stdout.strip().splitlines()[-1]

        assert backfill() == "fetched 2, already in Kafka 1, published 1, dead-lettered 0, failed 0, unreadable 0"
        assert event_ids(await kafka.read_all(prefix + OLD_TYPE)) == [named["id"]]
        assert backfill("--include-dead-lettered") == (
            "fetched 2, already in Kafka 1, published 1, dead-lettered 0, failed 0, unreadable 0"
        )
    finally:
        scalekit.stop()
    assert sorted(event_ids(await kafka.read_all(prefix + OLD_TYPE))) == sorted([named["id"], event["id"]])
