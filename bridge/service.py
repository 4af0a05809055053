"""One bridge's parts, wired once, and the one owner of their life (`running`).

HTTP-free: `bridge.app` serves a `Bridge` on aiohttp, as `serve` or inside another aiohttp
application; the test fixtures run it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from bridge import dedup
from bridge import metrics as m
from bridge.config import Secret, Settings, parse_signing_keys
from bridge.core import Memory, Publisher, Source
from bridge.errors import PublishFailed, where
from bridge.kafka.producer import KafkaPublisher
from bridge.kafka.receipts import ReceiptLog, ReceiptTail, ReceiptWriter
from bridge.pipeline import Pipeline, Writer
from bridge.redelivery import RedeliveryCache
from bridge.remembered import RememberedIds
from bridge.rotation import SecretFiles
from bridge.traces import start as start_tracing
from bridge.tracing import OFF, Tracing
from bridge.verify import Verifier

log = logging.getLogger(__name__)
# At shutdown, queued spans get this long (within the drain) to reach the collector.
TRACE_FLUSH_SECONDS = 1.0


@dataclass
class Lifecycle:
    """Whether new deliveries are taken, how many are still being handled, and when the drain must end."""

    accepting: bool = True
    inflight: int = 0
    # Why this process cannot recover by itself (liveness fails, so it is restarted); None while it can.
    broken: str | None = None
    # The event loop's time by which a drain must be over (None until one starts).
    deadline: float | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def drain(self, grace: float) -> None:
        """Take no new deliveries from now on; everything must be closed within `grace` seconds."""
        self.accepting = False
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + grace

    def remaining(self, default: float) -> float:
        """Seconds left until the drain's deadline; `default` when no drain has started."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def enter(self) -> None:
        """Count one delivery in flight, from before its body is read until it is answered (`leave`)."""
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if `timeout` passed first."""
        if self.inflight == 0:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class Bridge:
    """Everything one running bridge is made of, wired once."""

    settings: Settings
    publisher: Publisher
    pipeline: Pipeline
    metrics: m.Metrics
    lifecycle: Lifecycle
    verifier: Verifier
    tracing: Tracing = OFF
    # The receipts this process writes and follows (BRIDGE_DEDUP): not ready before it has read the window's.
    receipts: ReceiptLog | None = None

    @classmethod
    def assemble(
        cls,
        settings: Settings,
        publisher: Publisher,
        metrics: m.Metrics | None = None,
        tracing: Tracing = OFF,
        *,
        memory: Memory | None = None,
        receipts: ReceiptLog | None = None,
    ) -> Bridge:
        metrics = metrics if metrics is not None else m.Metrics()
        cache = RedeliveryCache(settings.redelivery_cache_size, settings.redelivery_cache_ttl)
        lifecycle = Lifecycle()
        verifier = Verifier(settings.signing_keys, settings.timestamp_tolerance)
        pipeline = Pipeline(
            verifier=verifier,
            cache=cache,
            writer=Writer.configured(settings, publisher, metrics, tracing, memory),
            tracing=tracing,
        )
        bridge = cls(settings, publisher, pipeline, metrics, lifecycle, verifier, tracing, receipts)
        # Read at scrape time, so the gauges cannot drift from the truth.
        metrics.ready.set_function(lambda: 1.0 if bridge.ready else 0.0)
        metrics.deadletter_topic_missing.set_function(
            lambda: 1.0 if settings.deadletter_topic in publisher.missing_topics else 0.0
        )
        metrics.inflight.set_function(lambda: float(lifecycle.inflight))
        metrics.redelivery_cache_entries.set_function(lambda: float(len(cache)))
        return bridge

    @property
    def ready(self) -> bool:
        receipts_read = self.receipts is None or self.receipts.ready
        return self.lifecycle.accepting and self.publisher.ready and not self.publisher.missing_topics and receipts_read


def _secret_files(settings: Settings, bridge: Bridge, publisher: KafkaPublisher) -> SecretFiles:
    """The secrets `settings` read from files, each followed to where it is used."""
    secrets = SecretFiles()
    if settings.webhook_secret_file is not None:

        async def use_webhook_secrets(texts: tuple[str, ...]) -> None:
            bridge.verifier.use_keys(parse_signing_keys(texts[0]))

        secrets.follow(
            "SCALEKIT_WEBHOOK_SECRET", (("SCALEKIT_WEBHOOK_SECRET_FILE", settings.webhook_secret_file),),
            use_webhook_secrets,
        )
    kafka = settings.kafka
    files = {
        variable: path
        for variable, path in (
            ("KAFKA_SASL_USERNAME_FILE", kafka.sasl_username_file),
            ("KAFKA_SASL_PASSWORD_FILE", kafka.sasl_password_file),
            # A client certificate and key (Strimzi renews a KafkaUser's): the new clients load them anew.
            ("KAFKA_SSL_CERTFILE", kafka.ssl_certfile),
            ("KAFKA_SSL_KEYFILE", kafka.ssl_keyfile),
            # The CA bundle: Strimzi renews its cluster CA (the bundle carries old and new for a while).
            ("KAFKA_SSL_CAFILE", kafka.ssl_cafile),
        )
        if path is not None
    }
    if files:

        async def use_kafka_credentials(texts: tuple[str, ...]) -> None:
            read = dict(zip(files, texts, strict=True))
            username = read.get("KAFKA_SASL_USERNAME_FILE", kafka.sasl_username)
            password = read.get("KAFKA_SASL_PASSWORD_FILE")
            secret = Secret(password) if password is not None else kafka.sasl_password
            rotated = replace(kafka, sasl_username=username, sasl_password=secret)
            await publisher.use_settings(rotated)
            if bridge.receipts is not None:
                await bridge.receipts.use_settings(rotated)

        secrets.follow("Kafka credentials", tuple(files.items()), use_kafka_credentials)
    return secrets


def _note_a_dead_loop(task: asyncio.Task[None], lifecycle: Lifecycle, what: str) -> None:
    """A loop that should run until cancelled has stopped (a bug): liveness fails, so the pod is restarted."""
    if task.cancelled() or task.exception() is None:
        return
    exc = task.exception()
    assert exc is not None
    lifecycle.broken = f"{what} stopped: {type(exc).__name__} at {where(exc)}"
    log.error(f"{what} stopped; liveness now fails", extra={"error": type(exc).__name__, "at": where(exc)})


def _fleet_memory(settings: Settings, metrics: m.Metrics) -> tuple[Memory | None, ReceiptLog | None]:
    """BRIDGE_DEDUP: the release's memory of what it wrote, fed by this process and the receipts topic."""
    if not settings.dedup:
        return None, None
    remembered = RememberedIds(int(settings.dedup_window * 1000), settings.dedup_max_ids)
    writer = ReceiptWriter(
        settings.kafka, settings.receipts_topic, timeout=settings.publish_timeout,
        lost=metrics.dedup_receipt_failures.inc,
    )
    memory = dedup.FleetMemory(write=writer.hand, source=Source.WEBHOOK, metrics=metrics, remembered=remembered)
    tail = ReceiptTail(settings.kafka, settings.receipts_topic, settings.dedup_window, memory.apply)
    receipts = ReceiptLog(writer, tail)

    def remembered_now() -> float:
        remembered.forget(dedup.now_ms())  # also when no receipt arrives to push the old ones out
        return float(len(remembered))

    metrics.dedup_remembered.set_function(remembered_now)
    metrics.dedup_reach.set_function(lambda: remembered.reach_ms(dedup.now_ms()) / 1000)
    metrics.dedup_receipts_lag.set_function(receipts.tail.lag_seconds)
    return memory, receipts


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    metrics: m.Metrics | None = None,
    connect_within: float | None = None,
    publisher: KafkaPublisher | None = None,
) -> AsyncIterator[Bridge]:
    """The one owner of a bridge's parts, for `serve`, an embedding application and the test fixtures.

    Builds the Kafka publisher and the bridge and keeps connecting to Kafka in the background
    (readiness and deliveries answer 503 until it succeeds), or first waits up to
    `connect_within` seconds for the connection (and, with BRIDGE_DEDUP, for the window's receipts
    to be read), raising PublishFailed if it does not come. On
    exit it stops connecting, then flushes and closes the producer: within what is left of a
    drain (`Lifecycle.drain`), or within `settings.drain_seconds` when none was started. Should the
    connecting ever stop other than by success or cancellation, the bridge is marked broken
    (`Lifecycle.broken`): its liveness fails rather than its deliveries getting 503 for ever.
    """
    if publisher is None:
        receipts_topic = (settings.receipts_topic,) if settings.dedup else ()
        publisher = KafkaPublisher(
            settings.kafka,
            timeout=settings.publish_timeout,
            max_record_bytes=settings.max_body_bytes,
            required_topics=(settings.deadletter_topic, *receipts_topic),
            topic_configs=dedup.topic_configs(settings),
        )
    metrics = metrics if metrics is not None else m.Metrics()
    tracing = start_tracing(settings.tracing, metrics.drop_spans, metrics.ignore_trace_header)
    memory, receipts = _fleet_memory(settings, metrics)
    bridge = Bridge.assemble(settings, publisher, metrics, tracing, memory=memory, receipts=receipts)
    connecting = asyncio.create_task(publisher.start_when_reachable(), name="kafka-connect")
    connecting.add_done_callback(lambda task: _note_a_dead_loop(task, bridge.lifecycle, "the Kafka connection loop"))
    secrets = _secret_files(settings, bridge, publisher)
    following = asyncio.create_task(secrets.run(), name="secret-files") if secrets else None
    tailing = asyncio.create_task(receipts.run(), name="receipts") if receipts is not None else None
    if tailing is not None:
        tailing.add_done_callback(lambda task: _note_a_dead_loop(task, bridge.lifecycle, "the receipts loop"))
    try:
        if connect_within is not None:
            try:
                async with asyncio.timeout(connect_within):
                    await asyncio.shield(connecting)
                    if receipts is not None:
                        await receipts.wait_ready()
            except TimeoutError:
                where = settings.kafka.bootstrap_servers
                raise PublishFailed(f"Kafka at {where} did not answer within {connect_within:g}s") from None
        yield bridge
    finally:
        for task in (connecting, following, tailing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if receipts is not None:
            # The receipts of the last records written, so a retry reaching another pod knows of them (milliseconds).
            try:
                async with asyncio.timeout(max(0.1, bridge.lifecycle.remaining(settings.drain_seconds))):
                    await receipts.stop()
            except TimeoutError:
                log.warning("the last receipts were not written within the shutdown grace")
        try:
            async with asyncio.timeout(max(0.1, bridge.lifecycle.remaining(settings.drain_seconds))):
                await publisher.stop()
        except TimeoutError:
            log.warning("the producer did not close within the shutdown grace")
        bridge.tracing.shutdown(min(TRACE_FLUSH_SECONDS, bridge.lifecycle.remaining(settings.drain_seconds)))
