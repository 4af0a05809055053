"""The local launcher's own logic that needs no JVM."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

from bridge.dev.kafka import LocalKafka, _Node, new_cluster_id


class Process:
    """A node's process that says when it was asked to stop; a broker's waits for a controller still up."""

    def __init__(self, name: str, stopped: list[str]) -> None:
        self.name, self._stopped, self._exited = name, stopped, False

    def poll(self) -> int | None:
        return 0 if self._exited else None

    def send_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.terminate()

    def terminate(self) -> None:
        if not self._exited:
            self._stopped.append(self.name)
            self._exited = True

    def kill(self) -> None:
        self.terminate()

    def wait(self, timeout: float | None = None) -> int:
        return 0


def test_a_cluster_id_that_would_start_with_a_dash_is_drawn_again():
    """Kafka's storage tool reads `-…` as an option; about one random id in 64 starts so."""
    dash_first = b"\xf8" + b"\x00" * 15  # URL-safe base64 of 0xF8... begins with '-'
    assert base64.urlsafe_b64encode(dash_first).decode().startswith("-")
    draws = iter([dash_first, dash_first, b"\x01" * 16])

    cluster_id = new_cluster_id(lambda size: next(draws))

    assert cluster_id == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_a_cluster_id_is_16_bytes_of_url_safe_base64_without_padding():
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_the_brokers_are_told_to_stop_before_the_controller_they_report_to():
    """A broker's controlled shutdown asks the controller; stopped first, each broker waited out the whole grace."""
    stopped: list[str] = []
    kafka = LocalKafka(brokers=3)
    kafka._nodes = {
        node_id: _Node(node_id, roles, Path("."), {}, "256m", Process(f"{roles} {node_id}", stopped))  # type: ignore[arg-type]
        for node_id, roles in ((0, "controller"), (1, "broker"), (2, "broker"), (3, "broker"))
    }

    kafka.stop()

    assert stopped == ["broker 1", "broker 2", "broker 3", "controller 0"]
