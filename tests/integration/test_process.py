"""The real command: readiness follows the broker, SIGTERM drains, send-test and dev work end to end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bridge.dev.kafka import LocalKafka
from bridge.dev.samples import sample, sample_types
from bridge.dev.sendtest import send
from bridge.envelope import partition_key
from bridge.verify import SigningKey
from tests.conftest import KafkaTool
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pausable_kafka() -> Iterator[LocalKafka]:
    """A broker of this module's own, which the tests freeze and thaw."""
    with LocalKafka() as kafka:
        yield kafka


async def test_readiness_drops_while_the_broker_is_frozen_and_recovers_by_itself(pausable_kafka, bridge_process):
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=pausable_kafka.bootstrap_servers,
                            BRIDGE_PUBLISH_TIMEOUT="2")
    await bridge.wait_for_readiness(200, timeout=30)
    pausable_kafka.pause()
    try:
        await bridge.wait_for_readiness(503, timeout=10)
        status, answer = await bridge.deliver(sample("role.created"))
        assert (status, answer["error"]) == (503, "kafka_unavailable")
    finally:
        pausable_kafka.resume()
    await bridge.wait_for_readiness(200, timeout=20)


async def test_sigterm_lets_in_flight_deliveries_finish_with_their_records_acked(pausable_kafka, bridge_process):
    kafka = KafkaTool(pausable_kafka.bootstrap_servers)
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=pausable_kafka.bootstrap_servers,
                            BRIDGE_PUBLISH_TIMEOUT="20")
    await bridge.wait_for_readiness(200, timeout=30)
    assert (await bridge.deliver(sample("role.created") | {"id": "evt_before"}))[0] == 201

    pausable_kafka.pause()
    try:
        in_flight = [
            asyncio.create_task(bridge.deliver(sample("role.created") | {"id": f"evt_inflight_{n}"}))
            for n in range(5)
        ]
        await asyncio.sleep(1.0)
        assert not any(task.done() for task in in_flight), "nothing may be answered before Kafka acks"
        bridge.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        late_status, late_answer = await bridge.deliver(sample("role.created") | {"id": "evt_late"})
        assert (late_status, late_answer["error"]) == (503, "shutting_down")
        assert await bridge.readiness() == 503
    finally:
        pausable_kafka.resume()

    answers = await asyncio.gather(*in_flight)
    assert [status for status, _ in answers] == [201] * 5
    code, output = await asyncio.to_thread(bridge.output_after_exit, 40)
    assert code == 0, output
    assert SECRET[6:] not in output
    ids = sorted(r.header("ce_id").decode() for r in await kafka.read_all(bridge.prefix + "role.created"))
    assert ids == ["evt_before"] + [f"evt_inflight_{n}" for n in range(5)]


async def test_send_test_signs_a_sample_that_reaches_its_topic(bridge_process, kafka_bootstrap, kafka):
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    await bridge.wait_for_readiness(200, timeout=30)

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge", "send-test", "--type", "user.signup", "--url", bridge.url],
        env={**os.environ, "SCALEKIT_WEBHOOK_SECRET": SECRET}, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("201 ")
    (record,) = await kafka.read_all(bridge.prefix + "user.signup")
    assert record.key == sample("user.signup")["data"]["organization"]["id"].encode()
    assert record.header("ce_id").decode().startswith("evt_test_")


async def test_send_test_takes_every_documented_type_and_each_reaches_its_own_topic_with_its_key(
    bridge_process, kafka_bootstrap, kafka
):
    """What `send-test --type T` sends (the same function), for every type of the contract."""
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    await bridge.wait_for_readiness(200, timeout=30)
    key = SigningKey.from_secret(SECRET)

    answers = [await asyncio.to_thread(send, bridge.url, key, event_type) for event_type in sample_types()]

    assert [status for status, _ in answers] == [201] * len(sample_types())
    for event_type in sample_types():
        (record,) = await kafka.read_all(bridge.prefix + event_type)
        assert record.key == partition_key(sample(event_type)).encode()
        assert record.header("ce_dataschema") == f"urn:scalekit-bridge:schema:v1:data:{event_type}".encode()


