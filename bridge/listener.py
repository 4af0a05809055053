"""The public port: a small HTTP/1.1 server for Scalekit's one POST, with what a stranger can cost us bounded.

httptools (llhttp, the parser Node.js runs on the internet) does the parsing; this module does
the rest, per connection, with no framework under it: it caps open connections, gives a new or
reused connection `header_timeout` to deliver a whole request head of at most `MAX_HEADER_BYTES`,
refuses what it will not take before reading the body (wrong path or method, a compressed or
oversized body, a draining or saturated instance), gives the body `body_timeout`, closes
keep-alive connections idle for `keepalive_timeout`, and answers pipelined requests in order.
A complete request goes to the `deliver` coroutine (the pipeline's `handle`); the errors it
raises become answers in one place, `answer_for`.

Why not the web framework: it was most of the bridge's per-request CPU. With a handler that does
nothing, under the same open-loop load (1,000 requests/s on our 2-core machine), aiohttp's web
server spent about 0.27 ms of CPU per request, its low-level server 0.20 ms, a protocol like this
one 0.08 ms. The admin port, which no stranger reaches and which is not on the hot path, stays on
aiohttp (`bridge.app`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from bridge import metrics as m
from bridge.core import Outcome
from bridge.errors import PublishFailed, VerificationFailed, where

if TYPE_CHECKING:
    from prometheus_client import Histogram

log = logging.getLogger(__name__)

# Scalekit's own second retry comes 5 s after the first; asking for the same keeps us honest.
RETRY_AFTER_SECONDS = 5
# Scalekit's request heads are well under 1 KiB; 16 KiB is generous for proxies' additions.
MAX_HEADER_BYTES = 16 * 1024
# Each header line costs its name, value, ": " and CRLF; the request line its method and version too.
_LINE_OVERHEAD = 4
_REQUEST_LINE_OVERHEAD = 16


class Delivered(Protocol):
    """What the pipeline returns for a delivery: here only how it ended matters."""

    @property
    def outcome(self) -> Outcome: ...


class Deliveries(Protocol):
    """Where complete requests go: the pipeline."""

    def handle(self, headers: Mapping[str, str], body: bytes) -> Awaitable[Delivered]:
        """Deliver one webhook; raises VerificationFailed (401) or PublishFailed (503)."""

    def refuse_oversized(self, started: float) -> object:
        """Account for a body refused before verification (413)."""


class Admission(Protocol):
    """What the listener asks of the process before taking a delivery, and tells it after."""

    @property
    def accepting(self) -> bool: ...
    @property
    def inflight(self) -> int: ...
    def enter(self) -> None: ...
    def leave(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """What the public port takes, from the bridge's settings."""

    path: str
    max_body_bytes: int
    max_connections: int
    max_inflight: int
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float


@dataclass(frozen=True)
class Answer:
    """One response: a status and a JSON body, and whether the connection ends with it."""

    status: int
    payload: bytes
    close: bool = False
    retry: bool = False
    allow: str | None = None


def refusal(
    status: int, error: str, detail: str, *, close: bool = False, retry: bool = False, allow: str | None = None
) -> Answer:
    """An error answer: `{"error": <fixed code>, "detail": <a sentence>}`."""
    payload = json.dumps({"error": error, "detail": detail}).encode()
    return Answer(status, payload, close=close, retry=retry, allow=allow)


# A 201 says how the delivery ended; Scalekit keeps it in its delivery log, so an operator reading
# there knows whether to look in the dead-letter topic.
_CREATED = {
    outcome: Answer(201, json.dumps({"received": True, "outcome": outcome}).encode())
    for outcome in (Outcome.PUBLISHED, Outcome.DEADLETTERED, Outcome.DUPLICATE)
}

