"""Configuration: read from the environment once, validated loudly, then frozen.

`Settings.from_env` is the only place that looks at environment variables.
Every problem raises `ConfigError` naming the variable; no value of a secret
variable is ever put into a message or a repr.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from bridge.envelope import CLOUDEVENTS_MODES, MAX_TOPIC_LENGTH, CloudEventsMode
from bridge.errors import ConfigError
from bridge.verify import SigningKey
from bridge.window import parse_duration

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
Compression = Literal["none", "gzip", "lz4", "zstd", "snappy"]
COMPRESSIONS: tuple[Compression, ...] = ("none", "gzip", "lz4", "zstd", "snappy")
EventLoop = Literal["uvloop", "asyncio"]
EVENT_LOOPS: tuple[EventLoop, ...] = ("uvloop", "asyncio")
SchemaValidation = Literal["off", "warn", "enforce"]
SCHEMA_VALIDATION_MODES: tuple[SchemaValidation, ...] = ("off", "warn", "enforce")

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Scalekit's secrets decode to 32 bytes; fewer than 16 is not a key anyone should sign with.
_MIN_KEY_BYTES = 16
# Kafka's legal topic characters; the prefix and the dead-letter topic must use only these.
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
# A secret file is a few dozen bytes; a path to something else entirely is refused, not read whole.
_MAX_SECRET_FILE_BYTES = 64 * 1024
# A CA bundle is public and may be a system's whole bundle (about 200 KiB); it is followed like the secrets.
_MAX_CA_BUNDLE_BYTES = 1024 * 1024

N = TypeVar("N", int, float)
S = TypeVar("S", bound=str)


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
    compression_type: Compression = "none"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    # Where the SASL credentials came from when read from files (KAFKA_SASL_*_FILE): followed for rotation.
    sasl_username_file: str | None = None
    sasl_password_file: str | None = None
    ssl_cafile: str | None = None
    # A client certificate (PEM chain) and its key, for brokers that require TLS client authentication.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    create_topics: bool = True
    topic_partitions: int = 3
    # None: as many as the cluster allows, up to 3 (see `replication_for`).
    topic_replication: int | None = None
    # None: one fewer than the replication factor, at least 1 and at most 2.
    topic_min_insync_replicas: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """Only the Kafka connection settings (for tools that read the topics); raises ConfigError."""
        return _kafka_settings(_Reader(os.environ if env is None else env))

    def replication_for(self, brokers: int) -> tuple[int, int, str | None]:
        """Replication factor and min.insync.replicas for a new topic on a cluster of `brokers`.

        The third value is a warning to log when a configured value had to be lowered.
        """
        wanted = self.topic_replication if self.topic_replication is not None else 3
        replication = max(1, min(wanted, brokers))
        warning = None
        if self.topic_replication is not None and self.topic_replication > brokers:
            warning = (
                f"BRIDGE_TOPIC_REPLICATION={self.topic_replication} exceeds the {brokers} broker(s) "
                f"in the cluster; using {replication}"
            )
        if self.topic_min_insync_replicas is None:
            return replication, max(1, min(2, replication - 1)), warning
        min_insync = min(self.topic_min_insync_replicas, replication)
        if min_insync < self.topic_min_insync_replicas:
            warning = (
                f"BRIDGE_TOPIC_MIN_INSYNC_REPLICAS={self.topic_min_insync_replicas} exceeds the "
                f"replication factor {replication}; using {min_insync}"
            )
        return replication, min_insync, warning


# A release's own topics are named after its topic prefix unless set, so that two releases on one Kafka
# (prefixes `staging.scalekit.` and `prod.scalekit.`) share no topic: `<prefix>deadletter`, and backfill's
# `<prefix>backfill-state` and `<prefix>dedup-receipts`. No event type reaches them: types have no '-', and
# `topic_for` refuses a type whose topic would be the dead-letter topic.
DEADLETTER_SUFFIX = "deadletter"
BACKFILL_STATE_SUFFIX = "backfill-state"
RECEIPTS_SUFFIX = "dedup-receipts"


@dataclass(frozen=True, kw_only=True)
class RecordShaping:
    """The settings `serve` and `backfill` share: what a record looks like and where it goes.

    Field defaults here and in `Settings` are the documented defaults; `from_env` reads them here.
    """

    topic_prefix: str = "scalekit."
    deadletter_topic: str = "scalekit." + DEADLETTER_SUFFIX  # the prefix's, whatever the prefix
    publish_timeout: float = 8.0
    # Scalekit's largest documented delivery is about 1.5 KB; 256 KiB leaves two orders of
    # magnitude for big directory users and groups while keeping the worst case small.
    max_body_bytes: int = 262_144
    # Also backfill's margin before its window's start when looking for records already in Kafka.
    timestamp_tolerance: int = 300
    cloudevents_mode: CloudEventsMode = "binary"
    schema_validation: SchemaValidation = "warn"
    # Distinct undocumented event types a process publishes (each gets a topic); past it they are
    # dead-lettered. 0 publishes none: every undocumented type goes to the dead-letter topic.
    max_unknown_types: int = 100
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    event_loop: EventLoop = "uvloop"
    # OpenTelemetry traces, configured by the SDK's own OTEL_* variables (bridge/otel.py); off imports none of it.
    tracing: bool = False
    # One record per event id across the release (docs/guarantees.md): every writer puts a receipt on the
    # receipts topic, and `serve` remembers the window's receipts. A day covers Scalekit's retries (about
    # 22 minutes) and a day of replays from its dashboard.
    dedup: bool = True
    dedup_window: float = 86_400.0
    receipts_topic: str = "scalekit." + RECEIPTS_SUFFIX  # the prefix's, whatever the prefix


@dataclass(frozen=True, kw_only=True)
class Settings(RecordShaping):
    """Everything `serve` runs on: the shared record settings, the webhook secrets and the listeners."""

    signing_keys: tuple[SigningKey, ...]
    kafka: KafkaSettings
    # SCALEKIT_WEBHOOK_SECRET_FILE, when the secrets came from a file: followed for rotation.
    webhook_secret_file: str | None = None
    host: str = "0.0.0.0"  # noqa: S104 - in a container the pod network is the interface
    port: int = 8080
    admin_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet, off-pod
    admin_port: int = 8081
    webhook_path: str = "/webhooks/scalekit"
    # Public-port limits (see docs/security.md).
    max_inflight: int = 64
    max_connections: int = 512
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    # Longer than the usual load balancer's 60 s idle timeout, so the balancer closes first.
    keepalive_timeout: float = 75.0
    # After an answer that closes the connection, what the client still sends is read and discarded for
    # this long and this many bytes (a refused 1 MiB body included), so it reads the answer instead of
    # a reset; at most `max_lingering` connections at once, beyond which one is closed at once.
    linger_timeout: float = 2.0
    linger_bytes: int = 2 * 1024 * 1024
    max_lingering: int = 512
    redelivery_cache_size: int = 100_000
    redelivery_cache_ttl: float = 1800.0
    # The most event ids remembered for one record per event (about 85 bytes each: ~120 MiB): past it the oldest
    # go first and the window is shorter than BRIDGE_DEDUP_WINDOW (scalekit_bridge_dedup_reach_seconds says so).
    dedup_max_ids: int = 1_500_000
    # None: publish timeout + 5 s, room for every in-flight publish to reach its own deadline.
    shutdown_grace: float | None = None

    @property
    def drain_seconds(self) -> float:
        """How long SIGTERM may take in all, from the signal to the exit."""
        return self.shutdown_grace if self.shutdown_grace is not None else self.publish_timeout + 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default: `os.environ`); raise ConfigError on the first problem."""
        reader = _Reader(os.environ if env is None else env)
        d = _defaults(cls)
        settings = cls(
            signing_keys=parse_signing_keys(reader.secret("SCALEKIT_WEBHOOK_SECRET")),
            webhook_secret_file=reader.raw("SCALEKIT_WEBHOOK_SECRET_FILE"),
            kafka=_kafka_settings(reader),
            host=reader.text("BRIDGE_HOST", d["host"]),
            port=reader.number("BRIDGE_PORT", d["port"], int, low=1, high=65535),
            admin_host=reader.text("BRIDGE_ADMIN_HOST", d["admin_host"]),
            admin_port=reader.number("BRIDGE_ADMIN_PORT", d["admin_port"], int, low=1, high=65535),
            webhook_path=reader.text("BRIDGE_WEBHOOK_PATH", d["webhook_path"]),
            max_inflight=reader.number("BRIDGE_MAX_INFLIGHT", d["max_inflight"], int, low=1, high=100_000),
            max_connections=reader.number("BRIDGE_MAX_CONNECTIONS", d["max_connections"], int, low=1, high=1_000_000),
            header_timeout=reader.number("BRIDGE_HEADER_TIMEOUT", d["header_timeout"], float, low=0.1, high=300.0),
            body_timeout=reader.number("BRIDGE_BODY_TIMEOUT", d["body_timeout"], float, low=0.1, high=300.0),
            keepalive_timeout=reader.number(
                "BRIDGE_KEEPALIVE_TIMEOUT", d["keepalive_timeout"], float, low=0.0, high=3600.0
            ),
            linger_timeout=reader.number("BRIDGE_LINGER_TIMEOUT", d["linger_timeout"], float, low=0.0, high=60.0),
            linger_bytes=reader.number("BRIDGE_LINGER_BYTES", d["linger_bytes"], int, low=0, high=1 << 30),
            max_lingering=reader.number("BRIDGE_MAX_LINGERING", d["max_lingering"], int, low=0, high=1_000_000),
            redelivery_cache_size=reader.number(
                "BRIDGE_REDELIVERY_CACHE_SIZE", d["redelivery_cache_size"], int, low=0, high=10_000_000
            ),
            redelivery_cache_ttl=reader.number(
                "BRIDGE_REDELIVERY_CACHE_TTL", d["redelivery_cache_ttl"], float, low=0.0, high=86_400.0
            ),
            shutdown_grace=reader.optional_number("BRIDGE_SHUTDOWN_GRACE", float, low=0.0, high=600.0),
            dedup_max_ids=reader.number("BRIDGE_DEDUP_MAX_IDS", d["dedup_max_ids"], int, low=1000, high=1_000_000_000),
            **_record_shaping(reader),
        )
        _check_names(settings)
        return settings


