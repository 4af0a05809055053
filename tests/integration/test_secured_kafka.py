"""Deliveries (and backfills) through TLS and SASL_SSL listeners, and clear refusals when trust or login fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from bridge.dev.kafka import LocalKafka, Secured
from bridge.dev.samples import sample
from tests.conftest import KafkaTool
from tests.fake_scalekit import FakeScalekit, sample_events

pytestmark = pytest.mark.integration

PUBLISHED = (201, {"received": True, "outcome": "published"})  # a new record, not a duplicate


@pytest.fixture(scope="module")
def secured_kafka() -> Iterator[LocalKafka]:
    """A broker of this module's own with PLAINTEXT, SSL and SASL_SSL listeners (certificates from trustme)."""
    with LocalKafka(secured=True) as kafka:
        yield kafka


def secured(kafka: LocalKafka) -> Secured:
    assert kafka.security is not None
    return kafka.security


def mtls_env(security: Secured) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": security.mtls_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(security.cafile),
        "KAFKA_SSL_CERTFILE": str(security.client_certfile),
        "KAFKA_SSL_KEYFILE": str(security.client_keyfile),
    }


def sasl_env(security: Secured, mechanism: str, password: str | None = None) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": security.sasl_ssl_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": security.username,
        "KAFKA_SASL_PASSWORD": password if password is not None else security.password,
        "KAFKA_SSL_CAFILE": str(security.cafile),
    }


@pytest.mark.parametrize(
    "listener",
    ["SASL_SSL with PLAIN", "SASL_SSL with SCRAM-SHA-512", "SSL", "SSL with a client certificate"],
)
async def test_a_delivery_through_a_secured_listener_is_in_kafka(secured_kafka, bridge_process, listener):
    security = secured(secured_kafka)
    if listener == "SSL":
        env = {"KAFKA_BOOTSTRAP_SERVERS": security.ssl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SSL",
               "KAFKA_SSL_CAFILE": str(security.cafile)}
    elif listener == "SSL with a client certificate":  # the listener requires one (ssl.client.auth=required)
        env = mtls_env(security)
    else:
        env = sasl_env(security, listener.rsplit(" ", 1)[1])
    bridge = bridge_process("serve", **env)
    await bridge.wait_for_readiness(200, timeout=60)

    status, _ = await bridge.deliver(sample("organization.sso_enabled"), webhook_id=f"msg_{listener}")

    assert status == 201
    records = await KafkaTool(secured_kafka.bootstrap_servers).read_all(bridge.prefix + "organization.sso_enabled")
    assert [record.header("ce_webhookid") for record in records] == [f"msg_{listener}".encode()]


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("wrong password, PLAIN", "SASL PLAIN authentication failed for user 'bridge'"),
        ("wrong password, SCRAM-SHA-512", "SASL SCRAM-SHA-512 authentication failed for user 'bridge'"),
        ("untrusted certificate", "the broker's TLS certificate is not trusted"),
    ],
)
async def test_a_broker_we_cannot_trust_or_log_in_to_means_not_ready_503_and_one_clear_line(
    secured_kafka, bridge_process, case, cause
):
    security = secured(secured_kafka)
    wrong_password = "not-the-password-" + security.password[:4]
    if case == "untrusted certificate":
        env = {"KAFKA_BOOTSTRAP_SERVERS": security.ssl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SSL"}
    else:
        env = sasl_env(security, case.rsplit(" ", 1)[1], password=wrong_password)
    bridge = bridge_process("serve", **env)
    await asyncio.sleep(4)  # a few connection attempts

    assert await bridge.readiness() == 503
    status, answer = await bridge.deliver(sample("role.created"))
    assert (status, answer["error"]) == (503, "kafka_unavailable")
    bridge.process.terminate()
    _, output = await asyncio.to_thread(bridge.output_after_exit, 30)
    lines = [line for line in output.splitlines() if cause in line]
    assert len(lines) == 1, output
    assert wrong_password not in output and security.password not in output


async def test_backfill_reads_and_writes_through_sasl_ssl(secured_kafka, tmp_path):
    """The backfill's scan (consumer and admin) and its writes use the same TLS and SASL settings as serve."""
    security = secured(secured_kafka)
    prefix = f"b{uuid.uuid4().hex[:8]}."
    scalekit = FakeScalekit()
    scalekit.start()
    try:
        for envelope in sample_events(3, start=datetime.now(UTC) - timedelta(minutes=30)):
            scalekit.add(envelope)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SCALEKIT_", "BRIDGE_", "KAFKA_"))},
            **scalekit.env(),
            **sasl_env(security, "SCRAM-SHA-512"),
            "BRIDGE_TOPIC_PREFIX": prefix,
            "BRIDGE_DEADLETTER_TOPIC": prefix + "deadletter",
        }
        runs = [
            subprocess.run([sys.executable, "-m", "bridge", "backfill", "--since", "1h"],
                           env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)
        ]
    finally:
        scalekit.stop()

    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    summaries = [run.stdout.splitlines()[-1] for run in runs]
    assert summaries == [
        "fetched 3, already in Kafka 0, published 3, dead-lettered 0, failed 0, unreadable 0",
        "fetched 3, already in Kafka 3, published 0, dead-lettered 0, failed 0, unreadable 0",
    ]


