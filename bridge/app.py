"""The process: wiring, the admin listener, and the lifecycle (`running`, `serve`).

The only module that imports aiohttp, for the admin port (probes and metrics). The public
port is `bridge.listener`'s, which answers 201 only after the pipeline has returned a
receipt, and a receipt exists only once Kafka acknowledged the record (or an earlier
attempt's record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge import metrics as m
from bridge.config import Settings
from bridge.core import Publisher
from bridge.errors import PublishFailed
from bridge.listener import Limits, PublicListener
from bridge.pipeline import Pipeline, Writer
from bridge.process import (
    freeze_startup_objects,
    raise_open_file_limit,
    return_freed_memory_to_the_kernel,
    trim_memory_every,
)
from bridge.publish import KafkaPublisher
from bridge.redelivery import RedeliveryCache
from bridge.verify import Verifier

log = logging.getLogger(__name__)

_TRIM_INTERVAL_SECONDS = 5.0


@dataclass
class Lifecycle:
    """Whether new deliveries are taken, how many are still being handled, and when the drain must end."""

    accepting: bool = True
    inflight: int = 0
    # The event loop's time by which a drain must be over (None until one starts).
    deadline: float | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def drain(self, grace: float) -> None:
        """Take no new deliveries from now on; everything must be closed within `grace` seconds."""
        self.accepting = False
        self.deadline = asyncio.get_running_loop().time() + grace

    def remaining(self, default: float) -> float:
        """Seconds left until the drain's deadline; `default` when no drain has started."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def enter(self) -> None:
        """A delivery was taken in (its head passed the checks); `leave` when it is answered."""
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

    @classmethod
    def assemble(cls, settings: Settings, publisher: Publisher, metrics: m.Metrics | None = None) -> Bridge:
        metrics = metrics if metrics is not None else m.Metrics()
        cache = RedeliveryCache(settings.redelivery_cache_size, settings.redelivery_cache_ttl)
        lifecycle = Lifecycle()
        pipeline = Pipeline(
            verifier=Verifier(settings.signing_keys, settings.timestamp_tolerance),
            cache=cache,
            writer=Writer.configured(settings, publisher, metrics),
        )
        bridge = cls(settings, publisher, pipeline, metrics, lifecycle)
        # Read at scrape time, so the gauges cannot drift from the truth.
        metrics.ready.set_function(lambda: 1.0 if bridge.ready else 0.0)
        metrics.inflight.set_function(lambda: float(lifecycle.inflight))
        metrics.redelivery_cache_entries.set_function(lambda: float(len(cache)))
        return bridge

    @property
    def ready(self) -> bool:
        return self.lifecycle.accepting and self.publisher.ready


BRIDGE = web.AppKey("bridge", Bridge)


def public_listener(bridge: Bridge) -> PublicListener:
    """The public port's server: one POST route for Scalekit, with the limits of `bridge.settings`."""
    settings = bridge.settings
    limits = Limits(
        path=settings.webhook_path,
        max_body_bytes=settings.max_body_bytes,
        max_connections=settings.max_connections,
        max_inflight=settings.max_inflight,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        keepalive_timeout=settings.keepalive_timeout,
    )
    listener = PublicListener(limits, bridge.pipeline, bridge.lifecycle, bridge.metrics)
    bridge.metrics.open_connections.set_function(lambda: float(listener.open_connections))
    return listener


def create_admin_app(bridge: Bridge) -> web.Application:
    """The admin listener: probes and metrics, kept off the public port."""
    app = web.Application()
    app[BRIDGE] = bridge
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


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


class _QuietServerLog(logging.Filter):
    """aiohttp logs a malformed request to the admin port with the offending bytes; say nothing of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


@dataclass
class Listeners:
    """The public and admin listeners of one bridge, and how to close them inside a deadline."""

    public: PublicListener
    admin: web.AppRunner
    servers: tuple[asyncio.Server, asyncio.Server]
    cleanup_timeout: float
    log_filter: logging.Filter

    @property
    def ports(self) -> tuple[int, int]:
        public, admin = (server.sockets[0].getsockname()[1] for server in self.servers)
        return int(public), int(admin)

    async def close(self) -> None:
        """Stop listening and close every connection; answers still being worked on after
        `listen`'s `cleanup_timeout` are given up."""
        for server in self.servers:
            server.close()
        await self.public.close_all(self.cleanup_timeout)
        await self.admin.cleanup()
        logging.getLogger("aiohttp.server").removeFilter(self.log_filter)