def _record_shaping(reader: _Reader) -> dict[str, Any]:
    """Read the settings `serve` and `backfill` share, as keyword arguments for either's constructor."""
    d = _defaults(RecordShaping)
    prefix, deadletter_topic = _topic_names(reader)
    receipts_topic = reader.text("BRIDGE_RECEIPTS_TOPIC", prefix + RECEIPTS_SUFFIX)
    if not _TOPIC_CHARS.fullmatch(receipts_topic) or len(receipts_topic) > MAX_TOPIC_LENGTH:
        raise ConfigError("BRIDGE_RECEIPTS_TOPIC", "must be a legal Kafka topic name")
    shared = RecordShaping(
        topic_prefix=prefix,
        deadletter_topic=deadletter_topic,
        receipts_topic=receipts_topic,
        dedup=reader.flag("BRIDGE_DEDUP", d["dedup"]),
        dedup_window=reader.duration("BRIDGE_DEDUP_WINDOW", d["dedup_window"], low=60.0, high=7 * 86_400.0),
        publish_timeout=reader.number("BRIDGE_PUBLISH_TIMEOUT", d["publish_timeout"], float, low=0.1, high=60.0),
        max_body_bytes=reader.number("BRIDGE_MAX_BODY_BYTES", d["max_body_bytes"], int, low=1024, high=16 << 20),
        timestamp_tolerance=reader.number(
            "BRIDGE_TIMESTAMP_TOLERANCE", d["timestamp_tolerance"], int, low=1, high=3600
        ),
        cloudevents_mode=reader.choice("BRIDGE_CLOUDEVENTS_MODE", d["cloudevents_mode"], CLOUDEVENTS_MODES),
        schema_validation=reader.choice("BRIDGE_SCHEMA_VALIDATION", d["schema_validation"], SCHEMA_VALIDATION_MODES),
        max_unknown_types=reader.number("BRIDGE_MAX_UNKNOWN_TYPES", d["max_unknown_types"], int, low=0, high=10_000),
        log_level=reader.choice("BRIDGE_LOG_LEVEL", d["log_level"], LOG_LEVELS, fold=str.upper),
        log_format=reader.choice("BRIDGE_LOG_FORMAT", d["log_format"], LOG_FORMATS),
        event_loop=reader.choice("BRIDGE_EVENT_LOOP", d["event_loop"], EVENT_LOOPS),
        tracing=reader.flag("BRIDGE_TRACING", d["tracing"]),
    )
    return {f.name: getattr(shared, f.name) for f in fields(RecordShaping)}


