"""`scalekit-bridge backfill`: write every event of a time window that Kafka does not hold yet.

Scalekit stops retrying a delivery after about 22 minutes; its Events API keeps
the events. A run lists the window's events (`bridge.eventsapi`, off the event
loop), reads the ids already in the target topics from the window's start minus
a margin (`bridge.kafka.scan.event_ids_since`), and writes the missing ones in
`occurred_at` order through the webhook path's own `Writer`, so each record is
the one the webhook would have written, marked with `ce_backfilledat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from bridge import dedup
from bridge.config import BackfillSettings
from bridge.core import Outcome, Sender, Source, StoredRecord
from bridge.envelope import Recovered, event_id_of_record, organization_of, topic_for
from bridge.errors import ApiError, MalformedDelivery, PublishFailed, VerificationFailed
from bridge.eventsapi import EventQuery, EventsApi, Page, occurred_at
from bridge.kafka.scan import event_ids_since, latest_value, put_value, records_since
from bridge.pipeline import Plan, Sent, Writer
from bridge.progress import Progress, Writing, stop_within, stopped_by_sigterm, traced_run
from bridge.verify import Verifier
from bridge.window import parse_time

log = logging.getLogger(__name__)

# Records handed to the producer and not yet acknowledged: enough to fill batches, few to wait for.
IN_FLIGHT = 512
# After SIGTERM (the Job's deadline, a deleted pod): how long records in flight may still be acknowledged,
# so that what was not is named well inside Kubernetes' 30 s termination grace.
STOPPING_GRACE_SECONDS = 5.0


# `--max-lookback`'s default. Scalekit does not document how long its Events API keeps events; a week
# covers any outage the alerts let run unnoticed and bounds what one run reads and holds.
DEFAULT_MAX_LOOKBACK = timedelta(days=7)


@dataclass(frozen=True)
class Request:
    """What one run was asked to do.

    With `resume`, the window starts at the last recorded end (less the timestamp tolerance), or at
    `query.start` when none is recorded or when `since_given` and it is earlier (an operator reaching back
    over an outage, or the CronJob's --since re-checking a margin); never further back than `max_lookback`
    from its end.
    """

    query: EventQuery
    dry_run: bool = False
    resume: bool = False
    since_given: bool = True
    max_lookback: timedelta = DEFAULT_MAX_LOOKBACK
    # Count an event whose only copy is a dead letter as missing (its cause fixed, and not replayable).
    include_dead_lettered: bool = False


@dataclass
class Tally:
    """What a run did; its last line and exit code are the job's interface."""

    dry_run: bool = False
    # Why the window's end could not be recorded (a --resume run then fails: its next run depends on it).
    unrecorded: str | None = None
    fetched: int = 0
    present: int = 0
    published: int = 0
    deadlettered: int = 0
    failed: list[str] = field(default_factory=list)
    # Acknowledged after an earlier event of the same organization failed: the next run writes that one later.
    out_of_order: list[str] = field(default_factory=list)
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


async def backfill(settings: BackfillSettings, request: Request, progress: Progress, out: TextIO) -> Tally:
    """Run once; raises ApiError or PublishFailed (nothing written) when a service cannot be used.

    A run that wrote every missing event records its window's end (`--resume` starts there next time).
    """
    # This run's key, then the one 0.1.0 wrote without the topic prefix: read in one scan, the first found wins.
    keys = [k for k in (_state_key(settings, request.query), _state_key(settings, request.query, legacy=True)) if k]
    key = keys[0] if keys else None
    recorded = await _recorded_end(settings, keys) if keys else None
    if request.resume and key is not None:
        request = _resumed(settings, request, recorded)
    with traced_run("backfill", settings.tracing) as (writing, run):
        tally = await _backfill(settings, request, progress, out, writing)
        run.set("scalekit_bridge.published", tally.published)
        run.set("scalekit_bridge.deadlettered", tally.deadlettered)
        if tally.failed:
            run.fail("write_failed")
    if key is not None and not (tally.dry_run or tally.failed or tally.unreadable):
        try:
            await _record_end(settings, key, request.query, recorded)
        except PublishFailed as exc:
            tally.unrecorded = exc.reason
    return tally


def _state_key(settings: BackfillSettings, query: EventQuery, *, legacy: bool = False) -> bytes | None:
    """Whose window end a run records and resumes: the environment's, for the topics under one prefix, per set
    of types (the CronJob's `--type`s); None for an `--organization` run, which covers one organization only.

    The prefix names the topic set the window covers, so two installs sharing a state topic never resume
    from each other's window; `legacy` gives the key without it, which 0.1.0 wrote.
    """
    if query.organization_id is not None:
        return None
    scope = ",".join(sorted(query.types))
    topics = "" if legacy else f" topics={settings.topic_prefix}*"
    return (settings.environment + topics + (f" types={scope}" if scope else "")).encode()


def _resumed(settings: BackfillSettings, request: Request, recorded: datetime | None) -> Request:
    """`request` with its window starting where the last recorded run ended (`recorded`), if any."""
    start, message = request.query.start, "no recorded run to resume from; using --since"
    if recorded is not None:
        resume_at = recorded - timedelta(seconds=settings.timestamp_tolerance)
        if not request.since_given or resume_at < start:
            start, message = resume_at, "resuming"
        else:
            message = "--since starts before the recorded end; starting there"
    floor = request.query.end - request.max_lookback
    if start < floor:
        log.warning(
            "the window would start before --max-lookback; starting at its limit",
            extra={"wanted": start.isoformat(), "start": floor.isoformat()},
        )
        start = floor
    log.info(
        message,
        extra={"recorded_end": recorded.isoformat() if recorded else None, "start": start.isoformat()},
    )
    return replace(request, query=replace(request.query, start=start))


async def _recorded_end(settings: BackfillSettings, keys: Sequence[bytes]) -> datetime | None:
    """The window end recorded under the first of `keys` that has one."""
    value = await latest_value(settings.kafka, settings.backfill_state_topic, keys, timeout=settings.publish_timeout)
    if value is None:
        return None
    try:
        return parse_time(json.loads(value)["until"])
    except (ValueError, KeyError, TypeError):
        log.warning(
            "the recorded window end cannot be read; using --since", extra={"topic": settings.backfill_state_topic}
        )
        return None


async def _record_end(settings: BackfillSettings, key: bytes, query: EventQuery, recorded: datetime | None) -> None:
    """Record the window's end as the last covered moment: only forwards from `recorded` (read at the run's
    start), and only when the window reached back to it, so a gap before a late-starting window stays open."""
    if recorded is not None and recorded >= query.end:
        return
    if recorded is not None and query.start > recorded:
        log.info(
            "window end not recorded: the window starts after the recorded end, so the gap before it is still open",
            extra={"recorded_end": recorded.isoformat(), "start": query.start.isoformat()},
        )
        return
    value = json.dumps({"until": query.end.isoformat().replace("+00:00", "Z"), "key": key.decode()})
    topic = settings.backfill_state_topic
    await put_value(settings.kafka, topic, key, value.encode(), timeout=settings.publish_timeout)


async def _backfill(
    settings: BackfillSettings, request: Request, progress: Progress, out: TextIO, writing: Writing
) -> Tally:
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
    dead = _DeadLetters()
    if not request.include_dead_lettered:
        read += await _read_dead_letters(settings, since_ms, present, dead)
    progress.update("scanned", read, final=True)
    missing = await _fetch_missing(api, request.query, present, progress, tally, dead)

    publisher, receipts = dedup.recovery_job(settings, settings.kafka, Source.BACKFILL, writing.metrics)
    writer = Writer.configured(settings, publisher, writing.metrics, writing.tracing, receipts.memory)
    if request.dry_run:
        for event in missing:
            origin = _recovered(event, backfilled_at)
            _show(origin, writer.plan(origin), out, tally)
        return tally
    if missing:
        await publisher.start()
        progress.update("connected", 0, len(missing), final=True)
        stopping = asyncio.Event()

        def grace() -> float:
            return STOPPING_GRACE_SECONDS if stopping.is_set() else settings.publish_timeout

        with stopped_by_sigterm(stopping):
            try:
                async with receipts.writing(publisher, grace):
                    await _publish(writer, publisher, [_item(event, backfilled_at) for event in missing],
                                   progress, tally, stopping)
            finally:
                await stop_within(publisher, grace())
    return tally


async def _fetch_missing(
    api: EventsApi, query: EventQuery, present: set[str], progress: Progress, tally: Tally,
    dead: _DeadLetters | None = None,
) -> list[dict[str, Any]]:
    """The window's events neither in `present` nor dead letters as Scalekit's API gives them now (`dead`),
    each once, oldest first (the API's page order is not relied on)."""
    pages: Iterator[Page] = api.pages(query)
    seen: set[str] = set()
    missing: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    while (page := await asyncio.to_thread(next, pages, None)) is not None:
        for event in page.envelopes:
            if query.matches(event) and event["id"] not in seen:
                seen.add(event["id"])
                if event["id"] in present or (dead is not None and dead.holds(event)):
                    continue
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
    """Which event topics can hold the window's records: the types' topics, or all under the prefix."""
    prefix, deadletter = settings.topic_prefix, settings.deadletter_topic
    wanted = set()
    for event_type in query.types:
        with contextlib.suppress(MalformedDelivery):  # such an event can only have been dead-lettered
            wanted.add(topic_for(prefix, event_type, deadletter_topic=deadletter))

    def holds(topic: str) -> bool:
        if topic == deadletter:
            return False
        return topic in wanted if query.types else topic.startswith(prefix)

    return holds


class _DeadLetters:
    """The dead letters whose signature did not verify, by event id: each counts as its event being in Kafka
    only when it holds the event as Scalekit's API gives it now (backfill's own dead letters), compared as JSON
    documents (the API's `data` comes back with its keys in any order). A record anyone could write names an
    id, not the event: it keeps nothing from being written."""

    def __init__(self) -> None:
        self._digests: dict[str, set[bytes]] = {}

    def add(self, event_id: str, document: Any) -> None:
        self._digests.setdefault(event_id, set()).add(_digest(document))

    def holds(self, event: dict[str, Any]) -> bool:
        digests = self._digests.get(event["id"])
        return digests is not None and _digest(event) in digests


def _digest(document: Any) -> bytes:
    canonical = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).digest()


