"""Backfill's pieces without a network: the window, the API's events as envelopes, ids in records, settings."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from scalekit.common.exceptions import ScalekitServerException
from scalekit.v1.events.events_pb2 import ScalekitEvent

from bridge.backfill import Tally
from bridge.config import BackfillSettings
from bridge.dev.samples import sample, sample_types
from bridge.envelope import (
    BACKFILLED_AT_EXTENSION,
    ORGANIZATION_PATHS,
    WEBHOOK_ID_EXTENSION,
    Recovered,
    build_record,
    deadletter_message,
    event_id_of_record,
    partition_key,
)
from bridge.errors import ConfigError
from bridge.eventsapi import EventQuery, _page, _translate, envelope_of
from bridge.progress import Progress
from bridge.window import parse_moment

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
API_ENV = {
    "SCALEKIT_ENVIRONMENT_URL": "https://acme.scalekit.example",
    "SCALEKIT_CLIENT_ID": "skc_1",
    "SCALEKIT_CLIENT_SECRET": "api-secret-value",
}


# --- the window ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", NOW - timedelta(minutes=90)),
        ("2h", NOW - timedelta(hours=2)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-11-27T10:00:00Z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T12:00:00+02:00", datetime(2026, 11, 27, 10, tzinfo=UTC)),
    ],
)
def test_a_window_bound_is_a_duration_back_from_now_or_an_rfc3339_time(text, expected):
    """--since and --until alike: the chart's CronJob ends its window 25m back, behind Scalekit's retries."""
    assert parse_moment(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h30", "-2h", "2026-11-27T10:00:00", "2026-11-27"])
def test_a_bound_that_is_neither_or_has_no_zone_is_refused(text):
    with pytest.raises(ValueError, match=r"is neither an RFC 3339 time nor a duration|has no time zone"):
        parse_moment(text, NOW)


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "99999999999w", "999999999d"]
)
def test_a_bound_no_time_can_reach_is_a_value_error_never_an_overflow(text):
    """Whatever the text, parsing raises ValueError (a usage error, exit 2), not OverflowError (a traceback)."""
    with pytest.raises(ValueError, match=r"outside the years|longer than any window|before the year 1"):
        parse_moment(text, NOW)


def test_the_window_includes_its_start_and_excludes_its_end():
    query = EventQuery(start=NOW - timedelta(hours=1), end=NOW)
    at = {"type": "role.created", "id": "evt_1"}
    assert query.matches(at | {"occurred_at": "2026-11-27T11:00:00Z"})
    assert not query.matches(at | {"occurred_at": "2026-11-27T12:00:00Z"})
    assert not query.matches(at | {"occurred_at": "2026-11-27T10:59:59.999999999Z"})
    assert not query.matches(at | {"occurred_at": "not a time"})


def test_type_and_organization_narrow_the_query():
    query = EventQuery(start=NOW - timedelta(hours=1), end=NOW, types=("role.created",), organization_id="org_1")
    event = {"id": "evt_1", "occurred_at": "2026-11-27T11:30:00Z", "type": "role.created", "organization_id": "org_1"}
    assert query.matches(event)
    assert not query.matches(event | {"type": "role.deleted"})
    assert not query.matches(event | {"organization_id": "org_2"})


# --- the API's events as envelopes ---------------------------------------------------------------


def api_event(envelope: dict) -> ScalekitEvent:
    fields = ("spec_version", "id", "type", "environment_id", "organization_id", "object", "display_name")
    event = ScalekitEvent(**{name: envelope[name] for name in fields if name in envelope})
    event.occurred_at.FromJsonString(envelope["occurred_at"])
    if "data" in envelope:
        event.data.update(envelope["data"])
    return event


@pytest.mark.parametrize("event_type", sample_types())
def test_an_api_event_becomes_the_envelope_its_webhook_carries(event_type):
    envelope = sample(event_type)
    assert envelope_of(api_event(envelope)) == envelope


# Samples written from the API reference of 2026-08, in the order its examples send the fields.
@pytest.mark.parametrize("event_type", ["user.login", "organization.domain_created", "connected_account.created"])
def test_a_recovered_envelope_has_the_fields_in_the_order_webhooks_send_them_now(event_type):
    envelope = sample(event_type)
    assert list(envelope_of(api_event(envelope))) == list(envelope)


def test_whole_numbers_come_back_as_integers_where_a_double_holds_them_exactly():
    envelope = sample("role.created") | {"data": {"count": 3, "ratio": 0.5, "big": 2**53 + 2, "list": [1, 2.5]}}
    data = envelope_of(api_event(envelope))["data"]
    assert data["count"] == 3 and isinstance(data["count"], int)
    assert data["ratio"] == 0.5
    assert isinstance(data["big"], float)  # rounded by the Struct already: kept visibly a float
    assert data["list"] == [1, 2.5] and isinstance(data["list"][0], int)


def test_the_display_name_webhooks_carry_is_kept_and_empty_fields_are_left_out():
    envelope = sample("role.created")
    event = api_event(envelope)
    event.display_name = "Role Created"
    event.organization_id = ""  # set, but empty: the webhook has no such field
    assert envelope_of(event) == envelope | {"display_name": "Role Created"}


def test_time_is_the_same_instant_in_protobufs_rendering():
    envelope = sample("role.created") | {"occurred_at": "2025-01-15T10:55:22.1+02:00"}
    assert envelope_of(api_event(envelope))["occurred_at"] == "2025-01-15T08:55:22.100Z"


# --- what a backfilled record says ---------------------------------------------------------------


def recovered(envelope: dict) -> Recovered:
    return Recovered(envelope["id"], json.dumps(envelope).encode(), "2026-11-27T12:00:00Z")


def test_a_backfilled_record_says_when_it_was_backfilled_instead_of_a_webhook_id():
    message = build_record(recovered(sample("role.created")), topic_prefix="scalekit.", mode="binary").message
    headers = dict(message.headers)
    assert headers[f"ce_{BACKFILLED_AT_EXTENSION}"] == b"2026-11-27T12:00:00Z"
    assert f"ce_{WEBHOOK_ID_EXTENSION}" not in headers


def test_a_backfilled_dead_letter_is_keyed_by_event_id_and_says_when():
    envelope = sample("role.created")
    letter = deadletter_message(recovered(envelope), topic="scalekit.deadletter", reason="why")
    assert letter.key == envelope["id"].encode()
    assert dict(letter.headers) == {"backfilled-at": b"2026-11-27T12:00:00Z", "deadletter-reason": b"why"}
    assert json.loads(letter.value or b"") == envelope


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_the_event_id_is_read_from_an_event_record_in_either_mode(mode):
    envelope = sample("role.created")
    message = build_record(recovered(envelope), topic_prefix="scalekit.", mode=mode).message
    assert event_id_of_record(message.headers, message.value) == envelope["id"]


def test_the_event_id_is_read_from_a_dead_letters_body_when_it_is_json():
    envelope = sample("role.created")
    letter = deadletter_message(recovered(envelope), topic="scalekit.deadletter", reason="why")
    assert event_id_of_record(letter.headers, letter.value) == envelope["id"]
    assert event_id_of_record(letter.headers, b"not json") is None
    assert event_id_of_record(letter.headers, b'{"id": 7}') is None
    assert event_id_of_record((), None) is None


# --- settings and the report ---------------------------------------------------------------------


def test_backfill_needs_no_webhook_secret_and_hides_the_api_secret():
    settings = BackfillSettings.from_env(API_ENV)
    assert settings.api.client_secret.reveal() == "api-secret-value"
    assert "api-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"SCALEKIT_ENVIRONMENT_URL": ""}, "SCALEKIT_ENVIRONMENT_URL"),
        ({"SCALEKIT_ENVIRONMENT_URL": "http://acme.scalekit.example"}, "SCALEKIT_ENVIRONMENT_URL"),
        ({"SCALEKIT_ENVIRONMENT_URL": "https://acme.scalekit.example/api"}, "SCALEKIT_ENVIRONMENT_URL"),
        ({"SCALEKIT_ENVIRONMENT_URL": "https://acme.scalekit.example:port"}, "SCALEKIT_ENVIRONMENT_URL"),
        ({"SCALEKIT_CLIENT_ID": ""}, "SCALEKIT_CLIENT_ID"),
        ({"SCALEKIT_CLIENT_SECRET": " "}, "SCALEKIT_CLIENT_SECRET"),
        ({"BRIDGE_CLOUDEVENTS_MODE": "batch"}, "BRIDGE_CLOUDEVENTS_MODE"),
        ({"BRIDGE_TOPIC_PREFIX": "no spaces"}, "BRIDGE_TOPIC_PREFIX"),
    ],
)
def test_a_bad_backfill_setting_is_named(change, variable):
    with pytest.raises(ConfigError) as raised:
        BackfillSettings.from_env(API_ENV | change)
    assert raised.value.variable == variable
    assert "api-secret-value" not in str(raised.value)


def test_a_trailing_slash_on_the_environment_url_is_dropped():
    settings = BackfillSettings.from_env(API_ENV | {"SCALEKIT_ENVIRONMENT_URL": "https://acme.scalekit.example/"})
    assert settings.api.environment_url == "https://acme.scalekit.example"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_at_a_terminal_progress_is_a_bar_redrawn_in_place():
    screen = Terminal()
    progress = Progress(screen)
    progress.update("publishing", 15, 30)
    progress.update("published", 30, 30, final=True)
    assert screen.getvalue() == (
        "\rpublishing [" + "#" * 15 + "." * 15 + "] 15/30" + "\rpublished  [" + "#" * 30 + "] 30/30\n"
    )


def test_elsewhere_progress_is_a_log_line_every_few_seconds_and_at_each_phase_end(caplog):
    progress = Progress(io.StringIO())
    with caplog.at_level(logging.INFO, logger="bridge.backfill"):
        for done in range(1, 100):
            progress.update("fetching", done)
        progress.update("fetched", 99, final=True)
    said = [record.progress for record in caplog.records]  # type: ignore[attr-defined]
    assert said == [
        {"phase": "fetching", "done": 1, "total": None},
        {"phase": "fetched", "done": 99, "total": None},
    ]


def test_the_summary_line_counts_every_outcome():
    tally = Tally(fetched=10, present=4, published=4, deadlettered=1, failed=["evt_9"], unreadable=["evt_8"])
    assert tally.summary() == (
        "fetched 10, already in Kafka 4, published 4, dead-lettered 1, failed 1, unreadable 1"
    )
    assert Tally(dry_run=True, fetched=3, published=2, deadlettered=1).summary() == (
        "dry run: fetched 3, already in Kafka 0, would publish 2, would dead-letter 1"
    )


def as_sent(event_type: str, organization: str) -> dict:
    """The type's sample as Scalekit sends it, its organization replaced only where the type keeps one."""
    event = sample(event_type) | {"occurred_at": "2026-11-27T11:30:00Z"}
    for path in ORGANIZATION_PATHS:
        node = event
        for step in path[:-1]:
            node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = organization
    return event