_TOO_MANY = refusal(503, m.CONNECTION_LIMIT, "connection limit reached", close=True, retry=True)
_HEAD_TOO_SLOW = refusal(408, m.HEADER_TIMEOUT, "the request head came too slowly", close=True)
_HEAD_TOO_LARGE = refusal(431, m.HEADER_TOO_LARGE, "the request head is too big", close=True)
_MALFORMED = refusal(400, m.BAD_REQUEST, "malformed HTTP request", close=True)
_NOT_FOUND = refusal(404, "not_found", "Not Found", close=True)
_SHUTTING_DOWN = refusal(503, "shutting_down", "this instance is draining; retry", close=True, retry=True)
_COMPRESSED = refusal(415, m.UNSUPPORTED_ENCODING, "request bodies must not be compressed", close=True)
_INTERNAL = refusal(500, "internal_error", "the bridge failed unexpectedly; this is a bug", close=True)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def answer_for(exc: Exception) -> Answer:
    """The one place where the pipeline's errors become HTTP answers (refusals before it are decided above)."""
    if isinstance(exc, VerificationFailed):
        return refusal(401, exc.code, exc.detail)
    if isinstance(exc, PublishFailed):
        return refusal(503, "kafka_unavailable", exc.reason, retry=True)
    return _INTERNAL


