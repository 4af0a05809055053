"""Scalekit's Events API, through scalekit-sdk-python's own client (its token call and gRPC channel).

The only module that imports the SDK. Like the SDK it is synchronous: callers run
it in a worker thread. Events come back as webhook-shaped envelopes (the dicts
`bridge.envelope` maps), so a recovered event takes the webhook's path to Kafka.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from scalekit import ScalekitClient
from scalekit.common.exceptions import (
    ScalekitException,
    ScalekitServerException,
    ScalekitUnauthorizedException,
)
from scalekit.v1.events.events_pb2 import EventFilter, ScalekitEvent

from bridge.config import ScalekitApi
from bridge.envelope import organization_of
from bridge.errors import ApiError

# The API's ceiling (its protobufs document a default of 10).
PAGE_SIZE = 100
# A webhook envelope's fields in the order Scalekit's current examples send them (API reference of 2026-08).
# `display_name` is in webhook deliveries too since then, so a recovered envelope keeps it like any field.
_ENVELOPE_ORDER = (
    "spec_version", "id", "type", "object", "occurred_at", "environment_id", "organization_id", "data", "display_name"
)
# A protobuf Struct holds every number as a double: integers up to 2**53 survive exactly.
_EXACT_INTEGERS = 2**53


@dataclass(frozen=True)
class EventQuery:
    """Which events to list: a time window (start inclusive, end exclusive), optionally narrowed."""

    start: datetime
    end: datetime
    types: tuple[str, ...] = ()
    organization_id: str | None = None

    def matches(self, envelope: dict[str, Any]) -> bool:
        """Whether an envelope is inside the query (the API's own filter, checked once more here)."""
        occurred = occurred_at(envelope)
        if occurred is None or not (self.start <= occurred < self.end):
            return False
        if self.types and envelope.get("type") not in self.types:
            return False
        return self.organization_id is None or organization_of(envelope) == self.organization_id


class EventsApi:
    """A logged-in client for one Scalekit environment."""

    def __init__(self, api: ScalekitApi) -> None:
        self._api = api
        self._client: ScalekitClient | None = None

    def connect(self) -> None:
        """Get an access token (the SDK's client-credentials call); raises ApiError."""
        try:
            self._client = ScalekitClient(
                self._api.environment_url, self._api.client_id, self._api.client_secret.reveal()
            )
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes one line, never a traceback
            raise _translate(exc, self._api.environment_url) from None

    def pages(self, query: EventQuery) -> Iterator[Page]:
        """Each page of listed events, as envelopes, in whatever order the API pages them."""
        if self._client is None:
            raise ApiError("not connected to Scalekit")
        # Not the organization: user.* events keep theirs inside data, not in the field the API's filter
        # may compare, so the window is listed whole and `EventQuery.matches` picks the organization's.
        request_filter = EventFilter(
            event_types=list(query.types), start_time=_timestamp(query.start), end_time=_timestamp(query.end)
        )
        token: str | None = None
        seen: set[str] = set()
        while True:
            try:
                answer = self._client.events.list_events_paginated(
                    page_size=PAGE_SIZE, page_token=token, filter=request_filter
                )
            except Exception as exc:  # noqa: BLE001 - see connect()
                raise _translate(exc, self._api.environment_url) from None
            # The SDK hands back the stub's `with_call` result: (response, call).
            response = answer[0] if isinstance(answer, tuple) else answer
            yield _page(response.events)
            token = response.next_page_token
            if not token:
                return
            if token in seen:
                raise ApiError("Scalekit's Events API returned a page token twice; stopping rather than looping")
            seen.add(token)


@dataclass(frozen=True)
class Unreadable:
    """A listed event the SDK cannot turn into an envelope (its data holds NaN, say): its id and why."""

    event_id: str
    reason: str


@dataclass(frozen=True)
class Page:
    """One page of the listing: the events as envelopes, and those that could not be read."""

    envelopes: list[dict[str, Any]]
    unreadable: list[Unreadable]


def _page(events: Iterable[ScalekitEvent]) -> Page:
    envelopes, unreadable = [], []
    for event in events:
        try:
            envelopes.append(envelope_of(event))
        except Exception as exc:  # noqa: BLE001 - one event must not end the run for every other
            unreadable.append(Unreadable(event.id, f"cannot be read as JSON: {type(exc).__name__}"))
    return Page(envelopes, unreadable)


def envelope_of(event: ScalekitEvent) -> dict[str, Any]:
    """A listed event as the envelope its webhook delivery carries (docs/recovery/backfill.md: numbers, time)."""
    fields = json_format.MessageToDict(event, preserving_proto_field_name=True)
    # Protobuf cannot tell an empty string from a missing one; documented webhooks leave such fields out.
    fields = {name: value for name, value in fields.items() if value != ""}
    if "data" in fields:
        fields["data"] = _whole_numbers(fields["data"])
    ordered = {name: fields.pop(name) for name in _ENVELOPE_ORDER if name in fields}
    ordered.update(fields)
    return ordered


def _whole_numbers(node: Any) -> Any:
    """Integral doubles back to integers where a double holds them exactly (1.0 → 1, as sent)."""
    if isinstance(node, float):
        if math.isfinite(node) and node.is_integer() and abs(node) <= _EXACT_INTEGERS:
            return int(node)
        return node
    if isinstance(node, dict):
        return {key: _whole_numbers(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_whole_numbers(value) for value in node]
    return node


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def occurred_at(envelope: dict[str, Any]) -> datetime | None:
    """When the event happened, as an instant (None when the envelope says nothing readable)."""
    text = envelope.get("occurred_at")
    if not isinstance(text, str):
        return None
    stamp = Timestamp()
    try:
        stamp.FromJsonString(text)
    except ValueError:
        return None
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


def _translate(exc: Exception, url: str) -> ApiError:
    """The SDK's exception as one line that names the cause and never quotes the secret."""
    if isinstance(exc, ScalekitUnauthorizedException):
        return ApiError(
            f"Scalekit at {url} refused the API credentials (401); "
            "check SCALEKIT_CLIENT_ID and SCALEKIT_CLIENT_SECRET"
        )
    if isinstance(exc, ScalekitServerException):
        status = exc.http_status
        code = getattr(exc.grpc_status, "name", "UNKNOWN")
        # The SDK's own codes (499 for a cancelled call) are not http.HTTPStatus and have no phrase.
        phrase = getattr(status, "phrase", None) or getattr(status, "name", "").replace("_", " ").title()
        return ApiError(f"Scalekit at {url} answered {int(status)} {phrase} ({code})")
    cause = exc.args[0] if isinstance(exc, ScalekitException) and exc.args else exc
    if isinstance(cause, requests.exceptions.SSLError):
        return ApiError(f"cannot reach Scalekit at {url}: its TLS certificate is not trusted")
    return ApiError(f"cannot reach Scalekit at {url}: {type(cause).__name__}")
