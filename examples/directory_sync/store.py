"""The SQLite side of the directory-sync example: apply one CloudEvent, exactly once, in any order.

Two rules make the result independent of how Kafka interleaves the topics:

- **Exactly once per event.** The CloudEvent id (Scalekit's `evt_...`) is inserted into
  `processed_events` in the same transaction as the change it causes; a redelivered event
  finds its id there and changes nothing.
- **Newest wins per row.** One organization's events are ordered within a topic, but users,
  groups and the directory each span several topics (created/updated/deleted), which Kafka
  does not order against each other. Every row keeps the event time (`ce_time`) of the
  change it reflects, and an older event never overwrites a newer one. Deletions leave a
  tombstone with their time, so a late "created" cannot bring a deleted user back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

PREFIX = "organization.directory"
USER_UPSERTS = {f"{PREFIX}.user_created", f"{PREFIX}.user_updated"}
USER_DELETED = f"{PREFIX}.user_deleted"
GROUP_UPSERTS = {f"{PREFIX}.group_created", f"{PREFIX}.group_updated"}
GROUP_DELETED = f"{PREFIX}.group_deleted"
DIRECTORY_TOGGLES = {"organization.directory_enabled": True, "organization.directory_disabled": False}
HANDLED = USER_UPSERTS | GROUP_UPSERTS | {USER_DELETED, GROUP_DELETED} | set(DIRECTORY_TOGGLES)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    outcome      TEXT NOT NULL            -- applied | stale | ignored
);
CREATE TABLE IF NOT EXISTS directories (
    organization_id TEXT NOT NULL,
    directory_id    TEXT NOT NULL,
    provider        TEXT,
    enabled         INTEGER NOT NULL,
    version         INTEGER NOT NULL,     -- event time, microseconds since the epoch
    PRIMARY KEY (organization_id, directory_id)
);
CREATE TABLE IF NOT EXISTS users (
    organization_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    email           TEXT,
    name            TEXT,
    active          INTEGER,
    attributes      TEXT,                 -- the event's data, as JSON
    deleted         INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);
CREATE TABLE IF NOT EXISTS groups (
    organization_id TEXT NOT NULL,
    group_id        TEXT NOT NULL,
    name            TEXT,
    deleted         INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL,
    PRIMARY KEY (organization_id, group_id)
);
CREATE TABLE IF NOT EXISTS memberships (   -- as of the user's row version
    organization_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    group_id        TEXT NOT NULL,
    PRIMARY KEY (organization_id, user_id, group_id)
);
"""


class Event(Protocol):
    """What the store needs of a CloudEvent (the CloudEvents SDK's event has these)."""

    def get_id(self) -> str: ...
    def get_type(self) -> str: ...
    def get_time(self) -> datetime | None: ...
    def get_data(self) -> Any: ...


@dataclass(frozen=True)
class User:
    user_id: str
    email: str | None
    name: str | None
    active: bool | None
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """One organization's directory as the store sees it (deleted rows left out)."""

    directory_enabled: bool | None
    users: dict[str, User]
    groups: dict[str, str | None]


