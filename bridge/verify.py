"""Standard Webhooks verification, as Scalekit signs its deliveries.

The bridge verifies by itself rather than through `scalekit-sdk-python`:
`ScalekitClient`'s constructor authenticates against Scalekit over the network,
which a webhook receiver must not need in order to start, and the SDK (like the
`standardwebhooks` package) crashes with assorted exceptions on malformed
headers, takes one secret where rotation needs several, and decodes the body as
text. `tests/unit/test_verify_differential.py` proves that on well-formed and
malformed input alike this module accepts exactly what both of those libraries
accept.

Everything here works on the raw body bytes and on header strings; nothing
knows about HTTP frameworks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.errors import VerificationFailed

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix every secret carries, not a secret
SIGNATURE_VERSION = "v1"

# Reasons are a closed set: they label a metric and are safe to show a caller.
MISSING_HEADER = "missing_header"
MALFORMED_TIMESTAMP = "malformed_timestamp"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
TIMESTAMP_TOO_NEW = "timestamp_too_new"
MALFORMED_SIGNATURE = "malformed_signature"
NO_MATCHING_SIGNATURE = "no_matching_signature"
INVALID_ENCODING = "invalid_encoding"
REASONS = (
    MISSING_HEADER,
    MALFORMED_TIMESTAMP,
    TIMESTAMP_TOO_OLD,
    TIMESTAMP_TOO_NEW,
    MALFORMED_SIGNATURE,
    NO_MATCHING_SIGNATURE,
    INVALID_ENCODING,
)

# A webhook-timestamp longer than this is not a Unix time in seconds; the bound
# also keeps int() away from pathological inputs.
_MAX_TIMESTAMP_DIGITS = 12


@dataclass(frozen=True)
class SigningKey:
    """One decoded `whsec_` secret. Its bytes never appear in a repr."""

    _key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> SigningKey:
        """Decode `whsec_<base64>`; raises ValueError without echoing the secret."""
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError(f"a signing secret must start with {SECRET_PREFIX!r}")
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a signing secret must be base64 after its prefix") from None
        if not key:
            raise ValueError("a signing secret must not be empty")
        return cls(key)

    def __repr__(self) -> str:
        return "SigningKey(<redacted>)"

    @property
    def size(self) -> int:
        """How many bytes the key has (its strength), never the bytes themselves."""
        return len(self._key)

    def sign(self, content: bytes) -> bytes:
        return hmac.digest(self._key, content, hashlib.sha256)


@dataclass(frozen=True)
class VerifiedDelivery:
    """What verification vouches for: who sent which bytes, and when."""

    webhook_id: str
    timestamp: str
    body: bytes
    # The `webhook-signature` entry that matched (`v1,<base64>`): an HMAC, not a secret. A dead letter keeps
    # it so that `replay` can verify the delivery again before publishing it.
    signature: str | None = None


def signed_content(webhook_id: str, timestamp: str, body: bytes) -> bytes:
    return b"%s.%s.%s" % (webhook_id.encode("utf-8"), timestamp.encode("ascii"), body)


def signature_header(key: SigningKey, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The `webhook-signature` value a sender holding `key` puts on a delivery."""
    digest = key.sign(signed_content(webhook_id, timestamp, body))
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


class Verifier:
    """Checks deliveries against any of the configured keys (several during rotation)."""

    def __init__(
        self,
        keys: Sequence[SigningKey],
        tolerance_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.use_keys(keys)
        self._tolerance = tolerance_seconds
        self._clock = clock

    def use_keys(self, keys: Sequence[SigningKey]) -> None:
        """Verify against `keys` from the next delivery on (a rotated secret file)."""
        if not keys:
            raise ValueError("at least one signing key is required")
        self._keys = tuple(keys)

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedDelivery:
        """Return the verified delivery or raise `VerificationFailed` with a fixed reason."""
        return self._verify(headers, body, timely=True)

    def verify_kept(self, headers: Mapping[str, str], body: bytes) -> VerifiedDelivery:
        """Verify a delivery kept since it arrived (a dead letter): its signature, not its age."""
        return self._verify(headers, body, timely=False)

    def _verify(self, headers: Mapping[str, str], body: bytes, *, timely: bool) -> VerifiedDelivery:
        webhook_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signatures = headers.get("webhook-signature")
        if not webhook_id or not timestamp or not signatures:
            missing = [
                name
                for name, value in (
                    ("webhook-id", webhook_id),
                    ("webhook-timestamp", timestamp),
                    ("webhook-signature", signatures),
                )
                if not value
            ]
            raise VerificationFailed(MISSING_HEADER, f"missing or empty: {', '.join(missing)}")

        self._check_timestamp(timestamp, timely=timely)
        try:
            body.decode("utf-8")  # the reference libraries sign text: non-UTF-8 never verifies
            content = signed_content(webhook_id, timestamp, body)
        except UnicodeError:
            raise VerificationFailed(
                INVALID_ENCODING, "webhook-id and body must be UTF-8"
            ) from None
        expected = [key.sign(content) for key in self._keys]
        # Entries are read left to right and the first matching v1 entry wins,
        # as in the reference libraries; a malformed entry before it is fatal.
        for entry in signatures.split(" "):
            version, candidate = _parse_entry(entry)
            if version != SIGNATURE_VERSION:
                continue
            # Compare against every key, not stopping early, so timing says
            # nothing about which key (if any) came close.
            matched = False
            for digest in expected:
                matched |= hmac.compare_digest(digest, candidate)
            if matched:
                return VerifiedDelivery(webhook_id=webhook_id, timestamp=timestamp, body=body, signature=entry)
        raise VerificationFailed(NO_MATCHING_SIGNATURE, "no signature matches a configured secret")

    def _check_timestamp(self, timestamp: str, *, timely: bool) -> None:
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
            raise VerificationFailed(
                MALFORMED_TIMESTAMP, "webhook-timestamp must be integer Unix seconds"
            )
        if not timely:
            return
        skew = int(timestamp) - self._clock()
        if skew < -self._tolerance:
            raise VerificationFailed(
                TIMESTAMP_TOO_OLD, f"webhook-timestamp is over {self._tolerance}s in the past"
            )
        if skew > self._tolerance:
            raise VerificationFailed(
                TIMESTAMP_TOO_NEW, f"webhook-timestamp is over {self._tolerance}s in the future"
            )


def _parse_entry(entry: str) -> tuple[str, bytes]:
    version, comma, encoded = entry.partition(",")
    if not comma or "," in encoded:
        raise VerificationFailed(
            MALFORMED_SIGNATURE, "webhook-signature entries must look like v1,<base64>"
        )
    try:
        return version, base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed(
            MALFORMED_SIGNATURE, "webhook-signature has an entry that is not base64"
        ) from None
