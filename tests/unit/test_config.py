"""Configuration comes from the environment once; anything wrong stops start-up and names the variable."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.config import BackfillSettings, Settings
from bridge.errors import ConfigError

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"t" * 32).decode()


def settings(**env: str) -> Settings:
    return Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **env})


def refused(**env: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env if "SCALEKIT_WEBHOOK_SECRET" in env else {"SCALEKIT_WEBHOOK_SECRET": SECRET, **env})
    return caught.value


README = Path(__file__).resolve().parents[2] / "docs" / "operating" / "configuration.md"


def documented_defaults() -> dict[str, str]:
    """docs/operating/configuration.md's table: each variable whose default is written as a literal."""
    documented: dict[str, str] = {}
    # "| `BRIDGE_PORT` | `8080` | ..." or "| `BRIDGE_HOST` / `BRIDGE_PORT` | `0.0.0.0` / `8080` | ...", units after.
    for row in re.findall(
        r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)?) \| (`[^`|]*`(?: / `[^`|]*`)?)", README.read_text(), re.MULTILINE
    ):
        names, defaults = (re.findall(r"`([^`]*)`", cell) for cell in row)
        documented.update(zip(names, defaults, strict=True))
    return documented


def as_documented(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def effective(s: Settings, variable: str) -> str:
    name = variable.removeprefix("BRIDGE_").removeprefix("KAFKA_").lower()
    backfill = BackfillSettings.from_env(
        {"SCALEKIT_ENVIRONMENT_URL": "https://acme.scalekit.example", "SCALEKIT_CLIENT_ID": "c",
         "SCALEKIT_CLIENT_SECRET": "s"}
    )
    owner = next(owner for owner in (s, s.kafka, backfill) if hasattr(owner, name))
    return as_documented(getattr(owner, name))


def test_every_default_is_the_one_the_readme_documents():
    documented = documented_defaults()
    assert "BRIDGE_ADMIN_PORT" in documented and "KAFKA_SECURITY_PROTOCOL" in documented  # the table was read
    s = settings()
    assert {variable: effective(s, variable) for variable in documented} == documented
    assert s.drain_seconds == s.publish_timeout + 5.0


def test_a_release_s_own_topics_follow_its_prefix_unless_named():
    """Two installs on one Kafka with their own prefixes share neither dead letters nor backfill state."""
    api = {"SCALEKIT_ENVIRONMENT_URL": "https://acme.scalekit.example", "SCALEKIT_CLIENT_ID": "c",
           "SCALEKIT_CLIENT_SECRET": "s"}
    staging = BackfillSettings.from_env({**api, "BRIDGE_TOPIC_PREFIX": "staging.scalekit."})
    assert (staging.deadletter_topic, staging.backfill_state_topic) == (
        "staging.scalekit.deadletter", "staging.scalekit.backfill-state"
    )
    assert settings(BRIDGE_TOPIC_PREFIX="prod.scalekit.").deadletter_topic == "prod.scalekit.deadletter"
    named = BackfillSettings.from_env({**api, "BRIDGE_TOPIC_PREFIX": "prod.", "BRIDGE_DEADLETTER_TOPIC": "dl",
                                       "BRIDGE_BACKFILL_STATE_TOPIC": "scalekit-bridge.backfill-state"})
    assert (named.deadletter_topic, named.backfill_state_topic) == ("dl", "scalekit-bridge.backfill-state")


def test_the_drain_follows_the_publish_timeout_unless_a_grace_is_given():
    assert settings(BRIDGE_PUBLISH_TIMEOUT="20").drain_seconds == 25.0
    assert settings(BRIDGE_PUBLISH_TIMEOUT="20", BRIDGE_SHUTDOWN_GRACE="30").drain_seconds == 30.0


@pytest.mark.parametrize(
    ("env", "brokers", "expected"),
    [
        ({}, 1, (1, 1)),
        ({}, 2, (2, 1)),
        ({}, 3, (3, 2)),
        ({}, 6, (3, 2)),
        ({"BRIDGE_TOPIC_REPLICATION": "5"}, 6, (5, 2)),
        ({"BRIDGE_TOPIC_REPLICATION": "3", "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS": "3"}, 3, (3, 3)),
        ({"BRIDGE_TOPIC_REPLICATION": "auto", "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS": "auto"}, 3, (3, 2)),
    ],
)
def test_new_topics_are_replicated_three_ways_with_two_in_sync_where_the_cluster_allows(env, brokers, expected):
    replication, min_insync, warning = settings(**env).kafka.replication_for(brokers)
    assert (replication, min_insync) == expected
    assert warning is None


def test_replication_beyond_the_cluster_is_lowered_with_a_warning_naming_the_variable():
    replication, min_insync, warning = settings(BRIDGE_TOPIC_REPLICATION="3").kafka.replication_for(1)
    assert (replication, min_insync) == (1, 1)
    assert warning is not None and "BRIDGE_TOPIC_REPLICATION=3" in warning
    _, min_insync, warning = settings(BRIDGE_TOPIC_MIN_INSYNC_REPLICAS="2").kafka.replication_for(1)
    assert min_insync == 1
    assert warning is not None and "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS=2" in warning


@pytest.mark.parametrize("mode", ["off", "warn", "enforce", "ENFORCE"])
def test_schema_validation_takes_each_documented_mode(mode):
    assert settings(BRIDGE_SCHEMA_VALIDATION=mode).schema_validation == mode.lower()


def test_several_secrets_separated_by_spaces_or_commas_are_all_kept():
    assert len(settings(SCALEKIT_WEBHOOK_SECRET=f"{SECRET}, {OLD_SECRET}").signing_keys) == 2
    assert len(settings(SCALEKIT_WEBHOOK_SECRET=f"{SECRET} {OLD_SECRET}").signing_keys) == 2


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SCALEKIT_WEBHOOK_SECRET": ""}, "SCALEKIT_WEBHOOK_SECRET"),
        ({"SCALEKIT_WEBHOOK_SECRET": "not-a-secret"}, "SCALEKIT_WEBHOOK_SECRET"),
        ({"BRIDGE_PORT": "http"}, "BRIDGE_PORT"),
        ({"BRIDGE_PORT": "70000"}, "BRIDGE_PORT"),
        ({"BRIDGE_ADMIN_PORT": "8080"}, "BRIDGE_ADMIN_PORT"),
        ({"BRIDGE_MAX_INFLIGHT": "0"}, "BRIDGE_MAX_INFLIGHT"),
        ({"BRIDGE_MAX_CONNECTIONS": "many"}, "BRIDGE_MAX_CONNECTIONS"),
        ({"BRIDGE_HEADER_TIMEOUT": "0"}, "BRIDGE_HEADER_TIMEOUT"),
        ({"BRIDGE_BODY_TIMEOUT": "-3"}, "BRIDGE_BODY_TIMEOUT"),
        ({"BRIDGE_KEEPALIVE_TIMEOUT": "forever"}, "BRIDGE_KEEPALIVE_TIMEOUT"),
        ({"BRIDGE_SHUTDOWN_GRACE": "soon"}, "BRIDGE_SHUTDOWN_GRACE"),
        ({"BRIDGE_TOPIC_REPLICATION": "0"}, "BRIDGE_TOPIC_REPLICATION"),
        (
            {"BRIDGE_TOPIC_REPLICATION": "2", "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS": "3"},
            "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS",
        ),
        ({"BRIDGE_WEBHOOK_PATH": "webhooks"}, "BRIDGE_WEBHOOK_PATH"),
        ({"BRIDGE_TOPIC_PREFIX": "scale kit"}, "BRIDGE_TOPIC_PREFIX"),
        ({"BRIDGE_DEADLETTER_TOPIC": "dead/letter"}, "BRIDGE_DEADLETTER_TOPIC"),
        ({"BRIDGE_PUBLISH_TIMEOUT": "0"}, "BRIDGE_PUBLISH_TIMEOUT"),
        ({"BRIDGE_MAX_BODY_BYTES": "-1"}, "BRIDGE_MAX_BODY_BYTES"),
        ({"BRIDGE_MAX_BODY_BYTES": "100"}, "BRIDGE_MAX_BODY_BYTES"),
        ({"BRIDGE_TIMESTAMP_TOLERANCE": "five"}, "BRIDGE_TIMESTAMP_TOLERANCE"),
        ({"BRIDGE_CLOUDEVENTS_MODE": "batch"}, "BRIDGE_CLOUDEVENTS_MODE"),
        ({"BRIDGE_SCHEMA_VALIDATION": "strict"}, "BRIDGE_SCHEMA_VALIDATION"),
        ({"BRIDGE_CREATE_TOPICS": "maybe"}, "BRIDGE_CREATE_TOPICS"),
        ({"BRIDGE_TOPIC_PARTITIONS": "0"}, "BRIDGE_TOPIC_PARTITIONS"),
        ({"BRIDGE_LOG_LEVEL": "LOUD"}, "BRIDGE_LOG_LEVEL"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_USERNAME"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": "u",
            },
            "KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_bad_configuration_names_the_variable(env, variable):
    error = refused(**env)
    assert error.variable == variable
    assert str(error).startswith(variable)


def test_the_admin_listener_may_share_the_port_number_on_another_host():
    s = settings(BRIDGE_HOST="10.0.0.5", BRIDGE_ADMIN_HOST="127.0.0.1", BRIDGE_ADMIN_PORT="8080")
    assert (s.admin_host, s.admin_port, s.port) == ("127.0.0.1", 8080, 8080)


def test_sasl_settings_are_accepted_for_each_mechanism():
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "scram-sha-512"):
        kafka = settings(
            KAFKA_SECURITY_PROTOCOL="sasl_ssl",
            KAFKA_SASL_MECHANISM=mechanism,
            KAFKA_SASL_USERNAME="bridge",
            KAFKA_SASL_PASSWORD="hunter2",
        ).kafka
        assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", mechanism.upper())


