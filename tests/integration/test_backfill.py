"""`scalekit-bridge backfill` against a local Scalekit (the SDK's own protocols) and the real Kafka.

The stand-in speaks OAuth client credentials and the SDK's gRPC EventsService on one
TLS port, and pages at most `page_limit` events at a time, so every run here crosses
page boundaries. Each test runs the command as a user would, in its own process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiokafka import AIOKafkaProducer

from bridge.dev.kafka import LocalKafka
from bridge.dev.samples import sample_types
from bridge.envelope import event_id_of_record, organization_of
from tests.conftest import KafkaTool, Record
from tests.fake_scalekit import FakeScalekit, sample_events
from tests.helpers import free_port
from tests.integration.conftest import Run, run_command

NOW = datetime.now(UTC)
SUMMARY_PREFIX = "fetched "


@pytest.fixture
def scalekit() -> Iterator[FakeScalekit]:
    fake = FakeScalekit(page_limit=7)
    fake.start()
    yield fake
    fake.stop()


class BackfillCommand:
    """`python -m bridge backfill ARGS` with the fake's credentials and this test's topics."""

    def __init__(self, scalekit: FakeScalekit, kafka_bootstrap: str, unique: str) -> None:
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SCALEKIT_", "BRIDGE_"))},
            **scalekit.env(),
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "BRIDGE_TOPIC_PREFIX": f"t{unique}.",
            "BRIDGE_DEADLETTER_TOPIC": f"t{unique}.deadletter",
            "BRIDGE_BACKFILL_STATE_TOPIC": f"s{unique}.backfill-state",
        }

    def __call__(self, *args: str, **env: str) -> Run:
        return run_command("backfill", args, self._env | env)

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "backfill", *args], env=self._env | env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


@pytest.fixture
def backfill(scalekit: FakeScalekit, kafka_bootstrap: str, unique: str) -> BackfillCommand:
    return BackfillCommand(scalekit, kafka_bootstrap, unique)


async def records_by_event(kafka: KafkaTool, prefix: str, event_types: set[str]) -> dict[str, list[Record]]:
    """Every record in the event types' topics and the dead-letter topic, by the event id it carries."""
    found: dict[str, list[Record]] = {}
    for topic in sorted({prefix + t for t in event_types} | {prefix + "deadletter"}):
        for record in await kafka.read_all(topic):
            found.setdefault(event_id_of_record(record.headers, record.value) or "?", []).append(record)
    return found


def seed(scalekit: FakeScalekit, count: int, **options: Any) -> list[dict[str, Any]]:
    events = sample_events(count, start=options.pop("start", NOW - timedelta(minutes=90)), **options)
    for envelope in events:
        scalekit.add(envelope)
    return events


async def test_after_an_outage_backfill_writes_exactly_the_lost_events_each_once(
    scalekit, backfill, start_bridge, kafka
):
    """Deliveries before and after an outage reach Kafka by webhook; backfill writes only the rest."""
    events = seed(scalekit, 40)
    bridge = await start_bridge()
    delivered, lost = events[:15] + events[30:], events[15:30]
    for envelope in delivered:
        assert (await bridge.deliver(envelope))[0] == 201

    run = backfill("--since", "2h")

    assert run.returncode == 0, run.stderr
    assert run.summary == "fetched 40, already in Kafka 25, published 15, dead-lettered 0, failed 0, unreadable 0"
    found = await records_by_event(kafka, bridge.prefix, {e["type"] for e in events})
    assert {event_id: len(records) for event_id, records in found.items()} == {e["id"]: 1 for e in events}
    for envelope in lost:
        (record,) = found[envelope["id"]]
        assert record.header("ce_backfilledat") is not None and record.header("ce_webhookid") is None
    for envelope in delivered:
        (record,) = found[envelope["id"]]
        assert record.header("ce_webhookid") is not None and record.header("ce_backfilledat") is None


