"""What a client costs the public port before aiohttp has a request to answer, and when its socket is read.

aiohttp's server parses and answers; it has settings for line and field sizes, idle keep-alive and
lingering, but none for how many connections are open, how long a request head may take, or how
big a whole head may be. This module adds those at the asyncio level, around aiohttp's protocol,
and knows no HTTP beyond counting head bytes up to the blank line:

- a connection over `max_connections` gets a fixed 503 and is closed, before aiohttp sees it;
- a new connection, or one reused after an answer, has `header_timeout` to send a whole request
  head of at most `MAX_HEADER_BYTES` (else a fixed 408 or 431, and closed);
- the socket is read only while aiohttp wants to read it, the client reads its answers, and no
  request whose body is in is still being answered: a client that pipelines or stops reading is not
  read from until it has its answers, so what it makes us hold stays one request.

- every answer after which the connection closes (the three below, and aiohttp's, such as a 413) is
  followed by a bounded lingering close: the write side is shut after the answer, what the client still
  sends is read and thrown away for at most `Linger.seconds` and `Linger.max_bytes`, and the socket is
  closed at the client's own end of stream (graceful) or when a bound is reached (reset). Closing with
  unread bytes instead makes the kernel reset the connection, and the client never reads its answer.
  At most `Linger.max_at_once` connections linger, apart from the connection cap.

The three fixed answers are the only bytes this module writes; everything else aiohttp frames.
A connection is in a request from the end of its head until the app says it is answered
(`connection_of(request.transport).answered(...)`, from the server's end-of-response hook, whatever
route or aiohttp itself answered); the app also says when a request's body is in (`hold`). The bytes
that came after the head and are not the body are the next request's head, and count against it.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from bridge import metrics as m

# Scalekit's own second retry comes 5 s after the first; asking for the same keeps us honest.
RETRY_AFTER_SECONDS = 5
# Scalekit's request heads are well under 1 KiB; 16 KiB is generous for proxies' additions.
MAX_HEADER_BYTES = 16 * 1024
_HEAD_END = b"\r\n\r\n"


def _fixed_answer(status: HTTPStatus, error: str, detail: str, *extra: str) -> bytes:
    """A whole response for a connection aiohttp never gets: the same bytes every time."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = [f"HTTP/1.1 {status.value} {status.phrase}", "Content-Type: application/json", "Connection: close",
            *extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_TOO_MANY = _fixed_answer(HTTPStatus.SERVICE_UNAVAILABLE, m.CONNECTION_LIMIT, "connection limit reached",
                          f"Retry-After: {RETRY_AFTER_SECONDS}")
_HEAD_TOO_SLOW = _fixed_answer(HTTPStatus.REQUEST_TIMEOUT, m.HEADER_TIMEOUT, "the request head came too slowly")
_HEAD_TOO_LARGE = _fixed_answer(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, m.HEADER_TOO_LARGE,
                                "the request head is too big")


@dataclass(frozen=True)
class Linger:
    """The bounds of a lingering close (see the module's docstring); `seconds=0` closes at once."""

    seconds: float = 2.0
    max_bytes: int = 2 * 1024 * 1024
    max_at_once: int = 512


# How a lingering close ended, the `how` label of the closed-connections metric.
GRACEFUL = "graceful"
RESET = "reset"


class _State(enum.Enum):
    WAITING = "waiting for a request head"
    HEAD = "reading a request head"
    REQUEST = "in a request"
    IDLE = "idle between requests"


# Why the socket is not being read (any one is enough).
_BY_SERVER = 1  # aiohttp's own flow control (its queue or a body buffer is full)
_HELD = 2  # a request's body is in and the request is not answered yet
_NOT_READING_ANSWERS = 4  # the socket's send buffer is full: the client does not read