async def test_the_helm_test_probe_proves_a_ready_bridge_behind_its_url_and_writes_nothing(
    bridge_process, kafka_bootstrap, kafka
):
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    await bridge.wait_for_readiness(200, timeout=30)
    ready_url = f"http://127.0.0.1:{bridge.admin_port}/readyz"
    env = {k: v for k, v in os.environ.items() if k != "SCALEKIT_WEBHOOK_SECRET"}  # it needs no secret

    def probe(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", "send-test", "--type", "user.signup", "--url", url, "--probe",
             "--ready-url", ready_url], env=env, capture_output=True, text=True, timeout=60,
        )

    passed = await asyncio.to_thread(probe, bridge.url)
    elsewhere = await asyncio.to_thread(probe, bridge.url.replace("/webhooks/scalekit", "/elsewhere"))

    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.startswith("ok   ready: 200\nok   a delivery signed with another key: 401 ")
    assert elsewhere.returncode == 1 and "FAIL a delivery signed with another key: 404" in elsewhere.stdout
    mine = sorted(topic for topic in await kafka.topics() if topic.startswith(bridge.prefix))
    assert mine == [bridge.prefix + "deadletter", bridge.prefix + "dedup-receipts"]  # made at start-up; no event topic
    assert await kafka.read_all(bridge.prefix + "deadletter") == []  # nothing was written anywhere
    assert await kafka.read_all(bridge.prefix + "dedup-receipts") == []


async def test_dev_brings_up_kafka_and_the_bridge_and_ctrl_c_stops_both(bridge_process):
    bridge = bridge_process("dev", SCALEKIT_WEBHOOK_SECRET="")
    await bridge.wait_for_readiness(200, timeout=180)

    status, _ = await bridge.deliver(sample("organization.created"))  # signed with SECRET: not the dev secret
    assert status == 401, "dev generates its own secret when none is set"
    # The printed send-test line works as pasted, from the directory dev was started in.
    (line,) = [text.strip() for text in bridge.output().splitlines() if " send-test --type " in text]
    pasted = await asyncio.to_thread(
        subprocess.run, ["sh", "-c", line], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
    )
    assert pasted.returncode == 0 and pasted.stdout.startswith("201 "), line + pasted.stdout + pasted.stderr

    bridge.process.send_signal(signal.SIGINT)
    code, output = await asyncio.to_thread(bridge.output_after_exit, 60)
    assert code == 0, output
    secret = re.search(r"Signing secret:\s+(whsec_\S+)", output).group(1)
    assert f"SCALEKIT_WEBHOOK_SECRET={secret} " in output
    kafka_port = int(re.search(r"Kafka:\s+127\.0\.0\.1:(\d+)", output).group(1))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", kafka_port), timeout=2).close()


