"""A real Apache Kafka (KRaft) for development, tests and CI: one node, or a 3-broker cluster.

Used where no `KAFKA_BOOTSTRAP_SERVERS` is given and no Docker engine answers:
`scalekit-bridge dev`, the test suite's Kafka fixtures, `.ci/run` and the
benchmarks all start Kafka through `LocalKafka`.

- `LocalKafka()` is one JVM that is broker and controller at once: the fastest
  start, for everything that does not kill brokers.
- `LocalKafka(brokers=3)` is three brokers and one dedicated controller. One
  controller, not three: the fault trials kill, freeze and restart *brokers*,
  and a controller that is never among them keeps the metadata quorum alive, so
  what they observe is the data path (ISR shrink, leader election, fencing), not
  a lost quorum. Three controllers would cost two more JVMs on a 2-core machine.
- `secured=True` adds TLS (`SSL`), `SASL_SSL` and client-certificate TLS (`MTLS`)
  listeners to every broker: PEM certificates from `trustme` (a client one too),
  SASL PLAIN and SCRAM-SHA-512 users created at format time (see `Secured`).

The `org.apache.kafka:kafka_2.13` jars and their dependencies are resolved with
Maven into a cache outside the repository (`$SCALEKIT_BRIDGE_CACHE`, else
`$XDG_CACHE_HOME/scalekit-bridge`, else `~/.cache/scalekit-bridge`). Each
`LocalKafka` gets its own free loopback ports and its own data directory, so
several can run on one machine at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
# Kafka 4 logs through log4j2 but its dependencies speak slf4j 1.x; this binds the two.
_LOG_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3")
CONTROLLER_ID = 0

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


def new_cluster_id(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """16 random bytes in URL-safe base64, as `kafka-storage random-uuid` prints.

    Like Kafka's own `Uuid.randomUuid`, an id that begins with '-' is drawn
    again: the storage tool would read it as an option ("expected one argument"),
    which happened in about one start in 64.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java() -> str:
    if home := os.environ.get("JAVA_HOME"):
        candidate = Path(home) / "bin" / "java"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError("Java 17+ is needed for the local Kafka; install it, or set KAFKA_BOOTSTRAP_SERVERS")
    return found


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM `process` and wait up to `grace` seconds for it to exit, then SIGKILL it; a no-op once it has exited."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launching process dies, Kafka gets SIGTERM."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass(frozen=True)
class Secured:
    """How to reach the TLS and SASL_SSL listeners of a `LocalKafka(secured=True)`.

    One user, `username`, exists for both SASL mechanisms (PLAIN from the
    listener's JAAS configuration, SCRAM-SHA-512 from the storage format).
    """

    cafile: Path
    ssl_bootstrap: str
    sasl_ssl_bootstrap: str
    # A TLS listener that requires a client certificate signed by `cafile`'s CA; `client_certfile` and
    # `client_keyfile` are one (PEM), for the CN "scalekit-bridge".
    mtls_bootstrap: str
    client_certfile: Path
    client_keyfile: Path
    username: str
    password: str = field(repr=False)


