"""`scalekit-bridge replay`: publish the dead letters whose cause has been fixed.

A run reads the dead-letter topic over a time window (when the dead letters were
written) without a consumer group, verifies each selected one again against the
webhook secrets (its kept `webhook-signature`, not its age), and sends it through
the webhook path's own `Writer` with today's contract, topics and limits. One
that is routable now is published, oldest event first, as the webhook path would
write it today, marked with `ce_replayedat`; one that is not stays where it is and
is reported with its current reason; one whose event is already in its topic is
skipped. Nothing that does not verify is ever published: write access to the
dead-letter topic is not a way to inject events.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from bridge import dedup
from bridge.config import ReplaySettings
from bridge.core import Outcome, Pending, Sender, Source, StoredRecord
from bridge.envelope import (
    BACKFILLED_AT_HEADER,
    DEADLETTER_REASON_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    Replayed,
    organization_of,
    parse_envelope,
)
from bridge.errors import MalformedDelivery, PublishFailed, RecordRejected, VerificationFailed
from bridge.kafka.scan import event_ids_since, records_since
from bridge.pipeline import Plan, Writer, with_trace, written
from bridge.progress import Progress, Writing, stop_within, stopped_by_sigterm, traced_run
from bridge.tracing import Span
from bridge.verify import VerifiedDelivery, Verifier
from bridge.window import parse_time

log = logging.getLogger(__name__)

# Why a dead letter without a kept signature cannot be replayed, and what brings its event back instead.
_RECOVERED = (
    "written by backfill from Scalekit's Events API, with no signature to verify; "
    "`backfill --include-dead-lettered` over its time writes it again from Scalekit"
)
_UNSIGNED = (
    "kept without its webhook-signature (dead-lettered before signatures were kept); "
    "`backfill --include-dead-lettered` over its time writes it again from Scalekit"
)
# Records handed to the producer and not yet acknowledged, as in backfill: one write at a time waits out
# the producer's linger and a round trip per event (about 100 events/s here).
IN_FLIGHT = 512
# A forged id in a dead letter is the writer's text: shown quoted, and never long.
_MAX_SHOWN = 80


@dataclass(frozen=True)
class Selection:
    """Which dead letters a run takes: written in [start, end), optionally narrowed by the event's type,
    its organization, and a substring of the dead-letter reason."""

    start: datetime
    end: datetime
    types: tuple[str, ...] = ()
    organization_id: str | None = None
    reason: str | None = None
    # Scalekit signed the delivery at most this long ago (its kept webhook-timestamp), or it is not
    # replayed: past the event topics' retention, "already in its topic" can no longer be checked.
    max_age: timedelta = timedelta(days=7)

    @property
    def narrowed(self) -> bool:
        return bool(self.types) or self.organization_id is not None


@dataclass(frozen=True)
class Request:
    selection: Selection
    dry_run: bool = False


@dataclass
class Tally:
    """What a run did; its last line and exit code are the job's interface."""

    dry_run: bool = False
    read: int = 0  # dead letters written in the window
    selected: int = 0  # of those, the ones the filters took (a verified event once, however often dead-lettered)
    present: int = 0  # already in their topics: skipped
    replayed: int = 0
    still_dead: list[str] = field(default_factory=list)  # "<event id>: <current reason>"
    unverified: list[str] = field(default_factory=list)  # "<where>: <why>"
    unreadable: list[str] = field(default_factory=list)  # "<where>: <why>": records that are no dead letter of ours
    failed: list[str] = field(default_factory=list)  # event ids not written (a broker failure)
    # Acknowledged after an earlier event of their key failed: the next run writes that one after them.
    out_of_order: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"dry run: read {self.read}, selected {self.selected}, already in their topics {self.present}, "
                f"would replay {self.replayed}, still dead {len(self.still_dead)}, unverified {len(self.unverified)}, "
                f"unreadable {len(self.unreadable)}"
            )
        return (
            f"read {self.read}, selected {self.selected}, already in their topics {self.present}, "
            f"replayed {self.replayed}, still dead {len(self.still_dead)}, unverified {len(self.unverified)}, "
            f"unreadable {len(self.unreadable)}, failed {len(self.failed)}"
        )


@dataclass(frozen=True)
class _Letter:
    """A selected dead letter: where it is, when it was written, why, and the event it holds (if readable)."""

    record: StoredRecord
    headers: Mapping[str, str]
    envelope: dict[str, Any] | None  # None: the body is not an envelope
    moment: datetime  # the event's own time, else when it was dead-lettered: the order replays keep

    @property
    def event_id(self) -> str | None:
        return self.envelope["id"] if self.envelope is not None else None

    @property
    def where(self) -> str:
        return _where(self.record)