def test_secrets_never_show_in_repr_or_errors():
    s = settings(
        SCALEKIT_WEBHOOK_SECRET=f"{SECRET},{OLD_SECRET}",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="bridge",
        KAFKA_SASL_PASSWORD="hunter2",
    )
    text = repr(s) + str(s)
    for secret in (SECRET, SECRET[6:], OLD_SECRET[6:], "hunter2"):
        assert secret not in text
    bad = "whsec_c2VjcmV0!"
    assert bad not in str(refused(SCALEKIT_WEBHOOK_SECRET=f"{SECRET} {bad}"))


def test_serve_refuses_to_start_naming_the_variable():
    """The real command exits non-zero before listening, and says which variable is wrong."""
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        env={"SCALEKIT_WEBHOOK_SECRET": SECRET, "BRIDGE_PORT": "eighty", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "BRIDGE_PORT" in result.stderr and SECRET not in result.stderr


def test_an_unknown_event_loop_or_compression_is_refused_by_name():
    assert refused(BRIDGE_EVENT_LOOP="trio").variable == "BRIDGE_EVENT_LOOP"
    assert refused(KAFKA_COMPRESSION_TYPE="brotli").variable == "KAFKA_COMPRESSION_TYPE"
    assert settings(KAFKA_COMPRESSION_TYPE="LZ4").kafka.compression_type == "lz4"


# --- what a careful read found (issue 24): values the reader used to accept ----------------------------


@pytest.mark.parametrize(
    "servers",
    ["host:abc", "broker:0", "broker:70000", ":9092", "a:9092,b:nine", "a:9092,,b:9092", "[::1:9092", "bro ker:9092"],
)
def test_a_bootstrap_server_that_is_not_host_and_port_is_refused_by_name(servers):
    assert refused(KAFKA_BOOTSTRAP_SERVERS=servers).variable == "KAFKA_BOOTSTRAP_SERVERS"


def test_bootstrap_servers_in_every_legal_form_are_kept():
    servers = "broker-1.kafka.svc:9092, 10.0.0.7:9093,[2001:db8::1]:9094,kafka,[::1]"  # no port: Kafka's 9092
    assert settings(KAFKA_BOOTSTRAP_SERVERS=servers).kafka.bootstrap_servers == servers


def test_a_ca_file_that_is_not_a_certificate_bundle_is_refused_by_name(tmp_path):
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    for path in (garbage, empty):
        error = refused(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(path))
        assert error.variable == "KAFKA_SSL_CAFILE"


def test_a_real_ca_bundle_is_accepted(tmp_path):
    trustme = pytest.importorskip("trustme")
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    assert settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(bundle)).kafka.ssl_cafile == str(bundle)


