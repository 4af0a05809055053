"""Benchmark: what a replay run costs, with every dead letter to publish and then with none left.

Writes DEAD_LETTERS signed dead letters (as the bridge writes them: raw body, webhook headers, the
signature entry, a reason) over ORGANIZATIONS organizations to a fresh dead-letter topic on a real Kafka
(KAFKA_BOOTSTRAP_SERVERS, else a local one), then runs `scalekit-bridge replay --since 2h` in its own
process three times: first everything is published (creating the types' topics), then everything is
found already in its topic, then as many new dead letters again are published into topics that now exist.
Prints wall time, dead letters read per second and peak RSS of each run, and ratios; asserts nothing.
Usage: `make bench-replay` (or `python bench/replay.py --dead-letters 5000`).
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
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from run import kafka  # bench/run.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bridge.verify import SigningKey, signature_header
from tests.fake_scalekit import sample_events

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def write_dead_letters(bootstrap: str, topic: str, count: int, organizations: int, *, create: bool) -> None:
    key = SigningKey.from_secret(SECRET)
    orgs = [f"org_{n}" for n in range(organizations)]
    start = datetime.now(UTC) - timedelta(hours=1)
    if create:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:  # as the bridge creates it: three partitions
            await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        finally:
            await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = []
        for envelope in sample_events(count, start=start, step=timedelta(hours=1) / count, organizations=orgs):
            body = json.dumps(envelope).encode()
            webhook_id, timestamp = f"msg_{envelope['id']}", str(int(time.time()))
            headers = [
                ("webhook-id", webhook_id.encode()),
                ("webhook-timestamp", timestamp.encode()),
                ("webhook-signature", signature_header(key, webhook_id, timestamp, body).encode()),
                ("deadletter-reason", b"undocumented event type (BRIDGE_MAX_UNKNOWN_TYPES=0 publishes none)"),
            ]
            sent.append(await producer.send(topic, value=body, key=webhook_id.encode(), headers=headers))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def run_once(env: dict[str, str]) -> tuple[float, str, int]:
    """Wall seconds, the summary line, and this run's peak RSS in KiB."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "bridge", "replay", "--since", "2h"], env=env,
                                 stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
        took = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"replay failed:\n{err.read().decode()[-2000:]}")
        return took, out.read().decode().strip().splitlines()[-1], usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dead-letters", type=int, default=5000)
    parser.add_argument("--organizations", type=int, default=50)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with kafka() as bootstrap:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        topic = prefix + "deadletter"
        asyncio.run(write_dead_letters(bootstrap, topic, args.dead_letters, args.organizations, create=True))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SCALEKIT_", "BRIDGE_"))},
            "SCALEKIT_WEBHOOK_SECRET": SECRET,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "BRIDGE_TOPIC_PREFIX": prefix,
            "BRIDGE_DEADLETTER_TOPIC": prefix + "deadletter",
        }
        timings = {}
        for label, read in (("all to publish", 1), ("none left", 1), ("half to publish", 2)):
            if label == "half to publish":  # as many again, into topics that now exist
                asyncio.run(write_dead_letters(bootstrap, topic, args.dead_letters, args.organizations, create=False))
            took, summary, peak_kib = run_once(env)
            timings[label] = took
            print(f"{label:<16} {took:6.1f} s  {read * args.dead_letters / took:7.0f} dead letters read/s  "
                  f"peak RSS {peak_kib / 1024:4.0f} MiB  | {summary}", flush=True)
        publishing = timings["half to publish"] - timings["none left"]
        print(f"all to publish / none left: {timings['all to publish'] / timings['none left']:.2f}x; "
              f"half to publish / none left: {timings['half to publish'] / timings['none left']:.2f}x "
              f"(about {args.dead_letters / publishing:.0f} records/s for the writes alone, by difference)")


if __name__ == "__main__":
    main()