class ConnectionGuard:
    """Owns every open connection of one listener and the limits on them."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout: float,
        on_refusal: Callable[[str], None],
        linger: Linger | None = None,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self._max_connections = max_connections
        self.header_timeout = header_timeout
        self.refused = on_refusal
        self.linger = linger if linger is not None else Linger()
        self.closed = on_close if on_close is not None else (lambda how: None)
        self._open: set[Connection] = set()
        self._lingering: set[Connection] = set()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def lingering_connections(self) -> int:
        return len(self._lingering)

    def may_linger(self, connection: Connection) -> bool:
        """Count a connection in among the lingering ones; False when lingering is off or at its cap."""
        if self.linger.seconds <= 0 or len(self._lingering) >= self.linger.max_at_once:
            return False
        self._lingering.add(connection)
        return True

    def stop_lingering(self, connection: Connection) -> None:
        self._lingering.discard(connection)

    def abort_lingering(self) -> None:
        """For the end of a drain: reset every connection still lingering."""
        for connection in list(self._lingering):
            connection.end_linger(RESET)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that guards what `factory` (aiohttp's server) makes."""
        return lambda: Connection(self, factory)

    def close_idle(self) -> None:
        """For shutdown: close every connection not in a request (the app closes the others after their answer)."""
        for connection in list(self._open):
            if not connection.in_request:
                connection.close()

    def admit(self, connection: Connection) -> bool:
        """Count a new connection in; False (and counted as refused) when the cap is reached."""
        if len(self._open) >= self._max_connections:
            self.refused(m.CONNECTION_LIMIT)
            return False
        self._open.add(connection)
        return True

    def forget(self, connection: Connection) -> None:
        self._open.discard(connection)


def connection_of(transport: object) -> Connection | None:
    """The guarded connection a request came in on (aiohttp's `request.transport`), or None when unguarded."""
    return transport.connection if isinstance(transport, _TransportView) else None