class _Clock:
    """The Date header, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._header


class PublicListener:
    """Owns every open connection of the public port, the limits on them and the way to the pipeline."""

    def __init__(self, limits: Limits, deliveries: Deliveries, admission: Admission, metrics: m.Metrics) -> None:
        self.limits = limits
        self._deliveries = deliveries
        self.admission = admission
        self._metrics = metrics
        self._open: set[_Connection] = set()
        self._clock = _Clock()
        # Label lookups resolved once, not per request.
        self._durations: dict[int, Histogram] = {}
        self._refusals = {reason: metrics.http_refusals.labels(reason=reason) for reason in m.HTTP_REFUSALS}

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def protocol(self) -> asyncio.Protocol:
        """A protocol factory for `loop.create_server`."""
        return _Connection(self)

    def close_idle(self) -> None:
        """For shutdown: close every connection not in a request (the others close after their answer)."""
        for connection in list(self._open):
            if not connection.in_request:
                connection.close()

    async def close_all(self, timeout: float) -> None:
        """Close every connection; answers still being worked on after `timeout` seconds are given up."""
        for connection in list(self._open):
            connection.close()
        workers = [c.worker for c in list(self._open) if c.worker is not None]
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=timeout)
            for worker in pending:
                worker.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- for the connections ---------------------------------------------------------------

    def admit(self, connection: _Connection) -> bool:
        if len(self._open) >= self.limits.max_connections:
            self.refused(m.CONNECTION_LIMIT)
            return False
        self._open.add(connection)
        return True

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)

    def refused(self, reason: str) -> None:
        self._refusals[reason].inc()

    def observe(self, status: int, seconds: float) -> None:
        histogram = self._durations.get(status)
        if histogram is None:
            histogram = self._durations[status] = self._metrics.request_duration.labels(status=str(status))
        histogram.observe(seconds)

    def oversized(self, started: float) -> Answer:
        self._deliveries.refuse_oversized(started)
        detail = f"bodies over {self.limits.max_body_bytes} bytes are refused"
        return refusal(413, "payload_too_large", detail, close=True)

    async def answer(self, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            receipt = await self._deliveries.handle(headers, body)
            return _CREATED[receipt.outcome]
        except (VerificationFailed, PublishFailed) as exc:
            return answer_for(exc)
        except Exception as exc:  # noqa: BLE001 - the error boundary: count it, log where, never the input
            self._metrics.internal_errors.inc()
            log.error(
                "unexpected error while handling a request", extra={"error": type(exc).__name__, "at": where(exc)}
            )
            return _INTERNAL

    def head(self, answer: Answer, keep_alive: bool) -> bytes:
        """The response head for `answer`, closing the connection unless `keep_alive`."""
        phrase = HTTPStatus(answer.status).phrase
        lines = [
            f"HTTP/1.1 {answer.status} {phrase}\r\n".encode(),
            b"Content-Type: application/json\r\n",
            b"Content-Length: %d\r\n" % len(answer.payload),
            self._clock.date(),
        ]
        if answer.retry:
            lines.append(b"Retry-After: %d\r\n" % RETRY_AFTER_SECONDS)
        if answer.allow is not None:
            lines.append(f"Allow: {answer.allow}\r\n".encode())
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class _Phase(enum.Enum):
    WAITING = "waiting for the first request head"
    HEAD = "reading a request head"
    BODY = "reading a request body"
    IDLE = "idle between requests"


@dataclass
class _Request:
    """A complete request to answer, in its turn."""

    headers: dict[str, str]
    body: bytes
    started: float
    keep_alive: bool
    tracked: bool
    webhook: bool
    answer: Answer | None = None  # decided without the pipeline (a refusal)


class _Connection(asyncio.Protocol):
    """One client connection: parse, bound, queue, answer in order."""

    def __init__(self, listener: PublicListener) -> None:
        self._listener = listener
        self._limits = listener.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._phase = _Phase.WAITING
        self._queue: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self._done = False  # a closing answer is queued, or the socket is gone: parse nothing more
        self._writing_paused = False
        # The request being parsed.
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._started = 0.0
        self._tracked = False
        self._webhook = False

    @property
    def in_request(self) -> bool:
        """Taken in and not yet answered (its head is complete, or an answer is being worked on)."""
        return self.worker is not None or self._phase is _Phase.BODY

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # a stream transport (asyncio's or uvloop's)
        if not self._listener.admit(self):
            self._done = True
            self._write(_TOO_MANY, keep_alive=False)
            return
        self._arm(self._limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._done = True  # no upgrades here: answer what came before, then close
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                raise
        except httptools.HttpParserError as exc:
            self._malformed(exc)

    def eof_received(self) -> bool | None:
        # Half-closed by the client: answer what is queued, then close (the transport closes on return False
        # only when nothing is being worked on).
        self._done = True
        return self.worker is not None

    def pause_writing(self) -> None:
        # The client is not reading its answers: read nothing more from it until it does, so what
        # we hold for it stays within the transport's high-water mark.
        self._writing_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.worker is None:
            self._resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._phase is _Phase.BODY and self._tracked:
            self._tracked = False
            self._listener.admission.leave()
        self._listener.forget(self)
        self._transport = None

    def close(self) -> None:
        self._done = True
        if self._transport is not None:
            self._transport.close()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._phase is _Phase.IDLE and self.worker is None:
            self._arm(self._limits.header_timeout)
        self._phase = _Phase.HEAD
        self._url = b""
        self._headers = {}
        self._head_bytes = _REQUEST_LINE_OVERHEAD
        self._body = []
        self._body_bytes = 0
        self._tracked = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + _LINE_OVERHEAD)
        # The first of repeated headers counts, as in every framework's `get`.
        self._headers.setdefault(name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        self._phase = _Phase.BODY
        self._started = time.perf_counter()
        if self.worker is None:
            self._arm(self._limits.body_timeout)
        refused = self._refuse_early()
        if refused is not None:
            self._finish(refused)
            raise _Stop
        if self._headers.get("expect", "").lower() == "100-continue" and self.worker is None:
            self._send(_CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        self._body_bytes += len(chunk)
        if self._body_bytes > self._limits.max_body_bytes:
            self._finish(self._listener.oversized(self._started))
            raise _Stop
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        self._phase = _Phase.IDLE
        if self.worker is None:
            self._disarm()
        request = self._request(b"".join(self._body))
        self._body = []
        self._queue.append(request)
        self._start_worker()

    # --- deciding ---------------------------------------------------------------------------

    def _refuse_early(self) -> Answer | None:
        """What is refused on the head alone, before a byte of body is read."""
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        self._webhook = path == self._limits.path
        if not self._webhook:
            return _NOT_FOUND
        if self._parser.get_method() != b"POST":
            return refusal(405, "method_not_allowed", "Method Not Allowed", close=True, allow="POST")
        admission = self._listener.admission
        if not admission.accepting:
            return _SHUTTING_DOWN
        if admission.inflight >= self._limits.max_inflight:
            self._listener.refused(m.OVERLOADED)
            detail = f"over {self._limits.max_inflight} deliveries in flight; retry"
            return refusal(503, m.OVERLOADED, detail, close=True, retry=True)
        admission.enter()
        self._tracked = True
        if self._headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            # Scalekit sends plain bodies; decompressing a stranger's bytes is how bombs go off.
            self._listener.refused(m.UNSUPPORTED_ENCODING)
            return _COMPRESSED
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body_bytes:
            return self._listener.oversized(self._started)
        return None

    def _request(self, body: bytes, answer: Answer | None = None) -> _Request:
        keep_alive = self._parser.should_keep_alive() if answer is None else False
        return _Request(self._headers, body, self._started, keep_alive, self._tracked, self._webhook, answer)

    def _finish(self, answer: Answer) -> None:
        """Queue a refusal for the request being parsed; nothing after it is read."""
        self._done = True
        self._phase = _Phase.IDLE
        self._disarm()
        self._queue.append(self._request(b"", answer))
        self._start_worker()

    def _malformed(self, exc: Exception) -> None:
        self._listener.refused(m.BAD_REQUEST)
        log.debug("malformed HTTP request refused", extra={"error": type(exc).__name__})
        self._finish(_MALFORMED)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES:
            self._listener.refused(m.HEADER_TOO_LARGE)
            self._finish(_HEAD_TOO_LARGE)
            raise _Stop

    # --- answering, in order ------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self.worker is not None:
            # A pipelining client: it waits for its answers before we read more of what it sends.
            if self._transport is not None:
                self._transport.pause_reading()
            return
        request = self._queue[0]
        if request.answer is not None and len(self._queue) == 1:
            self._queue.popleft()
            self._respond(request, request.answer)  # nothing to wait for: answer now
            return
        self._disarm()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._queue:
                request = self._queue.popleft()
                answer = request.answer
                if answer is None:
                    answer = await self._listener.answer(request.headers, request.body)
                if not self._respond(request, answer):
                    return
        finally:
            self.worker = None
        self._resume()

    def _respond(self, request: _Request, answer: Answer) -> bool:
        """Write the answer; False when the connection ends with it."""
        listener = self._listener
        if request.tracked:
            listener.admission.leave()
        # A half-closed client, or a refusal that ended parsing, ends the connection with the last queued answer.
        last = self._done and not self._queue
        keep_alive = request.keep_alive and not answer.close and not last and listener.admission.accepting
        if request.webhook:
            listener.observe(answer.status, time.perf_counter() - request.started)
        self._write(answer, keep_alive=keep_alive)
        return keep_alive

    def _resume(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if not self._writing_paused:
            self._transport.resume_reading()
        if self._phase is _Phase.HEAD:
            self._arm(self._limits.header_timeout)
        elif self._phase is _Phase.BODY:
            self._arm(self._limits.body_timeout)
        elif self._limits.keepalive_timeout > 0:
            self._arm(self._limits.keepalive_timeout)

    def _write(self, answer: Answer, *, keep_alive: bool) -> None:
        self._send(self._listener.head(answer, keep_alive) + answer.payload)
        if not keep_alive:
            self.close()

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # --- timers ---------------------------------------------------------------------------
    # One deadline per connection, moved by assignment: a request re-arms it three times, and a
    # timer handle per move (scheduled and cancelled) would cost more than the rest of the bookkeeping.

    def _arm(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + seconds
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._check)

    def _disarm(self) -> None:
        self._deadline = None  # the handle stays; when it fires it finds nothing due

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        if asyncio.get_running_loop().time() < self._deadline:
            self._timer = asyncio.get_running_loop().call_at(self._deadline, self._check)
            return
        self._deadline = None
        self._expire()

    def _expire(self) -> None:
        if self.worker is not None or self._done:
            return
        if self._phase is _Phase.IDLE:
            self.close()  # an idle keep-alive connection: nothing to say
        elif self._phase is _Phase.BODY:
            self._listener.refused(m.BODY_TIMEOUT)
            detail = f"the body did not arrive within {self._limits.body_timeout:g}s"
            self._finish(refusal(408, m.BODY_TIMEOUT, detail, close=True))
        else:
            self._listener.refused(m.HEADER_TIMEOUT)
            self._finish(_HEAD_TOO_SLOW)


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing a request that is already answered."""
