"""A bridge wired to the session's real Kafka, with topics private to each test."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bridge.app import listen
from bridge.config import Settings
from bridge.dedup import topic_configs
from bridge.metrics import Metrics
from bridge.service import Bridge, running
from tests.conftest import KafkaTool
from tests.helpers import body_of, free_port, loopback, serving, signed_headers

SECRET = "whsec_" + base64.b64encode(b"integration-secret-bytes-32-long").decode()


@dataclass
class Run:
    """How a command run in its own process ended: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> str:
        """The last line on stdout: a recovery command's report."""
        return self.stdout.strip().splitlines()[-1]

    @property
    def lines(self) -> list[list[str]]:
        """The lines before the summary (a dry run's), split at tabs."""
        return [line.split("\t") for line in self.stdout.strip().splitlines()[:-1]]


@dataclass
class RunningBridge:
    bridge: Bridge
    client: Any
    admin: Any
    prefix: str

    @property
    def deadletter_topic(self) -> str:
        return self.bridge.settings.deadletter_topic

    def topic(self, event_type: str) -> str:
        return self.prefix + event_type

    async def deliver(
        self, payload: dict[str, Any] | bytes, *, secret: str = SECRET, webhook_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = payload if isinstance(payload, bytes) else body_of(payload)
        response = await self.client.post(
            self.bridge.settings.webhook_path, data=body, headers=signed_headers(secret, body, webhook_id=webhook_id)
        )
        return response.status, await response.json()


def run_command(command: str, args: Sequence[str], env: dict[str, str], timeout: float = 120) -> Run:
    """`python -m bridge COMMAND ARGS` to its end; past `timeout`, an assertion quoting what it said by then."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bridge", command, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:  # what it said before it was stopped is the diagnosis
        raise AssertionError(f"{command} {list(args)} ran past {timeout:g} s; it said: {exc.stderr!r}") from None
    return Run(done.returncode, done.stdout, done.stderr)


BridgeFactory = Callable[..., Awaitable[RunningBridge]]


def settings_for(kafka_bootstrap: str, prefix: str, **env: str) -> Settings:
    """Settings for a bridge on the session broker whose topics are `<prefix><type>`; env overrides."""
    return Settings.from_env(
        {
            "SCALEKIT_WEBHOOK_SECRET": SECRET,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "BRIDGE_TOPIC_PREFIX": prefix,
            "BRIDGE_DEADLETTER_TOPIC": f"{prefix}deadletter",
            **env,
        }
    )


@pytest.fixture
async def start_bridge(kafka_bootstrap, unique) -> AsyncIterator[BridgeFactory]:
    """Start a bridge whose topics are `t<unique>.<type>`, listening on loopback; env overrides the defaults.

    With topic creation off, its receipts topic is made first, as the chart's KafkaTopic makes it: the tests
    that turn creation off are about other topics.
    """
    async with contextlib.AsyncExitStack() as parts:

        async def start(**env: str) -> RunningBridge:
            prefix = f"t{unique}."
            settings = settings_for(kafka_bootstrap, prefix, **(loopback() | env))
            if settings.dedup and not settings.kafka.create_topics:
                receipts = settings.receipts_topic
                await KafkaTool(kafka_bootstrap).create_topic(receipts, configs=topic_configs(settings)[receipts])
            bridge = await parts.enter_async_context(running(settings, metrics=Metrics(), connect_within=30))
            client, admin = await parts.enter_async_context(serving(bridge))
            return RunningBridge(bridge, client, admin, prefix)

        yield start


@dataclass
class ListeningBridge:
    """A bridge on real sockets, with the public port's limits in force (what `serve` runs)."""

    bridge: Bridge
    port: int
    admin_port: int
    prefix: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.bridge.settings.webhook_path}"

    def refusals(self, reason: str) -> float:
        value = self.bridge.metrics.registry.get_sample_value("scalekit_bridge_http_refusals_total", {"reason": reason})
        return value or 0.0


ListeningFactory = Callable[..., Awaitable[ListeningBridge]]


@pytest.fixture
async def listening_bridge(kafka_bootstrap, unique) -> AsyncIterator[ListeningFactory]:
    """Start `bridge.app.listen` on free loopback ports against the session broker; env overrides."""
    async with contextlib.AsyncExitStack() as parts:

        async def start(**env: str) -> ListeningBridge:
            prefix = f"h{unique}."
            settings = settings_for(kafka_bootstrap, prefix, **(loopback() | env))
            bridge = await parts.enter_async_context(
                running(settings, metrics=Metrics(process_metrics=False), connect_within=30)
            )
            listeners = await listen(bridge)
            parts.push_async_callback(listeners.close)
            port, admin_port = listeners.ports
            return ListeningBridge(bridge, port, admin_port, prefix)

        yield start


class BridgeProcess:
    """`python -m bridge <command>` in a child process, with its own ports and topics (under `prefix`, by
    default a fresh one); `program` runs another entry point with the same arguments."""

    def __init__(
        self, command: str, *, prefix: str | None = None, program: Sequence[str] = ("-m", "bridge"), **env: str
    ) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.prefix = prefix or f"p{uuid.uuid4().hex[:8]}."
        child_env = {
            **{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
            "PYTHONUNBUFFERED": "1",
            "SCALEKIT_WEBHOOK_SECRET": SECRET,
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_ADMIN_PORT": str(self.admin_port),
            "BRIDGE_TOPIC_PREFIX": self.prefix,  # the dead-letter topic follows: <prefix>deadletter
            **env,
        }
        # A file, not a pipe: a chatty bridge must never block on a pipe nobody reads.
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - open for the process's life
        self.process = subprocess.Popen(
            [sys.executable, *program, command],
            env=child_env, stdout=self._output, stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self._output.seek(0)
        return self._output.read().decode("utf-8", "replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/scalekit"

    async def readiness(self) -> int | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.admin_port}/readyz") as response,
            ):
                return response.status
        except aiohttp.ClientError:
            return None

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.admin_port}/metrics") as response,
        ):
            return await response.text()

    async def wait_for_readiness(self, status: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"bridge exited early:\n{self.output()}")
            if await self.readiness() == status:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"/readyz never answered {status} within {timeout}s")

    async def deliver(self, envelope: dict, webhook_id: str | None = None) -> tuple[int, dict]:
        body = body_of(envelope)
        headers = signed_headers(SECRET, body, webhook_id=webhook_id)
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, data=body, headers=headers) as response,
        ):
            return response.status, await response.json()

    def output_after_exit(self, timeout: float) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        return self.process.returncode, self.output()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def bridge_process() -> Iterator[type[BridgeProcess]]:
    started: list[BridgeProcess] = []

    class Tracked(BridgeProcess):
        def __init__(self, command: str, **options: Any) -> None:
            super().__init__(command, **options)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