@dataclass(frozen=True)
class _Planned:
    """A verified dead letter and the record the webhook path would write for it today."""

    letter: _Letter
    origin: Replayed
    plan: Plan


async def replay(settings: ReplaySettings, request: Request, progress: Progress, out: TextIO) -> Tally:
    """Run once; raises PublishFailed (nothing written) when Kafka cannot be read or written."""
    with traced_run("replay", settings.tracing) as (writing, run):
        tally = await _replay(settings, request, progress, out, writing)
        run.set("scalekit_bridge.replayed", tally.replayed)
        if tally.failed:
            run.fail("write_failed")
    return tally


async def _replay(
    settings: ReplaySettings, request: Request, progress: Progress, out: TextIO, writing: Writing
) -> Tally:
    replayed_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    selection = request.selection
    tally = Tally(dry_run=request.dry_run)
    letters = await _read_letters(settings, selection, tally)
    progress.update("read", tally.read, final=True)
    verifier = Verifier(settings.signing_keys, settings.timestamp_tolerance)
    publisher, receipts = dedup.recovery_job(settings, settings.kafka, Source.REPLAY, writing.metrics)
    writer = Writer.configured(settings, publisher, writing.metrics, writing.tracing, receipts.memory)

    routable: list[_Planned] = []
    oldest_allowed = time.time() - selection.max_age.total_seconds()  # seconds: any --max-age is in range
    signed_since = int(selection.start.timestamp())  # Unix seconds, as Scalekit signs them
    for letter, delivery in _verified(letters, verifier, tally):
        origin = Replayed(delivery, replayed_at)
        planned = _Planned(letter, origin, writer.plan(origin))
        signed_at = int(delivery.timestamp)
        if planned.plan.receipt.outcome == Outcome.DEADLETTERED:
            tally.still_dead.append(f"{_event_id(planned)}: {planned.plan.reason}")
            _show(planned, out, request.dry_run)
        elif signed_at < oldest_allowed:
            tally.still_dead.append(f"{_event_id(planned)}: signed by Scalekit longer ago than --max-age "
                                    f"(webhook-timestamp {signed_at})")
        else:
            routable.append(planned)
            signed_since = min(signed_since, signed_at)

    # An event is looked for in its topic from when Scalekit signed it, not from when its dead letter was
    # written: a genuine old letter copied into a later window finds the record it once made.
    since_ms = (signed_since - settings.timestamp_tolerance) * 1000
    topics = {planned.plan.message.topic for planned in routable}
    present, scanned = await event_ids_since(
        settings.kafka, topics.__contains__, since_ms, timeout=settings.publish_timeout
    )
    progress.update("scanned", scanned, final=True)
    missing = [planned for planned in routable if planned.plan.receipt.event_id not in present]
    tally.present = len(routable) - len(missing)
    if request.dry_run:
        for planned in missing:
            _show(planned, out, dry_run=True)
            tally.replayed += 1
        return tally
    if missing:
        await publisher.start()
        stopping = asyncio.Event()
        with stopped_by_sigterm(stopping):
            try:
                async with receipts.writing(publisher, lambda: settings.publish_timeout):
                    await _publish(writer, publisher, missing, tally, progress, stopping)
            finally:
                await stop_within(publisher, settings.publish_timeout)
    return tally


async def _read_letters(settings: ReplaySettings, selection: Selection, tally: Tally) -> list[_Letter]:
    """The window's dead letters that the filters take, oldest event first."""
    taken: list[_Letter] = []
    end_ms = _ms(selection.end)

    def keep(record: StoredRecord) -> None:
        if record.timestamp_ms >= end_ms:
            return
        tally.read += 1
        try:
            letter = _letter(record)
        except Unreadable as exc:
            tally.unreadable.append(f"{_where(record)}: {exc}")
            log.error("a record of the dead-letter topic cannot be read; it is skipped",
                      extra={"partition": record.partition, "offset": record.offset, "error": str(exc)})
            return
        if _taken(letter, selection):
            taken.append(letter)

    await records_since(
        settings.kafka, settings.deadletter_topic, _ms(selection.start), keep, timeout=settings.publish_timeout
    )
    return sorted(
        taken, key=lambda letter: (letter.moment, letter.record.timestamp_ms, letter.record.partition,
                                   letter.record.offset)
    )


class Unreadable(Exception):
    """A record of the dead-letter topic that no bridge wrote as it is (another tool's, or a person's)."""