def test_a_signing_secret_shorter_than_16_bytes_is_refused_without_echoing_it():
    short = "whsec_" + base64.b64encode(b"0123456789abcde").decode()  # 15 bytes
    error = refused(SCALEKIT_WEBHOOK_SECRET=f"{SECRET} {short}")
    assert error.variable == "SCALEKIT_WEBHOOK_SECRET" and "#2" in str(error)
    assert short[6:] not in str(error)
    assert settings(SCALEKIT_WEBHOOK_SECRET="whsec_" + base64.b64encode(b"x" * 16).decode())


def backfill_refused(url: str) -> ConfigError:
    from bridge.config import BackfillSettings

    with pytest.raises(ConfigError) as caught:
        BackfillSettings.from_env(
            {"SCALEKIT_ENVIRONMENT_URL": url, "SCALEKIT_CLIENT_ID": "c", "SCALEKIT_CLIENT_SECRET": "s"}
        )
    return caught.value


@pytest.mark.parametrize(
    "url",
    [
        "https://admin:hunter2@acme.scalekit.com",
        "https://admin:hunter2@acme.scalekit.com:port",
        "http://admin:hunter2@acme.scalekit.com",
        "https://admin:hunter2@acme.scalekit.com/path",
    ],
)
def test_a_credential_in_the_environment_url_is_never_quoted(url):
    error = backfill_refused(url)
    assert error.variable == "SCALEKIT_ENVIRONMENT_URL"
    assert "hunter2" not in str(error) and "admin" not in str(error)


