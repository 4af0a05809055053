"""docker-compose.yml, as `docker compose config` reads it (the CLI plugin needs no engine for that)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridge.dev.kafka import KAFKA_VERSION
from tests import tools

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="module")
def compose_env() -> dict[str, str]:
    return tools.required(tools.docker_compose)


def compose_config(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        env={**env, **extra}, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def project(compose_env) -> dict:
    env = {k: v for k, v in compose_env.items() if not k.startswith(("SCALEKIT_", "BRIDGE_", "KAFKA_"))}
    done = compose_config(env, SCALEKIT_WEBHOOK_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kafka_is_the_official_apache_image_in_kraft_mode_at_the_tested_version(project):
    kafka = project["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in kafka


def test_the_bridge_is_built_from_the_dockerfile_and_waits_for_a_healthy_kafka(project):
    bridge = project["services"]["bridge"]
    assert bridge["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile"}
    assert bridge["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert bridge["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert bridge["environment"]["SCALEKIT_WEBHOOK_SECRET"] == SECRET


def test_the_bridge_runs_hardened_as_in_kubernetes(project):
    bridge = project["services"]["bridge"]
    assert (bridge["user"], bridge["read_only"], bridge["cap_drop"]) == ("10001:10001", True, ["ALL"])
    assert bridge["security_opt"] == ["no-new-privileges:true"]
    published = {(p["target"], p.get("host_ip")) for p in bridge["ports"]}
    assert published == {(8080, None), (8081, "127.0.0.1")}  # admin only on loopback


def test_without_a_signing_secret_compose_refuses_and_names_the_variable(compose_env):
    env = {k: v for k, v in compose_env.items() if k != "SCALEKIT_WEBHOOK_SECRET"}
    done = compose_config(env)
    assert done.returncode != 0
    assert "SCALEKIT_WEBHOOK_SECRET" in done.stderr