async def test_a_second_identical_run_writes_nothing(scalekit, backfill, kafka, unique):
    """Everything the first run wrote is found again by the second, through the broker's time index."""
    events = seed(scalekit, 30)
    first = backfill("--since", "2h")
    assert first.summary == "fetched 30, already in Kafka 0, published 30, dead-lettered 0, failed 0, unreadable 0"
    before = await records_by_event(kafka, f"t{unique}.", {e["type"] for e in events})

    second = backfill("--since", "2h")

    assert second.returncode == 0
    assert second.summary == "fetched 30, already in Kafka 30, published 0, dead-lettered 0, failed 0, unreadable 0"
    assert await records_by_event(kafka, f"t{unique}.", {e["type"] for e in events}) == before


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_a_backfilled_record_is_the_record_the_webhook_would_have_written(
    scalekit, backfill, start_bridge, kafka, unique, mode
):
    """Same topic, key, ce_id, type, source, time instant, extensions and value, for every documented type.

    Only the provenance differs (ce_webhookid against ce_backfilledat), and ce_time's text
    where Scalekit's differs from the protobuf Timestamp's rendering of the same instant.
    """
    events = seed(scalekit, len(sample_types()))
    events[0]["occurred_at"] = _with_offset(events[0]["occurred_at"])  # same instant, other text
    bridge = await start_bridge(BRIDGE_CLOUDEVENTS_MODE=mode)  # topics t<unique>.
    for envelope in events:
        assert (await bridge.deliver(envelope))[0] == 201

    run = backfill("--since", "2h", BRIDGE_TOPIC_PREFIX=f"b{unique}.", BRIDGE_DEADLETTER_TOPIC=f"b{unique}.deadletter",
                   BRIDGE_CLOUDEVENTS_MODE=mode)

    n = len(events)
    assert run.summary == f"fetched {n}, already in Kafka 0, published {n}, dead-lettered 0, failed 0, unreadable 0"
    types = {e["type"] for e in events}
    assert types == set(sample_types())
    delivered = await records_by_event(kafka, bridge.prefix, types)
    backfilled = await records_by_event(kafka, f"b{unique}.", types)
    for envelope in events:
        (webhook,), (recovered,) = delivered[envelope["id"]], backfilled[envelope["id"]]
        assert recovered.topic.removeprefix(f"b{unique}.") == webhook.topic.removeprefix(bridge.prefix)
        assert recovered.key == webhook.key
        assert _comparable(recovered, "backfilledat") == _comparable(webhook, "webhookid")


async def test_type_organization_and_window_filters_reach_the_api_and_the_result(scalekit, backfill):
    """--type, --organization, --since and --until narrow the API's query and what is published."""
    wanted_types = ("organization.directory.user_created", "organization.directory.user_deleted")
    others = ("organization.directory.user_updated", "role.created", "connected_account.created", "user.login")
    events = seed(scalekit, 56, step=timedelta(minutes=1), types=[*wanted_types, *others])
    since, until = events[10]["occurred_at"], events[40]["occurred_at"]
    expected = [e for e in events[10:40] if e["type"] in wanted_types and organization_of(e) == "org_beta"]
    assert expected, "the seed must put some wanted events in the window"

    run = backfill("--since", since, "--until", until, "--organization", "org_beta",
                   "--type", wanted_types[0], "--type", wanted_types[1], "--dry-run")

    assert run.returncode == 0, run.stderr
    listed = [line.split("\t")[1] for line in run.stdout.strip().splitlines()[:-1]]
    assert listed == [e["id"] for e in expected]
    asked = scalekit.seen.page_requests[-1].filter
    assert list(asked.event_types) == list(wanted_types) and asked.start_time.ToJsonString() == since
    assert asked.end_time.ToJsonString() == until
    assert asked.organization_id == ""  # the organization is picked by the key rules, not the API's field


async def test_a_window_ending_a_duration_ago_leaves_events_still_inside_scalekits_retries(scalekit, backfill):
    """The chart's CronJob runs --until 25m: what Scalekit may still deliver is not written twice."""
    now = datetime.now(UTC)
    events = seed(scalekit, 6, start=now - timedelta(minutes=50), step=timedelta(minutes=8))  # 50m ago to 10m ago
    expected = [e["id"] for e in events if datetime.fromisoformat(e["occurred_at"]) < now - timedelta(minutes=25)]
    assert 0 < len(expected) < len(events)

    run = backfill("--since", "1h", "--until", "25m", "--dry-run")

    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[1] for line in run.stdout.strip().splitlines()[:-1]] == expected


