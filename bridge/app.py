"""HTTP: the webhook listener, the admin listener, and the process lifecycle (`running`, `serve`).

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge import metrics as m
from bridge.config import Settings
from bridge.core import Publisher
from bridge.errors import Overloaded, PayloadTooLarge, PublishFailed, ShuttingDown, VerificationFailed
from bridge.guard import RETRY_AFTER_SECONDS, ConnectionGuard, GuardedProtocol
from bridge.pipeline import Pipeline, Writer, where
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


def create_app(bridge: Bridge) -> web.Application:
    """The public listener: one POST route for Scalekit."""
    app = web.Application(
        middlewares=[_errors],
        client_max_size=bridge.settings.max_body_bytes,
        # Wherever the app runs: bodies are never decompressed (a bomb costs nothing), request
        # heads stay small, and a refused body is not read on for seconds after the answer.
        handler_args={
            "auto_decompress": False,
            "max_headers": 64,
            "lingering_time": 0,
            "keepalive_timeout": bridge.settings.keepalive_timeout,
        },
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
    settings = bridge.settings
    if not bridge.lifecycle.accepting:
        raise ShuttingDown()
    if bridge.lifecycle.inflight >= settings.max_inflight:
        raise Overloaded()
    with bridge.lifecycle.track():
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Scalekit sends plain bodies; decompressing a stranger's bytes is how bombs go off.
            raise _Refused(415, m.UNSUPPORTED_ENCODING, "request bodies must not be compressed")
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            raise PayloadTooLarge()
        try:
            async with asyncio.timeout(settings.body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge() from None
        except TimeoutError:
            raise _Refused(408, m.BODY_TIMEOUT, f"the body did not arrive within {settings.body_timeout:g}s") from None
        receipt = await bridge.pipeline.handle(request.headers, body)
    # Scalekit keeps the answer in its delivery log: say there whether the event was published,
    # dead-lettered (look in the dead-letter topic) or a redelivery of one already written.
    return web.json_response({"received": True, "outcome": receipt.outcome}, status=201)


class _Refused(Exception):
    """A request refused before its body was read; the connection is closed after the answer."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The one place where exceptions become answers; nothing escapes it."""
    bridge = request.app[BRIDGE]
    started = time.perf_counter()
    guarded = _guarded(request)
    if guarded is not None:
        guarded.request_started()
    try:
        response = await _answer(request, handler, bridge, started)
        if not bridge.lifecycle.accepting:
            response.force_close()  # draining: no connection outlives its answer
        if request.path == bridge.settings.webhook_path:
            bridge.metrics.request_duration.labels(status=str(response.status)).observe(
                time.perf_counter() - started
            )
        return response
    finally:
        if guarded is not None:
            guarded.request_finished()


async def _answer(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    bridge: Bridge,
    started: float,
) -> web.StreamResponse:
    try:
        return await handler(request)
    except VerificationFailed as exc:
        return _error(401, exc.code, exc.detail)
    except PayloadTooLarge:
        bridge.pipeline.refuse_oversized(started)
        return _error(
            413, "payload_too_large", f"bodies over {bridge.settings.max_body_bytes} bytes are refused", close=True
        )
    except _Refused as exc:
        bridge.metrics.http_refusals.labels(reason=exc.error).inc()
        return _error(exc.status, exc.error, exc.detail, close=True)
    except Overloaded:
        bridge.metrics.http_refusals.labels(reason=m.OVERLOADED).inc()
        detail = f"over {bridge.settings.max_inflight} deliveries in flight; retry"
        return _error(503, m.OVERLOADED, detail, retry=True, close=True)
    except PublishFailed as exc:
        return _error(503, "kafka_unavailable", exc.reason, retry=True)
    except ShuttingDown:
        return _error(503, "shutting_down", "this instance is draining; retry", retry=True, close=True)
    except web.HTTPException as exc:
        response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, close=True)
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the error boundary: count it, log where, never the input
        error = type(exc).__name__
        bridge.metrics.internal_errors.inc()
        log.error("unexpected error while handling a request", extra={"error": error, "at": where(exc)})
        return _error(500, "internal_error", "the bridge failed unexpectedly; this is a bug", close=True)


