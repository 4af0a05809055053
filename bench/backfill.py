"""Benchmark: what a backfill run costs when everything is missing, when nothing is, and when half is.

A local Scalekit (tests/fake_scalekit.py: the SDK's own protocols, 100 events a page) holds EVENTS
events over the last hour; `scalekit-bridge backfill --since 2h` runs in its own process against a real
Kafka (KAFKA_BOOTSTRAP_SERVERS, else a local one): once with every event missing (creating 29 topics),
once with all of them present, then once more after as many newer events were added (written into
topics that now exist). Prints wall time, peak RSS and when each phase ended (process start included);
asserts nothing. Usage: `make bench-backfill` (or `python bench/backfill.py --events 5000`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from run import kafka  # bench/run.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fake_scalekit import FakeScalekit, sample_events


def run_once(env: dict[str, str]) -> tuple[float, str, int, str]:
    """Wall seconds, the summary line, this run's peak RSS in KiB, and where the time went."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.time()
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "bridge", "backfill", "--since", "2h"], env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
        took = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        errors = err.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"backfill failed:\n{errors[-2000:]}")
        return took, out.read().decode().strip().splitlines()[-1], usage.ru_maxrss, _phases(errors, began)


def _phases(log: str, began: float) -> str:
    """Seconds from the start to the end of the Kafka scan, of the listing, and of the writes."""
    ends: dict[str, float] = {}
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("phase") in ("scanned", "fetched", "published"):
            ends[entry["phase"]] = datetime.fromisoformat(entry["time"]).timestamp() - began
    return ", ".join(f"{phase} at {at:.1f} s" for phase, at in ends.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    scalekit = FakeScalekit()
    scalekit.start()
    try:
        start = datetime.now(UTC) - timedelta(hours=1)
        for envelope in sample_events(args.events, start=start, step=timedelta(hours=1) / args.events):
            scalekit.add(envelope)
        with kafka() as bootstrap:
            prefix = f"bench{uuid.uuid4().hex[:6]}."
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("SCALEKIT_", "BRIDGE_"))},
                **scalekit.env(),
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "BRIDGE_TOPIC_PREFIX": prefix,
                "BRIDGE_DEADLETTER_TOPIC": prefix + "deadletter",
            }
            for label in ("all missing", "all present", "half missing"):
                if label == "half missing":  # as many again, newer, into topics that now exist
                    later = start + timedelta(minutes=30)
                    for envelope in sample_events(args.events, start=later, step=timedelta(minutes=30) / args.events):
                        scalekit.add(envelope)
                took, summary, peak_kib, phases = run_once(env)
                print(
                    f"{label:<12} {took:6.1f} s  "
                    f"peak RSS {peak_kib / 1024:5.0f} MiB  | {summary}\n{'':<14}({phases})",
                    flush=True,
                )
    finally:
        scalekit.stop()


if __name__ == "__main__":
    main()