async def test_an_organizations_user_events_are_recovered_though_they_keep_it_inside_data(scalekit, backfill):
    """Logins, sign-ups, invitations and memberships have no top-level organization_id."""
    user_types = [t for t in sample_types() if t.startswith("user.")]
    events = sample_events(3 * len(user_types), start=NOW - timedelta(minutes=90), types=user_types,
                           organizations=["org_beta", "org_gamma", "org_delta"])
    for envelope in events:  # logins and logouts carry it on top too now: without it, in their session
        envelope.pop("organization_id", None)
        scalekit.add(envelope)
    expected = [e["id"] for e in events if organization_of(e) == "org_beta"]
    assert len(expected) == len(user_types) and all("organization_id" not in e for e in events)

    run = backfill("--since", "2h", "--organization", "org_beta", "--dry-run")

    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[1] for line in run.stdout.strip().splitlines()[:-1]] == expected


async def test_dry_run_lists_type_id_topic_and_key_and_writes_nothing(scalekit, backfill, kafka, unique):
    """A dry run shows, oldest first, what the real run then writes, and writes nothing itself."""
    events = seed(scalekit, 9)

    dry = backfill("--since", "2h", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    *lines, summary = dry.stdout.strip().splitlines()
    assert summary == "dry run: fetched 9, already in Kafka 0, would publish 9, would dead-letter 0"
    assert [line.split("\t")[1] for line in lines] == [e["id"] for e in events]
    assert not {t for t in await kafka.topics() if t.startswith(f"t{unique}.")}

    assert backfill("--since", "2h").returncode == 0
    written = await records_by_event(kafka, f"t{unique}.", {e["type"] for e in events})
    for line in lines:
        event_type, event_id, topic, key = line.split("\t")
        (record,) = written[event_id]
        assert (record.header("ce_type"), record.topic, record.key) == (event_type.encode(), topic, key.encode())


async def test_events_are_published_oldest_first_across_pages(scalekit, backfill, kafka, unique):
    """The API pages newest first; one organization's records still land in occurred_at order."""
    events = seed(scalekit, 20, types=["organization.directory.user_updated"], organizations=["org_one"])

    run = backfill("--since", "2h")

    assert run.returncode == 0, run.stderr
    records = await kafka.read_all(f"t{unique}.organization.directory.user_updated")
    assert [event_id_of_record(r.headers, r.value) for r in records] == [e["id"] for e in events]
    assert len(scalekit.seen.page_requests) == 3  # 7 + 7 + 6


async def test_dead_letter_rules_are_the_webhooks_and_a_rerun_finds_the_dead_letter(scalekit, backfill, kafka, unique):
    """With validation enforced, data that breaks its schema is dead-lettered, marked as backfilled, once."""
    (broken,) = seed(scalekit, 1, types=["organization.directory.user_created"])
    scalekit.add(broken | {"id": broken["id"] + "_b", "data": {"active": "not a boolean"}})

    first = backfill("--since", "2h", BRIDGE_SCHEMA_VALIDATION="enforce")
    second = backfill("--since", "2h", BRIDGE_SCHEMA_VALIDATION="enforce")

    assert first.summary == "fetched 2, already in Kafka 0, published 1, dead-lettered 1, failed 0, unreadable 0"
    assert second.summary == "fetched 2, already in Kafka 2, published 0, dead-lettered 0, failed 0, unreadable 0"
    (letter,) = await kafka.read_all(f"t{unique}.deadletter")
    assert letter.key == (broken["id"] + "_b").encode()
    assert letter.header("backfilled-at") is not None
    assert letter.header("deadletter-reason").startswith(b"schema violation")


async def test_a_failed_write_stops_the_run_names_the_ids_not_written_and_exits_1(scalekit, backfill, kafka, unique):
    """Nothing after a failed write is attempted, so no later event overtakes it; the rest are named."""
    healthy, broken = "organization.directory.user_created", "organization.directory.user_deleted"
    events = seed(scalekit, 6, types=[healthy, broken, healthy], organizations=["org_one"])
    # Too small for any record, and so is the dead-letter topic: the write cannot land anywhere.
    for topic in (f"t{unique}.{broken}", f"t{unique}.deadletter"):
        await kafka.create_topic(topic, configs={"max.message.bytes": "100"})

    run = backfill("--since", "2h", BRIDGE_PUBLISH_TIMEOUT="2")

    assert run.returncode == 1
    assert run.summary == "fetched 6, already in Kafka 0, published 1, dead-lettered 0, failed 5, unreadable 0"
    not_written = [e["id"] for e in events[1:]]
    assert f"5 event(s) not written: {', '.join(not_written)}" in run.stderr
    assert "Traceback" not in run.stderr
    written = await kafka.read_all(f"t{unique}.{healthy}")
    assert [event_id_of_record(r.headers, r.value) for r in written] == [events[0]["id"]]


async def test_an_event_the_api_returns_unreadable_is_named_and_the_others_are_written(
    scalekit, backfill, kafka, unique
):
    """Its data holds NaN, which the SDK cannot turn into JSON: one line names it, the run goes on, exit 1."""
    events = seed(scalekit, 4, types=["role.created"])
    unreadable = scalekit.add(events[1] | {"id": "evt_unreadable"})
    unreadable.data.update({"ratio": float("nan")})

    run = backfill("--since", "2h")

    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.summary == "fetched 4, already in Kafka 0, published 4, dead-lettered 0, failed 0, unreadable 1"
    assert "1 event(s) the Events API returned in a form that cannot be read, not written: evt_unreadable" in (
        run.stderr
    )
    written = await kafka.read_all(f"t{unique}.role.created")
    assert sorted(event_id_of_record(r.headers, r.value) for r in written) == sorted(e["id"] for e in events)


async def recorded_end(kafka: KafkaTool, unique: str) -> datetime | None:
    """The window end the last successful run recorded for the fake's environment."""
    records = await kafka.read_all(f"s{unique}.backfill-state")
    if not records:
        return None
    return datetime.fromisoformat(json.loads(records[-1].value)["until"])


async def test_resume_after_a_30_hour_gap_writes_exactly_the_missing_events_and_a_failed_run_records_nothing(
    scalekit, backfill, kafka, unique
):
    """The chart's CronJob runs --resume --since 2h: after any gap, the next good run starts where the last ended."""
    now = datetime.now(UTC)
    events = seed(scalekit, 16, start=now - timedelta(hours=33), step=timedelta(hours=2), types=["role.created"])
    # The last successful run before the outage covered up to 30 hours ago.
    before = backfill("--since", "34h", "--until", "30h")
    assert before.returncode == 0, before.stderr
    ended = await recorded_end(kafka, unique)
    assert ended is not None and abs(ended - (now - timedelta(hours=30))) < timedelta(minutes=1)
    early = [e["id"] for e in events if datetime.fromisoformat(e["occurred_at"]) < ended]
    assert before.summary.startswith(f"fetched {len(early)}, already in Kafka 0, published {len(early)},")

    # A run by hand over the last 2 hours leaves the gap before it open: it records nothing either.
    recent = backfill("--since", "2h")
    assert recent.returncode == 0, recent.stderr
    assert await recorded_end(kafka, unique) == ended

    # A new event with data no JSON can hold makes the next run fail: nothing is recorded.
    broken = scalekit.add(events[-1] | {"id": "evt_unreadable"})
    broken.data.update({"ratio": float("nan")})
    failed = backfill("--resume", "--since", "2h")
    assert failed.returncode == 1 and "evt_unreadable" in failed.stderr
    assert await recorded_end(kafka, unique) == ended

    scalekit.remove("evt_unreadable")
    resumed = backfill("--resume", "--since", "2h")
    assert resumed.returncode == 0, resumed.stderr
    written = await kafka.read_all(f"t{unique}.role.created")
    assert sorted(event_id_of_record(r.headers, r.value) for r in written) == sorted(e["id"] for e in events)
    later = await recorded_end(kafka, unique)
    assert later is not None and later > ended + timedelta(hours=29)


async def test_a_window_end_that_cannot_be_recorded_fails_only_a_resuming_run(scalekit, backfill, kafka, unique):
    """No right to write the state topic (here: a limit no record fits): said always, an error only for --resume."""
    seed(scalekit, 2, types=["role.created"])
    await kafka.create_topic(f"s{unique}.backfill-state", configs={"max.message.bytes": "16"})

    by_hand = backfill("--since", "2h")
    resuming = backfill("--resume", "--since", "2h")

    assert by_hand.returncode == 0, by_hand.stderr
    assert resuming.returncode == 1
    for run in (by_hand, resuming):
        assert "every missing event was written, but the window's end was not recorded" in run.stderr
    assert await kafka.read_all(f"s{unique}.backfill-state") == []


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[LocalKafka]:
    """A broker of this module's own, to freeze (SIGSTOP) while a run waits on it."""
    with LocalKafka() as local:
        yield local


def started_and_frozen(backfill: BackfillCommand, kafka: LocalKafka, timeout: str) -> subprocess.Popen[str]:
    """A run writing to `kafka`, which freezes once the run says it is connected and writing."""
    running = backfill.start("--since", "2h", KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
                             BRIDGE_PUBLISH_TIMEOUT=timeout)
    assert running.stderr is not None
    for line in running.stderr:
        if '"backfill connected"' in line:
            break
    kafka.pause()
    return running


async def not_written_is_exactly_what_kafka_lacks(kafka: LocalKafka, stderr: str, events: list, topic: str) -> None:
    kafka.resume()
    written = {event_id_of_record(r.headers, r.value) for r in await KafkaTool(kafka.bootstrap_servers).read_all(topic)}
    named = re.search(r"(\d+) event\(s\) not written: (.*)", stderr)
    assert named is not None, stderr
    assert set(named[2].split(", ")) == {e["id"] for e in events} - written


async def test_a_frozen_kafka_ends_the_run_within_its_timeouts_naming_every_event_not_written(
    scalekit, backfill, own_kafka, unique
):
    """Not 300 publish timeouts one after another, and no hang closing the producer."""
    events = seed(scalekit, 300, types=["role.created"])

    running = started_and_frozen(backfill, own_kafka, timeout="2")
    started = time.monotonic()
    _stdout, stderr = running.communicate(timeout=120)

    assert time.monotonic() - started < 30  # two publish timeouts and change; it was 300 of them
    assert running.returncode == 1 and "Traceback" not in stderr
    await not_written_is_exactly_what_kafka_lacks(own_kafka, stderr, events, f"t{unique}.role.created")


async def test_sigterm_ends_a_waiting_run_at_once_naming_every_event_not_written(
    scalekit, backfill, own_kafka, unique
):
    """The Job's deadline: a run waiting on Kafka stops, says what it did not write, and exits 1."""
    events = seed(scalekit, 50, types=["role.created"])
    running = started_and_frozen(backfill, own_kafka, timeout="60")
    await asyncio.sleep(1.0)

    running.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _stdout, stderr = running.communicate(timeout=120)

    assert time.monotonic() - started < 20  # well inside Kubernetes' 30 s termination grace
    assert running.returncode == 1 and "Traceback" not in stderr
    await not_written_is_exactly_what_kafka_lacks(own_kafka, stderr, events, f"t{unique}.role.created")


async def test_wrong_credentials_exit_non_zero_with_one_line_and_write_nothing(scalekit, backfill, kafka, unique):
    seed(scalekit, 3)

    run = backfill("--since", "2h", SCALEKIT_CLIENT_SECRET="not-the-secret")

    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        (f"scalekit-bridge backfill: Scalekit at {scalekit.url} refused the API credentials (401); "
        "check SCALEKIT_CLIENT_ID and SCALEKIT_CLIENT_SECRET; nothing was written")
    ]
    assert "not-the-secret" not in run.stdout + run.stderr
    assert not {t for t in await kafka.topics() if t.startswith(f"t{unique}.")}