def _topic_names(reader: _Reader) -> tuple[str, str]:
    d = _defaults(RecordShaping)
    prefix = reader.text("BRIDGE_TOPIC_PREFIX", d["topic_prefix"])
    deadletter_topic = reader.text("BRIDGE_DEADLETTER_TOPIC", prefix + DEADLETTER_SUFFIX)
    _check_topics(prefix, deadletter_topic)
    return prefix, deadletter_topic


def topic_names_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """BRIDGE_TOPIC_PREFIX and BRIDGE_DEADLETTER_TOPIC, checked (for tools that read the topics)."""
    return _topic_names(_Reader(os.environ if env is None else env))


@dataclass(frozen=True)
class ScalekitApi:
    """Where Scalekit's API is and the client credentials it takes (an API client, not a webhook secret)."""

    environment_url: str
    client_id: str
    client_secret: Secret


@dataclass(frozen=True, kw_only=True)
class BackfillSettings(RecordShaping):
    """Everything `backfill` runs on: API credentials, Kafka, and the settings that shape records.

    The webhook secrets are optional: with them, a dead letter whose kept signature verifies counts as
    the event being in Kafka already; without them (or for one that does not verify) it does not.
    """

    api: ScalekitApi
    kafka: KafkaSettings
    signing_keys: tuple[SigningKey, ...] = ()
    # A small compacted topic: the end of each environment's last successful window (`--resume`); the prefix's.
    backfill_state_topic: str = "scalekit." + BACKFILL_STATE_SUFFIX

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BackfillSettings:
        """Build settings from `env` (default: `os.environ`); raise ConfigError on the first problem."""
        reader = _Reader(os.environ if env is None else env)
        shaping = _record_shaping(reader)
        state_topic = reader.text("BRIDGE_BACKFILL_STATE_TOPIC", shaping["topic_prefix"] + BACKFILL_STATE_SUFFIX)
        if not _TOPIC_CHARS.fullmatch(state_topic) or len(state_topic) > MAX_TOPIC_LENGTH:
            raise ConfigError("BRIDGE_BACKFILL_STATE_TOPIC", "must be a legal Kafka topic name")
        secret_given = reader.raw("SCALEKIT_WEBHOOK_SECRET") is not None
        secret_given = secret_given or reader.raw("SCALEKIT_WEBHOOK_SECRET_FILE") is not None
        return cls(
            api=_scalekit_api(reader),
            kafka=_kafka_settings(reader),
            signing_keys=parse_signing_keys(reader.secret("SCALEKIT_WEBHOOK_SECRET")) if secret_given else (),
            backfill_state_topic=state_topic,
            **shaping,
        )

    @property
    def environment(self) -> str:
        """The Scalekit environment's host: the key of its recorded window end."""
        return urlsplit(self.api.environment_url).hostname or self.api.environment_url


