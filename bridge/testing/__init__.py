"""A test kit for teams that consume the bridge's topics: real signed Scalekit events into their tests.

Install with `scalekit-bridge[testing]`. Nothing here is imported by the service.

    with kafka_bootstrap() as bootstrap, BridgeServer(bootstrap) as bridge:
        delivered = bridge.send(scalekit_event("organization.directory.user_deleted", organization_id="org_123"))
        assert delivered.status == 201
        (event,) = bridge.records("organization.directory.user_deleted")

`kafka_bootstrap()` finds a broker the way the bridge's own suite does; `BridgeServer` runs
`scalekit-bridge serve` against it; `ScalekitBridgeContainer` (in `bridge.testing.container`)
runs the image instead. The pytest fixtures are opt-in: see `bridge.testing.fixtures`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from bridge.dev.kafka import LocalKafka, free_port, terminate
from bridge.dev.samples import sample, sample_types
from bridge.dev.sendtest import signed_request
from bridge.envelope import ORGANIZATION_PATHS, is_event_topic
from bridge.verify import SigningKey

__all__ = [
    "BridgeServer",
    "Delivered",
    "Landed",
    "event_types",
    "free_port",
    "kafka_bootstrap",
    "new_secret",
    "scalekit_event",
    "trace_context",
]

T = TypeVar("T")
_STRUCTURED = b"application/cloudevents+json"
# Where each documented type keeps its organization besides the top level (the bridge's own key rules).
_ORGANIZATION_PATHS = ORGANIZATION_PATHS[1:]


def event_types() -> list[str]:
    """Every documented Scalekit event type the kit can build."""
    return sample_types()


def scalekit_event(
    event_type: str, *, organization_id: str | None = None, data: dict[str, Any] | None = None, **envelope: Any
) -> dict[str, Any]:
    """A realistic delivery of `event_type`, from the packaged sample: fresh `evt_` id and `occurred_at`.

    `organization_id` replaces the sample's organization wherever the type keeps one (and sets the
    top-level field); `data` keys replace the sample's `data` keys (a shallow merge); any other keyword
    replaces a top-level envelope field. Raises KeyError for an undocumented type.
    """
    delivery = sample(event_type)
    delivery["id"] = f"evt_{secrets.token_hex(10)}"
    delivery["occurred_at"] = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if organization_id is not None:
        delivery["organization_id"] = organization_id
        for path in _ORGANIZATION_PATHS:
            node: Any = delivery
            for step in path[:-1]:
                node = node.get(step) if isinstance(node, dict) else None
            if isinstance(node, dict) and path[-1] in node:
                node[path[-1]] = organization_id
    if data is not None:
        delivery["data"] = {**delivery.get("data", {}), **data}
    delivery.update(envelope)
    return delivery


def trace_context(event: BaseCloudEvent) -> dict[str, str]:
    """The W3C trace context the bridge put in `event` when it ran with BRIDGE_TRACING=true ({} otherwise):
    a carrier for an OpenTelemetry propagator, so a consumer's "process" span continues the bridge's trace.

        created = TraceContextTextMapPropagator().extract(trace_context(event))
    """
    return {name: str(value) for name in ("traceparent", "tracestate") if (value := event.get_extension(name))}


def new_secret() -> str:
    """A fresh Standard Webhooks signing secret (`whsec_` + 32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka for the block: KAFKA_BOOTSTRAP_SERVERS if set, else testcontainers' Kafka container
    where a Docker engine answers, else a local single-node Apache Kafka (Java 17 and Maven needed)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with LocalKafka() as local:
        yield local.bootstrap_servers


def docker_engine_answers() -> bool:
    """Whether testcontainers can use a Docker engine here."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False
    return True


@dataclass(frozen=True)
class Landed:
    """Where a delivery's record is in Kafka."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Delivered:
    """The bridge's answer to one delivery, and (for a 201) where its record landed."""

    status: int
    body: dict[str, Any]
    record: Landed | None


class _Endpoint:
    """Signing, sending and reading back: what `BridgeServer` and the container share."""

    url: str
    secret: str
    topic_prefix: str
    deadletter_topic: str
    bootstrap_servers: str

    def send(self, event: dict[str, Any] | bytes, *, timeout: float = 30.0) -> Delivered:
        """Sign `event` as Scalekit would and POST it; for a 201, find where its record landed."""
        body = event if isinstance(event, bytes) else json.dumps(event).encode("utf-8")
        request = signed_request(self.url, SigningKey.from_secret(self.secret), body)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        answer = json.loads(text) if text else {}
        landed = None
        if status == 201:
            sent = event if isinstance(event, dict) else {}
            landed = _in_thread(self._find(sent, request.get_header("Webhook-id") or ""))
        return Delivered(status, answer, landed)

    def records(self, type_or_pattern: str, *, timeout: float = 30.0) -> list[BaseCloudEvent]:
        """Every CloudEvent now in the topics of the matching types (`*` globs, e.g. `organization.directory.*`),
        decoded with the CloudEvents SDK, in offset order per partition."""
        return _in_thread(self._records(type_or_pattern, timeout))

    async def _records(self, type_or_pattern: str, timeout: float) -> list[BaseCloudEvent]:
        from bridge.dev.topics import read_topics

        def wanted(topic: str) -> bool:
            if not is_event_topic(self.topic_prefix, topic) or topic == self.deadletter_topic:
                return False
            return fnmatch.fnmatchcase(topic[len(self.topic_prefix) :], type_or_pattern)

        events = []
        for record in await read_topics(self.bootstrap_servers, wanted, timeout):
            message = ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value or b"")
            if dict(record.headers).get("content-type") == _STRUCTURED:
                events.append(ce_kafka.from_structured(message, JSONFormat()))
            else:
                events.append(ce_kafka.from_binary(message, JSONFormat()))
        return events

    async def _find(self, event: dict[str, Any], webhook_id: str) -> Landed | None:
        from bridge.dev.topics import read_topics
        from bridge.envelope import event_id_of_record

        topic = self.topic_prefix + str(event.get("type"))
        for record in await read_topics(self.bootstrap_servers, {topic, self.deadletter_topic}.__contains__, 30.0):
            if (record.topic == topic and event_id_of_record(record.headers, record.value) == event.get("id")) or (
                record.topic == self.deadletter_topic and record.key == webhook_id.encode()
            ):
                return Landed(record.topic, record.partition, record.offset)
        return None


