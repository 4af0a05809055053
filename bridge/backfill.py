"""`scalekit-bridge backfill`: write every event of a time window that Kafka does not hold yet.

Scalekit stops retrying a delivery after about 22 minutes; its Events API keeps
the events. A run lists the window's events (`bridge.eventsapi`, off the event
loop), reads the ids already in the target topics from the window's start minus
a margin (`bridge.publish.event_ids_since`), and writes the missing ones in
`occurred_at` order through the webhook path's own `Writer`, so each record is
the one the webhook would have written, marked with `ce_backfilledat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from bridge import metrics as m
from bridge.config import BackfillSettings
from bridge.core import Outcome, Sender
from bridge.envelope import Recovered, topic_for
from bridge.errors import ApiError, MalformedDelivery, PublishFailed
from bridge.eventsapi import EventQuery, EventsApi, Page, occurred_at
from bridge.pipeline import Plan, Sent, Writer
from bridge.publish import KafkaPublisher, event_ids_since

log = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Records handed to the producer and not yet acknowledged: enough to fill batches, few to wait for.
IN_FLIGHT = 512
# How often a run that is not at a terminal says how far it got.
PROGRESS_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class Request:
    """What one run was asked to do."""

    query: EventQuery
    dry_run: bool = False


@dataclass
class Tally:
    """What a run did; its last line and exit code are the job's interface."""

    dry_run: bool = False
    fetched: int = 0
    present: int = 0
    published: int = 0
    deadlettered: int = 0
    failed: list[str] = field(default_factory=list)
    # Listed, missing from Kafka, and not readable as an envelope: reported by id, not written.
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"dry run: fetched {self.fetched}, already in Kafka {self.present}, "
                f"would publish {self.published}, would dead-letter {self.deadlettered}"
            )
        return (
            f"fetched {self.fetched}, already in Kafka {self.present}, published {self.published}, "
            f"dead-lettered {self.deadlettered}, failed {len(self.failed)}, unreadable {len(self.unreadable)}"
        )


def parse_since(text: str, now: datetime) -> datetime:
    """An RFC 3339 time, or a duration back from `now` (90m, 2h, 3d, 1w); raises ValueError."""
    duration = _DURATION.fullmatch(text.strip())
    if duration is not None:
        return now - timedelta(**{_UNITS[duration[2]]: int(duration[1])})
    return parse_time(text)


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with a zone (`Z` or an offset); raises ValueError."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an RFC 3339 time nor a duration such as 90m, 2h or 3d") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z or an offset such as +02:00")
    return moment.astimezone(UTC)


