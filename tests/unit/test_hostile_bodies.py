"""Signed bodies that are valid HTTP but not a Scalekit event each get a dead-letter reason, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.envelope import MAX_DEPTH, build_record, parse_envelope, topics_collide
from bridge.errors import MalformedDelivery
from bridge.verify import VerifiedDelivery

PREFIX = "scalekit."
DEADLETTER = "scalekit.deadletter"


def route(body: bytes):
    delivery = VerifiedDelivery(webhook_id="msg_1", timestamp="1760000000", body=body)
    return build_record(delivery, topic_prefix=PREFIX, mode="binary", deadletter_topic=DEADLETTER)


def nested(depth: int) -> bytes:
    """An envelope whose data is `depth` levels deep in all (the envelope itself is level 1)."""
    return b'{"id":"evt_1","type":"role.created","data":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (nested(MAX_DEPTH + 1), f"body is nested deeper than {MAX_DEPTH} levels"),
        (nested(100_000), f"body is nested deeper than {MAX_DEPTH} levels"),
        (b'{"id":"evt_1","type":"role.created","data":{"n":NaN}}', "NaN and Infinity are not JSON numbers"),
        (b'{"id":"evt_1","type":"role.created","data":{"n":-Infinity}}', "NaN and Infinity are not JSON numbers"),
        (b'{"id":"evt_1","type":"role.created","data":{"n":1e400}}', "a number is out of JSON's range"),
        (b'{"id":"evt_1","type":"role.created","data":{"s":"\\ud800"}}', "not valid Unicode"),
        (b'{"id":"evt_\\udfff","type":"role.created","data":{}}', "not valid Unicode"),
        (b'{"id":"evt_1","type":"role.created","extra":"\\udbff","data":{}}', "not valid Unicode"),
        (b'{"id":"evt_1","type":"role.created\\n"}', "event type is not a valid topic name"),
        (b'{"id":"evt_1","type":"role.created "}', "event type is not a valid topic name"),
        (b'{"id":"evt_1","type":"deadletter"}', "would be the dead-letter topic"),
        (b'{"id":"evt_1","type":"' + b"a" * 250 + b'"}', "event type is not a valid topic name"),
        (b'{"id":"evt_1","type":"role.created","data":' + b"9" * 5000 + b"}", "body is not JSON"),
        (b'{"id":"evt_1","type":"role.created"}', "no data and no organization or environment id"),
    ],
)
def test_a_hostile_but_signed_body_is_malformed_with_a_reason(body, reason):
    with pytest.raises(MalformedDelivery) as caught:
        route(body)
    assert reason in caught.value.reason


def test_nesting_up_to_the_limit_is_published():
    assert route(nested(MAX_DEPTH)).message.topic == "scalekit.role.created"


def test_many_shallow_brackets_are_not_mistaken_for_depth():
    body = json.dumps({"id": "evt_1", "type": "role.created", "data": {"groups": [{"id": n} for n in range(500)]}})
    assert route(body.encode()).message.topic == "scalekit.role.created"


def test_a_proper_surrogate_pair_is_text_and_is_published_as_utf8():
    record = route(b'{"id":"evt_1","type":"role.created","data":{"name":"\\ud83d\\ude00"}}').message
    assert json.loads(record.value) == {"name": "\U0001F600"}
    assert "\U0001F600".encode() in record.value


def test_a_large_integer_passes_through_exactly():
    record = route(b'{"id":"evt_1","type":"role.created","data":{"n":123456789012345678901234567890}}').message
    assert record.value == b'{"n":123456789012345678901234567890}'


@pytest.mark.parametrize(
    ("first", "second", "collide"),
    [
        ("scalekit.deadletter", "scalekit.deadletter", True),
        ("scalekit.role_created", "scalekit.role.created", True),
        ("scalekit_deadletter", "scalekit.deadletter", True),
        ("scalekit.role.created", "scalekit.role.updated", False),
    ],
)
def test_topics_that_differ_only_in_dots_and_underscores_collide(first, second, collide):
    assert topics_collide(first, second) is collide


def test_a_body_that_is_not_an_object_still_gets_its_reason_before_any_depth_walk():
    with pytest.raises(MalformedDelivery, match="not a JSON object"):
        parse_envelope(b"[1, 2, 3]")


# msgspec reads the body and writes the record; the standard library is the reference it must match.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES, st.booleans())
def test_every_body_reads_exactly_as_the_standard_library_reads_it(data, ascii_only):
    """Big integers stay integers, escapes and surrogate pairs decode alike; what the compiled reader
    refuses (lone surrogates among them) goes to the standard library and reads the same."""
    body = json.dumps({"id": "evt_1", "type": "role.created", "data": data}, ensure_ascii=ascii_only).encode()

    assert parse_envelope(body) == json.loads(body)


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
))
def test_what_the_record_carries_reads_back_as_the_data_that_came_in(data):
    body = json.dumps({"id": "evt_1", "type": "role.created", "environment_id": "env_1", "data": data}).encode()

    record = route(body)

    assert json.loads(record.message.value) == data
