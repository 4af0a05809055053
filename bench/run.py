"""Benchmarks: what one delivery costs in the bridge, and what the whole path sustains.

1. CPU cost of the per-delivery work that does not wait on Kafka (verify + schema check + CloudEvent
   mapping), with schema validation off and on.
2. End to end: `scalekit-bridge serve` in its own process against a real Kafka (KAFKA_BOOTSTRAP_SERVERS,
   else a local one), driven over loopback at several concurrencies; each 201 means a broker ack.

Prints its numbers; asserts nothing. Usage: `make bench` (or `python bench/run.py --deliveries 2000`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
import timeit
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp

from bridge.contract import Contract
from bridge.dev.kafka import LocalKafka
from bridge.dev.samples import sample
from bridge.dev.sendtest import signed_headers
from bridge.envelope import build_record, parse_envelope
from bridge.testing import free_port
from bridge.verify import SigningKey, Verifier

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
KEY = SigningKey.from_secret(SECRET)


def signed(envelope: dict) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(envelope).encode()
    return body, signed_headers(KEY, body)


def cpu_cost() -> None:
    """The request path minus Kafka, as the pipeline runs it, with and without schema validation."""
    verifier = Verifier([KEY], 300)
    contract = Contract.load()
    envelope = sample("organization.directory.user_created")
    body, headers = signed(envelope)
    runs = 20_000

    def one(validate: bool) -> None:
        delivery = verifier.verify(headers, body)
        parsed = parse_envelope(delivery.body)
        verdict = contract.check(parsed, validate=validate)
        build_record(delivery, topic_prefix="scalekit.", mode="binary", envelope=parsed, dataschema=verdict.dataschema)

    for label, validate in (("validation off", False), ("validation warn/enforce", True)):
        best = min(timeit.repeat(functools.partial(one, validate), number=runs, repeat=5)) / runs
        print(f"cpu: verify + contract + CloudEvent mapping ({label}), {len(body)}-byte directory user event: "
              f"{best * 1e6:.1f} µs/delivery")
    check = min(timeit.repeat(lambda: contract.check(envelope, validate=True), number=runs, repeat=5)) / runs
    print(f"cpu: schema validation alone (envelope + data): {check * 1e6:.1f} µs/delivery")


async def wait_ready(admin_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("bridge never became ready")


async def drive(url: str, deliveries: int, concurrency: int, organizations: int) -> None:
    payloads = []
    for n in range(deliveries):
        envelope = sample("organization.directory.user_created")
        envelope["id"] = f"evt_bench_{n}"
        envelope["organization_id"] = f"org_{n % organizations}"
        payloads.append(signed(envelope))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for item in payloads:
        queue.put_nowait(item)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body, headers = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"e2e: concurrency {concurrency:>3}: {deliveries / elapsed:7.0f} deliveries/s, "
        f"p50 {quantiles[49] * 1000:6.1f} ms, p95 {quantiles[94] * 1000:6.1f} ms, "
        f"p99 {quantiles[98] * 1000:6.1f} ms, statuses {dict(sorted(statuses.items()))}"
    )


@dataclass(frozen=True)
class Served:
    """A `scalekit-bridge serve` process started for a benchmark."""

    url: str
    admin_port: int
    pid: int


@contextlib.asynccontextmanager
async def serving(bootstrap: str, name: str, **env: str) -> AsyncIterator[Served]:
    """Run `scalekit-bridge serve` against `bootstrap` with topics of its own until the block ends."""
    port, admin_port = free_port(), free_port()
    prefix = f"{name}{uuid.uuid4().hex[:6]}."
    child_env = {
        **os.environ,
        "SCALEKIT_WEBHOOK_SECRET": SECRET,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_ADMIN_PORT": str(admin_port),
        "BRIDGE_TOPIC_PREFIX": prefix,
        "BRIDGE_DEADLETTER_TOPIC": prefix + "deadletter",
        "BRIDGE_LOG_LEVEL": "WARNING",
        **env,
    }
    server = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=child_env, stdout=subprocess.DEVNULL)
    try:
        await wait_ready(admin_port)
        yield Served(f"http://127.0.0.1:{port}/webhooks/scalekit", admin_port, server.pid)
    finally:
        server.terminate()
        server.wait(30)


@contextlib.contextmanager
def kafka(brokers: int = 1) -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS when it is set, else a local Kafka of `brokers` brokers for the run."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    with LocalKafka(brokers=brokers) as local:
        print(f"kafka: local Apache Kafka at {local.bootstrap_servers} (same machine)", flush=True)
        yield local.bootstrap_servers


async def end_to_end(bootstrap: str, deliveries: int, concurrencies: list[int]) -> None:
    # Measure throughput, not the in-flight cap (64 by default): let every client in.
    async with serving(bootstrap, "bench", BRIDGE_MAX_INFLIGHT=str(2 * max(concurrencies))) as served:
        await drive(served.url, 200, 8, 50)  # warm-up: creates the topic, fills connection pools
        for concurrency in concurrencies:
            await drive(served.url, deliveries, concurrency, organizations=50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    cpu_cost()
    with kafka() as bootstrap:
        asyncio.run(end_to_end(bootstrap, args.deliveries, args.concurrency))


if __name__ == "__main__":
    main()
