"""The local launcher's own logic that needs no JVM."""

from __future__ import annotations

import base64

from bridge.dev.kafka import new_cluster_id


def test_a_cluster_id_that_would_start_with_a_dash_is_drawn_again():
    """Kafka's storage tool reads `-…` as an option; about one random id in 64 starts so."""
    dash_first = b"\xf8" + b"\x00" * 15  # URL-safe base64 of 0xF8... begins with '-'
    assert base64.urlsafe_b64encode(dash_first).decode().startswith("-")
    draws = iter([dash_first, dash_first, b"\x01" * 16])

    cluster_id = new_cluster_id(lambda size: next(draws))

    assert cluster_id == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_a_cluster_id_is_16_bytes_of_url_safe_base64_without_padding():
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