async def _read_dead_letters(
    settings: BackfillSettings, since_ms: int, present: set[str], dead: _DeadLetters
) -> int:
    """Add to `present` the events whose dead letter's kept webhook signature verifies against the webhook
    secrets (when backfill has them), and to `dead` every other dead letter's body; how many were read."""
    verifier = Verifier(settings.signing_keys, settings.timestamp_tolerance) if settings.signing_keys else None

    def keep(record: StoredRecord) -> None:
        body = record.message.value or b""
        found = event_id_of_record((), body)  # None unless the body is a JSON object with a string id
        if found is None:
            return
        if verifier is not None:
            headers = {name.lower(): raw.decode("utf-8", "replace")
                       for name, raw in record.message.headers if isinstance(raw, bytes)}
            try:
                verifier.verify_kept(headers, body)
            except VerificationFailed:
                pass
            else:
                present.add(found)
                return
        dead.add(found, json.loads(body))

    return await records_since(
        settings.kafka, settings.deadletter_topic, since_ms, keep, timeout=settings.publish_timeout
    )


def _body_of(event: dict[str, Any]) -> bytes:
    """The bytes backfill writes for an event from Scalekit's API (and keeps in its dead letter)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _recovered(event: dict[str, Any], backfilled_at: str) -> Recovered:
    return Recovered(event_id=event["id"], body=_body_of(event), backfilled_at=backfilled_at)


@dataclass(frozen=True)
class _Item:
    """An event to write, and the organization its order is kept within."""

    origin: Recovered
    organization: str | None


def _item(event: dict[str, Any], backfilled_at: str) -> _Item:
    return _Item(_recovered(event, backfilled_at), organization_of(event))


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
    writer: Writer, sender: Sender, items: list[_Item], progress: Progress, tally: Tally, stopping: asyncio.Event
) -> None:
    """Hand records over oldest first, up to IN_FLIGHT awaiting their acks; stop at the first failure.

    Records sent in order reach each partition in order, so no later event of an organization
    overtakes an earlier one while all goes well. The first refused record stops the hand-over at
    once (the producer says so as soon as the broker does), as does SIGTERM; records already handed
    over are still waited for, each until the publish timeout after its hand-over (after SIGTERM,
    STOPPING_GRACE_SECONDS at most), so the whole wait is bounded. Those of an organization that
    are acknowledged after an earlier one of it failed are named: the next run writes the failed
    one after them.
    """
    waiting: deque[tuple[_Item, Sent]] = deque()
    failed: set[str] = set()
    refused = asyncio.Event()
    acknowledged: set[str] = set()
    loop = asyncio.get_running_loop()
    cut_off: float | None = None

    async def settle_oldest() -> None:
        nonlocal cut_off
        item, sent = waiting.popleft()
        event_id = item.origin.event_id
        if stopping.is_set() and cut_off is None:
            cut_off = loop.time() + STOPPING_GRACE_SECONDS
        try:
            async with asyncio.timeout_at(cut_off):
                receipt = await writer.settle(sent)
        except (PublishFailed, TimeoutError) as exc:
            failed.add(event_id)
            reason = exc.reason if isinstance(exc, PublishFailed) else "not acknowledged before the run was stopped"
            log.error("a backfill write failed", extra={"event_id": event_id, "reason": reason})
            return
        acknowledged.add(event_id)
        if receipt.outcome == Outcome.DEADLETTERED:
            tally.deadlettered += 1
            log.warning("backfilled event dead-lettered", extra={"event_id": event_id})
        else:
            tally.published += 1
        progress.update("publishing", tally.published + tally.deadlettered, len(items))

    async def hand_over() -> None:
        for item in items:
            if len(waiting) >= IN_FLIGHT:
                await settle_oldest()
            if refused.is_set() or failed:
                return
            try:
                sent = await writer.send(item.origin, sender)
            except PublishFailed as exc:
                failed.add(item.origin.event_id)
                log.error("a backfill write failed", extra={"event_id": item.origin.event_id, "reason": exc.reason})
                return
            sent.pending.when_failed(refused.set)
            waiting.append((item, sent))
            # Let the producer send and hear back between hand-overs, so a refusal is noticed after this
            # record, not after the in-flight window has filled.
            await asyncio.sleep(0)

    # SIGTERM interrupts the hand-over wherever it waits (a send blocked on a stalled broker included).
    handing = asyncio.create_task(hand_over(), name="backfill-hand-over")
    stopped = asyncio.create_task(stopping.wait(), name="backfill-sigterm")
    await asyncio.wait({handing, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (handing, stopped):
        task.cancel()
    await asyncio.gather(handing, stopped, return_exceptions=True)
    if stopping.is_set():
        log.warning("stopping (SIGTERM): no more records are handed over; waiting briefly for those in flight")
    while waiting:
        await settle_oldest()
    tally.failed = [item.origin.event_id for item in items if item.origin.event_id not in acknowledged]
    tally.out_of_order = _written_after_a_failure(items, failed, acknowledged)
    progress.update("published", tally.published + tally.deadlettered, len(items), final=True)


def _written_after_a_failure(items: list[_Item], failed: set[str], acknowledged: set[str]) -> list[str]:
    """Acknowledged events that an earlier event of their organization, refused, should have preceded."""
    broken: set[str | None] = set()
    late = []
    for item in items:
        event_id = item.origin.event_id
        if event_id in failed and item.organization is not None:
            broken.add(item.organization)
        elif event_id in acknowledged and item.organization in broken:
            late.append(event_id)
    return late


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
    if tally.out_of_order:
        print(
            f"scalekit-bridge backfill: {len(tally.out_of_order)} event(s) written after an earlier event of "
            f"their organization that was not (compare ce_time): {', '.join(tally.out_of_order)}",
            file=sys.stderr,
        )
    if tally.unreadable:
        print(
            f"scalekit-bridge backfill: {len(tally.unreadable)} event(s) the Events API returned in a form that "
            f"cannot be read, not written: {', '.join(tally.unreadable)}",
            file=sys.stderr,
        )
    if tally.unrecorded is not None:
        print(
            f"scalekit-bridge backfill: every missing event was written, but the window's end was not recorded "
            f"({tally.unrecorded}); the next --resume starts from the last recorded end",
            file=sys.stderr,
        )
    print(tally.summary(), flush=True)
    # Only a resuming run (the CronJob) depends on the record; a run by hand that wrote everything succeeded.
    unrecorded = tally.unrecorded is not None and request.resume
    return 1 if tally.failed or tally.unreadable or unrecorded else 0