@dataclass(frozen=True, kw_only=True)
class ReplaySettings(RecordShaping):
    """Everything `replay` runs on: the webhook secrets (to verify each dead letter again), Kafka, and the
    settings that shape records. No Scalekit API credentials: a replay calls nothing of Scalekit's."""

    signing_keys: tuple[SigningKey, ...]
    kafka: KafkaSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReplaySettings:
        """Build settings from `env` (default: `os.environ`); raise ConfigError on the first problem."""
        reader = _Reader(os.environ if env is None else env)
        return cls(
            signing_keys=parse_signing_keys(reader.secret("SCALEKIT_WEBHOOK_SECRET")),
            kafka=_kafka_settings(reader),
            **_record_shaping(reader),
        )


def _scalekit_api(reader: _Reader) -> ScalekitApi:
    url = reader.required("SCALEKIT_ENVIRONMENT_URL").rstrip("/")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "SCALEKIT_ENVIRONMENT_URL",
            f"must not carry user info (credentials go in SCALEKIT_CLIENT_*), got {_without_user_info(parts)!r}",
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError("SCALEKIT_ENVIRONMENT_URL", f"has a bad port: {url!r}") from None
    if parts.scheme != "https" or not parts.hostname or parts.path or parts.query:
        raise ConfigError("SCALEKIT_ENVIRONMENT_URL", f"must look like https://<your-env>.scalekit.com, got {url!r}")
    return ScalekitApi(
        environment_url=url,
        client_id=reader.secret("SCALEKIT_CLIENT_ID"),
        client_secret=Secret(reader.secret("SCALEKIT_CLIENT_SECRET")),
    )