@pytest.mark.parametrize("event_type", sample_types())
def test_an_organization_query_finds_its_events_of_every_type_where_the_key_rules_find_them(event_type):
    """One rule for "which organization": the record key's. user.* events keep theirs inside data."""
    event = as_sent(event_type, "org_wanted")
    wanted = EventQuery(start=NOW - timedelta(hours=1), end=NOW, organization_id="org_wanted")
    other = EventQuery(start=NOW - timedelta(hours=1), end=NOW, organization_id="org_other")

    # environment-wide types (roles, permissions, connected accounts as documented) belong to none
    belongs = partition_key(event) == "org_wanted"
    assert wanted.matches(event) is belongs
    assert not other.matches(event)
    assert belongs is not event_type.startswith(("role.", "permission.", "connected_account."))


def test_an_event_the_sdk_cannot_read_is_set_aside_by_id_and_the_page_goes_on():
    readable = api_event(sample("role.created") | {"id": "evt_fine"})
    unreadable = api_event(sample("role.created") | {"id": "evt_nan"})
    unreadable.data.update({"ratio": float("nan")})

    page = _page([unreadable, readable])

    assert [envelope["id"] for envelope in page.envelopes] == ["evt_fine"]
    assert [(bad.event_id, bad.reason) for bad in page.unreadable] == [
        ("evt_nan", "cannot be read as JSON: SerializeToJsonError")
    ]