async def test_rotated_kafka_credentials_in_a_file_take_effect_without_a_restart(
    secured_kafka, bridge_process, tmp_path
):
    """The SCRAM password changes on the broker, then in the mounted file: the bridge reconnects on it."""
    security = secured(secured_kafka)
    password_file = tmp_path / "kafka-password"
    password_file.write_text(security.password + "\n")
    env = sasl_env(security, "SCRAM-SHA-512")
    env |= {"KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": str(password_file)}
    bridge = bridge_process("serve", **env)
    await bridge.wait_for_readiness(200, timeout=60)
    assert await bridge.deliver(sample("role.created") | {"id": "evt_before"}, webhook_id="msg_before") == PUBLISHED

    rotated = "rotated-" + security.password[::-1]
    await asyncio.to_thread(secured_kafka.set_scram_password, rotated)
    try:
        staged = tmp_path / "staged"
        staged.write_text(rotated + "\n")
        staged.replace(password_file)  # atomically, as the kubelet swaps a Secret's files
        await asyncio.sleep(8)  # the bridge looks every 5 s
        assert await bridge.deliver(sample("role.created") | {"id": "evt_after"}, webhook_id="msg_after") == PUBLISHED
        assert await bridge.readiness() == 200
    finally:
        await asyncio.to_thread(secured_kafka.set_scram_password, security.password)

    records = await KafkaTool(secured_kafka.bootstrap_servers).read_all(bridge.prefix + "role.created")
    assert [record.header("ce_webhookid") for record in records] == [b"msg_before", b"msg_after"]
    bridge.process.terminate()
    _, output = await asyncio.to_thread(bridge.output_after_exit, 30)
    assert '"secret":"Kafka credentials"' in output and "a rotated secret is in use" in output, output
    assert "refused" not in output, output
    assert rotated not in output and security.password not in output


async def test_without_its_client_certificate_the_bridge_is_not_ready_and_says_why(secured_kafka, bridge_process):
    security = secured(secured_kafka)
    env = {k: v for k, v in mtls_env(security).items() if k not in ("KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")}
    bridge = bridge_process("serve", **env)
    await asyncio.sleep(4)  # a few connection attempts

    assert await bridge.readiness() == 503
    bridge.process.terminate()
    _, output = await asyncio.to_thread(bridge.output_after_exit, 30)
    said = [line for line in output.splitlines() if "kafka not reachable yet" in line]
    assert len(said) == 1, output
    assert "if its listener requires a client certificate, set KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE" in said[0]


