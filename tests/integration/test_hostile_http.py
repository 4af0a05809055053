"""The public port is the internet: bombs, slow clients and garbage cost us no more than they cost them."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time

import aiohttp
import pytest

from bridge.dev.samples import sample
from bridge.guard import MAX_HEADER_BYTES
from tests.helpers import body_of, signed_headers
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration


async def raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def answer_and_close(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        data = await reader.read()  # returns at EOF: the server closed
    return data, time.monotonic() - started


def head(length: int, **extra: str) -> bytes:
    lines = ["POST /webhooks/scalekit HTTP/1.1", "Host: bridge", f"Content-Length: {length}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in extra.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_compressed_body_is_refused_unread_so_a_bomb_costs_nothing(listening_bridge, kafka):
    bridge = await listening_bridge()
    bomb = gzip.compress(b"{" + b" " * 50_000_000 + b"}")  # 50 MB of JSON in ~50 KB
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        headers = signed_headers(SECRET, b"{}") | {"Content-Encoding": "gzip"}
        async with session.post(bridge.url, data=bomb, headers=headers) as response:
            assert response.status == 415
            assert (await response.json())["error"] == "unsupported_content_encoding"
            assert response.headers.get("Connection", "").lower() == "close"
    assert bridge.refusals("unsupported_content_encoding") == 1
    assert await kafka.read_all(bridge.prefix + "deadletter") == []


async def test_a_request_head_dripped_byte_by_byte_is_cut_off_at_the_header_timeout(listening_bridge):
    bridge = await listening_bridge(BRIDGE_HEADER_TIMEOUT="1")
    reader, writer = await raw(bridge.port, b"POST /webhooks/scalekit HTTP/1.1\r\n")

    async def drip() -> None:
        for byte in b"webhook-id: msg_slow_loris_slow_loris\r\n" * 10:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        answer, waited = await answer_and_close(reader, timeout=5)
    finally:
        dripping.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert 0.9 < waited < 2.5
    assert bridge.refusals("header_timeout") == 1


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(listening_bridge):
    bridge = await listening_bridge(BRIDGE_HEADER_TIMEOUT="0.5")
    reader, writer = await raw(bridge.port, b"")
    answer, waited = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and waited < 2
    # Our close is graceful: the socket goes once the client has closed its side too.
    registry = bridge.bridge.metrics.registry
    async with asyncio.timeout(2):
        while registry.get_sample_value("scalekit_bridge_open_connections") != 0:
            await asyncio.sleep(0.01)
    assert registry.get_sample_value("scalekit_bridge_closed_connections_total", {"how": "graceful"}) == 1
    assert registry.get_sample_value("scalekit_bridge_lingering_connections") == 0


async def test_a_request_head_over_the_limit_gets_431_and_the_connection_closes(listening_bridge):
    bridge = await listening_bridge()
    filler = "".join(f"x-filler-{n}: {'a' * 200}\r\n" for n in range(MAX_HEADER_BYTES // 200 + 2))
    reader, writer = await raw(bridge.port, b"POST /webhooks/scalekit HTTP/1.1\r\n" + filler.encode())
    answer, _ = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431")
    assert bridge.refusals("header_too_large") == 1


async def test_a_stalled_body_gets_408_at_the_body_timeout_and_frees_its_slot(listening_bridge):
    bridge = await listening_bridge(BRIDGE_BODY_TIMEOUT="1")
    reader, writer = await raw(bridge.port, head(10_000, **signed_headers(SECRET, b"x")) + b'{"id": "ev')
    answer, waited = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer
    assert 0.9 < waited < 2.5
    assert bridge.bridge.lifecycle.inflight == 0
    assert bridge.refusals("body_timeout") == 1


async def test_past_the_in_flight_cap_a_delivery_gets_a_fast_503_with_retry_after(listening_bridge, kafka):
    bridge = await listening_bridge(BRIDGE_MAX_INFLIGHT="2", BRIDGE_BODY_TIMEOUT="5")
    stalled = [await raw(bridge.port, head(1000) + b"{") for _ in range(2)]
    await asyncio.sleep(0.3)
    assert bridge.bridge.lifecycle.inflight == 2

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        body = body_of(sample("role.created"))
        async with session.post(bridge.url, data=body, headers=signed_headers(SECRET, body)) as response:
            assert (response.status, response.headers["Retry-After"]) == (503, "5")
            assert (await response.json())["error"] == "overloaded"
    assert time.monotonic() - started < 1
    assert bridge.refusals("overloaded") == 1
    for _, writer in stalled:
        writer.close()
    assert await kafka.read_all(bridge.prefix + "role.created") == []


async def test_past_the_connection_cap_a_client_gets_503_and_the_cap_frees_when_others_leave(listening_bridge):
    bridge = await listening_bridge(BRIDGE_MAX_CONNECTIONS="3")
    held = [await raw(bridge.port, b"") for _ in range(3)]
    await asyncio.sleep(0.1)

    reader, writer = await raw(bridge.port, b"")
    answer, _ = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in answer
    assert bridge.refusals("connection_limit") == 1

    for _, held_writer in held:
        held_writer.close()
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as session:
        body = body_of(sample("role.created"))
        async with session.post(bridge.url, data=body, headers=signed_headers(SECRET, body)) as response:
            assert response.status == 201


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(listening_bridge):
    bridge = await listening_bridge(BRIDGE_KEEPALIVE_TIMEOUT="0.5")
    body = body_of(sample("role.created"))
    reader, writer = await raw(bridge.port, head(len(body), **signed_headers(SECRET, body)) + body)
    answer, waited = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 201")
    assert 0.4 < waited < 2
    assert bridge.refusals("header_timeout") == 0


async def test_a_malformed_request_is_counted_and_its_bytes_never_reach_the_log(listening_bridge, caplog):
    bridge = await listening_bridge()
    signature = "v1,c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1iZS1sb2dnZWQ="
    caplog.set_level(logging.DEBUG)
    reader, writer = await raw(
        bridge.port,
        b"POST /webhooks/scalekit HTTP/1.1\r\nwebhook-signature: " + signature.encode() + b"\x01\r\n\r\n",
    )
    answer, _ = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400"
    assert bridge.refusals("bad_request") == 1
    logged = "\n".join(record.getMessage() + str(record.exc_info) + str(vars(record)) for record in caplog.records)
    assert signature not in logged and "c2lnbmF0dXJl" not in logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_admin_listener_binds_its_own_host(listening_bridge):
    bridge = await listening_bridge(BRIDGE_HOST="127.0.0.1", BRIDGE_ADMIN_HOST="127.0.0.2")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.2:{bridge.admin_port}/healthz") as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{bridge.admin_port}/healthz")


async def test_a_reused_connection_gets_the_header_timeout_for_its_next_request_head(listening_bridge):
    """After an answer, the idle timer is the keep-alive one; the first byte of a new head starts the head timer."""
    bridge = await listening_bridge(BRIDGE_HEADER_TIMEOUT="1", BRIDGE_KEEPALIVE_TIMEOUT="30")
    body = body_of(sample("role.created"))
    reader, writer = await raw(bridge.port, head(len(body), **signed_headers(SECRET, body)) + body)
    first = await reader.readuntil(b'{"received": true, "outcome": "published"}')
    assert first.startswith(b"HTTP/1.1 201")
    await asyncio.sleep(1.5)  # idle past the head timeout, inside keep-alive: still open
    writer.write(b"POST /webhooks/scalekit HTTP/1.1\r\nHost: x\r\n")
    answer, waited = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert 0.9 < waited < 2.5


async def test_tls_or_garbage_sent_to_the_plain_port_is_counted_and_not_logged(listening_bridge, caplog):
    bridge = await listening_bridge()
    caplog.set_level(logging.INFO)
    client_hello = bytes.fromhex("1603010200010001fc0303") + b"\x00" * 40
    reader, writer = await raw(bridge.port, client_hello)
    answer, _ = await answer_and_close(reader, timeout=5)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400"
    assert bridge.refusals("bad_request") == 1
    assert [r for r in caplog.records if r.name.startswith("aiohttp")] == []
