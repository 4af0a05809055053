"""What the bridge's logging set-up lets through from its libraries."""

from __future__ import annotations

import logging

import pytest

from bridge import logs


@pytest.fixture
def configured():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("INFO", "json")
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name in ("aiokafka.client", "aiokafka.cluster"):
        logging.getLogger(name).filters.clear()


def passes(logger: str, message: str) -> bool:
    record = logging.getLogger(logger).makeRecord(logger, logging.ERROR, __file__, 1, message, (), None)
    return bool(logging.getLogger(logger).filter(record))


def test_aiokafka_chatter_that_our_own_lines_cover_is_dropped_and_real_errors_pass(configured):
    assert not passes("aiokafka.cluster", "Topic scalekit.role.created not found in cluster metadata")
    assert not passes("aiokafka.client", 'Unable connect to "127.0.0.1:9092": [Error 58] SaslAuthenticationFailed')
    assert passes("aiokafka.cluster", "Metadata refresh failed: a real problem")
    assert passes("aiokafka.client", "Unexpected error in sender routine")


def text_line(extra: dict) -> str:
    record = logging.getLogger("bridge.delivery").makeRecord(
        "bridge.delivery", logging.INFO, __file__, 1, "delivery %s", ("published",), None, extra=extra
    )
    return logs.TextFormatter().format(record)


def test_text_logs_show_a_deliverys_fields_as_logfmt():
    line = text_line({"delivery": {"outcome": "published", "event_id": "evt_1", "topic": "scalekit.role.created",
                                   "partition": 2, "offset": 41, "latency_ms": 3.5, "webhook_id": None}})
    assert line.endswith(
        " INFO bridge.delivery delivery published outcome=published event_id=evt_1 "
        "topic=scalekit.role.created partition=2 offset=41 latency_ms=3.5"
    )


def test_text_log_values_with_spaces_quotes_or_control_characters_are_quoted():
    line = text_line({"delivery": {"reason": 'schema violation: "x"', "empty": "", "odd": "a\nb"}})
    assert 'reason="schema violation: \\"x\\""' in line
    assert 'empty=""' in line and 'odd="a\\nb"' in line
    assert "\n" not in line
