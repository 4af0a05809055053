"""Starting traces for a process: `bridge.tracing.OFF`, or the OpenTelemetry SDK, imported only then."""

from __future__ import annotations

from collections.abc import Callable

from bridge.tracing import OFF, DroppedSpans, Tracing


def start(enabled: bool, dropped: DroppedSpans, ignored: Callable[[], None] | None = None) -> Tracing:
    """`OFF`, or a tracer configured from the `OTEL_*` variables; raises ConfigError naming a bad one.
    `dropped` counts spans that never reach the collector, `ignored` incoming trace headers it could not use."""
    if not enabled:
        return OFF
    from bridge import otel  # imported only when tracing is on

    return otel.configure(dropped, ignored=ignored)
