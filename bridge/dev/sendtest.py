"""`scalekit-bridge send-test`: the dashboard's "Send Test Event", for local use.

Signs one sample delivery (there is one per documented Scalekit event
type) exactly as Scalekit would and POSTs it with the standard library's HTTP
client, so it also runs where the bridge's server dependencies are not wanted.
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
