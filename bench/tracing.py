"""What tracing costs a delivery: CPU seconds per delivery in the bridge's process, tracing off, on at 10 %
and on at 100 % sampling, all in one run (ratios, not bare numbers, carry across machines).

Each delivery takes the path `receive` gives it minus the socket: the server span, verification, the
contract check and mapping, the producer span and a publisher that acknowledges at once (Kafka's own
time is not the bridge's CPU). Spans leave through the real batch processor and OTLP/HTTP exporter to a
sink in another process that answers 200, so the exporter's encoding and sending count; the process CPU
time (every thread) is read after the queue is flushed. Also timed: the hooks a delivery calls when
tracing is off, against the whole delivery.

Prints its numbers; asserts nothing. Usage: `make bench-tracing` (or `python bench/tracing.py --deliveries 20000`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import subprocess
import sys
import time
import timeit
from collections.abc import Mapping

from bridge.config import Settings
from bridge.core import Ack
from bridge.dev.kafka import free_port
from bridge.dev.samples import sample
from bridge.dev.sendtest import signed_headers
from bridge.envelope import KafkaMessage
from bridge.metrics import Metrics
from bridge.service import Bridge
from bridge.traces import start as start_tracing
from bridge.tracing import OFF, Tracing
from bridge.verify import SigningKey

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
PATH = "/webhooks/scalekit"
SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


class Instant:
    """A publisher whose every record is acknowledged at once."""

    ready = True
    missing_topics: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.offset = 0

    async def publish(self, message: KafkaMessage) -> Ack:
        self.offset += 1
        return Ack(message.topic, 0, self.offset)


async def deliveries(tracing: Tracing, count: int) -> float:
    """CPU seconds per delivery (all threads), the exporter's share included."""
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET})
    bridge = Bridge.assemble(settings, Instant(), Metrics(process_metrics=False), tracing)
    key = SigningKey.from_secret(SECRET)
    requests = []
    for n in range(count):
        body = json.dumps(sample("organization.directory.user_created") | {"id": f"evt_{n}"}).encode()
        requests.append((body, signed_headers(key, body)))
    started = time.process_time()
    for body, headers in requests:
        await deliver(bridge, body, headers)
    tracing.shutdown(60.0)
    return (time.process_time() - started) / count


async def deliver(bridge: Bridge, body: bytes, headers: Mapping[str, str]) -> None:
    with bridge.tracing.delivery("POST", PATH, headers) as span:
        receipt = await bridge.pipeline.handle(headers, body)
        span.ended(receipt.outcome, None)
        span.set("http.response.status_code", 201)
        bridge.tracing.current_ids()


def off_hooks() -> float:
    """Seconds per delivery spent in the calls the code makes into tracing when it is off."""

    def hooks() -> None:
        with OFF.delivery("POST", PATH, {}) as span:
            with OFF.step("verify"):
                pass
            producer = OFF.producer()
            with OFF.step("map"):
                pass
            producer.sending_to("t", b"k")
            producer.set("cloudevents.event_id", "e")
            producer.set("cloudevents.event_type", "t")
            producer.written(0, 1)
            producer.ended("published", None)
            producer.end()
            OFF.current_ids()
            OFF.current_ids()
            OFF.current_ids()
            span.ended("published", None)
            span.set("http.response.status_code", 201)

    runs = 200_000
    return min(timeit.repeat(hooks, number=runs, repeat=5)) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="each setting is measured this many times, in turn")
    args = parser.parse_args()
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    # A queue that never fills: every span is exported, so its whole cost is counted (the loop outpaces any
    # real webhook traffic, and a dropped span would cost nothing here).
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_BSP_MAX_QUEUE_SIZE=str(10 * args.deliveries),
    )
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# {args.deliveries} deliveries per measurement, {args.rounds} rounds; CPU µs per delivery (all threads)")
    try:
        time.sleep(0.5)
        # name: (sampling ratio, exporter); "kept" records its spans and exports none: the SDK's share alone.
        settings = {"off": None, "0%": ("0", "otlp"), "10%": ("0.1", "otlp"), "100%": ("1", "otlp"),
                    "100% kept": ("1", "none")}
        results: dict[str, list[float]] = {name: [] for name in settings}
        dropped: dict[str, int] = dict.fromkeys(settings, 0)
        for round_ in range(args.rounds + 1):  # the first round warms up (validators, imports) and is not kept
            for name, setting in settings.items():
                tracing = OFF
                if setting is not None:
                    os.environ["OTEL_TRACES_SAMPLER_ARG"], os.environ["OTEL_TRACES_EXPORTER"] = setting

                    def count(reason: str, spans: int, name: str = name) -> None:
                        dropped[name] += spans

                    tracing = start_tracing(True, count)
                cost = asyncio.run(deliveries(tracing, args.deliveries if round_ else 500))
                if round_:
                    results[name].append(cost)
                else:
                    dropped[name] = 0
        best = {name: min(values) for name, values in results.items()}
        for name, value in best.items():
            print(f"tracing {name:>9}: {value * 1e6:7.1f} µs/delivery  ({value / best['off']:.2f}x off)"
                  f"  spans dropped: {dropped[name]}")
        hooks = off_hooks()
        print(f"off, the hooks alone: {hooks * 1e6:.2f} µs/delivery ({hooks / best['off'] * 100:.1f} % of a delivery)")
    finally:
        sink.terminate()


if __name__ == "__main__":
    main()
