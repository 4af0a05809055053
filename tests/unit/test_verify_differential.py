"""The bridge accepts exactly the deliveries that Scalekit's SDK and Standard Webhooks accept.

Oracle: a delivery is good when, for some configured secret, both
`scalekit-sdk-python`'s `verify_webhook_payload` and the `standardwebhooks`
package accept it; a library that raises on malformed input has rejected it.
`ScalekitClient.__init__` authenticates over the network, so the SDK's
verification is reached through an instance that skips it (the method uses no
instance state).

Deliberate differences, kept out of the generated domain and pinned by their
own tests below: we take only integer timestamps (the libraries also take
"1.7e9" and sign a rounded value) and only strict base64 (the libraries skip
stray characters inside a signature).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from scalekit import ScalekitClient
from standardwebhooks.webhooks import Webhook

from bridge.errors import VerificationFailed
from bridge.verify import SigningKey, Verifier

_SDK = ScalekitClient.__new__(ScalekitClient)


def sdk_accepts(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        return _SDK.verify_webhook_payload(secret, headers, body) is True
    except Exception:  # a crash on malformed input is a rejection
        return False


def standardwebhooks_accepts(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
        return True
    except Exception:  # a crash on malformed input is a rejection
        return False


def references_accept(secrets: list[str], headers: dict[str, str], body: bytes) -> bool:
    return any(sdk_accepts(s, headers, body) and standardwebhooks_accepts(s, headers, body) for s in secrets)


def bridge_accepts(secrets: list[str], headers: dict[str, str], body: bytes) -> bool:
    try:
        Verifier([SigningKey.from_secret(s) for s in secrets], 300).verify(headers, body)
        return True
    except VerificationFailed:
        return False


def _sign(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _floatable(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


keys = st.lists(st.binary(min_size=16, max_size=48), min_size=1, max_size=3)
bodies = st.one_of(
    st.just(b'{"id":"evt_1","type":"organization.created","data":{}}'),
    st.text(max_size=80).map(lambda t: t.encode("utf-8")),
    st.binary(max_size=40),
)
webhook_ids = st.one_of(st.just("msg_2p1"), st.text(max_size=20))
# Away from the ±300 s edges: the libraries read the clock themselves, a moment apart from us.
fresh_offsets = st.integers(min_value=-290, max_value=290)
stale_offsets = st.one_of(st.integers(310, 10**7), st.integers(-(10**7), -310))
junk_timestamps = st.text(max_size=12).filter(lambda t: not _floatable(t))


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[str], dict[str, str], bytes]:
    secret_keys = draw(keys)
    secrets = ["whsec_" + base64.b64encode(k).decode() for k in secret_keys]
    body = draw(bodies)
    webhook_id = draw(webhook_ids)
    now = int(time.time())
    timestamp = draw(
        st.one_of(
            fresh_offsets.map(lambda o: str(now + o)),
            stale_offsets.map(lambda o: str(now + o)),
            junk_timestamps,
        )
    )
    signer_keys = [*secret_keys, b"someone else's key"]
    entry = st.one_of(
        st.sampled_from(signer_keys).map(lambda k: "v1," + _sign(k, webhook_id, timestamp, body)),
        st.binary(min_size=1, max_size=32).map(lambda b: "v1," + base64.b64encode(b).decode()),
        st.binary(max_size=32).map(lambda b: "v2," + base64.b64encode(b).decode()),
        st.sampled_from(["", "v1", "v1,", "v1,abc", "v1,abcde", "v1,QUJD,QUJD", ",QUJD", "v2,abc"]),
    )
    signature = " ".join(draw(st.lists(entry, min_size=1, max_size=4)))
    headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    for name in draw(st.sets(st.sampled_from(sorted(headers)), max_size=1)):
        del headers[name]
    return secrets, headers, body


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_the_bridge_agrees_with_both_reference_libraries(case):
    secrets, headers, body = case
    expected = references_accept(secrets, headers, body)
    # Skip the few draws that land within a second of the edge while the clock ticks.
    assume(expected == references_accept(secrets, headers, body))
    event("accepted" if expected else "rejected")
    assert bridge_accepts(secrets, headers, body) == expected


def test_the_generated_domain_contains_acceptances(signing_secret):
    """Guard against a vacuous property: a plain good delivery is accepted by all three."""
    now = str(int(time.time()))
    key = base64.b64decode(signing_secret[6:])
    body = b'{"id":"evt_1"}'
    signature = "v1," + _sign(key, "msg_1", now, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": now, "webhook-signature": signature}
    assert references_accept([signing_secret], headers, body) and bridge_accepts([signing_secret], headers, body)


@pytest.mark.parametrize("stamp_format", ["{}.0", "{}.9", " {}", "+{}", "0{}"])
def test_we_refuse_non_integer_timestamps_the_libraries_round(signing_secret, stamp_format):
    """Deliberate: Scalekit sends integer seconds; anything else is refused rather than rounded."""
    now = int(time.time())
    key = base64.b64decode(signing_secret[6:])
    body = b"{}"
    stamp = stamp_format.format(now)
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + _sign(key, "m", str(now), body),
    }
    assert not bridge_accepts([signing_secret], headers, body)


def test_we_refuse_signatures_with_stray_characters_the_libraries_skip(signing_secret):
    """Deliberate: 'bad base64' is a 401 even when dropping the stray characters would match."""
    now = str(int(time.time()))
    key = base64.b64decode(signing_secret[6:])
    body = b"{}"
    good = _sign(key, "m", now, body)
    headers = {"webhook-id": "m", "webhook-timestamp": now, "webhook-signature": f"v1,{good[:4]}!{good[4:]}"}
    assert references_accept([signing_secret], headers, body)
    assert not bridge_accepts([signing_secret], headers, body)
