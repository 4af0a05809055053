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
