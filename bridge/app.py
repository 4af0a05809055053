"""HTTP: the webhook listener, the admin listener, and the process lifecycle.

The only module that imports aiohttp. Errors become responses in one
middleware (`_errors`); the handler itself only answers 201, which it does
after the pipeline has returned a receipt, and a receipt exists only once
Kafka acknowledged the record (or an earlier attempt's record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge import metrics as m
from bridge.config import Settings
from bridge.contract import Contract
from bridge.dedupe import RedeliveryCache
from bridge.errors import PayloadTooLarge, PublishFailed, ShuttingDown, VerificationFailed
from bridge.pipeline import Pipeline
from bridge.publish import KafkaPublisher, Publisher
from bridge.verify import Verifier

log = logging.getLogger(__name__)

# Scalekit's own second retry comes 5 s after the first; asking for the same keeps us honest.
RETRY_AFTER_SECONDS = "5"
_CONNECT_BACKOFF_MAX = 10.0


@dataclass
class Lifecycle:
    """Whether new deliveries are taken, and how many are still being handled."""

    accepting: bool = True
    inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
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
    cache: RedeliveryCache
    metrics: m.Metrics
    lifecycle: Lifecycle

    @classmethod
    def assemble(cls, settings: Settings, publisher: Publisher, metrics: m.Metrics | None = None) -> Bridge:
        metrics = metrics if metrics is not None else m.Metrics()
        cache = RedeliveryCache(settings.redelivery_cache_size, settings.redelivery_cache_ttl)
        lifecycle = Lifecycle()
        pipeline = Pipeline(
            verifier=Verifier(settings.signing_keys, settings.timestamp_tolerance),
            publisher=publisher,
            cache=cache,
            metrics=metrics,
            topic_prefix=settings.topic_prefix,
            deadletter_topic=settings.deadletter_topic,
            cloudevents_mode=settings.cloudevents_mode,
            contract=Contract.load(),
            schema_validation=settings.schema_validation,
        )
        bridge = cls(settings, publisher, pipeline, cache, metrics, lifecycle)
        # Read at scrape time, so the gauges cannot drift from the truth.
        metrics.ready.set_function(lambda: 1.0 if bridge.ready else 0.0)
        metrics.inflight.set_function(lambda: float(lifecycle.inflight))
        metrics.redelivery_cache_entries.set_function(lambda: float(len(cache)))
        return bridge

    @property
    def ready(self) -> bool:
        return self.lifecycle.accepting and self.publisher.ready


BRIDGE = web.AppKey("bridge", Bridge)


def create_app(bridge: Bridge) -> web.Application:
    """The public listener: one POST route for Scalekit."""
    app = web.Application(
        middlewares=[_errors], client_max_size=bridge.settings.max_body_bytes
    )
    app[BRIDGE] = bridge
    app.router.add_post(bridge.settings.webhook_path, _receive)
    return app


def create_admin_app(bridge: Bridge) -> web.Application:
    """The admin listener: probes and metrics, kept off the public port."""
    app = web.Application(middlewares=[_errors])
    app[BRIDGE] = bridge
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _receive(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    if not bridge.lifecycle.accepting:
        raise ShuttingDown()
    with bridge.lifecycle.track():
        limit = bridge.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge() from None
        await bridge.pipeline.handle(request.headers, body)
    return web.json_response({"received": True}, status=201)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except VerificationFailed as exc:
        response = _error(401, exc.reason, exc.detail)
    except PayloadTooLarge:
        bridge.pipeline.refuse_oversized(started)
        response = _error(413, "payload_too_large", f"bodies over {bridge.settings.max_body_bytes} bytes are refused")
    except PublishFailed as exc:
        response = _error(503, "kafka_unavailable", exc.reason, retry=True)
    except ShuttingDown:
        response = _error(503, "shutting_down", "this instance is draining; retry", retry=True)
    except web.HTTPException as exc:
        response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    if request.path == bridge.settings.webhook_path:
        bridge.metrics.request_duration.labels(status=str(response.status)).observe(
            time.perf_counter() - started
        )
    return response


def _error(status: int, error: str, detail: str, *, retry: bool = False) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry else None
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    body = {
        "ready": bridge.ready,
        "kafka": "reachable" if bridge.publisher.ready else "unreachable",
        "accepting": bridge.lifecycle.accepting,
    }
    return web.json_response(body, status=200 if bridge.ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[BRIDGE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(settings: Settings, *, on_listening: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain: stop taking deliveries, finish, flush, return."""
    publisher = KafkaPublisher(
        settings.kafka, timeout=settings.publish_timeout, max_record_bytes=settings.max_body_bytes
    )
    bridge = Bridge.assemble(settings, publisher)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    runners = [
        web.AppRunner(create_app(bridge), handle_signals=False, access_log=None),
        web.AppRunner(create_admin_app(bridge), handle_signals=False, access_log=None),
    ]
    for runner, port in zip(runners, (settings.port, settings.admin_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, settings.host, port, shutdown_timeout=settings.shutdown_grace).start()
    log.info(
        "listening",
        extra={"webhook": f"http://{settings.host}:{settings.port}{settings.webhook_path}",
               "admin_port": settings.admin_port},
    )
    connecting = asyncio.create_task(_connect(publisher, stop), name="kafka-connect")
    if on_listening is not None:
        on_listening()
    try:
        await stop.wait()
    finally:
        log.info("draining", extra={"inflight": bridge.lifecycle.inflight})
        bridge.lifecycle.accepting = False
        drained = await bridge.lifecycle.drained(settings.shutdown_grace)
        if not drained:
            log.warning("shutdown grace ran out with deliveries in flight")
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()
        await publisher.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")


async def _connect(publisher: KafkaPublisher, stop: asyncio.Event) -> None:
    """Keep trying to reach Kafka; meanwhile /readyz says 503 and deliveries get 503."""
    delay = 0.5
    while not stop.is_set():
        try:
            await publisher.start()
        except PublishFailed as exc:
            log.warning("kafka not reachable yet; retrying", extra={"reason": exc.reason, "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, _CONNECT_BACKOFF_MAX)
        else:
            log.info("kafka connected")
            return
