"""What a recovery run (backfill, replay) shares: how it says how far it got (a bar at a terminal, a log line
every few seconds otherwise), and how it stops in time (SIGTERM, a producer that will not close)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TextIO

from bridge import metrics as m
from bridge.traces import start as start_tracing
from bridge.tracing import Span, Tracing

log = logging.getLogger(__name__)

# How often a run that is not at a terminal says how far it got.
PROGRESS_EVERY_SECONDS = 5.0


class Progress:
    """Says how far a run got, on `stream` at a terminal, else as `<command> <phase>` lines on bridge.<command>."""

    def __init__(self, stream: TextIO, command: str = "backfill") -> None:
        self._stream = stream
        self._terminal = stream.isatty()
        self._said = 0.0
        self._command = command
        self._log = logging.getLogger(f"bridge.{command}")

    def update(self, phase: str, done: int, total: int | None = None, *, final: bool = False) -> None:
        if self._terminal:
            self._draw(phase, done, total, final)
            return
        now = time.monotonic()
        if final or now - self._said >= PROGRESS_EVERY_SECONDS:
            self._said = now
            self._log.info(
                "%s %s", self._command, phase, extra={"progress": {"phase": phase, "done": done, "total": total}}
            )

    def _draw(self, phase: str, done: int, total: int | None, final: bool) -> None:
        if total:
            filled = 30 * done // total
            line = f"{phase:<10} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            line = f"{phase:<10} {done}"
        self._stream.write("\r" + line + ("\n" if final else ""))
        self._stream.flush()


class Stoppable(Protocol):
    async def stop(self) -> None: ...


async def stop_within(producer: Stoppable, timeout: float) -> None:
    """Close the producer within `timeout`: a stalled broker must not keep the run, and its report, waiting."""
    try:
        async with asyncio.timeout(timeout):
            await producer.stop()
    except TimeoutError:
        log.warning("the producer did not close within %gs; what it still held is reported as not written", timeout)


@contextlib.contextmanager
def stopped_by_sigterm(stopping: asyncio.Event) -> Iterator[None]:
    """SIGTERM (the Job's deadline, a deleted pod) sets `stopping`: the run stops handing records over,
    reports and exits."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


# At a run's end, its queued spans get this long to reach the collector.
TRACE_FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class Writing:
    """What a run's writer reports to: metrics of its own and, with BRIDGE_TRACING=true, a tracer."""

    metrics: m.Metrics
    tracing: Tracing


@contextlib.contextmanager
def traced_run(name: str, tracing: bool) -> Iterator[tuple[Writing, Span]]:
    """A `backfill` or `replay` run: its writer's metrics and tracer, and the run's root span."""
    metrics = m.Metrics(process_metrics=False)
    writing = Writing(metrics, start_tracing(tracing, metrics.drop_spans))
    try:
        with writing.tracing.run(name) as run:
            yield writing, run
    finally:
        writing.tracing.shutdown(TRACE_FLUSH_SECONDS)
