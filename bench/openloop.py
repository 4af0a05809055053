"""Open-loop benchmark: the bridge side by side with two peers, on one Kafka, in one run.

Servers, one after another, same workload and rates, against ONE broker:
  1. `bridge`: `scalekit-bridge serve`, default settings (one record per event: receipts on);
     `bridge-nodedup`: the same with BRIDGE_DEDUP=off, for what one record per event costs;
  2. `ceiling`: bench/peers/ceiling.py, an aiohttp + aiokafka forwarder that verifies and maps nothing;
  3. `seed-guide`: bench/peers/seed_guide.py, Flask under gunicorn (2 sync workers), the SDK's
     verify_webhook_payload, confluent-kafka produce + flush.

Load: vegeta (built pinned, see tests/tools.py) at a constant rate, open loop, from pre-signed targets (a
fresh webhook-id and event id per request, timestamps fresh when the step's targets are made, ~50
organizations, the directory-user sample). Steps: 500/s and 1,000/s, then a saturation search from 2,000/s
(upward while a step passes, downward if 2,000/s does not): a step passes when 201s are at least 99 % of
the planned requests and p99 is at most 1 s. For each step: achieved rate, p50/p99/max, status codes, the
server's CPU seconds per delivery and RSS (from /proc, its whole process tree), a check that its topics grew
by at least the number of 201s, and a warning when other processes took CPU during the step. Then Kafka's
own ProducerPerformance with the same record size and guarantees, as the broker's limit on this machine.

Prints a Markdown table and the ratios; asserts nothing. Usage: `make bench` or
`python bench/openloop.py [--seconds 20] [--servers bridge,ceiling,seed-guide] [--rates 1000,2000]`
(`--rates`: only those steps, no search). `bench/levers.py` compares settings of the bridge, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.dev.kafka import KAFKA_VERSION, LocalKafka, cache_dir, kafka_jars, terminate  # noqa: E402
from bridge.dev.samples import sample  # noqa: E402
from bridge.dev.sendtest import signed_headers  # noqa: E402
from bridge.testing import free_port  # noqa: E402
from bridge.verify import SigningKey  # noqa: E402
from tests import tools  # noqa: E402

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
EVENT_TYPE = "organization.directory.user_created"
ORGANIZATIONS = [f"org_bench_{n:02d}" for n in range(50)]
PARTITIONS = 3
PASS_RATIO, PASS_P99 = 0.99, 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
_TOOLS_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>bench</groupId><artifactId>kafka-tools</artifactId><version>1</version>
<dependencies><dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
<version>{version}</version></dependency></dependencies></project>"""


@dataclass
class Step:
    server: str
    rate: int
    seconds: int
    achieved: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    codes: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_delivery: float = 0.0
    rss_mb: float = 0.0
    grew: int = 0
    others_cpu: float = 0.0

    @property
    def created(self) -> int:
        return self.codes.get("201", 0)

    @property
    def passed(self) -> bool:
        return self.created >= PASS_RATIO * self.rate * self.seconds and self.p99_ms <= PASS_P99 * 1000

    def row(self) -> str:
        codes = " ".join(f"{code}:{count}" for code, count in sorted(self.codes.items()))
        grown = "ok" if self.grew >= self.created else f"SHORT by {self.created - self.grew}"
        warning = f" (others took {self.others_cpu:.0%} CPU)" if self.others_cpu > 0.1 else ""
        return (
            f"| {self.server} | {self.rate} | {self.achieved:.0f} | {self.p50_ms:.1f} | {self.p99_ms:.1f} | "
            f"{self.max_ms:.0f} | {codes} | {self.cpu_ms_per_delivery:.2f} | {self.rss_mb:.0f} | {grown} | "
            f"{'pass' if self.passed else 'FAIL'}{warning} |"
        )


# --- the workload -----------------------------------------------------------------------------


