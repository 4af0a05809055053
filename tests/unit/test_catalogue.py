"""Our catalogue against Scalekit's: the drift check on OpenAPI documents written here, and the personal-data marks."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import cli
from bridge.contract import Contract, Field, read_schemas
from bridge.dev import catalogue
from bridge.dev.samples import sample, sample_types

CONTRACT = Contract.load()
ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
TOPICS_PAGE = ROOT / "docs" / "consuming" / "topics.md"


# --- Scalekit's document, as small as the check needs -------------------------------------------------


def openapi(types: tuple[str, ...] = CONTRACT.event_types, **changes: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.1 document with a webhook per type: envelope fields required as Scalekit's are, `data` through a
    component reference, the packaged sample as the example. `changes[<type with _ for .>]` edits one type's parts.
    """
    webhooks: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for event_type in types:
        name = "".join(part.title() for part in re.split(r"[._]", event_type)) + "Event"
        data = {"type": "object", "properties": {"id": {"type": "string"}}}
        event = {
            "type": "object",
            "required": ["spec_version", "id", "type", "occurred_at", "environment_id", "object", "data"],
            "properties": {"data": {"$ref": f"#/components/schemas/{name}Data"}, "organization_id": {"type": "string"}},
        }
        example = sample(event_type)
        change = changes.get(event_type.replace(".", "_"), {})
        data = change.get("data", data)
        example = change.get("example", example)
        components[f"{name}Data"] = data
        components[name] = event
        webhooks[event_type] = {
            "post": {
                "summary": event_type,
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}, "example": example}
                    }
                },
            }
        }
    return {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "components": {"schemas": components},
            "webhooks": webhooks}


def report(document: dict[str, Any]) -> list[str]:
    return list(catalogue.compare(CONTRACT, catalogue.scalekit_types(document)).lines())


def test_a_document_that_lists_exactly_our_types_and_fields_agrees(tmp_path, capsys):
    path = tmp_path / "scalekit.yaml"
    path.write_text(yaml.safe_dump(openapi()), encoding="utf-8")

    assert catalogue.check(path) == catalogue.EXIT_AGREE
    count = len(CONTRACT.event_types)
    assert capsys.readouterr().out == f"{count} types in scalekit.yaml, {count} in this release: the catalogues agree\n"


def test_the_same_document_as_json_agrees_too(tmp_path):
    path = tmp_path / "scalekit.json"
    path.write_text(json.dumps(openapi()), encoding="utf-8")
    assert catalogue.check(path) == catalogue.EXIT_AGREE


def test_a_type_scalekit_adds_is_named_and_the_check_fails(tmp_path, capsys):
    document = openapi()
    document["webhooks"]["organization.widget_created"] = copy.deepcopy(document["webhooks"]["role.created"])

    path = tmp_path / "scalekit.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    assert catalogue.check(path) == catalogue.EXIT_DIFFER
    assert "organization.widget_created: documented by Scalekit, unknown to this release" in capsys.readouterr().out


def test_a_type_scalekit_no_longer_documents_is_named():
    document = openapi(tuple(t for t in CONTRACT.event_types if t != "permission.deleted"))
    assert report(document) == ["permission.deleted: known to this release, no longer documented by Scalekit"]


def test_a_field_scalekit_requires_that_our_schema_does_not_declare_is_named_by_its_path():
    data = {
        "type": "object",
        "required": ["id", "name", "scope"],
        "properties": {"limits": {"type": "object", "required": ["max_users"]}},
    }
    assert report(openapi(role_created={"data": data})) == [
        "role.created: Scalekit requires data.limits.max_users, data.scope, which our schema does not declare"
    ]


