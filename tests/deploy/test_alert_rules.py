"""The alert rules and the dashboard, checked by Prometheus's own promtool (built pinned; see tests/tools.py).

`promtool test rules` runs deploy/prometheus/scalekit-bridge-rules.test.yaml: every alert fires on the
series that should fire it and stays silent on look-alikes. `promtool check rules` is the PromQL check for
the rules and for every dashboard query.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import tools

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS / "scalekit-bridge-rules.yaml"
RULE_TESTS = PROMETHEUS / "scalekit-bridge-rules.test.yaml"
DASHBOARD = PROMETHEUS.parent / "grafana" / "scalekit-bridge-dashboard.json"
RUNBOOKS = PROMETHEUS.parents[1] / "docs" / "runbooks.md"
LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


# The plain rule file's runbook base: a placeholder for the operator's copy (the chart replaces it with
# prometheusRule.runbookBaseUrl, or drops the links when that is empty).
RUNBOOK_BASE = "https://github.com/scalekit-bridge/scalekit-bridge/blob/main/docs/runbooks.md"


def runbook_url(alert: str) -> str:
    """Where an alert's runbook is: the rule file's base, then the alert's section of docs/runbooks.md."""
    return f"{RUNBOOK_BASE}#{alert.lower()}"


@pytest.fixture(scope="module")
def promtool() -> Path:
    return tools.required(tools.promtool)


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def seconds(duration: str) -> int:
    number, unit = int(duration[:-1]), duration[-1]
    return number * {"s": 1, "m": 60, "h": 3600}[unit]


def with_annotations(cases: dict[str, Any]) -> dict[str, Any]:
    """The rule tests, each expected alert given its rule's annotations as Prometheus renders them.

    A label the alert does not carry renders empty, as in Prometheus. The runbook_url is not copied: it is
    the one the alert's name calls for, so promtool fails an alert whose link is wrong or missing.
    """
    rules = alerts()
    for test in cases["tests"]:
        for check in test["alert_rule_test"]:
            annotations = rules[check["alertname"]]["annotations"]
            for expected in check["exp_alerts"]:
                labels = expected["exp_labels"]
                expected["exp_annotations"] = {
                    name: LABEL.sub(lambda m, labels=labels: str(labels.get(m.group(1), "")), text)
                    for name, text in annotations.items()
                } | {"runbook_url": runbook_url(check["alertname"])}
    return cases


def run_rule_tests(promtool: Path, cases: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    (workdir / RULES.name).write_text(RULES.read_text())
    test_file = workdir / RULE_TESTS.name
    test_file.write_text(yaml.safe_dump(cases, sort_keys=False))
    return subprocess.run(
        [str(promtool), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120, check=False
    )


def checks(cases: dict[str, Any]) -> list[dict[str, Any]]:
    return [check for test in cases["tests"] for check in test["alert_rule_test"]]


def test_every_alert_has_a_case_that_fires_it_and_one_it_must_stay_silent_through():
    cases = yaml.safe_load(RULE_TESTS.read_text())
    for name, rule in alerts().items():
        mine = [check for check in checks(cases) if check["alertname"] == name]
        assert any(check["exp_alerts"] for check in mine), f"nothing fires {name}"
        waited = seconds(rule.get("for", "0s"))
        # Silent after its `for` has passed, so the silence is the expression's, not the wait's.
        assert any(not check["exp_alerts"] and seconds(check["eval_time"]) > waited for check in mine), (
            f"no case shows {name} staying silent"
        )


def test_each_alert_fires_exactly_where_the_rule_tests_say(promtool, tmp_path):
    done = run_rule_tests(promtool, with_annotations(yaml.safe_load(RULE_TESTS.read_text())), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_rule_tests_fail_when_an_expectation_is_wrong(promtool, tmp_path):
    cases = with_annotations(yaml.safe_load(RULE_TESTS.read_text()))
    firing = next(check for check in checks(cases) if check["exp_alerts"])
    firing["exp_alerts"] = []
    done = run_rule_tests(promtool, cases, tmp_path)
    assert done.returncode != 0
    assert firing["alertname"] in done.stdout + done.stderr


def test_the_rule_tests_fail_when_a_runbook_link_is_wrong(promtool, tmp_path):
    cases = with_annotations(yaml.safe_load(RULE_TESTS.read_text()))
    firing = next(check for check in checks(cases) if check["exp_alerts"])
    firing["exp_alerts"][0]["exp_annotations"]["runbook_url"] = runbook_url("ScalekitBridgeSomethingElse")
    done = run_rule_tests(promtool, cases, tmp_path)
    assert done.returncode != 0
    assert "runbook_url" in done.stdout + done.stderr


def runbook_sections() -> dict[str, str]:
    """docs/runbooks.md's sections by their `## ` heading."""
    sections: dict[str, str] = {}
    heading = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading is not None:
            sections[heading] += line + "\n"
    return sections


def test_every_alert_has_a_runbook_that_says_what_it_means_how_to_confirm_and_how_to_fix():
    sections = runbook_sections()
    assert set(sections) == set(alerts()), "one runbook section per alert, and none for an alert that is gone"
    for name, text in sections.items():
        for part in ("**What it means.**", "**How to confirm.**", "**How to fix.**"):
            assert part in text, f"{name}: no {part}"
        assert "`" in text.split("**How to confirm.**")[1].split("**How to fix.**")[0], f"{name}: nothing to run"


def test_every_alert_links_its_own_runbook_section():
    for name, rule in alerts().items():
        assert rule["annotations"]["runbook_url"] == runbook_url(name)


def test_the_runbooks_links_to_each_other_land_on_a_section():
    anchors = {heading.lower() for heading in runbook_sections()}
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOKS.read_text())
    assert links
    assert set(links) <= anchors


def test_the_runbooks_name_replay_and_backfill_where_they_are_the_fix():
    sections = runbook_sections()
    assert "create job --from=cronjob/scalekit-bridge-replay" in sections["ScalekitBridgeDeadLetters"]
    assert "replay" in sections["ScalekitBridgeInternalError"]
    for name in ("ScalekitBridgeAllInstancesNotReady", "ScalekitBridgeHigh503Ratio", "ScalekitBridgeBackfillFailing"):
        assert "backfill" in sections[name]


def check_rules(promtool: Path, expressions: list[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` over `expressions`, each as a recording rule."""
    rules = {"groups": [{"name": "queries", "rules": [
        {"record": f"query:{n}", "expr": expression} for n, expression in enumerate(expressions)
    ]}]}
    path = workdir / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    return subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_promtool_accepts_the_rule_file(promtool):
    done = subprocess.run(
        [str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    queries = dashboard_queries()
    assert queries
    done = check_rules(promtool, queries, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_promql_check_refuses_a_broken_query(promtool, tmp_path):
    done = check_rules(promtool, ["sum(rate(scalekit_bridge_deliveries_total[5m])"], tmp_path)
    assert done.returncode != 0
    assert "unclosed left parenthesis" in done.stdout + done.stderr


def readme_alert_table() -> dict[str, str]:
    """The alert table of docs/operating/observability.md: each alert's name and its severity as the table states it."""
    readme = (PROMETHEUS.parents[1] / "docs" / "operating" / "observability.md").read_text()
    section = readme[readme.index("### Dashboard and alerts") :]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(ScalekitBridge\w+)`(?: \((\w+)\))? \|", line)
        if match:
            rows[match.group(1)] = match.group(2) or "warning"
    return rows


def test_the_readme_lists_every_alert_with_its_severity():
    rules = {name: rule["labels"]["severity"] for name, rule in alerts().items()}
    assert readme_alert_table() == rules
