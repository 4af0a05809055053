"""One lever at a time: the bridge under environment variants, interleaved, on one Kafka, in one run.

Our machines drift by a third between minutes, so a lever worth 10 % is invisible in two runs made one
after the other. This runs the variants in turn (A, B, A, B, ...), each round on a fresh, warmed-up
server at the same constant rate, and prints every round and each variant's median CPU per delivery,
p50/p99 and the ratio to the first variant. Usage:

    python bench/levers.py --rate 1500 --rounds 4 'default:' 'uvloop:BRIDGE_EVENT_LOOP=uvloop'

A variant is `name:` followed by comma-separated `VAR=value` settings for `scalekit-bridge serve`
(`ceiling` as a name runs bench/peers/ceiling.py instead). `BENCH_CHECKOUT=DIR` as a setting runs the
code of another work tree, so two commits are compared the same way:
`git worktree add /tmp/before HEAD~3`, then `'before:BENCH_CHECKOUT=/tmp/before' 'after:'`. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.openloop import Step, attack, kafka, running  # noqa: E402
from tests import tools  # noqa: E402


def parse(variant: str) -> tuple[str, dict[str, str]]:
    name, _, settings = variant.partition(":")
    env = dict(pair.split("=", 1) for pair in settings.split(",") if pair)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="NAME:VAR=VALUE,...")
    parser.add_argument("--rate", type=int, default=1500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    variants = [parse(v) for v in args.variants]
    vegeta = tools.vegeta()
    results: dict[str, list[Step]] = {name: [] for name, _ in variants}
    with kafka() as bootstrap, tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        run_id = secrets.token_hex(3)
        for round_number in range(args.rounds):
            for name, env in variants:
                saved = {key: os.environ.get(key) for key in env}
                os.environ.update(env)
                try:
                    server_name = "ceiling" if name == "ceiling" else "bridge"
                    with running(server_name, bootstrap, run_id, vegeta, workdir) as server:
                        step = attack(server, args.rate, args.seconds, bootstrap, vegeta, workdir)
                finally:
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
                step.server = name
                results[name].append(step)
                print(f"round {round_number + 1}: {step.row()}", flush=True)
    first = statistics.median(s.cpu_ms_per_delivery for s in results[variants[0][0]])
    print(f"\n| variant | median CPU ms/delivery | vs {variants[0][0]} | median p50 ms | median p99 ms "
          "| failed steps |")
    print("|---|---|---|---|---|---|")
    for name, steps in results.items():
        cpu = statistics.median(s.cpu_ms_per_delivery for s in steps)
        print(f"| {name} | {cpu:.3f} | {cpu / first:.2f}x | {statistics.median(s.p50_ms for s in steps):.1f} | "
              f"{statistics.median(s.p99_ms for s in steps):.1f} | {sum(not s.passed for s in steps)} |")


if __name__ == "__main__":
    main()
