"""The event ids a release wrote within a window: bounded by time and by count.

Ids are kept as 64-bit keyed hashes (Python's `hash` of a `str`, seeded per process), in slices of
at most a twenty-fourth of the window and of `max_ids` each; a slice is dropped whole when its newest
id leaves the window, or early, oldest first, when the count passes `max_ids` (the effective window
then shrinks, and says so). A lookup costs one set membership test per slice. Two different ids share a hash with
probability about (ids remembered) / 2^64 per lookup, and the seed differs between processes, so a
collision cannot be aimed at and does not repeat on another replica.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bridge.core import Source

SLICES = 24


@dataclass
class _Slice:
    start_ms: int
    oldest_ms: int
    ids: dict[Source, set[int]] = field(default_factory=dict)
    count: int = 0
    newest_ms: int = 0


class RememberedIds:
    """Which event ids were written within the last `window_ms`, and by whom; at most about `max_ids`."""

    def __init__(self, window_ms: int, max_ids: int) -> None:
        self._window_ms = window_ms
        self._slice_ms = max(1, window_ms // SLICES)
        self._max_ids = max_ids
        self._slice_ids = max(1, max_ids // SLICES)
        self._slices: deque[_Slice] = deque()
        self._count = 0
        self._newest_ms = 0
        self._cut_short = False  # slices dropped for `max_ids` before they left the window

    def __len__(self) -> int:
        return self._count

    def add(self, event_id: str, at_ms: int, source: Source) -> None:
        """Remember that `event_id`'s record was written at `at_ms` (epoch milliseconds) by `source`."""
        self._newest_ms = max(self._newest_ms, at_ms)
        if at_ms < self._newest_ms - self._window_ms:
            return  # already out of the window
        start = at_ms - at_ms % self._slice_ms
        # A new slice each twenty-fourth of the window, and each twenty-fourth of `max_ids`, so the cap always
        # drops a small, old part and never the ids just written. Receipts arrive nearly in time order; one
        # read late joins the slice of its time or a newer one, so it is kept as long as its window, or longer.
        newest = self._slices[-1] if self._slices else None
        if newest is None or start > newest.start_ms or newest.count >= self._slice_ids:
            self._slices.append(_Slice(max(start, newest.start_ms) if newest is not None else start, at_ms))
        target = self._slices[-1] if start >= self._slices[-1].start_ms else self._slice_for(start)
        key = hash(event_id)
        ids = target.ids.setdefault(source, set())
        if key not in ids and not self._just_before(target, key):  # a replica reads its own ids back a moment later
            ids.add(key)
            target.count += 1
            self._count += 1
        target.newest_ms = max(target.newest_ms, at_ms)
        target.oldest_ms = min(target.oldest_ms, at_ms)
        self.forget(self._newest_ms)

    def holds(self, event_id: str) -> Source | None:
        """Who wrote `event_id`'s record within the window; None when no one did (or it left the window)."""
        key = hash(event_id)
        for remembered in reversed(self._slices):  # a retry usually follows its first attempt closely
            for source, ids in remembered.ids.items():
                if key in ids:
                    return source
        return None

    def forget(self, now_ms: int) -> None:
        """Drop the slices wholly older than the window before `now_ms`, and the oldest past `max_ids`."""
        horizon = now_ms - self._window_ms
        while self._slices and (self._slices[0].newest_ms < horizon or self._count > self._max_ids):
            dropped = self._slices.popleft()
            self._count -= dropped.count
            self._cut_short = self._cut_short or dropped.newest_ms >= horizon

    def reach_ms(self, now_ms: int) -> int:
        """How far back from `now_ms` the memory reaches: the window, or less once `max_ids` cut it short."""
        if not self._cut_short:
            return self._window_ms
        reach = now_ms - self._slices[0].oldest_ms if self._slices else 0
        if reach >= self._window_ms:
            self._cut_short = False
        return min(self._window_ms, reach)

    def _just_before(self, target: _Slice, key: int) -> bool:
        """Whether the slice before the newest holds `key`: its id read back after a slice boundary."""
        if target is not self._slices[-1] or len(self._slices) < 2:
            return False
        return any(key in ids for ids in self._slices[-2].ids.values())

    def _slice_for(self, start_ms: int) -> _Slice:
        for candidate in reversed(self._slices):
            if candidate.start_ms <= start_ms:
                return candidate
        return self._slices[0]
