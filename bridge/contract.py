"""The consumer's contract: which event types are documented and what their data looks like.

The JSON Schemas in `schemas/` (packaged as `bridge/schemas`) are the one
source: the documented event types are the files in `schemas/data/`, each
schema's `$id` is the `ce_dataschema` of its records, and the AsyncAPI
document is generated from them (`bridge.dev.asyncapi`). Only this module knows
the validator library (jsonschema-rs: about 1 µs per delivery where the pure
Python jsonschema took about 300 µs; see docs/performance.md). Schemas are
compiled once, at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import jsonschema_rs
from jsonschema_rs import ValidationErrorKind as Kind

from bridge.errors import MalformedDelivery

# Annotations of our own on a schema's fields (validators ignore them): what kind of personal data a field
# holds, and why a field is a secret. Platform teams set ACLs and retention per topic from them.
PERSONAL_DATA_MARK = "x-personal-data"
SECRET_MARK = "x-secret"  # noqa: S105 - the name of an annotation, not a secret
# How deep `Contract.fields` follows nested objects; the schemas nest a handful of levels.
_MAX_FIELD_DEPTH = 12

SCHEMA_ROOT: Traversable = resources.files("bridge") / "schemas"
ENVELOPE_SCHEMA = "envelope.json"
OBJECTS_SCHEMA = "objects.json"
DATA_DIR = "data"

# A violation's description names where and which rule, never the offending value:
# it ends up in logs and dead-letter headers, and values are users' personal data.
_MAX_VIOLATION_LENGTH = 300
# Rules whose error value comes from the schema (safe to print) rather than from the instance.
_SCHEMA_VALUED_RULES = frozenset(
    {"type", "required", "pattern", "minLength", "maxLength", "minimum", "maximum", "enum", "const", "format"}
)


@dataclass(frozen=True)
class Verdict:
    """What the contract says about one envelope."""

    known: bool
    """The event type is one of the documented ones."""
    dataschema: str | None
    """The `$id` to put in `ce_dataschema`: set for a known type unless its data was checked and failed."""
    checked: bool = False
    """The envelope and its data were validated."""
    violation: str | None = None
    """Why a checked envelope does not match its schemas (None if it matches or was not checked)."""

    @property
    def status(self) -> str:
        """One word for logs: unknown_type, unchecked, valid or invalid."""
        if not self.known:
            return "unknown_type"
        if not self.checked:
            return "unchecked"
        return "invalid" if self.violation is not None else "valid"


@dataclass(frozen=True)
class Field:
    """A field the contract declares for an event type, by its dotted path in the envelope (`[]`: each item)."""

    path: str
    personal_data: str | None = None
    """What kind of personal data it holds (the schema's `x-personal-data`), if any."""
    secret: str | None = None
    """Why it is a secret (the schema's `x-secret`), if it is one."""


class Contract:
    """Compiled schemas for the envelope and for the data of every documented event type."""

    def __init__(self, documents: Mapping[str, dict[str, Any]]) -> None:
        """Compile `documents` (schema path → schema, as `read_schemas` yields them)."""
        for document in documents.values():
            jsonschema_rs.meta.validate(document)
        self._documents = {str(document["$id"]): document for document in documents.values()}
        self._envelope_id = str(documents[ENVELOPE_SCHEMA]["$id"])
        registry = jsonschema_rs.Registry([(str(document["$id"]), document) for document in documents.values()])
        envelope_id = documents[ENVELOPE_SCHEMA]["$id"]
        self._data_ids: dict[str, str] = {
            name.removeprefix(f"{DATA_DIR}/").removesuffix(".json"): document["$id"]
            for name, document in documents.items()
            if name.startswith(f"{DATA_DIR}/")
        }
        # One validator per type for the envelope and its data together: one pass, one conversion.
        self._validators = {
            event_type: jsonschema_rs.Draft202012Validator(
                {"$ref": envelope_id, "properties": {"data": {"$ref": data_id}}}, registry=registry
            )
            for event_type, data_id in self._data_ids.items()
        }

    @classmethod
    def load(cls, root: Traversable = SCHEMA_ROOT) -> Contract:
        return cls(dict(read_schemas(root)))

    @property
    def event_types(self) -> tuple[str, ...]:
        """The documented event types, sorted."""
        return tuple(sorted(self._data_ids))

    def dataschema(self, event_type: str) -> str | None:
        return self._data_ids.get(event_type)

    def fields(self, event_type: str) -> dict[str, Field]:
        """Every field the envelope and `event_type`'s data schema declare, by path; KeyError if undocumented."""
        found: dict[str, Field] = {}
        envelope = self._documents[self._envelope_id]
        _collect(self._documents, envelope, envelope, "", found, 0)
        data_id = self._data_ids[event_type]
        data = self._documents[data_id]
        _collect(self._documents, data, data, "data", found, 0)
        return found

    def check(self, envelope: Mapping[str, Any], *, validate: bool) -> Verdict:
        """Judge an envelope; with `validate`, check it and its data against their schemas."""
        event_type = envelope.get("type")
        if not isinstance(event_type, str) or event_type not in self._data_ids:
            return Verdict(known=False, dataschema=None)
        schema_id = self._data_ids[event_type]
        if not validate:
            return Verdict(known=True, dataschema=schema_id)
        try:
            violation = _first_violation(self._validators[event_type], envelope)
        except UnicodeEncodeError:  # the validator works on UTF-8 text
            raise MalformedDelivery(MalformedDelivery.LONE_SURROGATE) from None
        if violation is not None:
            return Verdict(known=True, dataschema=None, checked=True, violation=violation)
        return Verdict(known=True, dataschema=schema_id, checked=True)


def read_schemas(root: Traversable = SCHEMA_ROOT) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema document as (path relative to the schema root, parsed JSON), sorted by path."""
    yield ENVELOPE_SCHEMA, _read(root / ENVELOPE_SCHEMA)
    yield OBJECTS_SCHEMA, _read(root / OBJECTS_SCHEMA)
    for entry in sorted((root / DATA_DIR).iterdir(), key=lambda entry: entry.name):
        if entry.name.endswith(".json"):
            yield f"{DATA_DIR}/{entry.name}", _read(entry)


def _collect(
    documents: Mapping[str, dict[str, Any]],
    base: dict[str, Any],
    node: Any,
    path: str,
    found: dict[str, Field],
    depth: int,
) -> None:
    """Walk `node` (a schema inside document `base`) through references, recording declared fields."""
    if not isinstance(node, dict) or depth > _MAX_FIELD_DEPTH:
        return
    if path and (PERSONAL_DATA_MARK in node or SECRET_MARK in node):
        seen = found.get(path, Field(path))
        found[path] = Field(path, node.get(PERSONAL_DATA_MARK, seen.personal_data), node.get(SECRET_MARK, seen.secret))
    if "$ref" in node:
        target, target_base = _resolve(documents, base, str(node["$ref"]))
        _collect(documents, target_base, target, path, found, depth + 1)
    for name, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{name}" if path else name
        found.setdefault(child_path, Field(child_path))
        _collect(documents, base, child, child_path, found, depth + 1)
    if "items" in node:
        _collect(documents, base, node["items"], f"{path}[]", found, depth + 1)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for branch in node.get(keyword) or ():
            _collect(documents, base, branch, path, found, depth + 1)


def _resolve(documents: Mapping[str, dict[str, Any]], base: dict[str, Any], ref: str) -> tuple[Any, dict[str, Any]]:
    """The schema `ref` points at (`<$id>#/$defs/Name` or `#/$defs/Name`), and the document holding it."""
    uri, _, pointer = ref.partition("#")
    document = documents[uri] if uri else base
    node: Any = document
    for step in filter(None, pointer.split("/")):
        node = node[step]
    return node, document


def _read(entry: Traversable) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8"))
    return document


def _first_violation(validator: jsonschema_rs.Validator, envelope: Mapping[str, Any]) -> str | None:
    if validator.is_valid(envelope):  # the fast path: no error objects are built
        return None
    # The envelope's own errors first: a broken envelope says more than the data inside it.
    errors = sorted(
        validator.iter_errors(envelope),
        key=lambda error: (error.instance_path[:1] == ["data"], [str(step) for step in error.instance_path]),
    )
    return _describe(errors[0])[:_MAX_VIOLATION_LENGTH]


def _describe(error: jsonschema_rs.ValidationError) -> str:
    kind = error.kind
    # With anyOf/oneOf the useful part is the first branch's first error.
    while isinstance(kind, (Kind.AnyOf, Kind.OneOfNotValid)) and kind.context and kind.context[0]:
        error = kind.context[0][0]
        kind = error.kind
    where = "".join(f"/{step}" for step in error.instance_path) or "/"
    if isinstance(kind, Kind.Type):
        return f"{where}: must be {' or '.join(sorted(kind.types))}"
    if isinstance(kind, Kind.Required):
        return f"{where}: missing required {kind.property!r}"
    if kind.name in _SCHEMA_VALUED_RULES:
        return f"{where}: violates {kind.name} {json.dumps(kind.value)}"
    return f"{where}: violates {kind.name}"
