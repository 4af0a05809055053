"""Connection-level limits for the public port: what a client costs us before it is a request.

An asyncio protocol wrapper around the HTTP server's own protocol (it knows no
HTTP framework): it caps open connections, gives a new or reused connection
`header_timeout` to deliver a whole request head of at most `MAX_HEADER_BYTES`,
and closes keep-alive connections idle for `keepalive_timeout`. What happens
inside a request (body deadline, in-flight cap) is the app's business; the app
tells the guard when a request starts and ends.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Callable

# Scalekit's own second retry comes 5 s after the first; asking for the same keeps us honest.
RETRY_AFTER_SECONDS = 5
# Scalekit's request heads are well under 1 KiB; 16 KiB is generous for proxies' additions.
MAX_HEADER_BYTES = 16 * 1024
_HEAD_END = b"\r\n\r\n"



def _canned(status: str, error: str, detail: str, *extra: str) -> bytes:
    """A whole HTTP response, written straight to the socket: no parser, no handler involved."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close", *extra,
            f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# Refusal reasons: a closed set, used as the metric label and as the answer's "error".
CONNECTION_LIMIT = "connection_limit"
HEADER_TIMEOUT = "header_timeout"
HEADER_TOO_LARGE = "header_too_large"

_TOO_MANY = _canned("503 Service Unavailable", CONNECTION_LIMIT, "connection limit reached",
                    f"Retry-After: {RETRY_AFTER_SECONDS}")
_HEADER_TIMEOUT = _canned("408 Request Timeout", HEADER_TIMEOUT, "the request head came too slowly")
_HEADER_TOO_LARGE = _canned("431 Request Header Fields Too Large", HEADER_TOO_LARGE, "the request head is too big")


class _State(enum.Enum):
    WAITING = "waiting for a request head"
    HEAD = "reading a request head"
    REQUEST = "in a request"
    IDLE = "idle between requests"


class ConnectionGuard:
    """Owns every open connection of one listener and the limits on them."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
        on_refusal: Callable[[str], None],
    ) -> None:
        self._max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.refused = on_refusal
        self._open: set[GuardedProtocol] = set()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that guards what `factory` makes."""
        return lambda: GuardedProtocol(self, factory)

    def close_idle(self) -> None:
        """For shutdown: close every connection not in a request (the app closes the others after their answer)."""
        for connection in list(self._open):
            if connection.state is not _State.REQUEST:
                connection.close()

    def admit(self, connection: GuardedProtocol) -> bool:
        """Count a new connection in; False (and counted as refused) when the cap is reached."""
        if len(self._open) >= self._max_connections:
            self.refused(CONNECTION_LIMIT)
            return False
        self._open.add(connection)
        return True

    def forget(self, connection: GuardedProtocol) -> None:
        self._open.discard(connection)


class GuardedProtocol(asyncio.Protocol):
    """Forwards everything to the wrapped protocol, and enforces the guard's limits."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.state = _State.WAITING
        self._head_bytes = 0
        self._tail = b""

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._guard.admit(self):
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)
        self._arm(self._guard.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return  # refused at the door; the socket is closing
        if self.state is _State.IDLE or self.state is _State.WAITING:
            if self.state is _State.IDLE:
                self._arm(self._guard.header_timeout)
            self.state = _State.HEAD
            self._head_bytes, self._tail = 0, b""
        if self.state is _State.HEAD and not self._count_head(data):
            self._refuse(_HEADER_TOO_LARGE, HEADER_TOO_LARGE)
            return
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard.forget(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None

    # --- told by the app ----------------------------------------------------------------

    def request_started(self) -> None:
        self.state = _State.REQUEST
        self._disarm()

    def request_finished(self) -> None:
        """The app has its answer; it is written after this, so only a timer may close the socket."""
        self.state = _State.IDLE
        if self._guard.keepalive_timeout > 0:
            self._arm(self._guard.keepalive_timeout)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # --- internals ----------------------------------------------------------------------

    def _count_head(self, data: bytes) -> bool:
        """Count request-head bytes up to the blank line; False once over the limit."""
        window = self._tail + data
        end = window.find(_HEAD_END)
        if end >= 0:
            self._head_bytes += end - len(self._tail)
            self.state = _State.REQUEST  # the head is complete; the app takes over
            return self._head_bytes <= MAX_HEADER_BYTES
        self._head_bytes += len(data)
        self._tail = window[-3:]
        return self._head_bytes <= MAX_HEADER_BYTES

    def _arm(self, seconds: float) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.state is _State.IDLE:
            self.close()  # an idle keep-alive connection: nothing to say
        elif self.state in (_State.WAITING, _State.HEAD):
            self._refuse(_HEADER_TIMEOUT, HEADER_TIMEOUT)

    def _refuse(self, answer: bytes, reason: str) -> None:
        self._guard.refused(reason)
        self._disarm()
        if self._transport is not None:
            self._transport.write(answer)
            self._transport.close()
        # The wrapped protocol must not parse what follows.
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(None)
