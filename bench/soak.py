"""Soak: `scalekit-bridge serve` at a fixed rate against a local 3-broker cluster, for minutes.

Prints, every 30 s: deliveries acknowledged, errors, p99 latency and the bridge's RSS; at the end,
how RSS moved (last third of the samples against the first third). Open loop: deliveries start on
the clock whatever the answers do, so a slow bridge shows as latency, not as a lower rate.
Usage: `make soak` (SOAK_MINUTES, SOAK_RATE) or `python bench/soak.py --minutes 10 --rate 200`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
from run import kafka, serving, signed  # bench/run.py, beside this script

from bridge.dev.samples import sample

EVENT_TYPE = "organization.directory.user_created"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


async def soak(bootstrap: str, minutes: float, rate: float) -> int:
    async with serving(bootstrap, "soak") as served:
        url = served.url
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
            latencies: list[float] = []
            errors = acknowledged = 0
            error_statuses: dict[str, int] = {}
            window_start = time.monotonic()
            rss_samples: list[float] = []
            pending: set[asyncio.Task[None]] = set()

            async def one(n: int) -> None:
                nonlocal errors, acknowledged
                body, headers = signed(sample(EVENT_TYPE) | {"id": f"evt_soak_{n}", "organization_id": f"org_{n % 50}"})
                started = time.monotonic()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        status = str(response.status)
                except aiohttp.ClientError as exc:
                    status = type(exc).__name__
                latencies.append(time.monotonic() - started)
                if status == "201":
                    acknowledged += 1
                else:
                    errors += 1
                    error_statuses[status] = error_statuses.get(status, 0) + 1

            await one(-1)  # creates the topic before the clock starts
            acknowledged = 0
            print(f"soak: {rate:g} deliveries/s for {minutes:g} min against {bootstrap}", flush=True)
            print("  t(s)  acknowledged  errors  p99(ms)  RSS(MiB)", flush=True)
            n = 0
            began = time.monotonic()
            end = began + minutes * 60
            while time.monotonic() < end:
                # Open loop: deliveries start on the clock, whatever the answers are doing.
                due = began + n / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                task = asyncio.create_task(one(n))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
                if time.monotonic() - window_start >= 30:
                    rss = rss_mib(served.pid)
                    rss_samples.append(rss)
                    p99 = statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 100 else 0.0
                    print(
                        f"{time.monotonic() - began:6.0f}  {acknowledged:12d}  {errors:6d}  {p99:7.1f}  {rss:8.1f}",
                        flush=True,
                    )
                    latencies.clear()
                    window_start = time.monotonic()
            await asyncio.gather(*pending)
        third = max(1, len(rss_samples) // 3)
        first, last = statistics.mean(rss_samples[:third] or [0]), statistics.mean(rss_samples[-third:] or [0])
        print(
            f"RSS first third {first:.1f} MiB, last third {last:.1f} MiB ({last - first:+.1f} MiB); "
            f"{acknowledged} acknowledged, {errors} errors {error_statuses}",
            flush=True,
        )
        return 0 if errors == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    with kafka(brokers=3) as bootstrap:
        code = asyncio.run(soak(bootstrap, args.minutes, args.rate))
    sys.exit(code)


if __name__ == "__main__":
    main()