def _without_user_info(parts: SplitResult) -> str:
    """The URL with whatever came before '@' in its authority replaced, so no credential is ever quoted."""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"<redacted>@{host}").geturl()


def _check_client_certificate(protocol: str, certfile: str | None, keyfile: str | None) -> None:
    """A client certificate comes with its key, over TLS, and the two load together."""
    if certfile is None and keyfile is None:
        return
    if certfile is None or keyfile is None:
        missing = "KAFKA_SSL_CERTFILE" if certfile is None else "KAFKA_SSL_KEYFILE"
        raise ConfigError(missing, "is required with the other of KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE")
    if protocol not in ("SSL", "SASL_SSL"):
        raise ConfigError("KAFKA_SSL_CERTFILE", f"needs KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, not {protocol}")
    for variable, path in (("KAFKA_SSL_CERTFILE", certfile), ("KAFKA_SSL_KEYFILE", keyfile)):
        if not os.path.isfile(path):
            raise ConfigError(variable, f"{path!r} is not a readable file")
    try:
        # An encrypted key is refused here rather than prompted for (OpenSSL would ask on a terminal).
        ssl.create_default_context().load_cert_chain(certfile, keyfile, password=lambda: "")
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            "KAFKA_SSL_KEYFILE", f"does not load with KAFKA_SSL_CERTFILE as a PEM certificate and its key ({reason})"
        ) from None