class Progress:
    """Says how far a run got: a bar at a terminal, a log line every few seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._terminal = stream.isatty()
        self._said = 0.0

    def update(self, phase: str, done: int, total: int | None = None, *, final: bool = False) -> None:
        if self._terminal:
            self._draw(phase, done, total, final)
            return
        now = time.monotonic()
        if final or now - self._said >= PROGRESS_EVERY_SECONDS:
            self._said = now
            log.info("backfill %s", phase, extra={"progress": {"phase": phase, "done": done, "total": total}})

    def _draw(self, phase: str, done: int, total: int | None, final: bool) -> None:
        if total:
            filled = 30 * done // total
            line = f"{phase:<10} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            line = f"{phase:<10} {done}"
        self._stream.write("\r" + line + ("\n" if final else ""))
        self._stream.flush()


async def backfill(settings: BackfillSettings, request: Request, progress: Progress, out: TextIO) -> Tally:
    """Run once; raises ApiError or PublishFailed (nothing written) when a service cannot be used."""
    backfilled_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    tally = Tally(dry_run=request.dry_run)
    api = EventsApi(settings.api)
    await asyncio.to_thread(api.connect)  # wrong credentials end the run before anything else
    # Kafka before the listing, so only the missing events are held: memory follows the gap, not the window.
    margin = timedelta(seconds=settings.timestamp_tolerance)
    since_ms = int((request.query.start - margin).timestamp() * 1000)
    present, read = await event_ids_since(
        settings.kafka, _where_records_are(settings, request.query), since_ms, timeout=settings.publish_timeout
    )
    progress.update("scanned", read, final=True)
    missing = await _fetch_missing(api, request.query, present, progress, tally)

    publisher = KafkaPublisher(
        settings.kafka, timeout=settings.publish_timeout, max_record_bytes=settings.max_body_bytes
    )
    writer = Writer.configured(settings, publisher, m.Metrics(process_metrics=False))
    if request.dry_run:
        for event in missing:
            origin = _recovered(event, backfilled_at)
            _show(origin, writer.plan(origin), out, tally)
        return tally
    if missing:
        await publisher.start()
        try:
            await _publish(writer, publisher, [_recovered(event, backfilled_at) for event in missing], progress, tally)
        finally:
            await publisher.stop()
    return tally


async def _fetch_missing(
    api: EventsApi, query: EventQuery, present: set[str], progress: Progress, tally: Tally
) -> list[dict[str, Any]]:
    """The window's events not in `present`, each once, oldest first (the API's page order is not relied on)."""
    pages: Iterator[Page] = api.pages(query)
    seen: set[str] = set()
    missing: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    while (page := await asyncio.to_thread(next, pages, None)) is not None:
        for event in page.envelopes:
            if query.matches(event) and event["id"] not in seen:
                seen.add(event["id"])
                if event["id"] not in present:
                    missing[event["id"]] = event
        for bad in page.unreadable:
            if bad.event_id not in present and bad.event_id not in unreadable:
                unreadable[bad.event_id] = bad.reason
                log.error("an event from the Events API cannot be read; it is not written",
                          extra={"event_id": bad.event_id, "reason": bad.reason})
        progress.update("fetching", len(seen))
    tally.unreadable = list(unreadable)
    tally.fetched, tally.present = len(seen), len(seen) - len(missing)
    progress.update("fetched", len(seen), final=True)
    return sorted(missing.values(), key=lambda event: (occurred_at(event) or query.start, event["id"]))


def _where_records_are(settings: BackfillSettings, query: EventQuery) -> Callable[[str], bool]:
    """Which topics can hold the window's records: the types' topics (all under the prefix) and dead letters."""
    prefix, deadletter = settings.topic_prefix, settings.deadletter_topic
    wanted = set()
    for event_type in query.types:
        with contextlib.suppress(MalformedDelivery):  # such an event can only have been dead-lettered
            wanted.add(topic_for(prefix, event_type, deadletter_topic=deadletter))

    def holds(topic: str) -> bool:
        if topic == deadletter:
            return True
        return topic in wanted if query.types else topic.startswith(prefix)

    return holds


def _recovered(event: dict[str, Any], backfilled_at: str) -> Recovered:
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Recovered(event_id=event["id"], body=body, backfilled_at=backfilled_at)


def _show(origin: Recovered, plan: Plan, out: TextIO, tally: Tally) -> None:
    """One dry-run line: type, id, topic, key (and why, for a dead letter)."""
    message, receipt = plan.message, plan.receipt
    key = message.key.decode("utf-8", "replace") if message.key is not None else "-"
    line = f"{receipt.event_type or '-'}\t{origin.event_id}\t{message.topic}\t{key}"
    if receipt.outcome == Outcome.DEADLETTERED:
        tally.deadlettered += 1
        line += f"\t(dead letter: {plan.reason})"
    else:
        tally.published += 1
    print(line, file=out)


async def _publish(
    writer: Writer, sender: Sender, recovered: list[Recovered], progress: Progress, tally: Tally
) -> None:
    """Hand records over oldest first, up to IN_FLIGHT awaiting their acks; stop sending at a failure.

    Records sent in order reach each partition in order, so no later event of an organization
    overtakes an earlier one. After a failure, records already sent are still waited for.
    """
    waiting: deque[tuple[Recovered, Sent]] = deque()
    handed: set[str] = set()
    failed: set[str] = set()

    async def settle_oldest() -> None:
        origin, sent = waiting.popleft()
        try:
            receipt = await writer.settle(sent)
        except PublishFailed as exc:
            failed.add(origin.event_id)
            log.error("a backfill write failed", extra={"event_id": origin.event_id, "reason": exc.reason})
            return
        if receipt.outcome == Outcome.DEADLETTERED:
            tally.deadlettered += 1
            log.warning("backfilled event dead-lettered", extra={"event_id": origin.event_id})
        else:
            tally.published += 1
        progress.update("publishing", tally.published + tally.deadlettered, len(recovered))

    for origin in recovered:
        if len(waiting) >= IN_FLIGHT:
            await settle_oldest()
        if failed:
            break
        try:
            waiting.append((origin, await writer.send(origin, sender)))
        except PublishFailed as exc:
            log.error("a backfill write failed", extra={"event_id": origin.event_id, "reason": exc.reason})
            break
        handed.add(origin.event_id)
    while waiting:
        await settle_oldest()
    tally.failed = [event.event_id for event in recovered if event.event_id in failed or event.event_id not in handed]
    progress.update("published", tally.published + tally.deadlettered, len(recovered), final=True)


def main(settings: BackfillSettings, request: Request) -> int:
    """Run and report; 0 when every missing event was written, 1 otherwise (each unwritten one named)."""
    # One line per event would drown the progress; the summary and the failures say what matters.
    if settings.log_level != "DEBUG":
        logging.getLogger("bridge.delivery").setLevel(logging.WARNING)
    try:
        tally = asyncio.run(backfill(settings, request, Progress(sys.stderr), sys.stdout))
    except (ApiError, PublishFailed) as exc:
        print(f"scalekit-bridge backfill: {exc}; nothing was written", file=sys.stderr)
        return 1
    if tally.failed:
        print(
            f"scalekit-bridge backfill: {len(tally.failed)} event(s) not written: {', '.join(tally.failed)}",
            file=sys.stderr,
        )
    if tally.unreadable:
        print(
            f"scalekit-bridge backfill: {len(tally.unreadable)} event(s) the Events API returned in a form that "
            f"cannot be read, not written: {', '.join(tally.unreadable)}",
            file=sys.stderr,
        )
    print(tally.summary(), flush=True)
    return 1 if tally.failed or tally.unreadable else 0
