"""What one record per event (BRIDGE_DEDUP) costs besides latency: memory per id, and start-up with a full window.

1. Bytes per event id remembered: `RememberedIds` filled with N ids of Scalekit's shape, measured with
   tracemalloc, and what that makes a day's window at 10, 100 and 1,000 events/s (capped by
   BRIDGE_DEDUP_MAX_IDS, the window then shorter).
2. Start-up: N receipts written to a receipts topic within the window, then `scalekit-bridge serve` started
   on it; the seconds from its start to `/readyz` 200 (it has read them all), its RSS then, and the ids it
   says it remembers. N = 0 is the baseline in the same run.

Latency and CPU per delivery with dedup on and off are `make bench` (bridge and bridge-nodedup) and
`bench/levers.py`. Prints Markdown; asserts nothing. Usage: `make bench-dedup` or
`python bench/dedup.py [--receipts 0,100000,1000000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from openloop import SECRET, rss_mb, terminate, tree  # bench/openloop.py, beside this script
from run import kafka  # bench/run.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.config import Settings  # noqa: E402
from bridge.core import Source  # noqa: E402
from bridge.remembered import RememberedIds  # noqa: E402
from tests.helpers import free_port  # noqa: E402

DAY_MS = 86_400_000


def event_id(n: int) -> str:
    return f"evt_{100_000_000_000_000_000 + n}"  # Scalekit's ids: evt_ and 21 digits


def bytes_per_id(count: int) -> float:
    remembered = RememberedIds(DAY_MS, max_ids=count + 1)
    now = time.time_ns() // 1_000_000
    step = max(1, DAY_MS // count)
    tracemalloc.start()
    for n in range(count):
        remembered.add(event_id(n), now - DAY_MS + 1 + n * step, Source.WEBHOOK)
    used, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return used / count


async def write_receipts(bootstrap: str, topic: str, count: int) -> float:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = {"cleanup.policy": "compact,delete", "retention.ms": str(DAY_MS), "segment.ms": str(DAY_MS // 24)}
        await admin.create_topics([NewTopic(topic, 3, 1, topic_configs=configs)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=262_144)
    await producer.start()
    started = time.monotonic()
    try:
        value = json.dumps({"source": "webhook", "topic": "scalekit.user.created", "partition": 0, "offset": 1})
        pending = []
        for n in range(count):
            pending.append(await producer.send(topic, key=event_id(n).encode(), value=value.encode()))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


def ready_after(bootstrap: str, prefix: str) -> tuple[float, float, float]:
    """Seconds from `serve`'s start to /readyz 200, its RSS then (MiB), and the ids it remembers."""
    admin_port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SCALEKIT_WEBHOOK_SECRET": SECRET,
           "BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": str(free_port()), "BRIDGE_ADMIN_HOST": "127.0.0.1",
           "BRIDGE_ADMIN_PORT": str(admin_port), "BRIDGE_TOPIC_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit("serve exited early")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        seconds = time.monotonic() - started
        rss = rss_mb(tree(process.pid))
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
            metrics = answer.read().decode()
        remembered = next(float(line.split()[1]) for line in metrics.splitlines()
                          if line.startswith("scalekit_bridge_dedup_remembered_ids "))
        return seconds, rss, remembered
    finally:
        terminate(process, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receipts", default="0,100000,1000000", help="receipts in the window, per start-up")
    parser.add_argument("--ids", type=int, default=1_000_000, help="ids for the bytes-per-id measure")
    args = parser.parse_args()
    print(f"# one record per event: memory and start-up, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Linux {platform.release()}, "
          f"Python {platform.python_version()}, one local Kafka broker\n")
    per_id = bytes_per_id(args.ids)
    cap = Settings.__dataclass_fields__["dedup_max_ids"].default
    print(f"Memory: {per_id:.1f} bytes per event id remembered ({args.ids:,} ids, tracemalloc).\n")
    print("| events/s | ids in a day's window | remembered (BRIDGE_DEDUP_MAX_IDS) | memory | window kept |")
    print("|---|---|---|---|---|")
    for rate in (10, 100, 1000):
        ids = rate * 86_400
        kept = min(ids, cap)
        hours = kept / rate / 3600
        print(f"| {rate:,} | {ids:,} | {kept:,} | {kept * per_id / 2**20:.0f} MiB | {hours:.1f} h |")
    print("\n| receipts in the window | written in | serve start to ready | RSS when ready | ids remembered |")
    print("|---|---|---|---|---|")
    with kafka() as bootstrap:
        baseline = None
        for count in (int(n) for n in args.receipts.split(",")):
            prefix = f"bench{secrets.token_hex(3)}."
            written = asyncio.run(write_receipts(bootstrap, prefix + "dedup-receipts", count)) if count else 0.0
            seconds, rss, remembered = ready_after(bootstrap, prefix)
            baseline = baseline or seconds
            print(f"| {count:,} | {written:.1f} s | {seconds:.1f} s ({seconds / baseline:.1f}x the empty one) "
                  f"| {rss:.0f} MiB | {remembered:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
