"""Best-effort, per-process memory of deliveries already acknowledged.

Scalekit retries a delivery it did not see acknowledged, and may also repeat
one we did acknowledge; answering those from memory keeps duplicate records out
of Kafka in the common case. It is bounded by size and age, lives in one
process, and forgets on restart: consumers must still deduplicate on `ce_id`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable


class RedeliveryCache:
    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._acknowledged: OrderedDict[str, float] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._acknowledged)

    async def claim(self, webhook_id: str) -> bool:
        """True if the caller should publish this delivery; False if it is already in Kafka.

        A delivery that is in flight elsewhere in this process is waited for:
        if that attempt is acknowledged this one is a duplicate, if it fails
        this one gets its own try.
        """
        while True:
            if self._seen(webhook_id):
                return False
            pending = self._in_flight.get(webhook_id)
            if pending is None:
                self._in_flight[webhook_id] = asyncio.get_running_loop().create_future()
                return True
            if await asyncio.shield(pending):
                return False

    def release(self, webhook_id: str, *, acknowledged: bool) -> None:
        """End a claim; remember the delivery when Kafka acknowledged it."""
        pending = self._in_flight.pop(webhook_id, None)
        if acknowledged and self._max_entries > 0:
            self._acknowledged[webhook_id] = self._clock()
            self._acknowledged.move_to_end(webhook_id)
            self._prune()
        if pending is not None and not pending.done():
            pending.set_result(acknowledged)

    def _seen(self, webhook_id: str) -> bool:
        stamp = self._acknowledged.get(webhook_id)
        if stamp is None:
            return False
        if self._clock() - stamp > self._ttl:
            del self._acknowledged[webhook_id]
            return False
        return True

    def _prune(self) -> None:
        horizon = self._clock() - self._ttl
        while self._acknowledged:
            oldest_id, stamp = next(iter(self._acknowledged.items()))
            if len(self._acknowledged) <= self._max_entries and stamp >= horizon:
                break
            del self._acknowledged[oldest_id]