class _Cancelled(grpc.RpcError, grpc.Call):
    """A gRPC call that ended CANCELLED, as the channel reports it."""

    def code(self):
        return grpc.StatusCode.CANCELLED

    def details(self):
        return "Cancelled"

    def trailing_metadata(self):
        return ()

    def initial_metadata(self):
        return ()

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False

    def is_active(self):
        return False


def test_a_cancelled_call_is_one_line_naming_its_status():
    error = _translate(ScalekitServerException(_Cancelled()), "https://acme.scalekit.example")
    assert str(error) == "Scalekit at https://acme.scalekit.example answered 499 Client Closed Request (CANCELLED)"


# --- --resume ------------------------------------------------------------------------------------------


def resumed(recorded: str | None, *, since: timedelta | None, lookback: timedelta) -> EventQuery:
    """The window a --resume run would use, with `recorded` as the last run's recorded end (as the CLI builds
    the request: without --since, the window's start is the lookback's limit)."""
    from bridge.backfill import Request, _resumed

    settings = BackfillSettings.from_env(API_ENV)
    start = NOW - (since if since is not None else lookback)
    request = Request(EventQuery(start=start, end=NOW), resume=True, since_given=since is not None,
                      max_lookback=lookback)
    return _resumed(settings, request, None if recorded is None else datetime.fromisoformat(recorded)).query