def _guarded(request: web.Request) -> GuardedProtocol | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, GuardedProtocol) else None


def _error(
    status: int, error: str, detail: str, *, retry: bool = False, close: bool = False
) -> web.Response:
    headers = {hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)} if retry else None
    response = web.json_response({"error": error, "detail": detail}, status=status, headers=headers)
    if close:
        # Refused before (or without) reading the body: do not read what the client keeps sending.
        response.force_close()
    return response


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


class _QuietParserErrors(logging.Filter):
    """aiohttp logs a malformed request with the offending bytes (a signature, say): at ERROR, or at
    DEBUG when it is the connection's first request (TLS or garbage sent to a plain port).

    Count each instead, and say only its class name, at DEBUG, on our own logger.
    """

    def __init__(self, metrics: m.Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            self._metrics.http_refusals.labels(reason=m.BAD_REQUEST).inc()
            log.debug("malformed HTTP request refused", extra={"error": record.exc_info[0].__name__})
        return False  # nothing aiohttp's server says reaches a handler: its narration quotes requests too


@dataclass
class Listeners:
    """The public and admin listeners of one bridge, and how to close them inside a deadline."""

    guard: ConnectionGuard
    runners: tuple[web.AppRunner, web.AppRunner]
    servers: tuple[asyncio.Server, asyncio.Server]
    log_filter: logging.Filter
    server_log_level: int

    @property
    def ports(self) -> tuple[int, int]:
        public, admin = (server.sockets[0].getsockname()[1] for server in self.servers)
        return int(public), int(admin)

    async def close(self) -> None:
        """Stop listening, close every connection; handlers still running after the runners'
        shutdown timeout (`listen`'s `cleanup_timeout`) are cancelled."""
        for server in self.servers:
            server.close()
        self.guard.close_idle()
        for runner in self.runners:
            await runner.cleanup()
        server_log = logging.getLogger("aiohttp.server")
        server_log.removeFilter(self.log_filter)
        server_log.setLevel(self.server_log_level)


async def listen(bridge: Bridge, *, cleanup_timeout: float = 1.0) -> Listeners:
    """Open both listeners for `bridge` with the public port's limits in force."""
    settings = bridge.settings
    guard = ConnectionGuard(
        max_connections=settings.max_connections,
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        on_refusal=lambda reason: bridge.metrics.http_refusals.labels(reason=reason).inc(),
    )
    bridge.metrics.open_connections.set_function(lambda: float(guard.open_connections))
    log_filter = _QuietParserErrors(bridge.metrics)
    server_log = logging.getLogger("aiohttp.server")
    server_log_level = server_log.level
    server_log.addFilter(log_filter)
    server_log.setLevel(logging.DEBUG)  # so that every parser error reaches the filter to be counted
    public = web.AppRunner(
        create_app(bridge), handle_signals=False, access_log=None, shutdown_timeout=cleanup_timeout
    )
    admin = web.AppRunner(
        create_admin_app(bridge), handle_signals=False, access_log=None, shutdown_timeout=cleanup_timeout
    )
    loop = asyncio.get_running_loop()
    servers = []
    for runner, host, port, wrap in (
        (public, settings.host, settings.port, guard.wrap),
        (admin, settings.admin_host, settings.admin_port, lambda factory: factory),
    ):
        await runner.setup()
        assert runner.server is not None
        servers.append(await loop.create_server(wrap(runner.server), host, port, reuse_address=True, backlog=1024))
    return Listeners(guard, (public, admin), (servers[0], servers[1]), log_filter, server_log_level)


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
                listeners.guard.close_idle()
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