# --- secrets from files (a mounted Secret) -------------------------------------------------------


def test_each_secret_can_come_from_the_file_its_file_variable_names(tmp_path):
    webhook, password = tmp_path / "webhook", tmp_path / "password"
    webhook.write_text(f"{SECRET} {OLD_SECRET}\n")  # a mounted Secret's trailing newline is not part of it
    password.write_text("hunter2\n")
    s = Settings.from_env({
        "SCALEKIT_WEBHOOK_SECRET_FILE": str(webhook),
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "bridge",
        "KAFKA_SASL_PASSWORD_FILE": str(password),
    })
    assert s.signing_keys == settings(SCALEKIT_WEBHOOK_SECRET=f"{SECRET} {OLD_SECRET}").signing_keys
    assert s.webhook_secret_file == str(webhook)
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.reveal() == "hunter2"
    assert (s.kafka.sasl_password_file, s.kafka.sasl_username_file) == (str(password), None)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), ("\n", "is empty"), ("x" * 70_000, "not a secret")],
)
def test_an_unusable_secret_file_is_refused_naming_its_variable_and_never_its_content(tmp_path, content, problem):
    path = tmp_path / "webhook"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SCALEKIT_WEBHOOK_SECRET_FILE": str(path)})
    error = caught.value
    assert error.variable == "SCALEKIT_WEBHOOK_SECRET_FILE" and problem in str(error)
    assert "xxxx" not in str(error)


def test_a_secret_given_both_ways_is_refused(tmp_path):
    path = tmp_path / "webhook"
    path.write_text(SECRET)
    error = refused(SCALEKIT_WEBHOOK_SECRET=SECRET, SCALEKIT_WEBHOOK_SECRET_FILE=str(path))
    assert error.variable == "SCALEKIT_WEBHOOK_SECRET" and "not both" in str(error)
    assert SECRET[6:] not in str(error)


# --- a Kafka client certificate (brokers that require TLS client authentication) ---------------------


def client_certificate(tmp_path: Path) -> tuple[str, str]:
    import trustme

    issued = trustme.CA().issue_cert("scalekit-bridge")
    cert, key = tmp_path / "user.crt", tmp_path / "user.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def test_a_client_certificate_and_its_key_are_taken_over_tls(tmp_path):
    cert, key = client_certificate(tmp_path)
    kafka = settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTFILE=cert, KAFKA_SSL_KEYFILE=key).kafka
    assert (kafka.ssl_certfile, kafka.ssl_keyfile) == (cert, key)


def test_a_client_certificate_that_cannot_be_used_is_refused_by_name(tmp_path):
    cert, key = client_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = client_certificate(tmp_path / "other")
    assert refused(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTFILE=cert).variable == "KAFKA_SSL_KEYFILE"
    assert refused(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_KEYFILE=key).variable == "KAFKA_SSL_CERTFILE"
    assert "needs KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL" in str(
        refused(KAFKA_SSL_CERTFILE=cert, KAFKA_SSL_KEYFILE=key)
    )
    mismatched = refused(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTFILE=other_cert, KAFKA_SSL_KEYFILE=key)
    assert mismatched.variable == "KAFKA_SSL_KEYFILE" and "does not load" in str(mismatched)
    missing = refused(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTFILE=cert, KAFKA_SSL_KEYFILE=str(tmp_path / "no"))
    assert missing.variable == "KAFKA_SSL_KEYFILE"
    assert "PRIVATE KEY" not in str(mismatched) + str(missing)