def mounted_like_a_secret(directory: Path, files: dict[str, Path]) -> dict[str, Path]:
    """`files` copied into `directory` the way the kubelet mounts a Secret: each name a link through
    `..data`, itself a link to a dated directory, so one rename swaps every file at once."""
    dated = directory / f"..{uuid.uuid4().hex}"
    dated.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, dated / name)
    staged = directory / "..data_tmp"
    staged.symlink_to(dated.name)
    staged.replace(directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)
    return {name: directory / name for name in files}


async def test_a_renewed_client_certificate_is_taken_up_without_a_restart(secured_kafka, bridge_process, tmp_path):
    """Strimzi renews a tls KafkaUser's certificate in its Secret; the kubelet swaps the mounted files."""
    security = secured(secured_kafka)
    mount = tmp_path / "kafka-client"
    paths = mounted_like_a_secret(mount, {"tls.crt": security.client_certfile, "tls.key": security.client_keyfile})
    env = mtls_env(security) | {"KAFKA_SSL_CERTFILE": str(paths["tls.crt"]), "KAFKA_SSL_KEYFILE": str(paths["tls.key"])}
    bridge = bridge_process("serve", **env)
    await bridge.wait_for_readiness(200, timeout=60)
    assert await bridge.deliver(sample("role.created") | {"id": "evt_before"}, webhook_id="msg_before") == PUBLISHED

    renewed = tmp_path / "renewed"
    renewed.mkdir()
    await asyncio.to_thread(secured_kafka.issue_client_certificate, renewed / "tls.crt", renewed / "tls.key")
    mounted_like_a_secret(mount, {"tls.crt": renewed / "tls.crt", "tls.key": renewed / "tls.key"})
    await asyncio.sleep(8)  # the bridge looks every 5 s
    assert await bridge.deliver(sample("role.created") | {"id": "evt_after"}, webhook_id="msg_after") == PUBLISHED

    records = await KafkaTool(secured_kafka.bootstrap_servers).read_all(bridge.prefix + "role.created")
    assert [record.header("ce_webhookid") for record in records] == [b"msg_before", b"msg_after"]
    bridge.process.terminate()
    _, output = await asyncio.to_thread(bridge.output_after_exit, 30)
    assert "kafka clients reconnected with rotated credentials" in output, output
    assert "could not be used" not in output and "refused" not in output, output


async def test_a_renewed_ca_bundle_is_taken_up_without_a_restart(secured_kafka, bridge_process, tmp_path):
    """Strimzi renews its cluster CA by publishing a bundle with the old and the new certificate; the copy in
    the release namespace changes, the kubelet swaps the mounted file, and the bridge's new clients trust it."""
    security = secured(secured_kafka)
    mount = tmp_path / "kafka-ca"
    paths = mounted_like_a_secret(mount, {"ca.crt": security.cafile})
    bridge = bridge_process("serve", **(mtls_env(security) | {"KAFKA_SSL_CAFILE": str(paths["ca.crt"])}))
    await bridge.wait_for_readiness(200, timeout=60)
    assert await bridge.deliver(sample("role.created") | {"id": "evt_before"}, webhook_id="msg_before") == PUBLISHED

    bundle = tmp_path / "renewed-ca.crt"
    bundle.write_text(Path(security.cafile).read_text() + trustme.CA().cert_pem.bytes().decode())
    mounted_like_a_secret(mount, {"ca.crt": bundle})
    deadline = asyncio.get_running_loop().time() + 60
    while "kafka clients reconnected with rotated credentials" not in bridge.output():
        assert asyncio.get_running_loop().time() < deadline, bridge.output()
        await asyncio.sleep(0.2)
    assert await bridge.deliver(sample("role.created") | {"id": "evt_after"}, webhook_id="msg_after") == PUBLISHED

    records = await KafkaTool(secured_kafka.bootstrap_servers).read_all(bridge.prefix + "role.created")
    assert [record.header("ce_webhookid") for record in records] == [b"msg_before", b"msg_after"]
    assert "could not be used" not in bridge.output() and "refused" not in bridge.output()