def test_a_since_before_the_recorded_end_wins_so_a_longer_outage_is_covered():
    """The outage recipe: the CronJob's --resume run with its --since moved back to the outage's start."""
    query = resumed("2026-11-26T06:00:00Z", since=NOW - datetime(2026, 11, 22, tzinfo=UTC), lookback=timedelta(days=7))
    assert query.start == datetime(2026, 11, 22, tzinfo=UTC)


def test_without_since_resume_starts_at_the_recorded_end_however_far_back_the_lookback_reaches():
    query = resumed("2026-11-26T06:00:00Z", since=None, lookback=timedelta(days=7))
    assert query.start == datetime(2026, 11, 26, 5, 55, tzinfo=UTC)


def test_resume_starts_at_the_recorded_end_less_the_timestamp_tolerance():
    query = resumed("2026-11-26T06:00:00Z", since=timedelta(hours=2), lookback=timedelta(days=7))
    assert query.start == datetime(2026, 11, 26, 5, 55, tzinfo=UTC) and query.end == NOW


def test_resume_with_nothing_recorded_starts_at_since():
    query = resumed(None, since=timedelta(hours=2), lookback=timedelta(days=7))
    assert query.start == NOW - timedelta(hours=2)


def test_resume_never_looks_back_further_than_the_maximum(caplog):
    query = resumed("2026-11-01T00:00:00Z", since=timedelta(hours=2), lookback=timedelta(days=7))
    assert query.start == NOW - timedelta(days=7)
    assert any("max-lookback" in record.getMessage() for record in caplog.records)


def test_a_window_end_is_kept_per_environment_and_set_of_types_and_never_for_one_organization():
    from bridge.backfill import _state_key

    settings = BackfillSettings.from_env(API_ENV)
    window = EventQuery(start=NOW - timedelta(hours=2), end=NOW)
    assert _state_key(settings, window) == b"acme.scalekit.example topics=scalekit.*"
    typed = EventQuery(start=window.start, end=NOW, types=("role.created", "organization.created"))
    assert _state_key(settings, typed) == (
        b"acme.scalekit.example topics=scalekit.* types=organization.created,role.created"
    )
    assert _state_key(settings, typed, legacy=True) == b"acme.scalekit.example types=organization.created,role.created"
    staging = BackfillSettings.from_env({**API_ENV, "BRIDGE_TOPIC_PREFIX": "staging.scalekit."})
    assert _state_key(staging, window) == b"acme.scalekit.example topics=staging.scalekit.*"
    assert _state_key(settings, EventQuery(start=window.start, end=NOW, organization_id="org_1")) is None