def _letter(record: StoredRecord) -> _Letter:
    """The dead letter `record` holds; raises Unreadable for what the bridge never writes."""
    headers: dict[str, str] = {}
    for name, raw in reversed(record.message.headers):
        if not isinstance(raw, bytes):
            raise Unreadable(f"header {_quoted(name)} has no value")
        headers[name.lower()] = raw.decode("utf-8", "replace")
    try:
        envelope: dict[str, Any] | None = parse_envelope(record.message.value or b"")
    except MalformedDelivery:
        envelope = None
    occurred = _moment(envelope.get("occurred_at")) if envelope is not None else None
    try:
        moment = occurred or datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        raise Unreadable(f"its timestamp {record.timestamp_ms} is not a time") from None
    return _Letter(record, headers, envelope, moment)


def _where(record: StoredRecord) -> str:
    return f"partition {record.partition} offset {record.offset}"


def _taken(letter: _Letter, selection: Selection) -> bool:
    reason = letter.headers.get(DEADLETTER_REASON_HEADER)
    if selection.reason is not None and (reason is None or selection.reason not in reason):
        return False
    if not selection.narrowed:
        return True
    envelope = letter.envelope
    if envelope is None:
        return False  # a body that is not an envelope has no type or organization to match
    if selection.types and envelope["type"] not in selection.types:
        return False
    return selection.organization_id is None or organization_of(envelope) == selection.organization_id


def _verified(
    letters: list[_Letter], verifier: Verifier, tally: Tally
) -> list[tuple[_Letter, VerifiedDelivery]]:
    """The letters whose kept signature verifies against today's secrets, each event once (its oldest
    verified dead letter: a forged copy cannot shadow the genuine one); the rest are reported, never used."""
    verified: dict[str, tuple[_Letter, VerifiedDelivery]] = {}
    for letter in letters:
        delivery, why = _verify(letter, verifier)
        if delivery is not None:
            # An event dead-lettered twice (a redelivery, a backfill run) is replayed once.
            verified.setdefault(letter.event_id or f"webhook {delivery.webhook_id}", (letter, delivery))
            continue
        shown = f" (event {_quoted(letter.event_id)})" if letter.event_id else ""
        tally.unverified.append(f"{letter.where}{shown}: {why}")
        log.error(
            "a dead letter does not verify; it is not published",
            extra={"partition": letter.record.partition, "offset": letter.record.offset},
        )
    tally.selected = len(verified) + len(tally.unverified)
    return list(verified.values())


def _verify(letter: _Letter, verifier: Verifier) -> tuple[VerifiedDelivery | None, str]:
    """The webhook delivery a dead letter kept, verified again; else None and why not."""
    headers = letter.headers
    if WEBHOOK_ID_HEADER not in headers:
        return None, _RECOVERED if BACKFILLED_AT_HEADER in headers else "not a webhook delivery's dead letter"
    if WEBHOOK_SIGNATURE_HEADER not in headers:
        return None, _UNSIGNED
    try:
        return verifier.verify_kept(headers, letter.record.message.value or b""), ""
    except VerificationFailed as exc:
        return None, f"{exc.code}: {exc.detail}"