def targets(path: Path, url: str, count: int) -> None:
    """`count` signed deliveries as vegeta JSON targets, each with its own webhook-id and event id."""
    key = SigningKey.from_secret(SECRET)
    base = sample(EVENT_TYPE)
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"
    rng = random.Random(7)
    with path.open("w") as out:
        for n in range(count):
            organization = rng.choice(ORGANIZATIONS)
            envelope = base | {"id": f"evt_bench_{n}_{secrets.token_hex(4)}", "occurred_at": now,
                               "organization_id": organization,
                               "data": base["data"] | {"organization_id": organization}}
            body = json.dumps(envelope).encode()
            headers = {name: [value] for name, value in signed_headers(key, body).items()}
            target = {"method": "POST", "url": url, "body": base64.b64encode(body).decode(), "header": headers}
            out.write(json.dumps(target) + "\n")


def record_size() -> int:
    return len(json.dumps(sample(EVENT_TYPE)).encode())


# --- processes and /proc ----------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    topics: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/scalekit"


def start_server(name: str, bootstrap: str, run_id: str) -> Server:
    port = free_port()
    # BENCH_CHECKOUT: run the servers' code from another work tree (`git worktree add`), to compare commits.
    root = Path(os.environ.get("BENCH_CHECKOUT", ROOT))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PORT": str(port), "PYTHONPATH": str(root)}
    python = sys.executable
    if name in ("bridge", "bridge-nodedup"):
        prefix = f"bench{run_id}.{name}."
        env |= {"BRIDGE_DEDUP": "off"} if name == "bridge-nodedup" else {}
        env |= {"SCALEKIT_WEBHOOK_SECRET": SECRET, "BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": str(port),
                "BRIDGE_ADMIN_HOST": "127.0.0.1", "BRIDGE_ADMIN_PORT": str(free_port()),
                "BRIDGE_TOPIC_PREFIX": prefix, "BRIDGE_DEADLETTER_TOPIC": prefix + "deadletter"}
        command = [python, "-m", "bridge", "serve"]
        topics = [prefix + EVENT_TYPE]
    elif name == "ceiling":
        topics = [f"bench{run_id}.ceiling"]
        env["TOPIC"] = topics[0]
        command = [python, str(root / "bench" / "peers" / "ceiling.py")]
    elif name == "seed-guide":
        prefix = f"bench{run_id}.seedguide."
        env |= {"SCALEKIT_WEBHOOK_SECRET": SECRET, "TOPIC_PREFIX": prefix}
        topics = [prefix + EVENT_TYPE]
        gunicorn = str(Path(python).parent / "gunicorn")
        command = [gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                   "bench.peers.seed_guide:app"]
    else:
        raise SystemExit(f"unknown server {name}")
    # Its logs are part of its work (the bridge writes one line per delivery), but not of the report.
    process = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Server(name, process, port, topics)


def wait_listening(server: Server, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited early")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
            return
        time.sleep(0.2)
    raise SystemExit(f"{server.name} never listened")


# --- Kafka --------------------------------------------------------------------------------------


async def create_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in topics])
    finally:
        await admin.close()


async def records_in(bootstrap: str, topics: list[str]) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


