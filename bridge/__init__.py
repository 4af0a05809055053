"""scalekit-bridge: signed Scalekit webhooks in, CloudEvents on Kafka out.

A delivery is answered 201 only after Kafka acknowledged its record.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
