"""Starting traces for a process: `bridge.tracing.OFF`, or the OpenTelemetry SDK, imported only then."""

from __future__ import annotations

from bridge.tracing import OFF, DroppedSpans, Tracing


def start(enabled: bool, dropped: DroppedSpans) -> Tracing:
    """`OFF`, or a tracer configured from the `OTEL_*` variables; raises ConfigError naming a bad one."""
    if not enabled:
        return OFF
    from bridge import otel  # imported only when tracing is on

    return otel.configure(dropped)
