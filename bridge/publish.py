"""Writing records to Kafka and knowing whether Kafka is there.

The only module that imports aiokafka. It owns the producer's settings
(acks=all, idempotence), the per-publish deadline, topic creation on first
use, and the readiness probe; aiokafka's errors become `PublishFailed` here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context

from bridge.config import KafkaSettings
from bridge.envelope import KafkaMessage
from bridge.errors import PublishFailed

log = logging.getLogger(__name__)

# Headroom over the body limit for CloudEvents headers, key and batch framing.
_RECORD_OVERHEAD_BYTES = 64 * 1024
_PROBE_INTERVAL_SECONDS = 2.0


@dataclass(frozen=True)
class Ack:
    """Kafka's confirmation: where the record now lives."""

    topic: str
    partition: int
    offset: int


class Publisher(Protocol):
    """What the app needs from a publisher; tests of the HTTP layer may fake it."""

    @property
    def ready(self) -> bool: ...

    async def publish(self, message: KafkaMessage) -> Ack: ...


class KafkaPublisher:
    """An idempotent, acks=all producer plus an admin client for topics and probes."""

    def __init__(self, settings: KafkaSettings, *, timeout: float, max_record_bytes: int) -> None:
        self._settings = settings
        self._timeout = timeout
        self._max_record_bytes = max_record_bytes + _RECORD_OVERHEAD_BYTES
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: dict[str, asyncio.Task[None]] = {}
        self._ready = False
        self._probe: asyncio.Task[None] | None = None
        self._replication: int | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Connect; raises PublishFailed when the brokers cannot be reached (call again to retry)."""
        common = _connection_options(self._settings)
        request_timeout_ms = int(self._timeout * 1000)
        self._producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            compression_type="gzip",
            max_request_size=self._max_record_bytes,
            request_timeout_ms=request_timeout_ms,
            client_id="scalekit-bridge",
            **common,
        )
        self._admin = AIOKafkaAdminClient(
            request_timeout_ms=request_timeout_ms, client_id="scalekit-bridge-admin", **common
        )
        try:
            await self._producer.start()
            await self._admin.start()
        except KafkaError as exc:
            await self._close_quietly()
            raise PublishFailed(
                f"cannot reach Kafka at {self._settings.bootstrap_servers}: {type(exc).__name__}"
            ) from exc
        self._ready = True
        self._probe = asyncio.create_task(self._watch_broker(), name="kafka-readiness-probe")

    async def stop(self) -> None:
        """Flush what is pending, then close. Safe to call twice."""
        self._ready = False
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        await self._close_quietly()

    async def publish(self, message: KafkaMessage) -> Ack:
        """Write one record and return only once every in-sync replica has it."""
        producer = self._producer
        if producer is None:
            raise PublishFailed("not connected to Kafka yet")
        try:
            async with asyncio.timeout(self._timeout):
                await self._ensure_topic(message.topic)
                metadata = await producer.send_and_wait(
                    message.topic,
                    value=message.value,
                    key=message.key,
                    headers=list(message.headers),
                )
        except TimeoutError:
            raise PublishFailed(f"no broker acknowledgement within {self._timeout:g}s") from None
        except KafkaError as exc:
            raise PublishFailed(f"Kafka refused the write: {type(exc).__name__}") from exc
        return Ack(topic=metadata.topic, partition=metadata.partition, offset=metadata.offset)

    async def _ensure_topic(self, topic: str) -> None:
        if not self._settings.create_topics:
            return
        creation = self._known_topics.get(topic)
        if creation is not None and creation.done():
            if not creation.cancelled() and creation.exception() is None:
                return  # the common case: created (or found) on an earlier delivery
            creation = None  # the last attempt failed or was cancelled: try again
        if creation is None:
            creation = asyncio.create_task(self._create_topic(topic), name=f"create-{topic}")
            self._known_topics[topic] = creation
        # Shielded: one delivery timing out must not cancel creation for the others.
        await asyncio.shield(creation)

    async def _create_topic(self, topic: str) -> None:
        assert self._admin is not None  # only reached from publish(), after start()
        replication = await self._replication_factor()
        response = await self._admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=self._settings.topic_partitions,
                    replication_factor=replication,
                    topic_configs={"max.message.bytes": str(self._max_record_bytes)},
                )
            ]
        )
        for _name, code, *_rest in response.topic_errors:
            error = for_code(code)
            if code and error is not TopicAlreadyExistsError:
                raise error(f"creating topic {topic}")
        log.info("topic ready", extra={"topic": topic})

    async def _replication_factor(self) -> int:
        if self._replication is None:
            assert self._admin is not None
            cluster = await self._admin.describe_cluster()
            brokers = len(cluster["brokers"])
            wanted = self._settings.topic_replication
            if wanted > brokers:
                log.warning(
                    "BRIDGE_TOPIC_REPLICATION=%d exceeds the %d broker(s) in the cluster; using %d",
                    wanted, brokers, brokers,
                )
            self._replication = max(1, min(wanted, brokers))
        return self._replication

    async def _watch_broker(self) -> None:
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
            reachable = await self._broker_answers()
            if reachable != self._ready:
                log.warning("kafka %s", "reachable again" if reachable else "unreachable")
            self._ready = reachable

    async def _broker_answers(self) -> bool:
        try:
            async with asyncio.timeout(_PROBE_INTERVAL_SECONDS):
                assert self._admin is not None
                await self._admin.describe_cluster()
        except (TimeoutError, KafkaError, OSError):
            return False
        return True

    async def _close_quietly(self) -> None:
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        for client in (producer, admin):
            if client is None:
                continue
            try:
                await (client.stop() if isinstance(client, AIOKafkaProducer) else client.close())
            except Exception:  # noqa: BLE001 - closing must finish even when the broker is gone
                log.debug("error while closing a Kafka client", exc_info=True)


def _connection_options(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings.ssl_cafile)
    if settings.sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = (
            settings.sasl_password.reveal() if settings.sasl_password is not None else None
        )
    return options


def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    return context