def producer_performance(bootstrap: str, records: int, size: int) -> str:
    """Kafka's own ProducerPerformance at full speed with the bridge's guarantees: the broker's limit here."""
    home = cache_dir() / f"kafka-tools-{KAFKA_VERSION}"
    libs = home / "libs"
    if not (home / ".complete").exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "pom.xml").write_text(_TOOLS_POM.format(version=KAFKA_VERSION))
        subprocess.run(["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
                       cwd=home, check=True)
        (home / ".complete").touch()
    classpath = f"{libs}/*:{kafka_jars()}/*"
    topic = f"bench.perf.{secrets.token_hex(3)}"
    asyncio.run(create_topics(bootstrap, [topic]))
    done = subprocess.run(
        ["java", "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance",
         "--topic", topic, "--num-records", str(records), "--record-size", str(size), "--throughput", "-1",
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "enable.idempotence=true",
         "linger.ms=5"],
        capture_output=True, text=True, check=True,
    )
    return done.stdout.strip().splitlines()[-1]


# --- one step -----------------------------------------------------------------------------------


def attack(server: Server, rate: int, seconds: int, bootstrap: str, vegeta: Path, workdir: Path) -> Step:
    step = Step(server.name, rate, seconds)
    target_file = workdir / "targets.json"
    targets(target_file, server.url, rate * seconds)
    results = workdir / "results.bin"
    before_records = asyncio.run(records_in(bootstrap, server.topics))
    pids = tree(server.process.pid)
    # Everything this benchmark runs is in its own process tree: the server, the local Kafka, itself.
    cpu0, ours0, busy0 = cpu_seconds(pids), cpu_seconds(tree(os.getpid())), machine_busy_seconds()
    attacker = subprocess.Popen(
        [str(vegeta), "attack", "-format=json", f"-targets={target_file}", f"-rate={rate}/s",
         f"-duration={seconds}s", "-timeout=10s", "-max-body=0", f"-output={results}"],
    )
    _, _, usage = os.wait4(attacker.pid, 0)
    attacker.returncode = 0
    vegeta_cpu = usage.ru_utime + usage.ru_stime
    pids = tree(server.process.pid)
    cpu1, ours1, busy1 = cpu_seconds(pids), cpu_seconds(tree(os.getpid())), machine_busy_seconds()
    step.rss_mb = rss_mb(pids)
    report = json.loads(subprocess.run([str(vegeta), "report", "-type=json", str(results)],
                                       capture_output=True, text=True, check=True).stdout)
    step.achieved = report["throughput"]
    step.p50_ms = report["latencies"]["50th"] / 1e6
    step.p99_ms = report["latencies"]["99th"] / 1e6
    step.max_ms = report["latencies"]["max"] / 1e6
    step.codes = {str(code): count for code, count in report["status_codes"].items()}
    step.cpu_ms_per_delivery = (cpu1 - cpu0) * 1000 / max(1, step.created)
    time.sleep(1.0)  # acks counted; let the last records settle before reading the end offsets
    step.grew = asyncio.run(records_in(bootstrap, server.topics)) - before_records
    # CPU that neither the server, vegeta nor the local Kafka used (a given KAFKA_BOOTSTRAP_SERVERS
    # on this machine counts as another process): a busy neighbour makes the step unreliable.
    others = (busy1 - busy0) - (ours1 - ours0) - vegeta_cpu
    step.others_cpu = max(0.0, others) / (seconds * (os.cpu_count() or 1))
    settle(server)
    return step


def settle(server: Server, quiet: float = 0.05, longest: float = 60.0) -> None:
    """Wait until the server has worked off a failed step's backlog, so it does not spill into the next."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        before = cpu_seconds(tree(server.process.pid))
        time.sleep(1.0)
        if cpu_seconds(tree(server.process.pid)) - before < quiet:
            return


def search(name: str, bootstrap: str, run_id: str, seconds: int, vegeta: Path, workdir: Path) -> list[Step]:
    """Saturation: from 2,000/s up while steps pass; down from there when 2,000/s does not.

    Each step gets a fresh, warmed-up server: one that melted down in the step before (a backlog of
    timed-out requests, a producer queue full) would make the next step measure the meltdown.
    """
    steps: list[Step] = []
    up = [2000, 2500, 3000, 3500, 4000, 5000, 6000, 8000]
    down = [1500, 1250, 1000, 750, 500]
    for rates in (up, down):
        if rates is down and steps[0].passed:
            break
        for rate in rates:
            with running(name, bootstrap, run_id, vegeta, workdir) as server:
                step = attack(server, rate, seconds, bootstrap, vegeta, workdir)
            steps.append(step)
            print(step.row(), flush=True)
            if step.passed is (rates is down):
                break
    return steps


@contextlib.contextmanager
def running(name: str, bootstrap: str, run_id: str, vegeta: Path, workdir: Path) -> Iterator[Server]:
    """A started, listening, warmed-up server (its topics made first, with the same partitions for all)."""
    server = start_server(name, bootstrap, run_id)
    try:
        with contextlib.suppress(Exception):  # the topics exist after the first start
            asyncio.run(create_topics(bootstrap, server.topics))
        wait_listening(server)
        attack(server, 200, 5, bootstrap, vegeta, workdir)  # warm-up: connections, metadata, imports
        yield server
    finally:
        terminate(server.process, 30)


@contextlib.contextmanager
def kafka() -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    with LocalKafka() as local:
        yield local.bootstrap_servers


# Work done for one record per event, wherever in the stack (the receipt's hand-over, the tail, the memory);
# the producer's sending of receipt batches stays under the producer.
DEDUP = ("bridge/dedup.py", "bridge/kafka/receipts.py", "bridge/remembered.py", "note_written (", "_written_by (")
# Where a stack's time goes: the innermost frame from one of these files decides (first match wins).
CATEGORIES = (
    ("compression", ("gzip.py", "zlib", "lz4", "zstd", "snappy")),
    ("JSON encode/decode", ("/json/",)),
    ("schema check", ("jsonschema_rs", "bridge/contract.py")),
    ("verify (HMAC, headers)", ("bridge/verify.py", "hmac.py", "hashlib")),
    ("mapping (envelope → CloudEvent)", ("bridge/envelope.py",)),
    ("metrics", ("prometheus_client", "bridge/metrics.py")),
    ("logging", ("logging/", "bridge/logs.py")),
    ("producer (aiokafka)", ("aiokafka",)),
    ("HTTP (aiohttp, the guard, the handler)", ("aiohttp", "bridge/guard.py", "bridge/app.py", "multidict", "yarl")),
    ("pipeline, redelivery cache", ("bridge/pipeline.py", "bridge/redelivery.py")),
    ("event loop and sockets", ("asyncio/", "selectors.py", "uvloop")),
)


def profile(bootstrap: str, rate: int, seconds: int, vegeta: Path, workdir: Path) -> None:
    """py-spy samples `serve` at `rate`; prints where each delivery's CPU goes, by category."""
    raw = workdir / "profile.txt"
    with running("bridge", bootstrap, secrets.token_hex(3), vegeta, workdir) as server:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                                "--rate", "500", "--nonblocking", "-d", str(seconds), "-o", str(raw),
                                "-p", str(server.process.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        step = attack(server, rate, seconds, bootstrap, vegeta, workdir)
        spy.wait()
    totals: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        category = next(
            (name for frame in reversed(frames) for name, marks in CATEGORIES if any(m in frame for m in marks)),
            "other",
        )
        if any(mark in frame for frame in frames for mark in DEDUP):
            category = "one record per event (receipts, memory)"
        if "(idle)" in frames[-1] or "select (selectors.py" in frames[-1]:
            category = "idle (waiting for I/O)"
        totals[category] = totals.get(category, 0) + int(count)
    busy = sum(n for name, n in totals.items() if not name.startswith("idle"))
    print(f"py-spy, bridge at {rate}/s for {seconds}s: {step.row()}")
    print("| where (innermost frame) | share of busy samples | CPU µs per delivery |\n|---|---|---|")
    for name, n in sorted(totals.items(), key=lambda item: -item[1]):
        if name.startswith("idle"):
            continue
        print(f"| {name} | {n / busy:.0%} | {step.cpu_ms_per_delivery * 1000 * n / busy:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="length of each step (default 20)")
    parser.add_argument("--servers", default="bridge,bridge-nodedup,ceiling,seed-guide")
    parser.add_argument("--perf-records", type=int, default=300_000)
    parser.add_argument("--profile", type=int, metavar="RATE", help="only profile the bridge at RATE with py-spy")
    parser.add_argument("--rates", metavar="R,R,...",
                        help="only these fixed rates, a fresh server each, no search (for comparing one lever)")
    args = parser.parse_args()
    vegeta = tools.vegeta()
    if args.profile:
        with kafka() as bootstrap, tempfile.TemporaryDirectory() as scratch:
            profile(bootstrap, args.profile, args.seconds, vegeta, Path(scratch))
        return
    run_id = secrets.token_hex(3)
    steps: list[Step] = []
    saturation: dict[str, int] = {}
    print(f"# open-loop benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Linux {platform.release()}, "
          f"Python {platform.python_version()}, Kafka {KAFKA_VERSION}, one broker; record {record_size()} bytes\n")
    header = ("| server | rate/s | achieved/s | p50 ms | p99 ms | max ms | status | CPU ms/delivery | RSS MB "
              "| topics grew | step |\n|---|---|---|---|---|---|---|---|---|---|---|")
    with kafka() as bootstrap, tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        print(header, flush=True)
        for name in args.servers.split(","):
            if args.rates:
                for rate in (int(r) for r in args.rates.split(",")):
                    with running(name, bootstrap, run_id, vegeta, workdir) as server:
                        steps.append(attack(server, rate, args.seconds, bootstrap, vegeta, workdir))
                    print(steps[-1].row(), flush=True)
                continue
            with running(name, bootstrap, run_id, vegeta, workdir) as server:
                for rate in (500, 1000):
                    step = attack(server, rate, args.seconds, bootstrap, vegeta, workdir)
                    steps.append(step)
                    print(step.row(), flush=True)
            steps.extend(search(name, bootstrap, run_id, args.seconds, vegeta, workdir))
            passing = [s.rate for s in steps if s.server == name and s.passed]
            saturation[name] = max(passing) if passing else 0
        if args.rates:
            ratios(steps, saturation)
            return
        perf = producer_performance(bootstrap, args.perf_records, record_size())
    print("\n| server | saturation rate/s (highest passing step) |\n|---|---|")
    for name, rate in saturation.items():
        print(f"| {name} | {rate} |")
    print(f"\nKafka ProducerPerformance (acks=all, idempotent, linger 5 ms, {record_size()}-byte records): {perf}")
    ratios(steps, saturation)


def ratios(steps: list[Step], saturation: dict[str, int]) -> None:
    def at(server: str, rate: int) -> Step | None:
        return next((s for s in steps if s.server == server and s.rate == rate), None)

    print("\nRatios (same run):")
    if saturation.get("bridge") and saturation.get("bridge-nodedup"):
        print(f"- saturation, dedup on / off: {saturation['bridge'] / saturation['bridge-nodedup']:.2f}x")
    for rate in (500, 1000):
        on, off = at("bridge", rate), at("bridge-nodedup", rate)
        if on and off and off.p99_ms and off.cpu_ms_per_delivery:
            print(f"- at {rate}/s, dedup on / off: p99 {on.p99_ms / off.p99_ms:.2f}x, "
                  f"CPU per delivery {on.cpu_ms_per_delivery / off.cpu_ms_per_delivery:.2f}x, "
                  f"RSS {on.rss_mb / off.rss_mb:.2f}x")
    for peer in ("ceiling", "seed-guide"):
        if saturation.get("bridge") and saturation.get(peer):
            print(f"- saturation, bridge / {peer}: {saturation['bridge'] / saturation[peer]:.2f}x")
    bridge, ceiling = at("bridge", 1000), at("ceiling", 1000)
    if bridge and ceiling and ceiling.p99_ms:
        print(f"- p99 at 1,000/s, bridge / ceiling: {bridge.p99_ms / ceiling.p99_ms:.2f}x")
    for rate in (500, 1000):
        bridge, ceiling = at("bridge", rate), at("ceiling", rate)
        if bridge and ceiling and ceiling.cpu_ms_per_delivery:
            print(f"- CPU per delivery at {rate}/s, bridge / ceiling: "
                  f"{bridge.cpu_ms_per_delivery / ceiling.cpu_ms_per_delivery:.2f}x")


if __name__ == "__main__":
    main()
