"""The test kit's event factory, its opt-in plugin, and that the service never loads it."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from bridge.dev.samples import sample
from bridge.envelope import partition_key
from bridge.testing import event_types, scalekit_event

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("event_type", event_types())
def test_every_documented_type_is_built_from_its_sample_with_a_fresh_id_and_time(event_type):
    first, second = scalekit_event(event_type), scalekit_event(event_type)
    assert first["id"] != second["id"] != sample(event_type)["id"]
    assert first["id"].startswith("evt_")
    assert datetime.fromisoformat(first["occurred_at"]) <= datetime.fromisoformat(second["occurred_at"])
    assert {k: v for k, v in first.items() if k not in ("id", "occurred_at")} == {
        k: v for k, v in sample(event_type).items() if k not in ("id", "occurred_at")
    }


@pytest.mark.parametrize("event_type", event_types())
def test_the_organization_given_is_the_records_key(event_type):
    assert partition_key(scalekit_event(event_type, organization_id="org_123")) == "org_123"


def test_data_overrides_are_merged_into_the_samples_data_and_other_fields_replace_the_envelopes():
    event = scalekit_event("organization.directory.user_created", data={"email": "x@acme.example"}, object="Custom")
    assert event["data"]["email"] == "x@acme.example"
    assert event["data"]["name"] == sample("organization.directory.user_created")["data"]["name"]
    assert event["object"] == "Custom"


def test_an_undocumented_type_is_refused():
    with pytest.raises(KeyError):
        scalekit_event("organization.directory.user_teleported")


KIT_TEST = """
def test_uses_the_kit(scalekit_event):
    assert scalekit_event("role.created")["type"] == "role.created"
"""


@pytest.mark.parametrize(
    ("ini", "args", "outcome"),
    [
        ("", [], "fixture 'scalekit_event' not found"),
        ("scalekit_bridge = true\n", [], "1 passed"),
        ("", ["-p", "bridge.testing.fixtures"], "1 passed"),
    ],
    ids=["installed-but-inert", "ini-opt-in", "command-line-opt-in"],
)
def test_the_fixtures_load_only_when_a_project_opts_in(tmp_path, ini, args, outcome):
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + ini)
    (tmp_path / "test_consumer.py").write_text(KIT_TEST)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_consumer.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert outcome in done.stdout, done.stdout + done.stderr
