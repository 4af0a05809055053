"""Verification accepts what Scalekit signs and refuses everything else with a named reason."""

from __future__ import annotations

import base64
import time

import pytest

from bridge import verify as v
from bridge.errors import VerificationFailed
from tests.helpers import signed_headers

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
BODY = b'{"id":"evt_1","type":"role.created"}'
NOW = 1_760_000_000


def verifier(*secrets: str, tolerance: int = 300) -> v.Verifier:
    return v.Verifier([v.SigningKey.from_secret(s) for s in secrets or (SECRET,)], tolerance, clock=lambda: NOW)


def reason_for(headers: dict[str, str], body: bytes = BODY, *secrets: str) -> str:
    with pytest.raises(VerificationFailed) as caught:
        verifier(*secrets).verify(headers, body)
    return caught.value.code


def test_a_delivery_signed_by_the_reference_library_verifies():
    """The happy path, with the signature made by `standardwebhooks`, not by us."""
    headers = signed_headers(SECRET, BODY, webhook_id="msg_1", timestamp=NOW)
    delivery = verifier().verify(headers, BODY)
    assert (delivery.webhook_id, delivery.timestamp, delivery.body) == ("msg_1", str(NOW), BODY)


def test_any_configured_secret_may_match_during_rotation():
    """Old and new secret both work while both are configured."""
    for secret in (SECRET, OTHER_SECRET):
        headers = signed_headers(secret, BODY, timestamp=NOW)
        assert verifier(SECRET, OTHER_SECRET).verify(headers, BODY).body == BODY


def test_any_listed_signature_may_match():
    """Senders list several signatures during their own rotation; one good v1 entry suffices."""
    headers = signed_headers(SECRET, BODY, timestamp=NOW)
    bogus = "v1," + base64.b64encode(b"x" * 32).decode()
    headers["webhook-signature"] = f"{bogus} v2,AAAA {headers['webhook-signature']}"
    assert verifier().verify(headers, BODY).body == BODY


def test_the_matching_signature_entry_travels_with_the_verified_delivery():
    headers = signed_headers(SECRET, BODY, timestamp=NOW)
    good = headers["webhook-signature"]
    headers["webhook-signature"] = f"v2,AAAA {good} v1,{base64.b64encode(b'y' * 32).decode()}"
    assert verifier().verify(headers, BODY).signature == good


def test_a_kept_delivery_verifies_by_its_signature_whatever_its_age():
    """`replay` checks a dead letter days later: the signature still binds id, timestamp and body."""
    headers = signed_headers(SECRET, BODY, webhook_id="msg_1", timestamp=NOW - 3 * 86_400)
    assert reason_for(headers) == v.TIMESTAMP_TOO_OLD
    assert verifier().verify_kept(headers, BODY).webhook_id == "msg_1"
    for tampered in ({**headers, "webhook-timestamp": str(NOW)}, {**headers, "webhook-id": "msg_2"}):
        with pytest.raises(VerificationFailed) as caught:
            verifier().verify_kept(tampered, BODY)
        assert caught.value.code == v.NO_MATCHING_SIGNATURE
    with pytest.raises(VerificationFailed):
        verifier(OTHER_SECRET).verify_kept(headers, BODY)
    with pytest.raises(VerificationFailed):
        verifier().verify_kept(headers, BODY + b" ")


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_or_empty_header_is_refused(header):
    headers = signed_headers(SECRET, BODY, timestamp=NOW)
    assert reason_for({k: val for k, val in headers.items() if k != header}) == v.MISSING_HEADER
    assert reason_for({**headers, header: ""}) == v.MISSING_HEADER


@pytest.mark.parametrize("stamp", ["abc", "1.5e9", "1760000000.0", "-1760000000", " 1760000000", "9" * 13, "١٢٣"])
def test_a_timestamp_that_is_not_integer_seconds_is_refused(stamp):
    headers = signed_headers(SECRET, BODY, timestamp=NOW) | {"webhook-timestamp": stamp}
    assert reason_for(headers) == v.MALFORMED_TIMESTAMP


