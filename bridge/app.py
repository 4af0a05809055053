"""HTTP on aiohttp: the webhook handler, mountable in any aiohttp application, and `serve`'s two listeners.

The only module that imports aiohttp. One handler (`receive`) takes every delivery, whether
`serve` runs it or `setup_webhook` mounts it in a team's own aiohttp service; what stopped a
delivery becomes its answer in one place (`_answer_for`). It answers 201 only after the
pipeline returned a receipt, and a receipt exists only once Kafka acknowledged the record (or
an earlier attempt's record).

`serve` adds what an embedding application decides for itself: the connection limits of
`bridge.guard` around aiohttp's protocol, aiohttp's own limits (keep-alive, lingering, no
decompression), quiet parser errors, the admin port and the SIGTERM drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest

from bridge import metrics as m
from bridge.config import Settings
from bridge.core import Outcome
from bridge.errors import PublishFailed, VerificationFailed, where
from bridge.guard import RETRY_AFTER_SECONDS, ConnectionGuard, Linger, connection_of
from bridge.pipeline import Receipt
from bridge.process import (
    freeze_startup_objects,
    raise_open_file_limit,
    return_freed_memory_to_the_kernel,
    trim_memory_every,
)
from bridge.service import Bridge, running
from bridge.tracing import Span

log = logging.getLogger(__name__)

BRIDGE = web.AppKey("bridge", Bridge)

_TRIM_INTERVAL_SECONDS = 5.0
_JSON = "application/json"
# aiohttp names itself and Python's versions unless a Server header is set.
_SERVER = "scalekit-bridge"
_CREATED_HEADERS = {hdrs.CONTENT_TYPE: _JSON, hdrs.SERVER: _SERVER}
# Scalekit keeps the answer in its delivery log: a 201 says whether the event was published,
# dead-lettered (look in the dead-letter topic) or a redelivery of one already written.
_CREATED = {
    outcome: json.dumps({"received": True, "outcome": outcome}).encode()
    for outcome in (Outcome.PUBLISHED, Outcome.DEADLETTERED, Outcome.DUPLICATE)
}


# --- mounting -------------------------------------------------------------------------------


class Webhook:
    """One bridge's handlers: its delivery route and its probes and metrics, bound to that bridge.

    `setup_webhook` returns one per call, whose bridge runs while the application does; `serve` makes
    one around its bridge. Several in one application (one per Scalekit environment, each with its own
    path, secret, topics and producer) never see each other's deliveries or probes.
    """

    def __init__(self, path: str, bridge: Bridge | None = None) -> None:
        self.path = path
        self._bridge = bridge

    def bind(self, bridge: Bridge) -> None:
        """The bridge this webhook serves from now on (its application's cleanup context starts it)."""
        self._bridge = bridge

    @property
    def bridge(self) -> Bridge:
        if self._bridge is None:
            raise RuntimeError(f"the Scalekit webhook on {self.path} is not running: its application has not started")
        return self._bridge

    async def receive(self, request: web.Request) -> web.Response:
        """Deliver one webhook: 201 once Kafka has its record; every refusal as JSON (docs/how-it-works.md)."""
        return await _receive(request, self.bridge)

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the process can recover by itself; 503 with the reason when only a restart helps."""
        broken = self.bridge.lifecycle.broken
        if broken is not None:
            return web.json_response({"status": "broken", "reason": broken}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        bridge = self.bridge
        return web.json_response(_readiness(bridge), status=200 if bridge.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, or OpenMetrics (with the latency histograms' trace exemplars) when the scraper
        asks for it."""
        body, content_type = self.bridge.metrics.exposition(request.headers.get(hdrs.ACCEPT))
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


# The webhooks set up on an application, for the module-level probe handlers.
WEBHOOKS = web.AppKey("scalekit webhooks", list[Webhook])


def setup_webhook(app: web.Application, settings: Settings, *, metrics: m.Metrics | None = None) -> Webhook:
    """Take Scalekit deliveries into Kafka inside `app`, an aiohttp application of your own.

    Adds `POST settings.webhook_path` and a cleanup context that owns the Kafka producer: it
    starts connecting when `app` starts (deliveries and readiness answer 503 until Kafka answers),
    stops taking deliveries when `app` shuts down, and flushes the producer at cleanup. Returns the
    webhook, whose `healthz`, `readyz` and `metrics` are handlers for wherever your service exposes
    them, on any application. Call it once per Scalekit environment, each with its own path; a second
    call for a path already taken is refused. `metrics` defaults to a registry of the bridge's own; pass
    `Metrics(your_registry, process_metrics=False)` to share one (one bridge per registry).
    """
    path = settings.webhook_path
    taken = [webhook.path for webhook in app.get(WEBHOOKS, [])]
    if path in taken:
        raise ValueError(f"a Scalekit webhook is already set up on {path} in this application; give each "
                         "one its own BRIDGE_WEBHOOK_PATH")
    webhook = Webhook(path)
    if WEBHOOKS not in app:
        app[WEBHOOKS] = []
    app[WEBHOOKS].append(webhook)

    @contextlib.asynccontextmanager
    async def own(app: web.Application) -> AsyncIterator[None]:
        async with running(settings, metrics=metrics) as bridge:
            webhook.bind(bridge)
            yield

    async def stop_taking_deliveries(app: web.Application) -> None:
        bridge = webhook.bridge
        bridge.lifecycle.drain(bridge.settings.drain_seconds)

    app.cleanup_ctx.append(own)
    app.on_shutdown.append(stop_taking_deliveries)
    _add_route(app, path, webhook)
    return webhook


def _add_route(app: web.Application, path: str, webhook: Webhook) -> None:
    app.router.add_post(path, webhook.receive)
    app.router.add_route(hdrs.METH_ANY, path, _method_not_allowed)


# --- the webhook ---------------------------------------------------------------------------


class Refused(Exception):
    """A delivery refused on its request alone, before any pipeline work; its connection is closed."""

    def __init__(self, status: int, error: str, detail: str, *, retry: bool = False) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.retry = status, error, detail, retry


class PayloadTooLarge(Refused):
    """A body over the limit (413): counted as a delivery refused before verification."""


class BodyUnavailable(Refused):
    """The application around the handler consumed the body (500): its bug, counted as an internal error."""

    def __init__(self) -> None:
        super().__init__(500, "body_unavailable", "the request body was read before the webhook handler")


async def _receive(request: web.Request, bridge: Bridge) -> web.Response:
    started = time.perf_counter()
    tracing = bridge.tracing
    with tracing.delivery(request.method, bridge.settings.webhook_path, request.headers) as span:
        try:
            receipt = await _deliver(request, bridge)
            response = _created(receipt)
            span.ended(receipt.outcome, "deadlettered" if receipt.outcome == Outcome.DEADLETTERED else None)
        except Exception as exc:  # noqa: BLE001 - the error boundary; _answer_for knows every case
            response = _answer_for(exc, bridge, started, span)
        span.set("http.response.status_code", response.status)
        ids = tracing.current_ids()
    if not bridge.lifecycle.accepting:
        response.force_close()  # draining: no connection outlives its answer
    bridge.metrics.observe_request(response.status, time.perf_counter() - started, ids[0] if ids else None)
    return response


async def _deliver(request: web.Request, bridge: Bridge) -> Receipt:
    settings, lifecycle = bridge.settings, bridge.lifecycle
    if not lifecycle.accepting:
        raise Refused(503, "shutting_down", "this instance is draining; retry", retry=True)
    if lifecycle.inflight >= settings.max_inflight:
        raise Refused(503, m.OVERLOADED, f"over {settings.max_inflight} deliveries in flight; retry", retry=True)
    lifecycle.enter()
    try:
        if request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower() not in ("", "identity"):
            # Scalekit sends plain bodies; decompressing a stranger's bytes is how bombs go off.
            raise Refused(415, m.UNSUPPORTED_ENCODING, "request bodies must not be compressed")
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            raise _too_large(settings)
        body = await _body(request, settings)
        return await bridge.pipeline.handle(request.headers, body)
    finally:
        lifecycle.leave()


async def _body(request: web.Request, settings: Settings) -> bytes:
    """The whole body, at most `max_body_bytes`, within `body_timeout` unless it is already in."""
    if request.content.is_eof():  # the usual case: it came with the head
        body = request.content.read_nowait()
        if len(body) < request.content.total_bytes:
            body = await _read_before(request)
        if len(body) > settings.max_body_bytes:
            raise _too_large(settings)
        return body
    try:
        async with asyncio.timeout(settings.body_timeout):
            return await _read_up_to(request, settings)
    except TimeoutError:
        detail = f"the body did not arrive within {settings.body_timeout:g}s"
        raise Refused(408, m.BODY_TIMEOUT, detail) from None
    except ConnectionError:
        # aiohttp ends the body stream so when the client hangs up: nobody is left to answer.
        raise Refused(499, m.CLIENT_CLOSED, "the client closed the connection before its body was in") from None
    except HttpProcessingError:  # a chunk size that is not one, say: the client's framing, not our bug
        raise Refused(400, m.BAD_REQUEST, "the request body is not framed as HTTP/1.1 says") from None


async def _read_before(request: web.Request) -> bytes:
    """The body a middleware of the application read before the handler: aiohttp keeps what `read()`,
    `text()` and `json()` read; what was read from `request.content` directly is gone."""
    body = await request.read()
    if len(body) != request.content.total_bytes:
        log.error("the request body was read before the webhook handler and not kept; read it with "
                  "request.read() (aiohttp keeps it) in your middleware, or not at all")
        raise BodyUnavailable
    return body


async def _read_up_to(request: web.Request, settings: Settings) -> bytes:
    # The application's client_max_size is not ours to rely on inside another service: count here.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > settings.max_body_bytes:
            raise _too_large(settings)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(413, "payload_too_large", f"bodies over {settings.max_body_bytes} bytes are refused")


def _created(receipt: Receipt) -> web.Response:
    return web.Response(status=201, body=_CREATED[receipt.outcome], headers=_CREATED_HEADERS)


def _answer_for(exc: Exception, bridge: Bridge, started: float, span: Span) -> web.Response:
    """The one place where what stopped a delivery becomes its answer (and its server span's outcome,
    a fixed word, never the request's text)."""
    if isinstance(exc, VerificationFailed):
        span.ended(Outcome.REJECTED, exc.code)
        return _error_response(401, exc.code, exc.detail)
    if isinstance(exc, PublishFailed):
        span.ended(Outcome.FAILED, "kafka_unavailable")
        return _error_response(503, "kafka_unavailable", exc.reason, retry=True)
    if isinstance(exc, Refused):
        if isinstance(exc, PayloadTooLarge):
            bridge.pipeline.refuse_oversized(started)
            span.ended(Outcome.TOO_LARGE, exc.error)
        else:
            span.ended(Outcome.REJECTED, exc.error)
            if exc.error in m.HTTP_REFUSALS:
                bridge.metrics.http_refusals.labels(reason=exc.error).inc()
            elif isinstance(exc, BodyUnavailable):
                bridge.metrics.internal_errors.inc()
        # Refused before (or while) reading the body: do not read what the client keeps sending.
        return _error_response(exc.status, exc.error, exc.detail, retry=exc.retry, close=True)
    span.ended(Outcome.FAILED, "internal_error")
    return _internal_error(exc, bridge)


def _internal_error(exc: Exception, bridge: Bridge) -> web.Response:
    """A bug, on any route: counted, logged by class and code line (never its message), answered 500."""
    bridge.metrics.internal_errors.inc()
    log.error("unexpected error while handling a request", extra={"error": type(exc).__name__, "at": where(exc)})
    return _error_response(500, "internal_error", "the bridge failed unexpectedly; this is a bug", close=True)


def _error_response(status: int, error: str, detail: str, *, retry: bool = False, close: bool = False) -> web.Response:
    """An error answer: `{"error": <fixed code>, "detail": <a sentence>}`."""
    headers = {hdrs.CONTENT_TYPE: _JSON, hdrs.SERVER: _SERVER}
    if retry:
        headers[hdrs.RETRY_AFTER] = str(RETRY_AFTER_SECONDS)
    body = json.dumps({"error": error, "detail": detail}).encode()
    response = web.Response(status=status, body=body, headers=headers)
    if close:
        response.force_close()
    return response


# --- probes and metrics for an application's webhooks, wherever it mounts them -----------------------


def _readiness(bridge: Bridge) -> dict[str, bool | str | list[str]]:
    body: dict[str, bool | str | list[str]] = {
        "ready": bridge.ready,
        "kafka": "reachable" if bridge.publisher.ready else "unreachable",
        "accepting": bridge.lifecycle.accepting,
        # SIGTERM began a drain: not ready for that reason alone, and it will not come back.
        "draining": bridge.lifecycle.deadline is not None,
    }
    if bridge.publisher.missing_topics:
        body["missing_topics"] = sorted(bridge.publisher.missing_topics)
    if bridge.receipts is not None:
        # One record per event: a replica takes deliveries once it knows what the release wrote in the window.
        body["receipts"] = "read" if bridge.receipts.ready else "reading"
    return body


def _mounted(request: web.Request) -> list[Webhook]:
    """The webhooks set up on the request's application or the ones it is mounted in."""
    return request.config_dict.get(WEBHOOKS, [])


def _not_one(found: list[Webhook], handler: str) -> web.Response:
    if not found:
        detail = ("no Scalekit webhook is set up on this application or the ones it is mounted in; mount the "
                  f"{handler} handler of the webhook setup_webhook returned")
    else:
        detail = f"several Scalekit webhooks are set up here; mount each one's own {handler} handler"
    log.error("a webhook probe has no one webhook to answer for", extra={"handler": handler, "webhooks": len(found)})
    return _error_response(500, "no_single_webhook", detail)


async def healthz(request: web.Request) -> web.Response:
    """The webhook's `healthz` (see `Webhook`); with several webhooks, 503 while any one is broken."""
    found = _mounted(request)
    if len(found) == 1:
        return await found[0].healthz(request)
    if not found:
        return _not_one(found, "healthz")
    broken = {webhook.path: webhook.bridge.lifecycle.broken for webhook in found if webhook.bridge.lifecycle.broken}
    if broken:
        return web.json_response({"status": "broken", "reasons": broken}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The webhook's `readyz` (see `Webhook`); with several webhooks, 200 only while every one is ready."""
    found = _mounted(request)
    if len(found) == 1:
        return await found[0].readyz(request)
    if not found:
        return _not_one(found, "readyz")
    webhooks = {webhook.path: _readiness(webhook.bridge) for webhook in found}
    ready = all(webhook.bridge.ready for webhook in found)
    return web.json_response({"ready": ready, "webhooks": webhooks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """The webhook's `metrics` (see `Webhook`); with several webhooks, mount each one's own."""
    found = _mounted(request)
    if len(found) == 1:
        return await found[0].metrics(request)
    return _not_one(found, "metrics")


# --- serve's listeners ------------------------------------------------------------------------


def create_public_app(bridge: Bridge) -> web.Application:
    """The public listener's application: the webhook route, `GET /` for load balancers' health checks,
    and our JSON answer for everything else, aiohttp's own 404s (`OPTIONS *`) and any bug included."""
    app = web.Application(middlewares=[_every_request])
    app[BRIDGE] = bridge
    path = bridge.settings.webhook_path
    _add_route(app, path, Webhook(path, bridge))
    if path != "/":
        app.router.add_get("/", _serving)
    return app


def create_admin_app(bridge: Bridge) -> web.Application:
    """The admin listener: probes and metrics, kept off the public port."""
    app = web.Application()
    webhook = Webhook(bridge.settings.webhook_path, bridge)
    app.router.add_get("/healthz", webhook.healthz)
    app.router.add_get("/readyz", webhook.readyz)
    app.router.add_get("/metrics", webhook.metrics)
    return app


async def _method_not_allowed(request: web.Request) -> web.Response:
    response = _error_response(405, "method_not_allowed", "Method Not Allowed", close=True)
    response.headers[hdrs.ALLOW] = hdrs.METH_POST
    return response


async def _serving(request: web.Request) -> web.Response:
    """200 for a cloud load balancer that health-checks `GET /` on the serving port (GKE Ingress, Azure
    Application Gateway): the process serves HTTP. As cheap as a 404, a constant answer; whether the
    pod takes deliveries is Kubernetes' readiness (`/readyz` on the admin port), which removes it from
    the endpoints the load balancer sends to."""
    return web.Response(body=b'{"status":"serving"}', headers=_CREATED_HEADERS)


@web.middleware
async def _every_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around every request of the public port, whichever route (or none) answers it: the guard hears
    when its body is in, and what is not an answer of ours becomes one (JSON, the connection closed)."""
    connection = connection_of(request.transport)
    if connection is not None:
        request.content.on_eof(connection.hold)
    try:
        return await handler(request)
    except web.HTTPException as exc:  # aiohttp's router: no such path, or `OPTIONS *`
        if exc.status < 400:
            raise
        error = exc.reason.lower().replace(" ", "_")
        response = _error_response(exc.status, error, exc.reason, close=True)
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
    except Exception as exc:  # noqa: BLE001 - the public port's error boundary for every route but the webhook
        return _internal_error(exc, request.app[BRIDGE])


class _Answered(AbstractAccessLogger):
    """aiohttp's end-of-response hook (its access log), called once every response is written, whoever
    wrote it: tells the guard the request is answered and how much of what followed its head was body."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        connection = connection_of(request.transport)
        if connection is None or not response.keep_alive:
            return  # the connection closes after this answer: there is no next request
        if not request.body_exists:
            connection.answered(0)
        elif "chunked" in request.headers.get(hdrs.TRANSFER_ENCODING, "").lower():
            connection.answered(None)
        else:
            connection.answered(request.content_length or 0)


class _ServerLog(logging.Logger):
    """aiohttp's server logs a malformed request with the offending bytes (a signature, say), and its
    other narration quotes requests too. Given as the server's logger, it says none of it: a parser
    error is counted (on the public port) and named by class, at DEBUG, on our own logger; any other
    exception aiohttp caught is a bug of ours, counted and logged at ERROR with its class and place."""

    def __init__(self, metrics: m.Metrics, *, public: bool) -> None:
        super().__init__("bridge.app.server", logging.DEBUG)
        self._refusals = metrics.http_refusals.labels(reason=m.BAD_REQUEST) if public else None
        self._internal_errors = metrics.internal_errors

    def handle(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return
        if isinstance(error, HttpProcessingError):
            if self._refusals is not None:
                self._refusals.inc()
            log.debug("malformed HTTP request refused", extra={"error": type(error).__name__})
        elif isinstance(error, ConnectionError):
            log.debug("the client closed the connection", extra={"error": type(error).__name__})
        else:
            self._internal_errors.inc()
            log.error("unexpected error in the HTTP server", extra={"error": type(error).__name__, "at": where(error)})


def _public_limits(settings: Settings, bridge: Bridge) -> dict[str, Any]:
    """aiohttp's own settings for the public port (its RequestHandler's arguments)."""
    return {
        "keepalive_timeout": settings.keepalive_timeout,
        # Bodies are refused, never decompressed, when they come compressed (415).
        "auto_decompress": False,
        # aiohttp's own lingering reads a refused body through its parser; the guard's lingering close
        # throws the bytes away unparsed, within its own bounds, once aiohttp closes.
        "lingering_time": 0,
        "max_headers": 64,
        "logger": _ServerLog(bridge.metrics, public=True),
        # Not a log: the guard's end-of-response hook (aiohttp calls it only with a logger given).
        "access_log_class": _Answered,
        "access_log": log,
    }


@dataclass
class Listeners:
    """The public and admin listeners of one bridge, and how to close them inside a deadline."""

    guard: ConnectionGuard
    runners: tuple[web.AppRunner, web.AppRunner]
    servers: tuple[asyncio.Server, asyncio.Server]

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
        self.guard.abort_lingering()  # the drain is over: closing connections get no more time


async def listen(bridge: Bridge, *, cleanup_timeout: float = 1.0) -> Listeners:
    """Open both listeners for `bridge` with the public port's limits in force."""
    settings = bridge.settings
    metrics = bridge.metrics
    guard = ConnectionGuard(
        max_connections=settings.max_connections,
        header_timeout=settings.header_timeout,
        on_refusal=lambda reason: metrics.http_refusals.labels(reason=reason).inc(),
        linger=Linger(settings.linger_timeout, settings.linger_bytes, settings.max_lingering),
        on_close=lambda how: metrics.closed_connections.labels(how=how).inc(),
    )
    metrics.open_connections.set_function(lambda: float(guard.open_connections))
    metrics.lingering_connections.set_function(lambda: float(guard.lingering_connections))
    public = web.AppRunner(
        create_public_app(bridge), shutdown_timeout=cleanup_timeout, **_public_limits(settings, bridge)
    )
    admin = web.AppRunner(
        create_admin_app(bridge),
        access_log=None,
        shutdown_timeout=cleanup_timeout,
        logger=_ServerLog(bridge.metrics, public=False),
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
    return Listeners(guard, (public, admin), (servers[0], servers[1]))


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