async def _publish(
    writer: Writer,
    sender: Sender,
    missing: list[_Planned],
    tally: Tally,
    progress: Progress | None = None,
    stopping: asyncio.Event | None = None,
) -> None:
    """Hand the records over oldest first, up to IN_FLIGHT awaiting their acks, as backfill does.

    Records sent in order reach each partition in order, so an organization's events keep their order
    while all goes well. A record Kafka refuses for good stays a dead letter (it is not written, so nothing
    after it is out of order). The first failure, or SIGTERM (`stopping`), stops the hand-over; records
    already handed over are still waited for, each at most the publish timeout from its hand-over, and
    those acknowledged after an earlier event of their key failed are named.
    """
    waiting: deque[tuple[_Planned, Pending, float, Span]] = deque()
    settled: set[str] = set()
    failed_keys: set[bytes | None] = set()
    failures = 0
    # Set as soon as the producer hears a refusal, before anyone waits for that record (as in backfill).
    refusal = asyncio.Event()

    def refused(planned: _Planned, exc: RecordRejected) -> None:
        tally.still_dead.append(f"{_event_id(planned)}: Kafka refused the record: {exc.reason}")
        settled.add(_event_id(planned))

    def failed(planned: _Planned, exc: PublishFailed) -> None:
        nonlocal failures
        failures += 1
        failed_keys.add(planned.plan.message.key)
        log.error("a replay write failed", extra={"event_id": _event_id(planned), "reason": exc.reason})

    async def settle_oldest() -> None:
        planned, pending, started, span = waiting.popleft()
        try:
            ack = await pending.ack()
        except (RecordRejected, PublishFailed) as exc:
            span.fail(type(exc).__name__)
            span.end()
            if isinstance(exc, RecordRejected):
                refused(planned, exc)
            else:
                failed(planned, exc)
            return
        written(span, planned.plan, ack)
        writer.note_written(planned.plan, ack)
        writer.record(planned.plan.receipt.acknowledged(ack), started)
        settled.add(_event_id(planned))
        tally.replayed += 1
        if progress is not None:
            progress.update("publishing", tally.replayed, len(missing))
        if planned.plan.message.key in failed_keys:
            tally.out_of_order.append(_event_id(planned))

    for planned in missing:
        if len(waiting) >= IN_FLIGHT:
            await settle_oldest()
        if refusal.is_set():
            # Settle what is in flight to learn whether the refusal was for good (that record stays a dead
            # letter, the run goes on) or a failed write (the run stops handing over).
            while waiting:
                await settle_oldest()
            refusal.clear()
        if failures:
            break
        if stopping is not None and stopping.is_set():
            log.warning("stopping (SIGTERM): no more records are handed over; waiting for those in flight")
            break
        plan, span = writer.traced(planned.origin, planned.plan)
        try:
            pending = await sender.send(with_trace(plan.message, span.context))
        except (RecordRejected, PublishFailed) as exc:
            span.fail(type(exc).__name__)
            span.end()
            if isinstance(exc, PublishFailed):
                failed(planned, exc)
                break
            refused(planned, exc)
            continue
        pending.when_failed(refusal.set)
        waiting.append((planned, pending, time.perf_counter(), span))
        await asyncio.sleep(0)  # let the producer send and hear back between hand-overs
    while waiting:
        await settle_oldest()
    tally.failed = [_event_id(planned) for planned in missing if _event_id(planned) not in settled]
    if progress is not None:
        progress.update("published", tally.replayed, len(missing), final=True)


def _show(planned: _Planned, out: TextIO, dry_run: bool) -> None:
    """One dry-run line: type, id, topic, key; a dead letter that stays one says why instead of a topic."""
    if not dry_run:
        return
    message, receipt = planned.plan.message, planned.plan.receipt
    if receipt.outcome == Outcome.DEADLETTERED:
        print(f"{receipt.event_type or '-'}\t{_event_id(planned)}\t(stays a dead letter: {planned.plan.reason})",
              file=out)
        return
    key = message.key.decode("utf-8", "replace") if message.key is not None else "-"
    print(f"{receipt.event_type}\t{receipt.event_id}\t{message.topic}\t{key}", file=out)


def _event_id(planned: _Planned) -> str:
    return planned.plan.receipt.event_id or _quoted(planned.letter.event_id) or planned.letter.where


def _quoted(text: str | None) -> str:
    if text is None:
        return ""
    return ascii(text[:_MAX_SHOWN]) if not text.isprintable() or len(text) > _MAX_SHOWN else text


def _moment(text: object) -> datetime | None:
    """An envelope's `occurred_at` as a moment; None when it is not an RFC 3339 time with a zone."""
    if not isinstance(text, str):
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def main(settings: ReplaySettings, request: Request) -> int:
    """Run and report; 0 when every selected dead letter was replayed, skipped or stays one for a reason
    shown, 1 when a record could not be read, one did not verify or could not be written."""
    # One line per event would drown the progress; the summary and what went wrong say what matters.
    if settings.log_level != "DEBUG":
        logging.getLogger("bridge.delivery").setLevel(logging.WARNING)
    try:
        tally = asyncio.run(replay(settings, request, Progress(sys.stderr, "replay"), sys.stdout))
    except PublishFailed as exc:
        print(f"scalekit-bridge replay: {exc}; nothing was written", file=sys.stderr)
        return 1
    for heading, lines in (
        ("cannot be read and were skipped", tally.unreadable),
        ("did not verify and will not be published", tally.unverified),
        ("are still not routable and stay where they are", tally.still_dead),
    ):
        if lines:
            print(f"scalekit-bridge replay: {len(lines)} dead letter(s) {heading}:", file=sys.stderr)
            for line in lines:
                print(f"  {line}", file=sys.stderr)
    if tally.failed:
        not_written = ", ".join(tally.failed)
        print(f"scalekit-bridge replay: {len(tally.failed)} event(s) not written (run again): {not_written}",
              file=sys.stderr)
    if tally.out_of_order:
        late = ", ".join(tally.out_of_order)
        print(f"scalekit-bridge replay: {len(tally.out_of_order)} event(s) written after an earlier event of their "
              f"organization that was not (compare ce_time): {late}", file=sys.stderr)
    print(tally.summary(), flush=True)
    return 1 if tally.failed or tally.unverified or tally.unreadable else 0