def read_secret_file(variable: str, path: str) -> str:
    """The text of a secret file, stripped; ConfigError naming `variable` (never the content) when unusable.

    A CA bundle (`*_CAFILE`) is read the same way, with room for a system's whole bundle.
    """
    limit = _MAX_CA_BUNDLE_BYTES if variable.endswith("_CAFILE") else _MAX_SECRET_FILE_BYTES
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(limit + 1).strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(variable, f"cannot read {path!r}: {why}") from None
    if not text:
        raise ConfigError(variable, f"{path!r} is empty")
    if len(text) > limit:
        raise ConfigError(variable, f"{path!r} is over {limit} bytes; not a secret")
    return text


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


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

    def secret(self, name: str) -> str:
        """`name`, or the content of the file `name_FILE` names (a mounted Secret, which can rotate)."""
        path = self.raw(f"{name}_FILE")
        if path is None:
            return self.required(name)
        if self.raw(name) is not None:
            raise ConfigError(name, f"set either {name} or {name}_FILE, not both")
        return read_secret_file(f"{name}_FILE", path)

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def number(self, name: str, default: N, cast: Callable[[str], N], *, low: N, high: N) -> N:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = cast(value)
        except ValueError:
            raise ConfigError(name, f"must be a {cast.__name__}, got {value!r}") from None
        if not (low <= number <= high):
            raise ConfigError(name, f"must be between {low} and {high}, got {value!r}")
        return number

    def optional_number(self, name: str, cast: Callable[[str], N], *, low: N, high: N) -> N | None:
        """A number, or None when unset or `auto` (the caller derives the value)."""
        value = self.raw(name)
        if value is None or value.lower() == "auto":
            return None
        return self.number(name, low, cast, low=low, high=high)

    def choice(self, name: str, default: S, allowed: tuple[S, ...], fold: Callable[[str], str] = str.lower) -> S:
        value = self.raw(name)
        if value is None:
            return default
        for option in allowed:
            if option == fold(value):
                return option
        raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {value!r}")

    def duration(self, name: str, default: float, *, low: float, high: float) -> float:
        """Seconds, written as a duration (90m, 24h, 2d) or a number of seconds."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            seconds = (
                float(value) if value.strip().replace(".", "", 1).isdigit() else parse_duration(value).total_seconds()
            )
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
        if not low <= seconds <= high:
            raise ConfigError(name, f"must be between {low:g}s and {high:g}s, got {value!r}")
        return seconds

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be true or false, got {value!r}")


def parse_signing_keys(value: str) -> tuple[SigningKey, ...]:
    """The whsec_ secrets in `value` (space- or comma-separated); ConfigError names SCALEKIT_WEBHOOK_SECRET."""
    keys = []
    for position, secret in enumerate(re.split(r"[\s,]+", value), start=1):
        if not secret:
            continue
        try:
            key = SigningKey.from_secret(secret)
        except ValueError as exc:
            # The message says which secret (by position) and why, never its text.
            raise ConfigError("SCALEKIT_WEBHOOK_SECRET", f"secret #{position}: {exc}") from None
        if key.size < _MIN_KEY_BYTES:
            raise ConfigError(
                "SCALEKIT_WEBHOOK_SECRET",
                f"secret #{position} decodes to {key.size} bytes; a signing key must have at least {_MIN_KEY_BYTES}",
            )
        keys.append(key)
    if not keys:
        raise ConfigError("SCALEKIT_WEBHOOK_SECRET", "is required")
    return tuple(keys)


def _kafka_settings(reader: _Reader) -> KafkaSettings:
    d = _defaults(KafkaSettings)
    protocol = reader.choice("KAFKA_SECURITY_PROTOCOL", d["security_protocol"], SECURITY_PROTOCOLS, fold=str.upper)
    mechanism = username = None
    password = None
    if protocol.startswith("SASL_"):
        if reader.raw("KAFKA_SASL_MECHANISM") is None:
            raise ConfigError("KAFKA_SASL_MECHANISM", f"is required with KAFKA_SECURITY_PROTOCOL={protocol}")
        mechanism = reader.choice("KAFKA_SASL_MECHANISM", "", SASL_MECHANISMS, fold=str.upper)
        username = reader.secret("KAFKA_SASL_USERNAME")
        password = Secret(reader.secret("KAFKA_SASL_PASSWORD"))
    cafile = reader.raw("KAFKA_SSL_CAFILE")
    if cafile is not None:
        _check_ca_bundle(cafile)
    certfile, keyfile = reader.raw("KAFKA_SSL_CERTFILE"), reader.raw("KAFKA_SSL_KEYFILE")
    _check_client_certificate(protocol, certfile, keyfile)
    replication = reader.optional_number("BRIDGE_TOPIC_REPLICATION", int, low=1, high=32)
    min_insync = reader.optional_number("BRIDGE_TOPIC_MIN_INSYNC_REPLICAS", int, low=1, high=32)
    if replication is not None and min_insync is not None and min_insync > replication:
        raise ConfigError(
            "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS", f"must not exceed BRIDGE_TOPIC_REPLICATION ({replication})"
        )
    return KafkaSettings(
        bootstrap_servers=_bootstrap_servers(reader.text("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")),
        security_protocol=protocol,
        compression_type=reader.choice("KAFKA_COMPRESSION_TYPE", d["compression_type"], COMPRESSIONS, fold=str.lower),
        sasl_mechanism=mechanism,
        sasl_username=username,
        sasl_password=password,
        sasl_username_file=reader.raw("KAFKA_SASL_USERNAME_FILE"),
        sasl_password_file=reader.raw("KAFKA_SASL_PASSWORD_FILE"),
        ssl_cafile=cafile,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        create_topics=reader.flag("BRIDGE_CREATE_TOPICS", d["create_topics"]),
        topic_partitions=reader.number("BRIDGE_TOPIC_PARTITIONS", d["topic_partitions"], int, low=1, high=10_000),
        topic_replication=replication,
        topic_min_insync_replicas=min_insync,
    )


def _bootstrap_servers(value: str) -> str:
    """`host[:port]` entries, comma-separated, as Kafka's clients read them ([v6 literal]:port too)."""
    for entry in (part.strip() for part in value.split(",")):
        if not _server_entry_is_valid(entry):
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS", f"{entry!r} is not host:port (port 1 to 65535)")
    return value