class DirectoryStore:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit below
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def apply(self, event: Event) -> str:
        """Apply one event atomically; returns applied, stale, ignored or duplicate."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            claimed = db.execute(
                "INSERT OR IGNORE INTO processed_events (event_id, event_type, outcome) VALUES (?, ?, '')",
                (event.get_id(), event.get_type()),
            ).rowcount
            if not claimed:
                db.execute("ROLLBACK")
                return "duplicate"
            outcome = self._change(event)
            db.execute("UPDATE processed_events SET outcome = ? WHERE event_id = ?", (outcome, event.get_id()))
            db.execute("COMMIT")
            return outcome
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _change(self, event: Event) -> str:
        event_type, data = event.get_type(), event.get_data()
        if event_type not in HANDLED or not isinstance(data, Mapping):
            return "ignored"  # a type this consumer does not know (yet): skip it, do not stop
        org = data.get("organization_id")
        if not isinstance(org, str):
            return "ignored"
        version = _version(event.get_time())
        if event_type in USER_UPSERTS or event_type == USER_DELETED:
            return self._user(org, data, version, deleted=event_type == USER_DELETED)
        if event_type in GROUP_UPSERTS or event_type == GROUP_DELETED:
            return self._group(org, data, version, deleted=event_type == GROUP_DELETED)
        return self._directory(org, data, version, enabled=DIRECTORY_TOGGLES[event_type])

    def _upsert(self, table: str, key_column: str, org: str, key: str, version: int, **values: Any) -> bool:
        """Write one row unless it already reflects a newer event; True if it was written."""
        # Table and column names come from this module's constants, never from an event; values are bound.
        row = self._db.execute(
            f"SELECT version FROM {table} WHERE organization_id = ? AND {key_column} = ?",  # noqa: S608
            (org, key),
        ).fetchone()
        if row is not None and version < row[0]:  # equal times: the later arrival wins
            return False
        columns = {"organization_id": org, key_column: key, **values, "version": version}
        updates = ", ".join(f"{name} = excluded.{name}" for name in list(columns)[2:])
        self._db.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
            f" ON CONFLICT (organization_id, {key_column}) DO UPDATE SET {updates}",
            tuple(columns.values()),
        )
        return True

    def _user(self, org: str, data: Mapping[str, Any], version: int, *, deleted: bool) -> str:
        user_id = data["id"]
        if not self._upsert(
            "users", "user_id", org, user_id, version,
            email=data.get("email"), name=data.get("name"), active=data.get("active"),
            attributes=json.dumps(data), deleted=deleted,
        ):
            return "stale"
        groups = data.get("groups")
        if deleted or isinstance(groups, list):  # an update without `groups` leaves memberships alone
            self._db.execute("DELETE FROM memberships WHERE organization_id = ? AND user_id = ?", (org, user_id))
            for group in [] if deleted else groups or []:
                self._db.execute("INSERT OR IGNORE INTO memberships VALUES (?, ?, ?)", (org, user_id, group["id"]))
        return "applied"

    def _group(self, org: str, data: Mapping[str, Any], version: int, *, deleted: bool) -> str:
        written = self._upsert(
            "groups", "group_id", org, data["id"], version, name=data.get("display_name"), deleted=deleted
        )
        return "applied" if written else "stale"

    def _directory(self, org: str, data: Mapping[str, Any], version: int, *, enabled: bool) -> str:
        written = self._upsert(
            "directories", "directory_id", org, data["id"], version, provider=data.get("provider"), enabled=enabled
        )
        return "applied" if written else "stale"

    def processed(self) -> dict[str, str]:
        """Every event id seen, with what it did."""
        return dict(self._db.execute("SELECT event_id, outcome FROM processed_events"))

    def snapshot(self, organization_id: str) -> Snapshot:
        db = self._db
        enabled = db.execute(
            "SELECT enabled FROM directories WHERE organization_id = ? ORDER BY version DESC LIMIT 1",
            (organization_id,),
        ).fetchone()
        groups = dict(
            db.execute(
                "SELECT group_id, name FROM groups WHERE organization_id = ? AND NOT deleted", (organization_id,)
            )
        )
        users = {}
        for user_id, email, name, active in db.execute(
            "SELECT user_id, email, name, active FROM users WHERE organization_id = ? AND NOT deleted",
            (organization_id,),
        ):
            member_of = tuple(
                sorted(
                    group_id
                    for (group_id,) in db.execute(
                        "SELECT group_id FROM memberships WHERE organization_id = ? AND user_id = ?",
                        (organization_id, user_id),
                    )
                    if group_id in groups  # a deleted group has no members
                )
            )
            users[user_id] = User(user_id, email, name, None if active is None else bool(active), member_of)
        return Snapshot(None if enabled is None else bool(enabled[0]), users, groups)


def _version(time: datetime | None) -> int:
    """Event time in microseconds; an event without a time (never seen from Scalekit) counts as now."""
    return ((time or datetime.now(UTC)) - _EPOCH) // timedelta(microseconds=1)