@pytest.mark.parametrize("broken", ["scalekit", "kafka"])
async def test_an_unreachable_service_is_one_line_and_a_non_zero_exit(scalekit, backfill, kafka, unique, broken):
    seed(scalekit, 3)
    nobody = f"127.0.0.1:{free_port()}"
    env = {"SCALEKIT_ENVIRONMENT_URL": f"https://{nobody}"} if broken == "scalekit" else {
        "KAFKA_BOOTSTRAP_SERVERS": nobody, "BRIDGE_PUBLISH_TIMEOUT": "3"}

    run = backfill("--since", "2h", **env)

    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("scalekit-bridge backfill:")]
    assert f"cannot reach {'Scalekit' if broken == 'scalekit' else 'Kafka'} at" in line and nobody in line
    assert not {t for t in await kafka.topics() if t.startswith(f"t{unique}.")}


def test_no_webhook_secret_is_needed_but_missing_api_settings_are_named(backfill):
    """A CronJob needs API credentials and Kafka settings only; a missing one is named, exit 2."""
    run = backfill("--since", "2h", SCALEKIT_CLIENT_ID="")

    assert run.returncode == 2
    assert run.stderr.strip() == "scalekit-bridge: configuration error: SCALEKIT_CLIENT_ID: is required"


def _with_offset(rfc3339: str) -> str:
    """The same instant written with a +02:00 offset (as a webhook might; the API says Z)."""
    moment = datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=2)))
    return moment.isoformat()


