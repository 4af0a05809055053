"""Every request of a public-port connection is guarded, whichever route (or aiohttp itself) answered the one
before it; a client's hang-up is its own doing; a bug is loud. On real loopback sockets, `serve`'s listeners,
Kafka faked (nothing here claims delivery)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

import bridge.app
from bridge.app import Listeners, _ServerLog, listen
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.service import Bridge
from tests.fakes import RecordingProducer
from tests.helpers import loopback
from tests.unit.test_http import ENVELOPE, SECRET, signed_request, statuses

ROOT = b"GET / HTTP/1.1\r\nHost: bridge\r\n\r\n"
# A request head three times the guard's 16 KiB limit, never finished, and within aiohttp's own limits
# (fields under 8,190 bytes, fewer than 64 of them): only the guard stands in its way.
BIG_HEAD = b"POST /webhooks/scalekit HTTP/1.1\r\n" + b"".join(b"x-pad-%d: %s\r\n" % (n, b"p" * 8000) for n in range(6))

Start = Callable[..., Awaitable[Bridge]]
LISTENERS: dict[int, Listeners] = {}


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Open `serve`'s listeners for a bridge whose (fake) Kafka acknowledges everything; env overrides.
    The listeners are in LISTENERS, by public port."""
    opened: list[Listeners] = []

    async def started(**env: str) -> Bridge:
        settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **loopback(), **env})
        bridge = Bridge.assemble(settings, RecordingProducer(), Metrics(process_metrics=False))
        listeners = await listen(bridge)
        opened.append(listeners)
        LISTENERS[bridge.settings.port] = listeners
        return bridge

    yield started
    for listeners in opened:
        await listeners.close()
    LISTENERS.clear()


def refusals(bridge: Bridge, reason: str) -> float:
    value = bridge.metrics.registry.get_sample_value("scalekit_bridge_http_refusals_total", {"reason": reason})
    return value or 0.0


def internal_errors(bridge: Bridge) -> float:
    return bridge.metrics.registry.get_sample_value("scalekit_bridge_internal_errors_total") or 0.0


async def answer_of_root(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return await reader.readuntil(b'{"status":"serving"}')


async def until_closed(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read()


async def test_after_a_get_of_the_root_the_next_head_is_still_held_to_16_kib(start):
    bridge = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
    writer.write(ROOT)
    assert statuses(await answer_of_root(reader)) == [200]

    writer.write(BIG_HEAD)
    answer = await until_closed(reader)
    writer.close()

    assert statuses(answer) == [431]
    assert refusals(bridge, "header_too_large") == 1


async def test_a_big_head_sent_behind_a_get_in_the_same_write_is_counted_too(start):
    """The bytes after a bodiless request's head are the next request's: they count from the first."""
    bridge = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
    writer.write(ROOT + BIG_HEAD)
    answer = await until_closed(reader)
    writer.close()

    assert statuses(answer) == [200, 431]
    assert refusals(bridge, "header_too_large") == 1


async def test_a_head_dripped_after_a_get_of_the_root_is_cut_off_at_the_head_deadline(start):
    bridge = await start(BRIDGE_HEADER_TIMEOUT="0.5", BRIDGE_KEEPALIVE_TIMEOUT="30")
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
    writer.write(ROOT)
    await answer_of_root(reader)

    async def drip() -> None:
        for byte in b"POST /webhooks/scalekit HTTP/1.1\r\n" + b"x-slow: " + b"s" * 200:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    dripping = asyncio.create_task(drip())
    try:
        answer = await until_closed(reader, timeout=3)  # the drip alone would take 5 s
    finally:
        dripping.cancel()
        writer.close()

    assert statuses(answer) == [408]
    assert refusals(bridge, "header_timeout") == 1


async def test_pipelined_gets_are_each_answered_and_none_is_taken_for_a_slow_head(start):
    bridge = await start(BRIDGE_HEADER_TIMEOUT="0.3")
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
    writer.write(ROOT * 3 + signed_request(ENVELOPE, Connection="close"))
    answer = await until_closed(reader)
    writer.close()

    assert statuses(answer) == [200, 200, 200, 201]
    assert refusals(bridge, "header_timeout") == refusals(bridge, "header_too_large") == 0


async def test_a_connection_between_requests_after_a_get_is_closed_at_shutdown(start):
    bridge_ = await start(BRIDGE_HEADER_TIMEOUT="30", BRIDGE_KEEPALIVE_TIMEOUT="30")
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge_.settings.port)
    writer.write(ROOT)
    await answer_of_root(reader)
    writer.write(b"POST /webhooks/scalekit HTTP/1.1\r\n")  # a head begun, never finished
    await asyncio.sleep(0.1)

    LISTENERS[bridge_.settings.port].guard.close_idle()  # what serve does first at SIGTERM

    assert await until_closed(reader, timeout=2) == b""
    writer.close()


async def test_a_request_aiohttp_answers_itself_gets_our_json(start):
    bridge = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
    writer.write(b"OPTIONS * HTTP/1.1\r\nHost: bridge\r\n\r\n")
    answer = await until_closed(reader)
    writer.close()

    head, body = answer.split(b"\r\n\r\n", 1)
    assert statuses(answer) == [404]
    assert b"Content-Type: application/json" in head
    assert body == b'{"error": "not_found", "detail": "Not Found"}'


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 5000\r\n\r\n{\"id\": ", b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"id\": \"evt_1\", "],
    ids=["content-length", "chunked"],
)
async def test_a_client_that_hangs_up_mid_body_is_counted_as_its_doing_not_a_bug(start, caplog, framing):
    bridge = await start()
    caplog.set_level(logging.DEBUG)
    _, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
    writer.write(b"POST /webhooks/scalekit HTTP/1.1\r\nHost: bridge\r\n" + framing)
    await writer.drain()
    async with asyncio.timeout(5):
        while bridge.lifecycle.inflight == 0:  # the handler is reading the body
            await asyncio.sleep(0.01)
    writer.transport.abort()

    async with asyncio.timeout(5):
        while refusals(bridge, "client_closed") == 0:
            await asyncio.sleep(0.01)
    assert bridge.lifecycle.inflight == 0
    assert internal_errors(bridge) == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert bridge.metrics.registry.get_sample_value(
        "scalekit_bridge_request_duration_seconds_count", {"status": "500"}
    ) is None