def _server_entry_is_valid(entry: str) -> bool:
    if entry.startswith("["):
        literal, bracket, rest = entry[1:].partition("]")
        if not bracket or not _is_ip(literal):
            return False
        return rest == "" or (rest.startswith(":") and _is_port(rest[1:]))
    if entry.count(":") > 1:  # an IPv6 literal without a port
        return _is_ip(entry)
    host, colon, port = entry.partition(":")
    if not host or any(char.isspace() for char in host):
        return False
    return not colon or _is_port(port)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_ca_bundle(cafile: str) -> None:
    """The CA bundle must load as TLS will load it: a file of PEM certificates, at least one."""
    if not os.path.isfile(cafile):
        raise ConfigError("KAFKA_SSL_CAFILE", f"no such file: {cafile}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=cafile)
    except (ssl.SSLError, OSError, ValueError) as exc:
        problem = f"{cafile} is not a PEM certificate bundle ({type(exc).__name__})"
        raise ConfigError("KAFKA_SSL_CAFILE", problem) from None
    if not context.get_ca_certs():
        raise ConfigError("KAFKA_SSL_CAFILE", f"{cafile} holds no certificate")


def _check_topics(prefix: str, deadletter_topic: str) -> None:
    if not _TOPIC_CHARS.fullmatch(prefix) or len(prefix) > 200:
        raise ConfigError("BRIDGE_TOPIC_PREFIX", "may use only letters, digits, '.', '_' and '-' (at most 200)")
    if not _TOPIC_CHARS.fullmatch(deadletter_topic) or len(deadletter_topic) > MAX_TOPIC_LENGTH:
        raise ConfigError("BRIDGE_DEADLETTER_TOPIC", "must be a legal Kafka topic name")


def _check_names(settings: Settings) -> None:
    if not settings.webhook_path.startswith("/"):
        raise ConfigError("BRIDGE_WEBHOOK_PATH", "must start with '/'")
    if settings.port == settings.admin_port and settings.host == settings.admin_host:
        raise ConfigError("BRIDGE_ADMIN_PORT", "must differ from BRIDGE_PORT on the same host")