async def listen(bridge: Bridge, *, cleanup_timeout: float = 1.0) -> Listeners:
    """Open both listeners for `bridge` with the public port's limits in force."""
    settings = bridge.settings
    public = public_listener(bridge)
    log_filter = _QuietServerLog()
    logging.getLogger("aiohttp.server").addFilter(log_filter)
    admin = web.AppRunner(
        create_admin_app(bridge), handle_signals=False, access_log=None, shutdown_timeout=cleanup_timeout
    )
    await admin.setup()
    assert admin.server is not None
    loop = asyncio.get_running_loop()
    servers = (
        await loop.create_server(public.protocol, settings.host, settings.port, reuse_address=True, backlog=1024),
        await loop.create_server(admin.server, settings.admin_host, settings.admin_port, reuse_address=True),
    )
    return Listeners(public, admin, servers, cleanup_timeout, log_filter)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, metrics: m.Metrics | None = None, connect_within: float | None = None
) -> AsyncIterator[Bridge]:
    """The one owner of a bridge's parts, for `serve` and the test fixtures alike.

    Builds the Kafka publisher and the bridge and keeps connecting to Kafka in the background
    (readiness and deliveries answer 503 until it succeeds), or first waits up to
    `connect_within` seconds for the connection, raising PublishFailed if it does not come. On
    exit it stops connecting, then flushes and closes the producer: within what is left of a
    drain (`Lifecycle.drain`), or within `settings.drain_seconds` when none was started.
    """
    publisher = KafkaPublisher(
        settings.kafka, timeout=settings.publish_timeout, max_record_bytes=settings.max_body_bytes
    )
    bridge = Bridge.assemble(settings, publisher, metrics)
    connecting = asyncio.create_task(publisher.start_when_reachable(), name="kafka-connect")
    try:
        if connect_within is not None:
            try:
                async with asyncio.timeout(connect_within):
                    await asyncio.shield(connecting)
            except TimeoutError:
                where = settings.kafka.bootstrap_servers
                raise PublishFailed(f"Kafka at {where} did not answer within {connect_within:g}s") from None
        yield bridge
    finally:
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        try:
            async with asyncio.timeout(max(0.1, bridge.lifecycle.remaining(settings.drain_seconds))):
                await publisher.stop()
        except TimeoutError:
            log.warning("the producer did not close within the shutdown grace")


async def serve(settings: Settings, *, on_listening: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain: stop taking deliveries, finish, flush, return.

    The whole drain, from the signal to the return, fits inside `settings.drain_seconds`.
    """
    raise_open_file_limit()
    return_freed_memory_to_the_kernel()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    grace = settings.drain_seconds
    # Kept back from the in-flight wait for closing connections and flushing the producer.
    reserve = min(2.0, grace / 2)
    try:
        async with running(settings) as bridge:
            listeners = await listen(bridge, cleanup_timeout=reserve / 2)
            freeze_startup_objects()
            log.info(
                "listening",
                extra={
                    "webhook": f"http://{settings.host}:{settings.port}{settings.webhook_path}",
                    "admin": f"{settings.admin_host}:{settings.admin_port}",
                },
            )
            trimming = asyncio.create_task(trim_memory_every(_TRIM_INTERVAL_SECONDS), name="malloc-trim")
            if on_listening is not None:
                on_listening()
            try:
                await stop.wait()
            finally:
                lifecycle = bridge.lifecycle
                lifecycle.drain(grace)
                log.info("draining", extra={"inflight": lifecycle.inflight, "grace_s": grace})
                # Idle and half-sent connections have nothing to finish: close them now.
                listeners.public.close_idle()
                if not await lifecycle.drained(max(0.0, lifecycle.remaining(grace) - reserve)):
                    log.warning(
                        "shutdown grace ran out with deliveries in flight", extra={"inflight": lifecycle.inflight}
                    )
                trimming.cancel()
                await asyncio.gather(trimming, return_exceptions=True)
                await listeners.close()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")
