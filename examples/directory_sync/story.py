"""A SCIM provisioning story, as the Scalekit deliveries that tell it, and the directory it leaves.

Built with the test kit's factory (`bridge.testing.scalekit_event`): realistic deliveries from the
packaged samples, with just the fields the story needs changed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.testing import scalekit_event
from examples.directory_sync.store import Snapshot, User

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _delivery(event_type: str, org: str, minute: int, **data: Any) -> dict[str, Any]:
    # Nanosecond fractions, as Scalekit sends them.
    occurred_at = (START + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    return scalekit_event(event_type, organization_id=org, data=data, occurred_at=occurred_at)


def provisioning_story(org: str) -> list[dict[str, Any]]:
    """User created, updated, added to a group, deleted; group renamed; directory disabled."""
    directory = "dir_story"
    jane, john = "diruser_jane", "diruser_john"
    eng, design = "dirgroup_eng", "dirgroup_design"
    return [
        _delivery("organization.directory_enabled", org, 0, id=directory, enabled=True),
        _delivery("organization.directory.group_created", org, 1, id=eng, display_name="Engineering"),
        _delivery("organization.directory.group_created", org, 2, id=design, display_name="Design"),
        _delivery("organization.directory.user_created", org, 3, id=jane, email="jane@acme.example",
                  name="Jane Doe", groups=[{"id": eng, "name": "Engineering"}]),
        _delivery("organization.directory.user_created", org, 4, id=john, email="john@acme.example",
                  name="John Roe", groups=[]),
        _delivery("organization.directory.user_updated", org, 5, id=john, email="john@acme.example",
                  name="John Roe-Smith", groups=[]),
        _delivery("organization.directory.user_updated", org, 6, id=john, email="john@acme.example",
                  name="John Roe-Smith", groups=[{"id": design, "name": "Design"}]),
        _delivery("organization.directory.group_updated", org, 7, id=eng, display_name="Engineering (Platform)"),
        _delivery("organization.directory.user_deleted", org, 8, id=jane, email="jane@acme.example"),
        _delivery("organization.directory_disabled", org, 9, id=directory, enabled=False),
    ]


def expected_directory() -> Snapshot:
    return Snapshot(
        directory_enabled=False,
        users={
            "diruser_john": User("diruser_john", "john@acme.example", "John Roe-Smith", True, ("dirgroup_design",)),
        },
        groups={"dirgroup_eng": "Engineering (Platform)", "dirgroup_design": "Design"},
    )
