"""Writing records to Kafka and knowing whether Kafka is there.

It owns the producer's settings (acks=all, idempotence), the per-publish deadline,
topic creation on first use and the readiness probe; aiokafka's errors on the way
to a write become `PublishFailed` or `RecordRejected` here, nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bridge.config import KafkaSettings
from bridge.core import Ack
from bridge.envelope import KafkaMessage
from bridge.errors import PublishFailed, RecordRejected, where
from bridge.kafka.options import connection_options

log = logging.getLogger(__name__)

# Headroom over the body limit for CloudEvents headers, key and batch framing.
_RECORD_OVERHEAD_BYTES = 64 * 1024
_PROBE_INTERVAL_SECONDS = 2.0
_LEADER_WAIT_SECONDS = 5.0
_CONNECT_BACKOFF_SECONDS = (0.5, 10.0)  # first wait between attempts, and the most it grows to
_MAX_MESSAGE_BYTES = "max.message.bytes"
_SASL_AUTHENTICATION_FAILED = 58
_NOT_ALLOWED = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)
# Refusals that will repeat for the same record whatever the cluster's health.
_PERMANENT = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    CorruptRecordException,
)


class _KeyPartitioner:
    """aiokafka's default partitioner (murmur2 of the key, as Java's client), remembered per key and partition
    count: there are few organizations, and murmur2 in Python costs more than the rest of choosing."""

    def __init__(self) -> None:
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        return all_partitions[_partition_index(key, len(all_partitions))]


@functools.lru_cache(maxsize=4096)
def _partition_index(key: bytes, partitions: int) -> int:
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


class Translated(AbstractContextManager[None]):
    """aiokafka's errors (and a timeout) as PublishFailed or RecordRejected: the one translation.

    A class rather than a generator-based context manager: it is entered for every record.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None or isinstance(exc, (RecordRejected, PublishFailed)) or not isinstance(exc, Exception):
            return
        if isinstance(exc, TimeoutError):
            raise PublishFailed(f"no broker acknowledgement within {self._timeout:g}s") from None
        if isinstance(exc, _PERMANENT):
            raise RecordRejected(f"the broker refused it for good ({type(exc).__name__})") from exc
        if isinstance(exc, KafkaError):
            raise PublishFailed(f"Kafka refused the write: {type(exc).__name__}") from exc
        # The client's own bugs must still end in an answer.
        log.error("unexpected error from the Kafka client", extra={"error": type(exc).__name__})
        raise PublishFailed(f"unexpected error from the Kafka client: {type(exc).__name__}") from exc


class KafkaPending:
    """A record handed to the producer; `ack()` waits for the broker until the publish timeout after the
    hand-over."""

    def __init__(self, delivered: asyncio.Future[Any], timeout: float, translated: Translated) -> None:
        self._delivered = delivered
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._translated = translated

    async def ack(self) -> Ack:
        with self._translated:
            async with asyncio.timeout_at(self._deadline):
                # Shielded: giving up waiting must not cancel a record the producer may still deliver.
                metadata = await asyncio.shield(self._delivered)
        return _ack(metadata)

    def when_failed(self, callback: Callable[[], None]) -> None:
        def settled(delivered: asyncio.Future[Any]) -> None:
            if not delivered.cancelled() and delivered.exception() is not None:
                callback()

        self._delivered.add_done_callback(settled)


