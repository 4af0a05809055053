"""`ScalekitBridgeContainer`: the bridge's image under testcontainers, for teams that run the image.

    network = Network().create()
    with KafkaContainer().with_kraft().with_network(network).with_network_aliases("kafka") as kafka, \\
         ScalekitBridgeContainer("registry.example/scalekit-bridge:0.1.0", kafka=kafka, network=network) as bridge:
        assert bridge.send(scalekit_event("organization.created")).status == 201

It joins the Kafka container's network and bootstraps from its in-network listener (`<alias>:9092`),
while `send` and `records` work from the test process through the mapped ports, as with `BridgeServer`.
"""

from __future__ import annotations

import secrets
import time
import urllib.request
from typing import Any

from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from bridge.testing import _Endpoint, new_secret

WEBHOOK_PORT = 8080
ADMIN_PORT = 8081
# testcontainers' Kafka container serves other containers on its network at this port.
IN_NETWORK_KAFKA_PORT = 9092


class ScalekitBridgeContainer(_Endpoint, DockerContainer):
    def __init__(
        self,
        image: str,
        *,
        kafka: Any,
        network: Network,
        kafka_alias: str = "kafka",
        secret: str | None = None,
        topic_prefix: str | None = None,
        **env: str,
    ) -> None:
        DockerContainer.__init__(self, image)
        self.secret = secret or new_secret()
        self.topic_prefix = topic_prefix or f"t{secrets.token_hex(4)}."
        self.deadletter_topic = env.pop("BRIDGE_DEADLETTER_TOPIC", self.topic_prefix + "deadletter")
        self._kafka = kafka
        self.with_network(network)
        self.with_exposed_ports(WEBHOOK_PORT, ADMIN_PORT)
        settings = {
            "SCALEKIT_WEBHOOK_SECRET": self.secret,
            "KAFKA_BOOTSTRAP_SERVERS": f"{kafka_alias}:{IN_NETWORK_KAFKA_PORT}",
            "BRIDGE_TOPIC_PREFIX": self.topic_prefix,
            "BRIDGE_DEADLETTER_TOPIC": self.deadletter_topic,
            **env,
        }
        for name, value in settings.items():
            self.with_env(name, value)
        self._path = env.get("BRIDGE_WEBHOOK_PATH", "/webhooks/scalekit")

    def start(self, timeout: float = 60.0) -> ScalekitBridgeContainer:
        DockerContainer.start(self)
        # From the test process: the mapped webhook port, and the Kafka container's own mapped listener.
        self.url = f"http://{self.get_container_host_ip()}:{self.get_exposed_port(WEBHOOK_PORT)}{self._path}"
        self.bootstrap_servers = str(self._kafka.get_bootstrap_server())
        ready = f"http://{self.get_container_host_ip()}:{self.get_exposed_port(ADMIN_PORT)}/readyz"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = self.get_logs()
                raise RuntimeError(f"the bridge container never became ready:\n{logs[0].decode()[-3000:]}")
            time.sleep(0.2)
