"""Connecting to Kafka never stops in silence: an unforeseen failure is logged and retried, and a
connection loop that stops anyway fails liveness, so the pod is restarted instead of answering 503 for ever."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl

import pytest
from aiokafka.errors import KafkaConnectionError

from bridge.config import KafkaSettings, Settings
from bridge.kafka import producer as publish
from bridge.kafka.producer import KafkaPublisher
from bridge.metrics import Metrics
from bridge.service import running
from tests.helpers import loopback, serving

SECRET = "whsec_" + base64.b64encode(b"c" * 32).decode()


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_an_unforeseen_failure_while_connecting_is_logged_by_class_and_place_and_retried(monkeypatch, caplog):
    attempts = []

    def failing(settings: KafkaSettings) -> dict[str, object]:
        attempts.append(settings)
        raise ssl.SSLError("PEM lib (a message that may quote a setting: hunter2)")

    monkeypatch.setattr(publish, "connection_options", failing)
    monkeypatch.setattr(publish, "_CONNECT_BACKOFF_SECONDS", (0.01, 0.02))
    publisher = KafkaPublisher(KafkaSettings("127.0.0.1:9"), timeout=1.0, max_record_bytes=1024)

    connecting = asyncio.create_task(publisher.start_when_reachable())
    await until(lambda: len(attempts) >= 3)

    assert not connecting.done()  # still trying
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    said = [record for record in caplog.records if record.name == "bridge.kafka.producer"]
    assert len(said) == 1  # once per distinct cause, not once per attempt
    reason = said[0].__dict__["reason"]
    assert "SSLError" in reason and " at test_connecting.py:" in reason  # its class and where it was raised
    assert "hunter2" not in str([vars(record) for record in caplog.records])


class StoppingPublisher(KafkaPublisher):
    """A connection loop that ends with an exception (what the loop above no longer lets happen)."""

    async def start_when_reachable(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the loop stopped")


async def test_a_connection_loop_that_stopped_fails_liveness(caplog):
    caplog.set_level(logging.ERROR)
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **loopback()})
    stopping = StoppingPublisher(settings.kafka, timeout=1.0, max_record_bytes=1024)

    async with contextlib.AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(
            running(settings, metrics=Metrics(process_metrics=False), publisher=stopping)
        )
        _public, admin = await stack.enter_async_context(serving(bridge))
        await until(lambda: bridge.lifecycle.broken is not None)
        alive = await admin.get("/healthz")

        assert alive.status == 503
        assert (await alive.json())["status"] == "broken"
        assert "RuntimeError" in (await alive.json())["reason"]
    assert any("liveness" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("command", ["serve", "backfill"])
def test_a_bootstrap_server_no_client_can_use_stops_either_command_naming_it(command):
    import subprocess
    import sys

    env = {
        "SCALEKIT_WEBHOOK_SECRET": SECRET,
        "SCALEKIT_ENVIRONMENT_URL": "https://acme.scalekit.example",
        "SCALEKIT_CLIENT_ID": "client",
        "SCALEKIT_CLIENT_SECRET": "secret",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:abc",
        "PATH": "",
    }
    arguments = ["--since", "1h"] if command == "backfill" else []
    result = subprocess.run(
        [sys.executable, "-m", "bridge", command, *arguments], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr and "Traceback" not in result.stderr


class _Unanswering:
    """An admin client whose cluster never answers its metadata request."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    async def describe_cluster(self) -> dict[str, object]:
        raise self.failure


@pytest.mark.parametrize("failure", [KafkaConnectionError("closed (a message that may quote a host)"), TimeoutError()])
async def test_kafka_unreachable_is_said_once_with_the_class_of_what_failed(monkeypatch, caplog, failure):
    monkeypatch.setattr(publish, "_PROBE_INTERVAL_SECONDS", 0.01)
    publisher = KafkaPublisher(KafkaSettings("127.0.0.1:9"), timeout=1.0, max_record_bytes=1024)
    publisher._admin = _Unanswering(failure)  # type: ignore[assignment]
    publisher._ready = True
    caplog.set_level(logging.WARNING, logger="bridge.kafka.producer")

    watching = asyncio.create_task(publisher._watch_broker())
    await until(lambda: not publisher.ready)
    await asyncio.sleep(0.05)  # more probes fail: said once, not once per probe
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)

    said = [record for record in caplog.records if record.getMessage() == "kafka unreachable"]
    assert [record.__dict__["error"] for record in said] == [type(failure).__name__]
    assert "quote a host" not in str([vars(record) for record in caplog.records])
