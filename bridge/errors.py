"""The bridge's few exceptions.

Those the pipeline raises map to HTTP answers in exactly one place
(`bridge.app._answer_for`), beside the refusals the webhook handler decides on a
request alone (draining, overloaded, compressed, oversized, too slow).
`ApiError` is backfill's alone (exit code 1).
Each carries one line for a human (`reason`, or `detail` beside a fixed `code`).
Library errors (aiokafka's, json's, the Scalekit SDK's) are
translated into these where they are raised, never passed up raw.
"""

from __future__ import annotations

import traceback


class BridgeError(Exception):
    """Base class for everything the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The environment does not describe a runnable bridge; names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class VerificationFailed(BridgeError):
    """The delivery's signature, timestamp or headers do not check out (401).

    `code` is one of `bridge.verify.REASONS` (a metric label and the 401's `error`); `detail`
    is the sentence for a human. Every other error's `reason` is such a sentence.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail



class MalformedDelivery(BridgeError):
    """Verified, but not a Scalekit envelope we can route; goes to the dead-letter topic."""

    # JSON lets a string escape half a surrogate pair; UTF-8 (and so every consumer) cannot carry it.
    LONE_SURROGATE = "a string is not valid Unicode (a lone surrogate escape)"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PublishFailed(BridgeError):
    """Kafka did not confirm the write in time, or refused it (503, Scalekit retries)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RecordRejected(BridgeError):
    """Kafka will never take this record (too large, illegal topic): no retry can cure it.

    A delivery's record refused so is dead-lettered instead; Scalekit must not be
    told to retry something that can only fail again.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApiError(BridgeError):
    """Scalekit's API could not be reached or refused us (backfill); the message is one line for an operator."""


def where(exc: BaseException) -> str:
    """Where an exception was raised (file:line in function), never its message, which may quote input."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