class BridgeServer(_Endpoint):
    """`scalekit-bridge serve` in a child process against `bootstrap_servers`, on free loopback ports.

    A generated signing secret and a topic prefix of its own (`t<random>.`) unless given; `env` adds
    or overrides any setting (BRIDGE_CLOUDEVENTS_MODE, BRIDGE_SCHEMA_VALIDATION, ...). Use as a context
    manager, or call `start()` and `stop()`.
    """

    def __init__(
        self, bootstrap_servers: str, *, secret: str | None = None, topic_prefix: str | None = None, **env: str
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.secret = secret or new_secret()
        self.topic_prefix = topic_prefix or f"t{secrets.token_hex(4)}."
        self.deadletter_topic = env.pop("BRIDGE_DEADLETTER_TOPIC", self.topic_prefix + "deadletter")
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}{env.get('BRIDGE_WEBHOOK_PATH', '/webhooks/scalekit')}"
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - output() reads it after stop(); freed with the object

    def start(self, timeout: float = 60.0) -> BridgeServer:
        child_env = {
            **os.environ,
            "SCALEKIT_WEBHOOK_SECRET": self.secret,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_ADMIN_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_ADMIN_PORT": str(self.admin_port),
            "BRIDGE_TOPIC_PREFIX": self.topic_prefix,
            "BRIDGE_DEADLETTER_TOPIC": self.deadletter_topic,
            **self._env,
        }
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve"], env=child_env, stdout=self._output, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"scalekit-bridge serve did not become ready:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, 30)

    def output(self) -> str:
        """What the bridge has logged so far."""
        self._output.seek(0)
        return self._output.read().decode("utf-8", "replace")

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False


def _in_thread(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own, callable from sync and async tests alike."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scalekit-bridge-testing") as pool:
        return pool.submit(asyncio.run, work).result()