def _comparable(record: Record, provenance: str) -> dict[str, Any]:
    """A record's CloudEvent without its provenance attribute, `time` as an instant, data parsed."""
    headers = {name: value.decode() for name, value in record.headers}
    if headers.get("content-type") == "application/cloudevents+json":
        event = json.loads(record.value or b"null")
    else:
        event = {name[3:]: value for name, value in headers.items() if name.startswith("ce_")}
        event["data"] = json.loads(record.value) if record.value is not None else None
        event["content-type"] = headers.get("content-type")
    assert provenance in event
    event.pop(provenance)
    event["time"] = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    return event


async def test_two_installs_sharing_a_state_topic_resume_each_from_its_own_window(scalekit, backfill, kafka, unique):
    """0.1.0 named the state topic alike for every prefix: its records now name the prefix they cover, and the
    record 0.1.0 wrote (without one) is still where a resumed run starts."""
    shared = {"BRIDGE_BACKFILL_STATE_TOPIC": f"shared{unique}.backfill-state"}
    legacy_end = (datetime.now(UTC) - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    host = urlsplit(scalekit.env()["SCALEKIT_ENVIRONMENT_URL"]).hostname or ""
    legacy_key = host.encode()  # the environment alone, as 0.1.0 keyed it
    await kafka.create_topic(shared["BRIDGE_BACKFILL_STATE_TOPIC"], configs={"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(shared["BRIDGE_BACKFILL_STATE_TOPIC"], key=legacy_key,
                                     value=json.dumps({"until": legacy_end, "key": host}).encode())
    finally:
        await producer.stop()
    seed(scalekit, 4, start=datetime.now(UTC) - timedelta(hours=5), step=timedelta(hours=1), types=["role.created"])

    staging = backfill("--resume", "--until", "0m", BRIDGE_TOPIC_PREFIX=f"st{unique}.", **shared)
    prod = backfill("--resume", "--since", "30m", "--until", "0m", BRIDGE_TOPIC_PREFIX=f"pr{unique}.", **shared)

    assert staging.returncode == prod.returncode == 0, staging.stderr + prod.stderr
    assert "resuming" in staging.stderr and "resuming" in prod.stderr  # both found 0.1.0's record
    records = {r.key: json.loads(r.value) for r in await kafka.read_all(shared["BRIDGE_BACKFILL_STATE_TOPIC"])}
    assert set(records) == {legacy_key, f"{host} topics=st{unique}.*".encode(), f"{host} topics=pr{unique}.*".encode()}
    # Each install's next run resumes from its own record, not from the other's or 0.1.0's.
    again = backfill("--resume", "--until", "0m", BRIDGE_TOPIC_PREFIX=f"st{unique}.", **shared)
    assert again.summary.startswith("fetched 0,"), again.stderr
