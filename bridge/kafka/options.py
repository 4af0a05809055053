"""How every Kafka client of the bridge connects: servers, TLS and SASL, from `KafkaSettings`."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from bridge.config import KafkaSettings


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's connection arguments for `settings`: servers, TLS context, SASL credentials."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if settings.sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.reveal() if settings.sasl_password is not None else None
    return options


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """Trusting `ssl_cafile` (else the system's CAs), presenting the client certificate when there is one."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
    )
    return context