async def test_dev_uses_a_given_broker_and_never_prints_a_given_secret(bridge_process, kafka_bootstrap, kafka):
    """A secret the user supplied may be a real one: dev uses it but shows only the variable's name."""
    bridge = bridge_process("dev", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    await bridge.wait_for_readiness(200, timeout=60)
    assert (await bridge.deliver(sample("role.created")))[0] == 201

    bridge.process.send_signal(signal.SIGINT)
    code, output = await asyncio.to_thread(bridge.output_after_exit, 60)
    assert code == 0, output
    assert SECRET not in output and SECRET[6:] not in output
    assert re.search(r"SCALEKIT_WEBHOOK_SECRET=\$SCALEKIT_WEBHOOK_SECRET \S+( -m bridge)? send-test --type", output)
    assert "Starting a local Apache Kafka" not in output
    assert len(await kafka.read_all(bridge.prefix + "role.created")) == 1


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_sigterm_closes_idle_and_stalled_connections_and_exits_inside_the_grace(bridge_process, kafka_bootstrap):
    """The whole drain, connections included, fits in BRIDGE_SHUTDOWN_GRACE: not the grace plus aiohttp's own."""
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, BRIDGE_SHUTDOWN_GRACE="3",
                            BRIDGE_BODY_TIMEOUT="60", BRIDGE_HEADER_TIMEOUT="60", BRIDGE_KEEPALIVE_TIMEOUT="60")
    await bridge.wait_for_readiness(200, timeout=30)
    idle = [await asyncio.open_connection("127.0.0.1", bridge.port) for _ in range(5)]
    half_head = [await asyncio.open_connection("127.0.0.1", bridge.port) for _ in range(5)]
    for _, writer in half_head:
        writer.write(b"POST /webhooks/scalekit HTTP/1.1\r\nHost: x\r\n")
    stalled = [await asyncio.open_connection("127.0.0.1", bridge.port) for _ in range(5)]
    for _, writer in stalled:
        writer.write(b"POST /webhooks/scalekit HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
    await asyncio.sleep(0.5)

    started = time.monotonic()
    bridge.process.send_signal(signal.SIGTERM)
    code, output = await asyncio.to_thread(bridge.output_after_exit, 30)
    took = time.monotonic() - started

    assert code == 0, output
    assert took < 3.5, f"drain took {took:.1f}s with a 3 s grace"
    for reader, writer in idle + half_head + stalled:
        assert await asyncio.wait_for(reader.read(), 1) is not None  # closed by the server: EOF, not a hang
        writer.close()


async def hold_every_connection(port: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open every connection the default cap allows: 64 nearly whole 256 KiB bodies, 448 endless heads."""
    body_head = b"POST /webhooks/scalekit HTTP/1.1\r\nHost: x\r\nContent-Length: 262144\r\n\r\n"
    endless_head = b"POST /webhooks/scalekit HTTP/1.1\r\n" + b"x-pad: " + b"p" * 15_000 + b"\r\n"
    clients = []
    for n in range(512):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(body_head + b"x" * (255 * 1024) if n < 64 else endless_head)
        clients.append((reader, writer))
    return clients


async def until_all_closed(clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for reader, writer in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(), 10)
        writer.close()


async def test_the_worst_case_the_limits_allow_fits_the_stated_bound_and_memory_comes_back(
    bridge_process, kafka_bootstrap
):
    """Every connection the cap allows, held open in three waves: RSS stays within the worst case in docs/security.md
    (72 MiB over idle), falls back once the timeouts have closed them, and does not climb wave after wave."""
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, BRIDGE_BODY_TIMEOUT="3",
                            BRIDGE_HEADER_TIMEOUT="3")
    await bridge.wait_for_readiness(200, timeout=30)
    for _ in range(3):  # warm the allocator and the code paths
        assert (await bridge.deliver(sample("role.created")))[0] == 201
    idle = rss_mib(bridge.process.pid)
    peaks, afters = [], []
    for _wave in range(3):
        clients = await hold_every_connection(bridge.port)
        await asyncio.sleep(1.5)
        peaks.append(rss_mib(bridge.process.pid))
        await until_all_closed(clients)
        await asyncio.sleep(6.0)  # one periodic malloc_trim
        afters.append(rss_mib(bridge.process.pid))

    with open(f"/proc/{bridge.process.pid}/limits") as limits:
        soft, hard = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
    assert soft == hard, "serve raises its open-file soft limit to the hard limit"
    print(f"RSS idle {idle:.1f} MiB; with every connection held {peaks} MiB; after each wave {afters} MiB")
    assert max(peaks) - idle < 72, (idle, peaks)
    assert max(afters) - idle < 12, (idle, peaks, afters)
    assert afters[-1] - afters[0] < 4, "waves must not leave more and more behind"
    assert (await bridge.deliver(sample("role.created")))[0] == 201


async def test_a_get_of_the_root_does_not_unguard_the_connection_for_the_heads_behind_it(
    bridge_process, kafka_bootstrap
):
    """Every connection the cap allows sends `GET /` and then ~485 KiB of a head that never ends (aiohttp's own
    limits would buffer that much): each gets its 200 and then 431 at 16 KiB, and RSS stays within the
    the worst case in docs/security.md (72 MiB over idle). Unguarded, the same took `serve` from 60 to 555 MiB."""
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, BRIDGE_HEADER_TIMEOUT="5")
    await bridge.wait_for_readiness(200, timeout=30)
    idle = rss_mib(bridge.process.pid)
    pads = b"".join(b"x-pad-%d: %s\r\n" % (n, b"p" * 7_700) for n in range(63))
    unending = b"POST /webhooks/scalekit HTTP/1.1\r\n" + pads
    clients = []
    for _ in range(512):
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + unending)
        clients.append((reader, writer))
    await asyncio.sleep(1.0)
    peak = rss_mib(bridge.process.pid)
    answers = []
    for reader, writer in clients:
        async with asyncio.timeout(10):
            answers.append(re.findall(rb"HTTP/1\.1 (\d{3}) ", await reader.read()))  # to the end: the 431 closes
        writer.close()

    print(f"RSS idle {idle:.1f} MiB; with 512 connections past GET / {peak:.1f} MiB")
    assert answers == [[b"200", b"431"]] * 512
    assert len(unending) > 480_000
    assert peak - idle < 72, (idle, peak)
    metrics = await bridge.metrics()
    assert 'scalekit_bridge_http_refusals_total{reason="header_too_large"} 512.0' in metrics
    assert 'scalekit_bridge_http_refusals_total{reason="header_timeout"} 0.0' in metrics
