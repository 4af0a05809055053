"""The test kit's pytest fixtures. Opt in: `pytest -p bridge.testing.fixtures`, or in your pytest ini
`scalekit_bridge = true` (read by the `scalekit-bridge` plugin that installing the package registers,
which does nothing else, so the fixtures never appear by surprise).

- `scalekit_kafka` (session): a bootstrap address, found as `bridge.testing.kafka_bootstrap` does.
- `scalekit_bridge` (session): a `BridgeServer` on it, with a generated secret and its own topic prefix.
- `start_scalekit_bridge`: a factory for more bridges with other settings, stopped after the test.
- `scalekit_event`: `bridge.testing.scalekit_event`, the realistic-delivery factory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge import testing


@pytest.fixture(scope="session")
def scalekit_kafka() -> Iterator[str]:
    with testing.kafka_bootstrap() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def scalekit_bridge(scalekit_kafka: str) -> Iterator[testing.BridgeServer]:
    with testing.BridgeServer(scalekit_kafka) as bridge:
        yield bridge


@pytest.fixture
def start_scalekit_bridge(scalekit_kafka: str) -> Iterator[Callable[..., testing.BridgeServer]]:
    started: list[testing.BridgeServer] = []

    def start(**env: str) -> testing.BridgeServer:
        bridge = testing.BridgeServer(scalekit_kafka, **env).start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop()


@pytest.fixture
def scalekit_event() -> Callable[..., dict[str, Any]]:
    return testing.scalekit_event