class KafkaPublisher:
    """An idempotent, acks=all producer plus an admin client for topics and probes."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        timeout: float,
        max_record_bytes: int,
        required_topics: tuple[str, ...] = (),
        topic_configs: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._settings = settings
        self._required_topics = required_topics
        # Configs of their own for topics the bridge creates (the receipts topic is compacted and expires).
        self._topic_configs = topic_configs or {}
        # Set while rotated credentials replace the clients (`use_settings`).
        self._switching: asyncio.Future[None] | None = None
        self._said_missing: frozenset[str] = frozenset()  # what the log last said was missing
        self._timeout = timeout
        self._max_record_bytes = max_record_bytes + _RECORD_OVERHEAD_BYTES
        self._translated = Translated(timeout)
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: dict[str, asyncio.Task[int]] = {}
        self._ready = False
        self._probe: asyncio.Task[None] | None = None
        self._replication: tuple[int, int] | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def missing_topics(self) -> frozenset[str]:
        """The required topics whose last lookup found them missing (a write that finds one clears it)."""
        return frozenset(topic for topic in self._required_topics if _found_missing(self._known_topics.get(topic)))

    async def start(self) -> None:
        """Connect; raises PublishFailed when the brokers cannot be reached (call again to retry).

        Nothing else escapes: a failure nobody foresaw (a bug, or a value the config reader let
        through) is a PublishFailed naming its class and place, never its message, which may quote
        a setting.
        """
        try:
            await self._start()
        except PublishFailed:
            raise
        except Exception as exc:
            await self._close_quietly()
            raise PublishFailed(f"the Kafka client failed to start: {type(exc).__name__} at {where(exc)}") from exc

    async def _start(self) -> None:
        self._producer, self._admin = self._clients()
        try:
            await self._producer.start()
            await self._admin.start()
        except KafkaError as exc:
            await self._close_quietly()
            cause = await self._diagnose(connection_options(self._settings))
            raise PublishFailed(
                f"cannot reach Kafka at {self._settings.bootstrap_servers}: {cause or type(exc).__name__}"
            ) from exc
        await self._check_required_topics()
        self._ready = True
        self._probe = asyncio.create_task(self._watch_broker(), name="kafka-readiness-probe")

    def _clients(self) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
        common = connection_options(self._settings)
        request_timeout_ms = int(self._timeout * 1000)
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            compression_type=None if self._settings.compression_type == "none" else self._settings.compression_type,
            max_request_size=self._max_record_bytes,
            request_timeout_ms=request_timeout_ms,
            client_id="scalekit-bridge",
            partitioner=_KeyPartitioner(),
            **common,
        )
        admin = AIOKafkaAdminClient(request_timeout_ms=request_timeout_ms, client_id="scalekit-bridge-admin", **common)
        return producer, admin

    async def use_settings(self, settings: KafkaSettings) -> None:
        """Connect anew with rotated credentials (SASL, or a client certificate's files), without losing
        or reordering a record.

        New clients are started on `settings` first (PublishFailed, and the old clients kept, when
        Kafka refuses them). Then the old producer is stopped, which waits for the records it holds
        to be acknowledged, and records sent meanwhile wait for that before the new producer takes them,
        so no organization's later event overtakes an earlier one.
        """
        self._settings = settings
        if self._producer is None or self._admin is None:
            return  # not connected: the next connection attempt uses them
        try:
            # A certificate and key that do not load together (one file renewed before the other) fail here.
            producer, admin = self._clients()
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise PublishFailed(f"the new client certificate does not load: {type(exc).__name__}") from exc
        try:
            await producer.start()
            await admin.start()
        except Exception as exc:
            for client in (producer, admin):
                with contextlib.suppress(Exception):
                    await (client.stop() if isinstance(client, AIOKafkaProducer) else client.close())
            cause = await self._diagnose(connection_options(self._settings))
            raise PublishFailed(f"Kafka refused the new credentials: {cause or type(exc).__name__}") from exc
        old_producer, old_admin = self._producer, self._admin
        switched = self._switching = asyncio.get_running_loop().create_future()
        self._producer, self._admin = producer, admin
        try:
            async with asyncio.timeout(self._timeout):
                await old_producer.stop()
        except TimeoutError:
            log.warning("the producer on the old credentials did not finish within the publish timeout")
        finally:
            switched.set_result(None)
            self._switching = None
            with contextlib.suppress(Exception):
                await old_admin.close()
        log.info("kafka clients reconnected with rotated credentials")

    async def start_when_reachable(self) -> None:
        """Keep calling `start` (backing off up to 10 s) until Kafka answers; cancel to give up.

        One log line per distinct cause, not one per attempt.
        """
        delay, longest = _CONNECT_BACKOFF_SECONDS
        last_reason = None
        while True:
            try:
                await self.start()
            except PublishFailed as exc:
                if exc.reason != last_reason:
                    log.warning("kafka not reachable yet; retrying", extra={"reason": exc.reason})
                    last_reason = exc.reason
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
            else:
                log.info("kafka connected")
                return

    async def _diagnose(self, options: dict[str, Any]) -> str | None:
        """Why the first bootstrap server refused us, in words an operator can act on; None if unknown.

        The client's bootstrap error says only that no server answered; one direct
        connection shows the real cause (an untrusted certificate, bad credentials).
        """
        host, _, port = self._settings.bootstrap_servers.split(",")[0].strip().rpartition(":")
        connection_options = {k: v for k, v in options.items() if k != "bootstrap_servers"}
        try:
            async with asyncio.timeout(5):
                connection = await create_conn(host or "localhost", int(port), **connection_options)
            connection.close()
        except ssl.SSLCertVerificationError as exc:
            return f"the broker's TLS certificate is not trusted ({exc.verify_message}); check KAFKA_SSL_CAFILE"
        except ssl.SSLError as exc:
            return f"TLS handshake failed ({exc.reason}); check KAFKA_SECURITY_PROTOCOL and the broker's listener"
        except KafkaError as exc:
            if getattr(exc, "errno", None) == _SASL_AUTHENTICATION_FAILED:
                return (
                    f"SASL {self._settings.sasl_mechanism} authentication failed for user "
                    f"{self._settings.sasl_username!r}; check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                )
            tls = self._settings.security_protocol in ("SSL", "SASL_SSL")
            if isinstance(exc, KafkaConnectionError) and tls and self._settings.ssl_certfile is None:
                # Under TLS 1.3 a broker that wants a client certificate says so only after the
                # handshake, by closing the connection on the first request.
                return (
                    "the broker closed the connection after the TLS handshake; if its listener requires a "
                    "client certificate, set KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"
                )
            return type(exc).__name__
        except (OSError, TimeoutError, ValueError) as exc:
            return type(exc).__name__
        return None

    async def stop(self) -> None:
        """Flush what is pending, then close. Safe to call twice."""
        self._ready = False
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        await self._close_quietly()

    async def publish(self, message: KafkaMessage) -> Ack:
        """Write one record and return only once every in-sync replica has it.

        Raises PublishFailed while Kafka cannot take the write (retry later) and
        RecordRejected when it never will (retrying cannot help). The whole call
        fits in the publish timeout.
        """
        with self._translated:
            async with asyncio.timeout(self._timeout):
                delivered = await self._enqueue(message)
                metadata = await delivered
        return _ack(metadata)

    async def send(self, message: KafkaMessage) -> KafkaPending:
        """Hand one record to the producer and return without waiting for its acknowledgement.

        Records sent one after another reach each partition in that order (one batch in flight per
        partition, idempotent producer). Raises like `publish`; so does `Pending.ack()`.
        """
        with self._translated:
            async with asyncio.timeout(self._timeout):
                delivered = await self._enqueue(message)
        return KafkaPending(delivered, self._timeout, self._translated)

    async def ensure_topic(self, topic: str) -> None:
        """Make sure `topic` exists, creating it (with its own configs) where allowed; raises RecordRejected when
        it does not and may not be created, PublishFailed when Kafka does not answer."""
        with self._translated:
            async with asyncio.timeout(self._timeout):
                await self._topic_limit(topic)

    async def _enqueue(self, message: KafkaMessage) -> asyncio.Future[Any]:
        if self._producer is None:
            raise PublishFailed("not connected to Kafka yet")
        limit = await self._topic_limit(message.topic)
        headers = list(message.headers)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(message.key, message.value, headers)
        if size > limit:
            # The limit was read when the topic was first used; an operator may have raised it since.
            limit = await self._topic_limit(message.topic, again=True)
            if size > limit:
                raise RecordRejected(f"the record is {size} bytes, over the {limit}-byte limit of its topic")
        if self._switching is not None:  # credentials rotating: the old producer's records go first
            await asyncio.shield(self._switching)
        producer = self._producer
        if producer is None:
            raise PublishFailed("not connected to Kafka")
        delivered: asyncio.Future[Any] = await producer.send(
            message.topic, value=message.value, key=message.key, headers=headers
        )
        return delivered

    async def _topic_limit(self, topic: str, *, again: bool = False) -> int:
        """The largest record `topic` takes, making sure (once) that the topic exists; `again` reads
        the topic's own limit anew (it exists by then)."""
        if again:
            reread = _lookup(self._read_limit(topic), f"reread-{topic}")
            self._known_topics[topic] = reread
            return await asyncio.shield(reread)
        lookup = self._known_topics.get(topic)
        if lookup is not None and lookup.done():
            if not lookup.cancelled() and lookup.exception() is None:
                return lookup.result()  # the common case: known since an earlier delivery
            lookup = None  # the last attempt failed or was cancelled: try again
        if lookup is None:
            lookup = _lookup(self._prepare_topic(topic), f"prepare-{topic}")
            self._known_topics[topic] = lookup
        # Shielded: one delivery timing out must not cancel the lookup for the others.
        return await asyncio.shield(lookup)

    async def _prepare_topic(self, topic: str) -> int:
        assert self._admin is not None  # only reached from publish(), after start()
        if self._settings.create_topics:
            created = await self._create_topic(topic)
            if created == "created":
                return self._max_record_bytes
            if created == "exists":
                return await self._served_limit(topic)
        return await self._read_limit(topic)

    async def _served_limit(self, topic: str) -> int:
        """The limit of a topic the controller says exists. Another replica may have created it a moment ago:
        until the broker's metadata catches up, it answers that the topic is unknown. That is waited for (as a
        new topic's leaders are) and, past the wait, is a reason to retry, never to dead-letter."""
        try:
            async with asyncio.timeout(min(_LEADER_WAIT_SECONDS, self._timeout / 2)):
                while True:
                    try:
                        return await self._read_limit(topic)
                    except _UnknownTopic:
                        await asyncio.sleep(0.05)
        except TimeoutError:
            raise PublishFailed(f"topic {topic} exists but Kafka does not serve it yet") from None

    async def _read_limit(self, topic: str) -> int:
        return min(await self._configured_limit(topic), self._max_record_bytes)

    async def _create_topic(self, topic: str) -> Literal["created", "exists", "not allowed"]:
        """Create `topic`; when it already exists, its own settings apply."""
        assert self._admin is not None
        replication, min_insync = await self._replication_factor()
        response = await self._admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=self._settings.topic_partitions,
                    replication_factor=replication,
                    topic_configs={
                        _MAX_MESSAGE_BYTES: str(self._max_record_bytes),
                        "min.insync.replicas": str(min_insync),
                        **self._topic_configs.get(topic, {}),
                    },
                )
            ]
        )
        for _name, code, *_rest in response.topic_errors:
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                return "exists"
            if error is InvalidTopicError:
                # Kafka's word for a name that collides with an existing one ('.' against '_').
                raise RecordRejected(f"Kafka will not create topic {topic}: it collides with an existing name")
            if error in _NOT_ALLOWED:
                log.warning("not allowed to create topics; using %s if it exists", topic, extra={"topic": topic})
                return "not allowed"
            if code:
                raise error(f"creating topic {topic}")
        await self._leaders_elected(topic)
        log.info("topic created", extra={"topic": topic, "replication": replication, "min_insync": min_insync})
        return "created"

    async def _leaders_elected(self, topic: str) -> None:
        """Wait (a few seconds at most) until every partition of a new topic has a leader that serves it.

        Sent earlier, the first records meet NotLeaderForPartition and the producer retries them with a
        warning. The metadata names a leader before that broker acts as one, so the wait ends with a
        request only a serving leader answers (the end offsets, which needs no more than Describe on the
        topic). Past the wait the producer's own retries still cover. The wait takes at most half the
        publish timeout, so the first delivery keeps the other half for its own write.
        """
        assert self._admin is not None
        probe = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            client_id="scalekit-bridge-admin",
            **connection_options(self._settings),
        )
        started = False
        try:
            async with asyncio.timeout(min(_LEADER_WAIT_SECONDS, self._timeout / 2)):
                while True:
                    (described,) = await self._admin.describe_topics([topic])
                    partitions = described["partitions"]
                    if not described["error_code"] and partitions and all(p["leader"] >= 0 for p in partitions):
                        break
                    await asyncio.sleep(0.05)
                started = True
                await probe.start()
                await probe.end_offsets([TopicPartition(topic, p["partition"]) for p in partitions])
        except (TimeoutError, KafkaError):
            log.info("a new topic's leaders are not all serving yet; sending anyway", extra={"topic": topic})
        finally:
            if started:
                with contextlib.suppress(Exception):  # closing must finish even when the broker is gone
                    await probe.stop()

    async def _configured_limit(self, topic: str) -> int:
        """The topic's own max.message.bytes; RecordRejected when the broker says it does not exist."""
        assert self._admin is not None
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={_MAX_MESSAGE_BYTES: None})
        (response,) = await self._admin.describe_configs([resource])
        for code, _message, _type, _name, entries, *_rest in response.resources:
            if for_code(code) is UnknownTopicOrPartitionError:
                raise _UnknownTopic(f"topic {topic} does not exist and the bridge may not create it")
            if code:
                # Not allowed to read topic configs (a tight ACL): the broker's own size check still
                # refuses an oversized record, and that refusal is dead-lettered too.
                log.warning(
                    "cannot read the topic's max.message.bytes (%s); assuming %d",
                    for_code(code).__name__,
                    self._max_record_bytes,
                    extra={"topic": topic},
                )
                return self._max_record_bytes
            for name, value, *_ in entries:
                if name == _MAX_MESSAGE_BYTES and value is not None:
                    return int(value)
        return self._max_record_bytes

    async def _replication_factor(self) -> tuple[int, int]:
        if self._replication is None:
            assert self._admin is not None
            cluster = await self._admin.describe_cluster()
            replication, min_insync, warning = self._settings.replication_for(len(cluster["brokers"]))
            if warning is not None:
                log.warning(warning)
            self._replication = (replication, min_insync)
        return self._replication

    async def _watch_broker(self) -> None:
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
            failure = await self._broker_failure()
            reachable = failure is None
            if reachable != self._ready:
                if reachable:
                    log.warning("kafka reachable again")
                else:  # the class names the cause (a timeout, a refused login, a closed connection) without its text
                    log.warning("kafka unreachable", extra={"error": failure})
            self._ready = reachable
            if reachable and (self.missing_topics or self._said_missing):
                with contextlib.suppress(TimeoutError, KafkaError, OSError):  # the next probe says so
                    async with asyncio.timeout(_PROBE_INTERVAL_SECONDS):
                        await self._check_required_topics()

    async def _check_required_topics(self) -> None:
        """Make sure (creating them where allowed) that the required topics exist; log each change.

        A missing dead-letter topic turns every verified but unroutable delivery into a 503 for ever, so
        it is said at once, at ERROR, and again when it is resolved.
        """
        for topic in self._required_topics:
            # Missing (RecordRejected) is said below; not served yet (PublishFailed) is asked again when used.
            with contextlib.suppress(RecordRejected, PublishFailed):
                await self._topic_limit(topic)
        missing = self.missing_topics
        for topic in sorted(missing - self._said_missing):
            log.error(
                "a topic the bridge needs does not exist and the bridge may not create it; not ready until it does",
                extra={"topic": topic},
            )
        for topic in sorted(self._said_missing - missing):
            log.info("a topic the bridge needs exists now", extra={"topic": topic})
        self._said_missing = missing

    async def _broker_failure(self) -> str | None:
        """None when the cluster answers a metadata request in time; else the class of what went wrong."""
        try:
            async with asyncio.timeout(_PROBE_INTERVAL_SECONDS):
                assert self._admin is not None
                await self._admin.describe_cluster()
        except (TimeoutError, KafkaError, OSError) as exc:
            return type(exc).__name__
        return None

    async def _close_quietly(self) -> None:
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        for client in (producer, admin):
            if client is None:
                continue
            try:
                await (client.stop() if isinstance(client, AIOKafkaProducer) else client.close())
            except Exception:  # closing must finish even when the broker is gone
                log.debug("error while closing a Kafka client", exc_info=True)


class _UnknownTopic(RecordRejected):
    """The broker does not know the topic: for good where the bridge may not create it."""


def _lookup(work: Coroutine[Any, Any, int], name: str) -> asyncio.Task[int]:
    """A topic lookup shared by the deliveries that need it. Its failure reaches those still waiting and
    makes the next delivery try again; when every waiter gave up first, it is not left for asyncio to
    report as never retrieved."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(lambda done: None if done.cancelled() else done.exception())
    return task


def _found_missing(lookup: asyncio.Task[int] | None) -> bool:
    if lookup is None or not lookup.done() or lookup.cancelled():
        return False
    return isinstance(lookup.exception(), RecordRejected)


def _ack(metadata: Any) -> Ack:
    return Ack(topic=metadata.topic, partition=metadata.partition, offset=metadata.offset)
