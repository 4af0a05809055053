"""`scalekit-bridge send-test`: the dashboard's "Send Test Event", for local use.

Signs one sample delivery (there is one per documented Scalekit event
type) exactly as Scalekit would and POSTs it with the standard library's HTTP
client, so it also runs where the bridge's server dependencies are not wanted.
With `--probe` (the chart's `helm test`) it proves an install without writing
an event: the bridge is ready, and a delivery signed with a key that is not the
bridge's reaches it through the Service and is refused for its signature.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from bridge.dev.samples import fresh_delivery
from bridge.verify import SigningKey, signature_header


def signed_headers(key: SigningKey, body: bytes) -> dict[str, str]:
    """The headers Scalekit sends with `body`: a fresh webhook-id, the current time, the signature."""
    webhook_id = f"msg_{secrets.token_hex(12)}"
    timestamp = str(int(time.time()))
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature_header(key, webhook_id, timestamp, body),
    }


def signed_request(url: str, key: SigningKey, body: bytes) -> urllib.request.Request:
    """A signed POST of `body` to an http(s) `url`; ValueError for any other scheme (file:, ftp:)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    return urllib.request.Request(url, data=body, method="POST", headers=signed_headers(key, body))  # noqa: S310


def send(url: str, key: SigningKey, event_type: str, timeout: float = 15.0) -> tuple[int, str]:
    """POST one signed test delivery; returns the status and the response text."""
    body = json.dumps(fresh_delivery(event_type)).encode("utf-8")
    try:
        with urllib.request.urlopen(signed_request(url, key, body), timeout=timeout) as response:  # noqa: S310 - http(s) only
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def probe(url: str, ready_url: str | None, event_type: str, timeout: float = 15.0) -> list[tuple[bool, str]]:
    """The install's checks that write nothing, each (passed, what was seen): readiness, then a delivery
    signed with a fresh random key, which a live bridge refuses with 401 `no_matching_signature`."""
    checks: list[tuple[bool, str]] = []
    if ready_url is not None:
        if urlsplit(ready_url).scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {ready_url!r}")
        try:
            with urllib.request.urlopen(ready_url, timeout=timeout) as response:  # noqa: S310 - http(s) only
                checks.append((response.status == 200, f"ready: {response.status}"))
        except urllib.error.HTTPError as exc:
            checks.append((False, f"not ready: {exc.code} {exc.read().decode('utf-8', 'replace')}"))
    status, text = send(url, SigningKey(secrets.token_bytes(32)), event_type, timeout)
    try:
        reason = json.loads(text).get("error")
    except (ValueError, AttributeError):
        reason = None
    refused = status == 401 and reason == "no_matching_signature"
    checks.append((refused, f"a delivery signed with another key: {status} {text}"))
    return checks