async def test_a_bug_in_a_route_other_than_the_webhook_is_a_logged_counted_json_500(start, caplog, monkeypatch):
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    monkeypatch.setattr(bridge.app, "_serving", broken)
    bridge_ = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge_.settings.port)
    writer.write(ROOT)
    answer = await until_closed(reader)
    writer.close()

    assert statuses(answer) == [500]
    assert answer.endswith(b'"error": "internal_error", "detail": "the bridge failed unexpectedly; this is a bug"}')
    assert internal_errors(bridge_) == 1
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (line.error, line.at.split(":")[0]) == ("RuntimeError", "test_every_request_guarded.py")


def test_only_parser_errors_are_counted_as_malformed_requests_and_anything_else_is_a_bug(caplog):
    metrics = Metrics(process_metrics=False)
    server_log = _ServerLog(metrics, public=True)

    def raised(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception as caught:
            return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request",
                                     None, (type(caught), caught, caught.__traceback__))

    server_log.handle(raised(BadHttpMessage("bad")))
    server_log.handle(raised(RuntimeError("a bug")))

    assert metrics.registry.get_sample_value("scalekit_bridge_http_refusals_total", {"reason": "bad_request"}) == 1
    assert metrics.registry.get_sample_value("scalekit_bridge_internal_errors_total") == 1
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.error == "RuntimeError"


def sample_value(bridge: Bridge, name: str, labels: dict[str, str] | None = None) -> float:
    return bridge.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_lingering_connections_are_capped_apart_and_bounded_in_time(start):
    """Past BRIDGE_MAX_LINGERING a refused connection is closed at once; a lingering one whose client never
    closes is reset at BRIDGE_LINGER_TIMEOUT. Both are counted, and the gauge follows."""
    bridge = await start(BRIDGE_MAX_CONNECTIONS="1", BRIDGE_MAX_LINGERING="1", BRIDGE_LINGER_TIMEOUT="0.5",
                         BRIDGE_HEADER_TIMEOUT="30")
    port = bridge.settings.port
    held = await asyncio.open_connection("127.0.0.1", port)  # the cap, full
    await asyncio.sleep(0.1)
    first = await asyncio.open_connection("127.0.0.1", port)  # refused, lingers: its client never closes
    async with asyncio.timeout(2):
        assert statuses(await first[0].read()) == [503]  # the answer, then our end of stream
    assert sample_value(bridge, "scalekit_bridge_lingering_connections") == 1

    second = await asyncio.open_connection("127.0.0.1", port)  # refused, no room to linger: closed at once
    async with asyncio.timeout(2):
        assert statuses(await second[0].read()) == [503]
    resets = {"how": "reset"}
    assert sample_value(bridge, "scalekit_bridge_closed_connections_total", resets) == 1

    async with asyncio.timeout(3):  # the first one's time is up
        while sample_value(bridge, "scalekit_bridge_lingering_connections") != 0:
            await asyncio.sleep(0.02)
    assert sample_value(bridge, "scalekit_bridge_closed_connections_total", resets) == 2
    assert sample_value(bridge, "scalekit_bridge_closed_connections_total", {"how": "graceful"}) == 0
    for _, writer in (held, first, second):
        writer.close()
