"""Hypothesis throws signed and unsigned requests at a real `serve` and reads every record back.

Properties, over every example: no 5xx but 503 (and no 503 at all while the broker is healthy); a validly
signed delivery is always 201; nothing else is; the records in Kafka are exactly the validly signed,
acknowledged deliveries; the server is healthy afterwards. `make fuzz` runs 100,000 examples
(BRIDGE_FUZZ_EXAMPLES) and prints its figures; `make test` runs a few thousand.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import http.client
import itertools
import json
import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.dev.samples import sample
from bridge.verify import SigningKey, signature_header
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "3000"))
SERIAL = itertools.count()
KEY = SigningKey.from_secret(SECRET)
WRONG_KEY = SigningKey.from_secret("whsec_" + base64.b64encode(b"not-the-secret-not-the-secret!!!").decode())

# A bounded set of types keeps the topics the run creates few; the odd ones are the hostile part.
TYPES = [
    "organization.directory.user_created", "role.created", "user.signup", "fuzz.unknown_type",
    "role.created\n", "role.created ", "Role.Created", "deadletter", "dead_letter", "a" * 300, "", "x/y",
]
RAW_VALUES = [
    "NaN", "Infinity", "-Infinity", "1e400", "-0", "1" * 5000, "123456789012345678901234567890",
    '"\\ud800"', '"\\udfff\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', "[" * 70 + "]" * 70,
    "[" * 3000 + "]" * 3000, '{"a":' * 40 + "1" + "}" * 40, "true", "null", '"' + "z" * 20000 + '"',
]

json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["sample", "envelope", "raw", "bytes"]))
    if kind == "sample":
        envelope = sample(draw(st.sampled_from(TYPES[:3])))
        envelope["id"] = "evt_" + draw(st.text(min_size=1, max_size=20))
        if draw(st.booleans()):
            envelope["data"] = draw(json_values)
        return json.dumps(envelope).encode()
    if kind == "envelope":
        envelope: dict[str, Any] = {"id": draw(st.one_of(st.text(max_size=30), json_values)),
                                    "type": draw(st.sampled_from(TYPES))}
        envelope.update(draw(st.dictionaries(st.sampled_from(
            ["data", "organization_id", "environment_id", "occurred_at", "object", "spec_version", "extra"]
        ), json_values, max_size=4)))
        return json.dumps(envelope, ensure_ascii=draw(st.booleans())).encode()
    if kind == "raw":
        return (
            f'{{"id":"evt_raw","type":{json.dumps(draw(st.sampled_from(TYPES)))},"data":{{"v":{draw(st.sampled_from(RAW_VALUES))}}}}}'
        ).encode()
    return draw(st.binary(max_size=3000))


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(bodies())
    # Unique per example, so that every signed request is a new delivery and really written.
    webhook_id = f"msg_{next(SERIAL)}_" + draw(
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
    )
    timestamp = str(int(time.time()) + draw(st.sampled_from([0, 0, 0, -10, 400, -400])))
    signing = draw(st.sampled_from(["valid", "valid", "valid", "wrong_key", "garbled", "missing"]))
    headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp, "content-type": "application/json"}
    if signing == "valid" or signing == "wrong_key":
        key = KEY if signing == "valid" else WRONG_KEY
        try:
            headers["webhook-signature"] = signature_header(key, webhook_id, timestamp, body)
        except UnicodeError:
            headers["webhook-signature"] = "v1,AAAA"
    elif signing == "garbled":
        headers["webhook-signature"] = draw(st.sampled_from(["v1,", "v1", "v2,abc", "v1,@@@", "v1,a,b", " "]))
    encoding = draw(st.sampled_from([None, None, None, "gzip", "identity", "br"]))
    if encoding:
        headers["content-encoding"] = encoding
    method, path = draw(
        st.sampled_from([("POST", "/webhooks/scalekit")] * 8 + [("GET", "/webhooks/scalekit"), ("POST", "/elsewhere")])
    )
    return {
        "method": method,
        "path": path,
        "headers": headers,
        "body": body,
        "signing": signing,
        "encoding": encoding,
        "timestamp_ok": abs(int(timestamp) - time.time()) < 300,
    }


def validly_signed(request: dict[str, Any]) -> bool:
    """What the contract says is Scalekit's: signed with a configured secret, in time, UTF-8, plain, POSTed."""
    if request["signing"] != "valid" or not request["timestamp_ok"] or request["encoding"] not in (None, "identity"):
        return False
    if (request["method"], request["path"]) != ("POST", "/webhooks/scalekit"):
        return False
    try:
        request["body"].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return request["headers"]["webhook-signature"] != "v1,AAAA"


async def test_every_request_gets_a_defined_answer_and_only_signed_ones_reach_kafka(
    bridge_process, kafka_bootstrap, kafka
):
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, BRIDGE_LOG_LEVEL="WARNING")
    bridge_topics = bridge.prefix  # its dead-letter topic too (see BridgeProcess)
    await bridge.wait_for_readiness(200, timeout=30)
    statuses: collections.Counter[int] = collections.Counter()
    acknowledged: set[str] = set()  # webhook ids answered 201 with a record of their own
    repeated: set[str] = set()  # event ids answered 201 "duplicate": one record per event
    connection = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=30)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def each(request: dict[str, Any]) -> None:
        nonlocal connection
        for attempt in (1, 2):
            try:
                connection.request(request["method"], request["path"], body=request["body"], headers=request["headers"])
                response = connection.getresponse()
                answer = response.read()
                break
            except (http.client.HTTPException, OSError):
                # The server may close a connection (it refused the last request unread): reconnect once.
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=30)
                if attempt == 2:
                    raise
        if response.getheader("connection", "").lower() == "close":
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=30)
        statuses[response.status] += 1
        assert response.status < 500, f"{response.status} for {request!r}"
        if validly_signed(request):
            assert response.status == 201, f"{response.status} for a validly signed {request!r}"
            if json.loads(answer)["outcome"] == "duplicate":  # its event's record is already in Kafka
                repeated.add(json.loads(request["body"])["id"])
            else:
                acknowledged.add(request["headers"]["webhook-id"])
        else:
            assert response.status in (400, 401, 404, 405, 413, 415), f"{response.status} for {request!r}"

    started = time.monotonic()
    await asyncio.to_thread(each)
    elapsed = time.monotonic() - started
    connection.close()

    written: set[str] = set()
    events: set[str] = set()
    for topic in await kafka.topics():
        if topic.startswith(bridge_topics) and topic != bridge_topics + "dedup-receipts":  # receipts: no webhook id
            for record in await kafka.read_all(topic, timeout=60):
                written.add((record.header("ce_webhookid") or record.header("webhook-id")).decode())
                if record.header("ce_id") is not None:
                    events.add(record.header("ce_id").decode())
    assert written == acknowledged, "Kafka holds exactly the validly signed, acknowledged deliveries"
    assert repeated <= events, "every delivery answered as a duplicate has its event's record"
    assert await bridge.readiness() == 200
    assert (await bridge.deliver(sample("role.created")))[0] == 201
    metrics = await bridge.metrics()
    assert "scalekit_bridge_internal_errors_total 0.0" in metrics, "no unexpected exception on any example"
    print(
        f"\nfuzz: {sum(statuses.values())} requests in {elapsed:.1f}s "
        f"({sum(statuses.values()) / elapsed:.0f}/s); statuses {dict(sorted(statuses.items()))}; "
        f"{len(acknowledged)} signed deliveries acknowledged, {len(written)} found in Kafka"
    )
