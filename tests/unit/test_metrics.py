"""Every series an alert reads exists, at 0, from the moment a bridge starts.

A counter created at its first increment hides that increment from `increase()` and `rate()`: the first
dead letter of a pod (answered 201, so never retried) would alert no one. These tests read the alert
rules themselves, so a new rule on a series the exporter creates late fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bridge.contract import Contract
from bridge.metrics import OTHER_TYPE, UNKNOWN_TYPE, Metrics
from tests.fakes import RecordingProducer, writer_for

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "scalekit-bridge-rules.yaml"
SELECTOR = re.compile(r"\b(scalekit_bridge_[a-z_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|=)\s*"([^"]*)"')
SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")


def fresh_exposition() -> list[tuple[str, dict[str, str], float]]:
    """The series of a bridge that has handled nothing yet: its Metrics and its Writer, built."""
    metrics = Metrics(process_metrics=False)
    writer_for(RecordingProducer(), metrics)
    series = []
    for line in metrics.exposition()[0].decode().splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            series.append((match.group(1), labels, float(match.group(3))))
    return series


def alert_selectors() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    expressions = [rule["expr"] for group in groups for rule in group["rules"]]
    return [(m.group(1), m.group(2) or "") for e in expressions for m in SELECTOR.finditer(e)]


def matches(labels: dict[str, str], matchers: str) -> bool:
    for name, op, value in MATCHER.findall(matchers):
        actual = labels.get(name, "")
        if (op == "=" and actual != value) or (op == "=~" and not re.fullmatch(value, actual)):
            return False
    return True


def test_the_rules_read_series_this_test_can_see():
    selectors = alert_selectors()
    assert len(selectors) >= 10
    assert ("scalekit_bridge_deliveries_total", 'outcome="deadlettered"') in selectors


@pytest.mark.parametrize(("name", "matchers"), sorted(set(alert_selectors())))
def test_every_series_an_alert_reads_is_exported_before_anything_happens(name, matchers):
    found = [(labels, value) for n, labels, value in fresh_exposition() if n == name and matches(labels, matchers)]
    assert found, f"{name}{{{matchers}}} does not exist until something happens"


def test_each_documented_type_has_its_dead_letter_and_schema_series_at_zero():
    series = {(name, tuple(sorted(labels.items()))): value for name, labels, value in fresh_exposition()}
    for event_type in (*Contract.load().event_types, UNKNOWN_TYPE, OTHER_TYPE):
        key = ("scalekit_bridge_deliveries_total", (("event_type", event_type), ("outcome", "deadlettered")))
        assert series.get(key) == 0.0, key
    for event_type in Contract.load().event_types:
        assert series.get(("scalekit_bridge_schema_violations_total", (("event_type", event_type),))) == 0.0
    assert series.get(("scalekit_bridge_unknown_event_types_total", (("event_type", OTHER_TYPE),))) == 0.0