def test_requirements_are_followed_through_references_all_of_and_array_items():
    document = openapi(user_login={"data": {"allOf": [{"$ref": "#/components/schemas/Session"}]}})
    document["components"]["schemas"]["Session"] = {
        "type": "object",
        "required": ["user", "user_session"],
        "properties": {"user_session": {"type": "object", "properties": {
            "devices": {"type": "array", "items": {"type": "object", "required": ["fingerprint"]}}}}},
    }
    assert report(document) == [
        "user.login: Scalekit requires data.user_session.devices[].fingerprint, which our schema does not declare"
    ]


def test_an_organization_the_example_carries_where_our_key_rule_does_not_look_is_named():
    example = sample("connected_account.created")
    example["data"]["tenant"] = {"organization_id": "org_hidden"}

    assert report(openapi(connected_account_created={"example": example})) == [
        (
            "connected_account.created: Scalekit's example carries the organization at data.tenant.organization_id; "
            "our key rule reads none of them and keys it by environment_id"
        )
    ]


def test_an_organization_the_example_carries_where_our_key_rule_looks_agrees():
    example = sample("connected_account.created") | {"organization_id": "org_named"}
    assert report(openapi(connected_account_created={"example": example})) == []


def test_the_organizations_of_a_session_event_are_found_where_scalekit_keeps_them():
    found = catalogue.scalekit_types(openapi(("user.login",)))["user.login"]
    assert found.organization_paths == ("organization_id", "data.user_session.organization_id")


_WITH_SCHEMA = (
    "webhooks:\n  role.created:\n    post:\n      requestBody:\n        content:\n"
    "          application/json:\n            schema: {}\n"
)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("scalekit.yaml", "webhooks: [unclosed", "is not YAML"),
        ("scalekit.json", "{not json", "is not JSON"),
        ("scalekit.yaml", "openapi: 3.1.0\npaths: {}\n", "has no `webhooks` section"),
        ("scalekit.yaml", "- a list\n", "has no `webhooks` section"),
        ("scalekit.yaml", "webhooks:\n  role.created: {get: {}}\n", "has no application/json request body"),
        ("scalekit.yaml", _WITH_SCHEMA.format("{$ref: 'https://elsewhere.example/s.yaml#/E'}"), "inside the document"),
        ("scalekit.yaml", _WITH_SCHEMA.format("{$ref: '#/components/schemas/Gone'}"), "points at nothing"),
    ],
)
def test_a_file_the_check_cannot_read_exits_2_saying_why(tmp_path, capsys, name, text, says):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert catalogue.check(path) == catalogue.EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert says in err and err.startswith("scalekit-bridge catalogue: ")


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert catalogue.check(tmp_path / "nowhere.yaml") == catalogue.EXIT_UNREADABLE
    assert "cannot read" in capsys.readouterr().err


def test_the_command_line_runs_the_check_and_exits_with_its_verdict(tmp_path):
    document = openapi(tuple(t for t in CONTRACT.event_types if t != "role.updated"))
    path = tmp_path / "scalekit.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")

    with pytest.raises(SystemExit) as exited:
        cli.main(["catalogue", "check", str(path)])
    assert exited.value.code == catalogue.EXIT_DIFFER


def test_the_command_is_not_offered_where_pyyaml_is_missing_as_in_the_image(monkeypatch, capsys):
    assert cli.command_line().parse_args(["catalogue", "check", "x.yaml"]).openapi == "x.yaml"
    monkeypatch.setattr(cli, "development_tools", lambda: False)
    with pytest.raises(SystemExit) as refused:
        cli.command_line().parse_args(["catalogue", "check", "x.yaml"])
    assert refused.value.code == 2 and "invalid choice: 'catalogue'" in capsys.readouterr().err


def test_the_image_installs_no_pyyaml_so_the_command_stays_out_of_it():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    runtime = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "yaml" not in runtime.lower()


# --- personal data and secrets: the marks and the docs' table are one fact ---------------------------


def test_the_docs_table_is_the_one_the_schemas_marks_make():
    page = TOPICS_PAGE.read_text(encoding="utf-8")
    assert catalogue.with_table(page, catalogue.personal_data_table()) == page, "run `make asyncapi`"


