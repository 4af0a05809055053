"""A real, single-node Apache Kafka (KRaft) for development, tests and CI.

Used where no `KAFKA_BOOTSTRAP_SERVERS` is given and no Docker engine answers:
`scalekit-bridge dev`, the test suite's `kafka_bootstrap` fixture, `.ci/run`
and the benchmarks all start Kafka through `LocalKafka`.

The `org.apache.kafka:kafka_2.13` jars and their dependencies are resolved with
Maven into a cache outside the repository (`$SCALEKIT_BRIDGE_CACHE`, else
`$XDG_CACHE_HOME/scalekit-bridge`, else `~/.cache/scalekit-bridge`). Each
`LocalKafka` gets its own free loopback ports and its own data directory, so
several can run on one machine at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
# Kafka 4 logs through log4j2 but its dependencies speak slf4j 1.x; this binds the two.
_LOG_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>scalekit-bridge.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>{log_group}</groupId>
      <artifactId>{log_artifact}</artifactId>
      <version>{log_version}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


class LocalKafkaError(RuntimeError):
    """The local Kafka could not be fetched or started; the message says what to do."""


def cache_dir() -> Path:
    if configured := os.environ.get("SCALEKIT_BRIDGE_CACHE"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scalekit-bridge"


def kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """The directory of Kafka's jars, resolving them with Maven on first use."""
    home = cache_dir() / f"kafka_{SCALA_VERSION}-{version}"
    libs = home / "libs"
    if (home / ".complete").exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        # Two processes resolving at once (parallel test runs) would trip over each other.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / ".complete").exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                "Maven (mvn) is needed to fetch Kafka's jars; install it, or set KAFKA_BOOTSTRAP_SERVERS"
            )
        (home / "pom.xml").write_text(
            _POM.format(
                scala=SCALA_VERSION,
                version=version,
                log_group=_LOG_BINDING[0],
                log_artifact=_LOG_BINDING[1],
                log_version=_LOG_BINDING[2],
            )
        )
        staging = home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={staging}"],
            cwd=home,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise LocalKafkaError(
                f"Maven could not resolve org.apache.kafka:kafka_{SCALA_VERSION}:{version}:\n"
                + (result.stdout + result.stderr)[-4000:]
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (home / ".complete").touch()
    return libs


def _java() -> str:
    if home := os.environ.get("JAVA_HOME"):
        candidate = Path(home) / "bin" / "java"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError("Java 17+ is needed for the local Kafka; install it, or set KAFKA_BOOTSTRAP_SERVERS")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launching process dies, Kafka gets SIGTERM."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class LocalKafka:
    """One broker+controller process on free loopback ports, with its own data directory."""

    def __init__(self, *, heap: str = "768m", workdir: Path | None = None) -> None:
        self._heap = heap
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._port is None:
            raise LocalKafkaError("the local Kafka is not running")
        return f"127.0.0.1:{self._port}"

    @property
    def log_file(self) -> Path | None:
        return self._workdir / "server.log" if self._workdir else None

    def start(self, timeout: float = 120.0) -> str:
        """Start Kafka and return its bootstrap address once a client can produce to it."""
        jars = kafka_jars()
        java = _java()
        self._workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="scalekit-bridge-kafka-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        broker_port, controller_port = _free_port(), _free_port()
        properties = self._workdir / "server.properties"
        properties.write_text(_server_properties(self._workdir / "data", broker_port, controller_port))
        log4j = self._workdir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log_file=self._workdir / "server.log"))
        classpath = f"{jars}/*"
        jvm = [java, f"-Xmx{self._heap}", "-Xms256m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]

        # A cluster id is 16 random bytes in URL-safe base64, as `kafka-storage random-uuid` prints.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formatted = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)],
            capture_output=True,
            text=True,
        )
        if formatted.returncode != 0:
            raise LocalKafkaError(f"formatting the Kafka log directory failed:\n{formatted.stderr[-4000:]}")

        with open(self._workdir / "stdout.log", "wb") as out:
            self._process = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(properties)],
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a terminal's Ctrl-C reaches us, and we stop Kafka after the bridge drains.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._port = broker_port
        try:
            self._wait_until_writable(timeout)
        except BaseException:
            self.stop()
            raise
        return self.bootstrap_servers

    def stop(self, timeout: float = 30.0) -> None:
        """Stop Kafka (SIGTERM, then SIGKILL after `timeout`) and remove its data."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None and self._given_workdir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._port = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers, like a partition."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_until_writable(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise LocalKafkaError(f"Kafka exited during start-up:\n{self._log_tail()}")
            if _port_open(self._port) and asyncio.run(_can_produce(self.bootstrap_servers)):
                return
            time.sleep(0.5)
        raise LocalKafkaError(f"Kafka did not accept a write within {timeout:g}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        if self._workdir is None:
            return ""
        chunks = []
        for name in ("stdout.log", "server.log"):
            with contextlib.suppress(OSError):
                chunks.append((self._workdir / name).read_text(errors="replace")[-3000:])
        return "\n".join(chunks)


def _port_open(port: int | None) -> bool:
    if port is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


async def _can_produce(bootstrap_servers: str) -> bool:
    """True once the bridge's own publisher gets an acknowledged write through."""
    # Imported here: the launcher is also useful without the bridge's Kafka client loaded.
    from bridge.config import KafkaSettings
    from bridge.envelope import KafkaMessage
    from bridge.errors import PublishFailed
    from bridge.publish import KafkaPublisher

    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers=bootstrap_servers, topic_partitions=1),
        timeout=5.0,
        max_record_bytes=1024,
    )
    try:
        await publisher.start()
        await publisher.publish(KafkaMessage("__scalekit_bridge_probe", None, b"probe", ()))
    except PublishFailed:
        return False
    finally:
        await publisher.stop()
    return True


def _server_properties(data_dir: Path, broker_port: int, controller_port: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # Topics exist only when the bridge (or a test) creates them, as in production.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        # One node: internal topics cannot have more replicas than that.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{name}={value}\n" for name, value in settings.items())


def main() -> None:
    """`python -m bridge.devkafka`: run a local Kafka in the foreground until Ctrl-C."""
    kafka = LocalKafka()
    try:
        print(f"starting Apache Kafka {KAFKA_VERSION} (KRaft, one node)...", file=sys.stderr, flush=True)
        print(kafka.start(), flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        kafka.stop()


if __name__ == "__main__":
    main()