@dataclass
class _Node:
    node_id: int
    roles: str
    workdir: Path
    ports: dict[str, int]
    heap: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalKafka:
    """A KRaft cluster on free loopback ports, with its own data directories."""

    def __init__(
        self,
        *,
        brokers: int = 1,
        secured: bool = False,
        heap: str = "768m",
        workdir: Path | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        self._brokers = brokers
        self._secured = secured
        self._heap = heap
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._nodes: dict[int, _Node] = {}
        self._jvm: list[str] = []
        self.security: Secured | None = None
        self._ca: Any = None  # the trustme CA of a secured broker, to issue client certificates

    @property
    def bootstrap_servers(self) -> str:
        """The PLAINTEXT listeners of every broker, comma-separated."""
        listeners = [f"127.0.0.1:{node.ports['PLAINTEXT']}" for node in self._broker_nodes()]
        if not listeners:
            raise LocalKafkaError("the local Kafka is not running")
        return ",".join(listeners)

    @property
    def broker_ids(self) -> list[int]:
        return [node.node_id for node in self._broker_nodes()]

    def start(self, timeout: float = 180.0) -> str:
        """Start Kafka and return its bootstrap address once a client can produce to it."""
        jars = kafka_jars()
        java = _java()
        self._workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="scalekit-bridge-kafka-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        log4j = self._workdir / "log4j2.properties"
        # One log file per node, named by the JVM's `node` property.
        log4j.write_text(_LOG4J2.format(log_file=f"{self._workdir}/${{sys:node}}.log"))
        self._jvm = [java, "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                     f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{jars}/*"]
        self._nodes = self._plan_nodes()
        cluster_id = new_cluster_id()
        format_extra = self._prepare_security() if self._secured else []
        voters = self._voters()
        try:
            for node in self._nodes.values():
                node.workdir.mkdir(parents=True, exist_ok=True)
                (node.workdir / "server.properties").write_text(self._properties(node, voters))
                # SCRAM users are metadata: the controllers' bootstrap snapshot must carry them.
                extra = format_extra if "controller" in node.roles else []
                formatted = subprocess.run(
                    [*self._jvm_for(node), "kafka.tools.StorageTool", "format",
                     "--cluster-id", cluster_id, "-c", str(node.workdir / "server.properties"), *extra],
                    capture_output=True,
                    text=True,
                )
                if formatted.returncode != 0:
                    raise LocalKafkaError(
                        f"formatting the Kafka log directory of node {node.node_id} failed:\n"
                        + formatted.stderr[-4000:]
                    )
            for node in self._nodes.values():
                self._launch(node)
            self._wait_until_writable(timeout)
        except BaseException:
            self.stop()
            raise
        return self.bootstrap_servers

    def issue_client_certificate(self, certfile: Path, keyfile: Path) -> None:
        """Write a new client certificate (PEM chain) and key from this broker's CA, as a renewal would."""
        assert self._ca is not None, "only a LocalKafka(secured=True) has a CA"
        import trustme

        client = self._ca.issue_cert("scalekit-bridge", key_type=trustme.KeyType.RSA)
        certfile.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
        client.private_key_pem.write_to_path(str(keyfile))

    def set_scram_password(self, password: str) -> None:
        """Change the SCRAM-SHA-512 password of the secured broker's user (a credential rotation).

        Connections already authenticated stay open; new ones need the new password.
        """
        assert self.security is not None, "only a LocalKafka(secured=True) has SASL users"
        java, *rest = self._jvm
        done = subprocess.run(
            [java, "-Xmx256m", *rest, "kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap_servers,
             "--alter", "--entity-type", "users", "--entity-name", self.security.username,
             "--add-config", f"SCRAM-SHA-512=[password={password}]"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise LocalKafkaError(f"changing the SCRAM password failed:\n{done.stderr[-2000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after `timeout`) and remove the data.

        The brokers first, all at once, and the controller after them: a broker's controlled shutdown asks
        the controller, and without one it waits out the whole `timeout` (90 s for three brokers)."""
        brokers = [node for node in self._nodes.values() if "controller" not in node.roles]
        controllers = [node for node in self._nodes.values() if "controller" in node.roles]
        for node in brokers:
            if node.running:
                assert node.process is not None
                node.process.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
                node.process.terminate()
        for node in (*brokers, *controllers):
            self._terminate(node, timeout)
        self._nodes = {}
        if self._workdir is not None and self._given_workdir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self.security = None

    # --- faults, for the trials -------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crashed machine would stop: no flush, no goodbye."""
        node = self._nodes[node_id]
        if node.process is not None and node.running:
            node.process.send_signal(signal.SIGCONT)
            node.process.kill()
            node.process.wait()

    def terminate(self, node_id: int, timeout: float = 30.0) -> None:
        """Stop one node cleanly (SIGTERM: controlled shutdown moves its leaderships first)."""
        self._terminate(self._nodes[node_id], timeout)

    def launch(self, node_id: int) -> None:
        """Start a stopped or killed node again, without waiting.

        Call it from the thread that will outlive the node: the node is told to
        stop when the thread that launched it ends (PR_SET_PDEATHSIG is per thread).
        """
        node = self._nodes[node_id]
        if node.running:
            raise LocalKafkaError(f"node {node_id} is still running")
        self._launch(node)

    def wait_listening(self, node_id: int, timeout: float = 120.0) -> None:
        node = self._nodes[node_id]
        deadline = time.monotonic() + timeout
        port = node.ports.get("PLAINTEXT") or node.ports["CONTROLLER"]
        while not _port_open(port):
            if not node.running:
                raise LocalKafkaError(f"node {node_id} exited during restart:\n{self._log_tail(node)}")
            if time.monotonic() > deadline:
                raise LocalKafkaError(f"node {node_id} did not listen within {timeout:g}s")
            time.sleep(0.2)

    def pause(self, node_id: int | None = None) -> None:
        """Freeze a broker (all brokers when None) with SIGSTOP: connections stay open, nothing answers."""
        for node in self._targets(node_id):
            if node.process is not None and node.running:
                node.process.send_signal(signal.SIGSTOP)

    def resume(self, node_id: int | None = None) -> None:
        for node in self._targets(node_id):
            if node.process is not None and node.running:
                node.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------------

    def _plan_nodes(self) -> dict[int, _Node]:
        assert self._workdir is not None
        workdir = self._workdir
        listeners = ["PLAINTEXT", *(("SSL", "SASL_SSL", "MTLS") if self._secured else ())]

        def node(node_id: int, roles: str, heap: str) -> _Node:
            ports = {"CONTROLLER": free_port()} if "controller" in roles else {}
            if "broker" in roles:
                ports |= {name: free_port() for name in listeners}
            return _Node(node_id, roles, workdir / f"node-{node_id}", ports, heap)

        if self._brokers == 1:
            return {1: node(1, "broker,controller", self._heap)}
        nodes = {CONTROLLER_ID: node(CONTROLLER_ID, "controller", "256m")}
        for broker_id in range(1, self._brokers + 1):
            nodes[broker_id] = node(broker_id, "broker", "512m")
        return nodes

    def _broker_nodes(self) -> list[_Node]:
        return [node for node in self._nodes.values() if "broker" in node.roles]

    def _targets(self, node_id: int | None) -> list[_Node]:
        return self._broker_nodes() if node_id is None else [self._nodes[node_id]]

    def _voters(self) -> str:
        return ",".join(
            f"{node.node_id}@127.0.0.1:{node.ports['CONTROLLER']}"
            for node in self._nodes.values()
            if "controller" in node.roles
        )

    def _jvm_for(self, node: _Node) -> list[str]:
        java, *rest = self._jvm
        return [java, f"-Xmx{node.heap}", "-Xms128m", f"-Dnode=node-{node.node_id}", *rest]

    def _launch(self, node: _Node) -> None:
        with open(node.workdir / "stdout.log", "ab") as out:
            node.process = subprocess.Popen(
                [*self._jvm_for(node), "kafka.Kafka", str(node.workdir / "server.properties")],
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a terminal's Ctrl-C reaches us, and we stop Kafka after the bridge drains.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @staticmethod
    def _terminate(node: _Node, timeout: float) -> None:
        process, node.process = node.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            terminate(process, timeout)

    def _properties(self, node: _Node, voters: str) -> str:
        replicas = str(min(3, self._brokers))
        settings = {
            "process.roles": node.roles,
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.workdir / "data"),
            # Topics exist only when the bridge (or a test) creates them, as in production.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Fence a silent broker after 3 s instead of 9 s, so the trials see elections quickly.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        protocols = {name: name for name in node.ports}
        protocols["CONTROLLER"] = "PLAINTEXT"
        if "MTLS" in protocols:
            protocols["MTLS"] = "SSL"  # TLS that requires a client certificate
        listeners = ",".join(f"{name}://127.0.0.1:{port}" for name, port in node.ports.items())
        settings["listeners"] = listeners
        settings["listener.security.protocol.map"] = ",".join(f"{k}:{v}" for k, v in protocols.items())
        if "broker" in node.roles:
            settings["advertised.listeners"] = ",".join(
                f"{name}://127.0.0.1:{port}" for name, port in node.ports.items() if name != "CONTROLLER"
            )
            settings["inter.broker.listener.name"] = "PLAINTEXT"
            if self.security is not None:
                settings |= self._security_properties()
        return "".join(f"{name}={value}\n" for name, value in settings.items())

    def _prepare_security(self) -> list[str]:
        """Write the certificates and choose the user; returns the format tool's SCRAM arguments."""
        try:
            import trustme
            from cryptography.hazmat.primitives import serialization
        except ImportError as exc:
            raise LocalKafkaError("a secured local Kafka needs the test extras (trustme)") from exc
        assert self._workdir is not None
        tls = self._workdir / "tls"
        tls.mkdir(exist_ok=True)
        ca = trustme.CA(key_type=trustme.KeyType.RSA)
        cert = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
        # Kafka's PEM key store takes PKCS#8 keys only.
        key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        (tls / "server.pem").write_bytes(pkcs8 + chain)
        ca.cert_pem.write_to_path(str(tls / "ca.pem"))
        self._ca = ca
        self.issue_client_certificate(tls / "client.pem", tls / "client.key")
        password = secrets.token_urlsafe(18)
        brokers = self._broker_nodes()
        self.security = Secured(
            cafile=tls / "ca.pem",
            ssl_bootstrap=",".join(f"127.0.0.1:{n.ports['SSL']}" for n in brokers),
            sasl_ssl_bootstrap=",".join(f"127.0.0.1:{n.ports['SASL_SSL']}" for n in brokers),
            mtls_bootstrap=",".join(f"127.0.0.1:{n.ports['MTLS']}" for n in brokers),
            client_certfile=tls / "client.pem",
            client_keyfile=tls / "client.key",
            username="bridge",
            password=password,
        )
        return ["--add-scram", f"SCRAM-SHA-512=[name=bridge,password={password}]"]

    def _security_properties(self) -> dict[str, str]:
        assert self.security is not None and self._workdir is not None
        user, password = self.security.username, self.security.password
        return {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self._workdir / "tls" / "server.pem"),
            "listener.name.mtls.ssl.client.auth": "required",
            "listener.name.mtls.ssl.truststore.type": "PEM",
            "listener.name.mtls.ssl.truststore.location": str(self._workdir / "tls" / "ca.pem"),
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
            "listener.name.sasl_ssl.plain.sasl.jaas.config":
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_{user}="{password}";',
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        }

    def _wait_until_writable(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self._nodes.values():
                if not node.running:
                    raise LocalKafkaError(f"Kafka node {node.node_id} exited during start-up:\n{self._log_tail(node)}")
            ports = [node.ports["PLAINTEXT"] for node in self._broker_nodes()]
            if all(_port_open(port) for port in ports) and asyncio.run(
                _can_produce(self.bootstrap_servers, len(ports))
            ):
                return
            time.sleep(0.5)
        tails = "\n".join(self._log_tail(node) for node in self._nodes.values())
        raise LocalKafkaError(f"Kafka did not accept a write within {timeout:g}s:\n{tails}")

    def _log_tail(self, node: _Node) -> str:
        chunks = []
        for path in (node.workdir / "stdout.log", node.workdir.parent / f"node-{node.node_id}.log"):
            with contextlib.suppress(OSError):
                chunks.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(chunks)


def _port_open(port: int | None) -> bool:
    if port is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


async def _can_produce(bootstrap_servers: str, brokers: int) -> bool:
    """True once every broker has registered and the bridge's own publisher gets an acked write through."""
    # Imported here: the launcher is also useful without the bridge's Kafka client loaded.
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from bridge.config import KafkaSettings
    from bridge.envelope import KafkaMessage
    from bridge.errors import PublishFailed
    from bridge.kafka.producer import KafkaPublisher

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    try:
        await admin.start()
        if len((await admin.describe_cluster())["brokers"]) < brokers:
            return False
    except KafkaError:
        return False
    finally:
        await admin.close()
    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers=bootstrap_servers, topic_partitions=1),
        timeout=10.0,
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


def main(argv: list[str] | None = None) -> None:
    """`python -m bridge.dev.kafka [--brokers 3]`: run a local Kafka in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m bridge.dev.kafka", description=main.__doc__)
    parser.add_argument("--brokers", type=int, default=1, help="1 (broker+controller in one JVM) or more")
    args = parser.parse_args(argv)
    kafka = LocalKafka(brokers=args.brokers)
    try:
        shape = "one node" if args.brokers == 1 else f"{args.brokers} brokers, one controller"
        print(f"starting Apache Kafka {KAFKA_VERSION} (KRaft, {shape})...", file=sys.stderr, flush=True)
        print(kafka.start(), flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        kafka.stop()


if __name__ == "__main__":
    main()
