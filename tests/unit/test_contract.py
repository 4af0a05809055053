"""The JSON Schemas: one per documented type, every sample fits, every schema refuses a wrong shape."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bridge.contract import Contract, read_schemas
from bridge.dev.samples import sample, sample_types
from bridge.envelope import build_record
from bridge.verify import VerifiedDelivery

CONTRACT = Contract.load()
SCHEMAS = Path(__file__).parents[2] / "schemas"


def test_there_is_a_data_schema_for_every_sample_and_no_other():
    on_disk = sorted(path.stem for path in (SCHEMAS / "data").glob("*.json"))
    assert list(CONTRACT.event_types) == on_disk == sample_types()


def test_every_schema_has_a_stable_id_derived_from_its_file():
    ids = {name: document["$id"] for name, document in read_schemas()}
    assert ids["envelope.json"] == "urn:scalekit-bridge:schema:v1:envelope"
    assert ids["objects.json"] == "urn:scalekit-bridge:schema:v1:objects"
    for event_type in CONTRACT.event_types:
        assert ids[f"data/{event_type}.json"] == f"urn:scalekit-bridge:schema:v1:data:{event_type}"
        assert CONTRACT.dataschema(event_type) == ids[f"data/{event_type}.json"]
    assert len(set(ids.values())) == len(ids)


def test_the_packaged_schemas_are_the_top_level_schemas_directory():
    packaged = dict(read_schemas())
    on_disk = {
        path.relative_to(SCHEMAS).as_posix(): json.loads(path.read_text())
        for path in SCHEMAS.rglob("*.json")
        if path.parent.name != "samples"  # examples of the contract, not part of it
    }
    assert packaged == on_disk


@pytest.mark.parametrize("event_type", sample_types())
def test_the_sample_of_each_type_is_valid(event_type):
    verdict = CONTRACT.check(sample(event_type), validate=True)
    assert (verdict.status, verdict.violation) == ("valid", None)
    assert verdict.dataschema == CONTRACT.dataschema(event_type)


@pytest.mark.parametrize("event_type", sample_types())
def test_each_data_schema_refuses_data_that_is_not_an_object(event_type):
    delivery = sample(event_type) | {"data": ["not", "an", "object"]}
    assert CONTRACT.check(delivery, validate=True).violation == '/data: must be object'


@pytest.mark.parametrize("event_type", sample_types())
def test_each_data_schema_refuses_data_missing_its_identifying_field(event_type):
    delivery = sample(event_type)
    required = "user" if "user" in delivery["data"] else "id"
    del delivery["data"][required]
    assert CONTRACT.check(delivery, validate=True).violation == f"/data: missing required '{required}'"


@pytest.mark.parametrize(
    ("event_type", "change", "violation"),
    [
        (
            "organization.directory.user_created",
            lambda d: d["data"]["groups"].append({"name": "no id"}),
            "/data/groups/1: missing required 'id'",
        ),
        (
            "organization.directory.user_updated",
            lambda d: d["data"].update(active="yes"),
            '/data/active: must be boolean or null',
        ),
        (
            "organization.sso_enabled",
            lambda d: d["data"].update(enabled="true"),
            '/data/enabled: must be boolean',
        ),
        (
            "user.login",
            lambda d: d["data"]["user"].update(membership="org_1"),
            '/data/user/membership: must be object',
        ),
        (
            "organization.created",
            lambda d: d["data"]["settings"].update(features={"sso": True}),
            '/data/settings/features: must be array or null',
        ),
        (
            "role.created",
            lambda d: d["data"].update(name=None),
            '/data/name: must be string',
        ),
    ],
)
def test_nested_shapes_are_checked_too(event_type, change, violation):
    delivery = sample(event_type)
    change(delivery)
    assert CONTRACT.check(delivery, validate=True).violation == violation


@pytest.mark.parametrize(
    ("change", "violation"),
    [
        (lambda d: d.pop("environment_id"), "/: missing required 'environment_id'"),
        (lambda d: d.update(id="12345"), '/id: violates pattern "^evt_"'),
        (lambda d: d.update(occurred_at=1760000000), '/occurred_at: must be string'),
        (lambda d: d.update(organization_id=42), '/organization_id: must be string'),
    ],
)
def test_the_envelope_is_checked_before_the_data(change, violation):
    delivery = sample("organization.directory.group_created")
    delivery["data"] = "also wrong"
    change(delivery)
    assert CONTRACT.check(delivery, validate=True).violation == violation


def test_both_documented_organization_shapes_are_accepted():
    older = sample("organization.updated")
    older["data"] = {
        "id": "org_1",
        "name": "Acme",
        "region": "us",
        "external_id": None,
        "metadata": None,
        "settings": {"domain_capture_required": False, "features": []},
        "updated_at": "2025-11-02T10:00:00Z",
        "deleted_at": None,
    }
    assert CONTRACT.check(older, validate=True).status == "valid"


def test_unknown_fields_are_allowed_because_scalekit_adds_fields():
    delivery = sample("permission.created")
    delivery["data"]["added_later"] = {"anything": [1, 2]}
    delivery["display_name"] = "Permission created"
    assert CONTRACT.check(delivery, validate=True).status == "valid"


def test_a_violation_names_the_place_and_rule_but_never_the_value():
    delivery = sample("organization.directory.user_created")
    delivery["data"]["email"] = {"leaked": "jane.private@acme.example"}
    delivery["data"]["name"] = ["Jane", "Private"]

    violation = CONTRACT.check(delivery, validate=True).violation

    assert violation is not None
    assert "jane.private" not in violation and "Private" not in violation


def test_an_undocumented_type_is_unknown_and_claims_no_schema():
    delivery = sample("role.created") | {"type": "role.archived", "data": 7}
    verdict = CONTRACT.check(delivery, validate=True)
    assert (verdict.known, verdict.dataschema, verdict.violation, verdict.status) == (
        False,
        None,
        None,
        "unknown_type",
    )


def test_without_validation_a_known_type_still_names_its_schema():
    delivery = sample("role.created") | {"data": 7}
    verdict = CONTRACT.check(delivery, validate=False)
    assert (verdict.status, verdict.dataschema) == ("unchecked", CONTRACT.dataschema("role.created"))


def test_the_route_carries_the_schema_only_when_there_is_data():
    with_data = sample("role.created")
    without_data = copy.deepcopy(with_data)
    del without_data["data"]
    schema = CONTRACT.dataschema("role.created")

    def headers(envelope: dict) -> dict[str, bytes]:
        delivery = VerifiedDelivery("msg_1", "1760000000", json.dumps(envelope).encode())
        route = build_record(delivery, topic_prefix="scalekit.", mode="binary", envelope=envelope, dataschema=schema)
        return dict(route.message.headers)

    assert headers(with_data)["ce_dataschema"] == schema.encode()
    assert "ce_dataschema" not in headers(without_data)