class Connection(asyncio.Protocol):
    """One client connection: forwards to aiohttp's protocol and enforces the guard's limits."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        # One timer per connection, moved by assignment: a request re-arms it, and a timer handle per
        # request (scheduled, then cancelled) would cost more than the rest of the guard's bookkeeping.
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._state = _State.WAITING
        self._head_bytes = 0
        self._tail = b""
        self._pauses = 0
        self._holding = False
        # Since the current request's head ended: the bytes read, the last read (the next head may
        # have begun in it), and the count at the moment its body was in.
        self._after_head = 0
        self._last: bytes = b""
        self._after_head_at_hold = 0
        # While lingering: the bytes still to be thrown away before a reset, and the time bound's timer.
        self._linger_left: int | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    @property
    def in_request(self) -> bool:
        return self._state is _State.REQUEST

    # --- asyncio.Protocol, called by the real transport ------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # a stream transport (asyncio's or uvloop's)
        if not self._guard.admit(self):
            self._transport.write(_TOO_MANY)
            self.linger()
            return
        self._inner = self._factory()
        self._inner.connection_made(_TransportView(self._transport, self))
        self._arm(self._guard.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._linger_left is not None:
            self._linger_left -= len(data)  # thrown away
            if self._linger_left < 0:
                self.end_linger(RESET)
            return
        if self._inner is None:
            return  # closing
        if self._state is _State.IDLE:
            self._next_head()
        elif self._state is _State.WAITING:
            self._state = _State.HEAD
        if self._state is _State.REQUEST:
            self._after_head += len(data)
            self._last = data
        elif not self._count_head(data):
            self._refuse(_HEAD_TOO_LARGE, m.HEADER_TOO_LARGE)
            return
        if self._holding:
            # More than the request being answered: the client pipelines. Take this read, then no more.
            self.pause(_HELD)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._linger_left is not None:
            self.end_linger(GRACEFUL)  # the client has read its answer and closed its side
            return None
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()
        self.pause(_NOT_READING_ANSWERS)

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
        self.resume(_NOT_READING_ANSWERS)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger_left is not None:  # the client closed or reset before our bounds did
            self._stop_lingering(GRACEFUL if exc is None else RESET)
        self._guard.forget(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None

    # --- told by the app -----------------------------------------------------------------

    def hold(self) -> None:
        """The request's body is in: read nothing more until it is answered (`answered`).

        Reading stops only once more data comes: a client that waits for its answer (every real one)
        costs no pause and resume of the socket.
        """
        self._holding = True
        self._after_head_at_hold = self._after_head

    def answered(self, body_bytes: int | None) -> None:
        """The request is answered and its body of `body_bytes` (None: chunked, length unknown) was read.

        Whatever came after that body is the next request's head: it is counted, and its deadline runs,
        from now. Without bytes after the body the connection is idle until the next head begins.
        """
        if self._state is not _State.REQUEST or self._linger_left is not None:
            return  # not in a request, or closing after an answer already
        if body_bytes is None:  # only what came after the body was in is known to be more
            beyond, last = self._after_head - self._after_head_at_hold, b""
        else:
            beyond, last = self._after_head - body_bytes, self._last
        self._state = _State.IDLE
        self._holding = False
        self._after_head, self._last = 0, b""
        if beyond > 0:
            self._next_head()
            # The head's end can be looked for in the last read; what came before it is only counted.
            seen = last[max(0, len(last) - beyond):]
            self._head_bytes = beyond - len(seen)
            if not self._count_head(seen):
                self._refuse(_HEAD_TOO_LARGE, m.HEADER_TOO_LARGE)
                return
        self.resume(_HELD)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def lingering(self) -> bool:
        return self._linger_left is not None

    def linger(self) -> None:
        """Close after an answer: shut the write side once the answer is out, throw away what the client still
        sends within the guard's bounds, and close at its end of stream (see the module's docstring)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger_left is not None:
            return
        self._disarm()
        self._state = _State.REQUEST  # answered: no head timer refuses it again
        inner, self._inner = self._inner, None
        if inner is not None:  # aiohttp is done with this connection: it must not parse what follows
            asyncio.get_running_loop().call_soon(inner.connection_lost, None)
        if not transport.can_write_eof() or not self._guard.may_linger(self):
            self._guard.closed(RESET)  # closed at once: what the client still sends resets it
            transport.close()
            return
        self._linger_left = self._guard.linger.max_bytes
        transport.write_eof()
        self._pauses = 0
        transport.resume_reading()
        self._linger_timer = asyncio.get_running_loop().call_later(self._guard.linger.seconds, self.end_linger, RESET)

    def end_linger(self, how: str) -> None:
        """End a lingering close: `GRACEFUL` at the client's end of stream, `RESET` at a bound."""
        if self._linger_left is None:
            return
        self._stop_lingering(how)
        if self._transport is not None:
            if how == RESET:
                self._transport.abort()
            else:
                self._transport.close()

    def _stop_lingering(self, how: str) -> None:
        self._linger_left = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._guard.stop_lingering(self)
        self._guard.closed(how)

    # --- reading ---------------------------------------------------------------------------

    def pause(self, reason: int) -> None:
        paused = self._pauses
        self._pauses |= reason
        if not paused and self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self, reason: int) -> None:
        if not self._pauses & reason:
            return
        self._pauses &= ~reason
        if not self._pauses and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    @property
    def reading(self) -> bool:
        return not self._pauses

    # --- internals ---------------------------------------------------------------------------

    def _next_head(self) -> None:
        """A new request head begins (its first byte is in): it has `header_timeout` from now."""
        self._state = _State.HEAD
        self._head_bytes, self._tail = 0, b""
        self._arm(self._guard.header_timeout)

    def _count_head(self, data: bytes) -> bool:
        """Count request-head bytes up to the blank line; False once over the limit."""
        end = data.find(_HEAD_END)
        if end < 0 and self._tail:  # the blank line may straddle two reads
            straddling = (self._tail + data[:3]).find(_HEAD_END)
            end = straddling - len(self._tail) if straddling >= 0 else -1
        if end >= 0:
            self._head_bytes += end
            # The head is complete: no deadline until it is answered; what follows is its body, or more.
            self._state = _State.REQUEST
            self._disarm()
            self._after_head, self._last = len(data) - (end + len(_HEAD_END)), data
            self._after_head_at_hold = 0
            return self._head_bytes <= MAX_HEADER_BYTES
        self._head_bytes += len(data)
        self._tail = (self._tail + data)[-3:] if len(data) < 3 else data[-3:]
        return self._head_bytes <= MAX_HEADER_BYTES

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
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check)
            return
        self._deadline = None
        if self._state is _State.WAITING or self._state is _State.HEAD:
            self._refuse(_HEAD_TOO_SLOW, m.HEADER_TIMEOUT)

    def _refuse(self, answer: bytes, reason: str) -> None:
        self._guard.refused(reason)
        if self._transport is not None:
            self._transport.write(answer)
        self.linger()


class _TransportView(asyncio.Transport):
    """The transport aiohttp's protocol sees: the real one, except that its reading goes through the guard."""

    def __init__(self, transport: asyncio.Transport, connection: Connection) -> None:
        super().__init__()
        self._transport = transport
        self.connection = connection

    def pause_reading(self) -> None:
        self.connection.pause(_BY_SERVER)

    def resume_reading(self) -> None:
        self.connection.resume(_BY_SERVER)

    def is_reading(self) -> bool:
        return self.connection.reading

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.connection.lingering or self._transport.is_closing()

    def close(self) -> None:
        """aiohttp closes after an answer (a refusal, `Connection: close`, keep-alive's end): lingering."""
        self.connection.linger()

    def abort(self) -> None:
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("a guarded connection keeps its protocol")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.connection
