"""Secrets read from files follow the files: a rotated Kubernetes Secret takes effect without a restart.

The kubelet rewrites a mounted Secret's files (an atomic symlink swap) within about a minute of the
Secret changing. `SecretFiles` reads the followed files every few seconds and, when one changed, hands
the new texts to what uses them. A new text that is refused (a malformed secret, credentials Kafka
rejects) is logged once, by the variable's name and never by its content, and the secrets in use stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridge.config import read_secret_file
from bridge.errors import ConfigError, PublishFailed, where

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0

Apply = Callable[[tuple[str, ...]], Awaitable[None]]


@dataclass
class _Followed:
    what: str
    files: tuple[tuple[str, str], ...]  # (variable, path)
    apply: Apply
    texts: tuple[str, ...]


class SecretFiles:
    """Groups of secret files, each group applied as one when any of its files changes."""

    def __init__(self) -> None:
        self._followed: list[_Followed] = []

    def follow(self, what: str, files: tuple[tuple[str, str], ...], apply: Apply) -> None:
        """Follow `files` ((variable, path) pairs, as read at start); `apply` takes their new texts."""
        if files:
            texts = tuple(read_secret_file(variable, path) for variable, path in files)
            self._followed.append(_Followed(what, files, apply, texts))

    def __bool__(self) -> bool:
        return bool(self._followed)

    async def run(self, interval: float = POLL_SECONDS) -> None:
        """Check every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.check()

    async def check(self) -> None:
        """Apply each group whose files changed since they were last read."""
        for followed in self._followed:
            try:
                texts = tuple(read_secret_file(variable, path) for variable, path in followed.files)
            except ConfigError as exc:  # mid-swap, or removed: the secrets in use stay
                log.warning("a secret file cannot be read; keeping the secrets in use", extra={"reason": str(exc)})
                continue
            if texts == followed.texts:
                continue
            followed.texts = texts  # a refused text is said once, not every interval
            try:
                await followed.apply(texts)
            except (ConfigError, PublishFailed) as exc:
                log.error(
                    "a rotated secret was refused; keeping the one in use",
                    extra={"secret": followed.what, "reason": str(exc)},
                )
            except Exception as exc:  # noqa: BLE001 - the follower outlives any bad file; the message may quote it
                log.error(
                    "a rotated secret could not be used; keeping the one in use",
                    extra={"secret": followed.what, "error": type(exc).__name__, "at": where(exc)},
                )
            else:
                log.info("a rotated secret is in use", extra={"secret": followed.what})
