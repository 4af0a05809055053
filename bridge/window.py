"""Time windows as the recovery commands take them: an RFC 3339 time, or a duration back from now."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, now: datetime) -> datetime:
    """A window bound: an RFC 3339 time, or a duration back from `now` (90m, 2h, 3d, 1w); raises ValueError."""
    if _DURATION.fullmatch(text.strip()) is not None:
        try:
            return now - parse_duration(text)
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before the year 1") from None
    return parse_time(text)


def parse_duration(text: str) -> timedelta:
    """90m, 2h, 3d, 1w; raises ValueError."""
    duration = _DURATION.fullmatch(text.strip())
    if duration is None:
        raise ValueError(f"{text!r} is not a duration such as 90m, 2h or 7d")
    try:
        return timedelta(**{_UNITS[duration[2]]: int(duration[1])})
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any window can be") from None


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with a zone (`Z` or an offset), in UTC; raises ValueError, whatever the text."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an RFC 3339 time nor a duration such as 90m, 2h or 3d") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z or an offset such as +02:00")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in the year 0 in UTC
        raise ValueError(f"{text!r} is outside the years 1 to 9999 in UTC") from None