def test_the_tolerance_applies_both_ways_and_includes_its_edge():
    for offset, expected in ((-301, v.TIMESTAMP_TOO_OLD), (301, v.TIMESTAMP_TOO_NEW)):
        assert reason_for(signed_headers(SECRET, BODY, timestamp=NOW + offset)) == expected
    for offset in (-300, 300):
        assert verifier().verify(signed_headers(SECRET, BODY, timestamp=NOW + offset), BODY)


@pytest.mark.parametrize("signature", ["v1", "v1,a,b", "v1,not base64!", "v1,abc", "  "])
def test_a_malformed_signature_list_is_refused(signature):
    headers = signed_headers(SECRET, BODY, timestamp=NOW) | {"webhook-signature": signature}
    assert reason_for(headers) == v.MALFORMED_SIGNATURE


def test_a_malformed_entry_before_a_good_one_is_refused():
    """Like the reference libraries, we read left to right and do not skip garbage."""
    headers = signed_headers(SECRET, BODY, timestamp=NOW)
    headers["webhook-signature"] = "garbage " + headers["webhook-signature"]
    assert reason_for(headers) == v.MALFORMED_SIGNATURE


def test_a_changed_body_id_or_timestamp_breaks_the_signature():
    headers = signed_headers(SECRET, BODY, webhook_id="msg_1", timestamp=NOW)
    assert reason_for(headers, BODY + b" ") == v.NO_MATCHING_SIGNATURE
    assert reason_for(headers | {"webhook-id": "msg_2"}) == v.NO_MATCHING_SIGNATURE
    assert reason_for(headers | {"webhook-timestamp": str(NOW + 1)}) == v.NO_MATCHING_SIGNATURE


def test_a_signature_by_an_unknown_secret_is_refused():
    assert reason_for(signed_headers(OTHER_SECRET, BODY, timestamp=NOW)) == v.NO_MATCHING_SIGNATURE


def test_a_body_or_webhook_id_that_is_not_utf8_is_refused():
    headers = signed_headers(SECRET, BODY, timestamp=NOW)
    assert reason_for(headers, b"\xff\xfe") == v.INVALID_ENCODING
    # aiohttp hands over undecodable header bytes as lone surrogates.
    assert reason_for(headers | {"webhook-id": "msg_\udcff"}) == v.INVALID_ENCODING


def test_every_reason_is_one_of_the_published_reasons():
    """Reasons label a metric; the set must stay closed."""
    assert set(v.REASONS) == {
        "missing_header", "malformed_timestamp", "timestamp_too_old", "timestamp_too_new",
        "malformed_signature", "no_matching_signature", "invalid_encoding",
    }


@pytest.mark.parametrize("secret", ["whsec_", "whsec_***", "sk_" + "A" * 40, "whsec_QUJD!"])
def test_a_bad_secret_is_refused_without_echoing_it(secret):
    with pytest.raises(ValueError, match="a signing secret must") as caught:
        v.SigningKey.from_secret(secret)
    assert secret not in str(caught.value)


def test_a_key_never_shows_its_bytes():
    key = v.SigningKey.from_secret(SECRET)
    assert "k" * 8 not in repr(key) and SECRET[6:] not in repr(key) and "redacted" in repr(key)


def test_our_signature_header_matches_the_reference_library():
    """`send-test` signs with `signature_header`; it must agree with Standard Webhooks."""
    ours = v.signature_header(v.SigningKey.from_secret(SECRET), "msg_1", str(NOW), BODY)
    assert ours == signed_headers(SECRET, BODY, webhook_id="msg_1", timestamp=NOW)["webhook-signature"]


def test_the_real_clock_is_the_default():
    real = v.Verifier([v.SigningKey.from_secret(SECRET)], 300)
    assert real.verify(signed_headers(SECRET, BODY, timestamp=int(time.time())), BODY).body == BODY
