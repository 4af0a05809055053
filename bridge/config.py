"""Configuration: read from the environment once, validated loudly, then frozen.

`Settings.from_env` is the only place that looks at environment variables.
Every problem raises `ConfigError` naming the variable; no value of a secret
variable is ever put into a message or a repr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from bridge.errors import ConfigError
from bridge.verify import SigningKey

CloudEventsMode = Literal["binary", "structured"]
LogFormat = Literal["json", "text"]
SchemaValidation = Literal["off", "warn", "enforce"]
SCHEMA_VALIDATION_MODES: tuple[SchemaValidation, ...] = ("off", "warn", "enforce")

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Kafka's legal topic characters; the prefix and the dead-letter topic must use only these.
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC_LENGTH = 249

T = TypeVar("T")


@dataclass(frozen=True)
class Secret:
    """A string that prints as redacted wherever it ends up."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    create_topics: bool = True
    topic_partitions: int = 3
    topic_replication: int = 1


@dataclass(frozen=True)
class Settings:
    signing_keys: tuple[SigningKey, ...]
    kafka: KafkaSettings
    host: str = "0.0.0.0"
    port: int = 8080
    admin_port: int = 8081
    webhook_path: str = "/webhooks/scalekit"
    topic_prefix: str = "scalekit."
    deadletter_topic: str = "scalekit.deadletter"
    publish_timeout: float = 8.0
    max_body_bytes: int = 1_048_576
    timestamp_tolerance: int = 300
    cloudevents_mode: CloudEventsMode = "binary"
    schema_validation: SchemaValidation = "warn"
    redelivery_cache_size: int = 100_000
    redelivery_cache_ttl: float = 1800.0
    shutdown_grace: float = 20.0
    log_level: str = "INFO"
    log_format: LogFormat = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default: `os.environ`); raise ConfigError on the first problem."""
        reader = _Reader(os.environ if env is None else env)
        publish_timeout = reader.number("BRIDGE_PUBLISH_TIMEOUT", 8.0, float, low=0.1, high=60.0)
        settings = cls(
            signing_keys=_signing_keys(reader.required("SCALEKIT_WEBHOOK_SECRET")),
            kafka=_kafka_settings(reader),
            host=reader.text("BRIDGE_HOST", "0.0.0.0"),
            port=reader.number("BRIDGE_PORT", 8080, int, low=1, high=65535),
            admin_port=reader.number("BRIDGE_ADMIN_PORT", 8081, int, low=1, high=65535),
            webhook_path=reader.text("BRIDGE_WEBHOOK_PATH", "/webhooks/scalekit"),
            topic_prefix=reader.text("BRIDGE_TOPIC_PREFIX", "scalekit."),
            deadletter_topic=reader.text("BRIDGE_DEADLETTER_TOPIC", "scalekit.deadletter"),
            publish_timeout=publish_timeout,
            max_body_bytes=reader.number("BRIDGE_MAX_BODY_BYTES", 1_048_576, int, low=1, high=64 << 20),
            timestamp_tolerance=reader.number("BRIDGE_TIMESTAMP_TOLERANCE", 300, int, low=1, high=3600),
            cloudevents_mode=reader.choice("BRIDGE_CLOUDEVENTS_MODE", "binary", ("binary", "structured")),  # type: ignore[arg-type]
            schema_validation=reader.choice("BRIDGE_SCHEMA_VALIDATION", "warn", SCHEMA_VALIDATION_MODES),  # type: ignore[arg-type]
            redelivery_cache_size=reader.number("BRIDGE_REDELIVERY_CACHE_SIZE", 100_000, int, low=0, high=10_000_000),
            redelivery_cache_ttl=reader.number("BRIDGE_REDELIVERY_CACHE_TTL", 1800.0, float, low=0.0, high=86_400.0),
            # Room for every in-flight publish to reach its own deadline before we exit.
            shutdown_grace=reader.number("BRIDGE_SHUTDOWN_GRACE", publish_timeout + 5.0, float, low=0.0, high=600.0),
            log_level=reader.choice("BRIDGE_LOG_LEVEL", "INFO", LOG_LEVELS, fold=str.upper),
            log_format=reader.choice("BRIDGE_LOG_FORMAT", "json", ("json", "text")),  # type: ignore[arg-type]
        )
        _check_names(settings)
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, name: str) -> str | None:
        value = self._env.get(name)
        return value.strip() if value is not None and value.strip() else None

    def required(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ConfigError(name, "is required")
        return value

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def number(self, name: str, default: T, cast: Callable[[str], T], *, low: T, high: T) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = cast(value)
        except ValueError:
            raise ConfigError(name, f"must be a {cast.__name__}, got {value!r}") from None
        if not (low <= number <= high):  # type: ignore[operator]
            raise ConfigError(name, f"must be between {low} and {high}, got {value!r}")
        return number

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], fold: Callable[[str], str] = str.lower
    ) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if fold(value) not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        return fold(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be true or false, got {value!r}")


def _signing_keys(value: str) -> tuple[SigningKey, ...]:
    keys = []
    for position, secret in enumerate(re.split(r"[\s,]+", value), start=1):
        if not secret:
            continue
        try:
            keys.append(SigningKey.from_secret(secret))
        except ValueError as exc:
            # The message says which secret (by position) and why, never its text.
            raise ConfigError("SCALEKIT_WEBHOOK_SECRET", f"secret #{position}: {exc}") from None
    if not keys:
        raise ConfigError("SCALEKIT_WEBHOOK_SECRET", "is required")
    return tuple(keys)


def _kafka_settings(reader: _Reader) -> KafkaSettings:
    protocol = reader.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", SECURITY_PROTOCOLS, fold=str.upper)
    mechanism = username = None
    password = None
    if protocol.startswith("SASL_"):
        mechanism = reader.choice("KAFKA_SASL_MECHANISM", "", SASL_MECHANISMS, fold=str.upper)
        if not mechanism:
            raise ConfigError("KAFKA_SASL_MECHANISM", f"is required with KAFKA_SECURITY_PROTOCOL={protocol}")
        username = reader.required("KAFKA_SASL_USERNAME")
        password = Secret(reader.required("KAFKA_SASL_PASSWORD"))
    cafile = reader.raw("KAFKA_SSL_CAFILE")
    if cafile is not None and not os.path.isfile(cafile):
        raise ConfigError("KAFKA_SSL_CAFILE", f"no such file: {cafile}")
    return KafkaSettings(
        bootstrap_servers=reader.text("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=username,
        sasl_password=password,
        ssl_cafile=cafile,
        create_topics=reader.flag("BRIDGE_CREATE_TOPICS", True),
        topic_partitions=reader.number("BRIDGE_TOPIC_PARTITIONS", 3, int, low=1, high=10_000),
        topic_replication=reader.number("BRIDGE_TOPIC_REPLICATION", 1, int, low=1, high=32),
    )


def _check_names(settings: Settings) -> None:
    if not settings.webhook_path.startswith("/"):
        raise ConfigError("BRIDGE_WEBHOOK_PATH", "must start with '/'")
    if not _TOPIC_CHARS.match(settings.topic_prefix) or len(settings.topic_prefix) > 200:
        raise ConfigError("BRIDGE_TOPIC_PREFIX", "may use only letters, digits, '.', '_' and '-' (at most 200)")
    if not _TOPIC_CHARS.match(settings.deadletter_topic) or len(settings.deadletter_topic) > _MAX_TOPIC_LENGTH:
        raise ConfigError("BRIDGE_DEADLETTER_TOPIC", "must be a legal Kafka topic name")
    if settings.port == settings.admin_port:
        raise ConfigError("BRIDGE_ADMIN_PORT", "must differ from BRIDGE_PORT")