def test_the_table_follows_the_marks():
    documents = dict(read_schemas())
    unmarked = copy.deepcopy(documents)
    del unmarked["objects.json"]["$defs"]["ConnectedAccount"]["properties"]["identifier"]["x-personal-data"]
    unmarked["objects.json"]["$defs"]["Role"]["properties"]["extends"]["x-secret"] = "made up for the test"

    table = catalogue.personal_data_table(Contract(unmarked))

    assert "| `scalekit.connected_account.created` | none declared | none |" in table
    assert "| `scalekit.role.created` | none declared | `data.extends` |" in table
    assert "| `scalekit.connected_account.created` | account identifier" in catalogue.personal_data_table()


# Field names that hold a person's data wherever they appear in a delivery, and names that hold secrets.
_PERSONAL_NAMES = {
    "email", "given_name", "family_name", "nickname", "preferred_username", "picture", "phone_number",
    "address", "ip", "user_agent", "location", "identifier", "gender", "employee_id",
}


def _leaves(node: Any, path: str = "") -> list[str]:
    """Every field path in a delivery (`[]` for each item of an array), objects and arrays included."""
    paths = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            paths += _leaves(item, f"{path}[]")
    return paths


@pytest.mark.parametrize("event_type", sample_types())
def test_every_field_of_a_sample_that_holds_personal_data_is_marked(event_type):
    fields = CONTRACT.fields(event_type)

    def marked(path: str) -> bool:  # the field or an object around it
        steps = path.split(".")
        return any(fields.get(".".join(steps[:n]), Field("")).personal_data for n in range(1, len(steps) + 1))

    personal = [path for path in _leaves(sample(event_type)) if path.rsplit(".", 1)[-1] in _PERSONAL_NAMES]
    assert [path for path in personal if not marked(path)] == []


@pytest.mark.parametrize("event_type", sample_types())
def test_every_field_of_a_sample_named_as_a_secret_is_marked_one(event_type):
    fields = CONTRACT.fields(event_type)
    secret = [path for path in _leaves(sample(event_type)) if "secret" in path.rsplit(".", 1)[-1]]
    assert all(fields[path].secret for path in secret)
    assert bool(secret) is event_type.startswith("organization.domain_")


# --- one home for the list of types ------------------------------------------------------------------


def test_no_file_outside_the_schemas_lists_the_documented_types_by_hand():
    """Topics, KafkaTopics, metric series, send-test, the test kit and the fake Scalekit derive the list from
    schemas/; a product file that names many documented types is a hand-kept copy that will drift."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    product = [
        ROOT / name for name in files
        if not name.startswith(("schemas/", "tests/")) and not (ROOT / name).is_symlink()
        and name.endswith((".py", ".md", ".yaml", ".yml", ".json", ".tpl", ".txt", ".gotmpl", "Makefile"))
    ]
    named: dict[str, int] = {}
    for path in product:
        text = path.read_text(encoding="utf-8", errors="replace")
        if path == TOPICS_PAGE:
            text = catalogue.with_table(text, "")  # the generated table
        count = sum(bool(re.search(rf"(?<![\w.]){re.escape(t)}(?!\w)", text)) for t in CONTRACT.event_types)
        if count > 7:
            named[str(path.relative_to(ROOT))] = count
    assert named == {}


def test_the_docs_and_the_readme_state_the_number_of_documented_types_the_schemas_hold():
    stated = re.search(r"\*\*(\d+) documented types\*\*", TOPICS_PAGE.read_text(encoding="utf-8"))
    assert stated is not None and int(stated.group(1)) == len(CONTRACT.event_types)
    front = re.search(r"one per documented type \((\d+),", README.read_text(encoding="utf-8"))
    assert front is not None and int(front.group(1)) == len(CONTRACT.event_types)
