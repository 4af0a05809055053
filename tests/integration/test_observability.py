"""Metrics, logs, dashboard and alerts agree with each other and with what the bridge really exports."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from bridge import __version__
from bridge.core import Outcome
from bridge.dev.samples import sample
from bridge.logs import JsonFormatter
from tests.helpers import body_of, signed_headers
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "scalekit-bridge-dashboard.json"
RULES = DEPLOY / "prometheus" / "scalekit-bridge-rules.yaml"
METRIC_NAME = re.compile(r"\b((?:scalekit_bridge|process|python)_[a-z_]+)\b")
# What two alerts read from elsewhere: Prometheus's own `up`, and kube-state-metrics' Job and CronJob series.
FOREIGN_METRIC = re.compile(r"\b(up|kube_(?:job|cronjob)_[a-z_]+)\b")


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def exported_names(exposition: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}


def sample_value(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
async def driven(start_bridge, kafka, caplog):
    """A bridge that has seen one delivery of every outcome; returns its /metrics text and log records."""
    running = await start_bridge(BRIDGE_CREATE_TOPICS="false", BRIDGE_PUBLISH_TIMEOUT="1", BRIDGE_MAX_BODY_BYTES="4096")
    await kafka.create_topic(running.topic("role.created"))
    caplog.set_level(logging.INFO, logger="bridge")

    assert (await running.deliver(sample("role.created"), webhook_id="msg_obs"))[0] == 201          # published
    assert (await running.deliver(sample("role.created"), webhook_id="msg_obs"))[0] == 201          # duplicate
    # failed: neither its topic nor the dead-letter topic exists, and the bridge may create none
    assert (await running.deliver(sample("permission.created")))[0] == 503
    await kafka.create_topic(running.deadletter_topic)
    assert (await running.deliver(b"not json"))[0] == 201                                           # deadlettered
    assert (await running.deliver(sample("role.created"), secret="whsec_AAAA"))[0] == 401           # rejected
    big = body_of(sample("role.created") | {"data": {"pad": "x" * 5000}})
    assert (
        await running.client.post("/webhooks/scalekit", data=big, headers=signed_headers(SECRET, big))
    ).status == 413
    await kafka.create_topic(running.topic("role.updated"))
    await kafka.create_topic(running.topic("role.archived"))
    off_contract = sample("role.updated")
    off_contract["data"]["name"] = None
    assert (await running.deliver(off_contract))[0] == 201  # schema violation
    unknown = sample("role.created") | {"type": "role.archived", "id": "evt_of_an_unknown_type"}
    assert (await running.deliver(unknown))[0] == 201  # unknown type

    exposition = await (await running.admin.get("/metrics")).text()
    return exposition, list(caplog.records)


async def test_every_outcome_counter_moves(driven):
    exposition, _ = driven
    expected_type = {
        "published": "role.created",
        "duplicate": "unknown",
        "deadlettered": "unknown",
        "rejected": "unknown",
        "failed": "permission.created",
        "too_large": "unknown",
    }
    assert set(expected_type) == {outcome.value for outcome in Outcome}
    for outcome, event_type in expected_type.items():
        series = f'scalekit_bridge_deliveries_total{{event_type="{event_type}",outcome="{outcome}"}}'
        assert sample_value(exposition, series) == 1.0, series
    assert (
        sample_value(exposition, 'scalekit_bridge_verification_failures_total{reason="no_matching_signature"}') == 1.0
    )
    assert sample_value(exposition, 'scalekit_bridge_schema_violations_total{event_type="role.updated"}') == 1.0
    assert sample_value(exposition, 'scalekit_bridge_unknown_event_types_total{event_type="role.archived"}') == 1.0
    assert sample_value(exposition, "scalekit_bridge_publish_duration_seconds_count") == 4.0
    for status in ("201", "401", "413", "503"):
        assert sample_value(exposition, f'scalekit_bridge_request_duration_seconds_count{{status="{status}"}}') >= 1.0
    assert sample_value(exposition, "scalekit_bridge_ready") == 1.0
    assert sample_value(exposition, "scalekit_bridge_redelivery_cache_entries") == 4.0
    assert f'scalekit_bridge_build_info{{version="{__version__}"}} 1.0' in exposition


async def test_a_missing_dead_letter_topic_is_said_at_start_and_keeps_the_bridge_unready(start_bridge, kafka, caplog):
    """Without it a verified but unroutable delivery could only get 503, for ever: say so, and take no traffic."""
    caplog.set_level(logging.INFO, logger="bridge")
    running = await start_bridge(BRIDGE_CREATE_TOPICS="false")

    ready = await running.admin.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["missing_topics"] == [running.deadletter_topic]
    exposition = await (await running.admin.get("/metrics")).text()
    assert sample_value(exposition, "scalekit_bridge_deadletter_topic_missing") == 1.0
    assert sample_value(exposition, "scalekit_bridge_ready") == 0.0
    (said,) = [r for r in caplog.records if getattr(r, "topic", None) == running.deadletter_topic]
    assert said.levelno == logging.ERROR and "not ready until it does" in said.getMessage()

    await kafka.create_topic(running.deadletter_topic)
    for _ in range(100):  # the readiness probe looks again every 2 s
        ready = await running.admin.get("/readyz")
        if ready.status == 200:
            break
        await asyncio.sleep(0.1)
    assert ready.status == 200
    exposition = await (await running.admin.get("/metrics")).text()
    assert sample_value(exposition, "scalekit_bridge_deadletter_topic_missing") == 0.0

    def said_it_exists() -> bool:
        return any("exists now" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)

    for _ in range(50):  # readiness follows the lookup at once; the probe logs when it next runs on
        if said_it_exists():
            break
        await asyncio.sleep(0.1)
    assert said_it_exists()


async def test_dashboard_and_alerts_use_only_exported_metrics(driven):
    # That each expression is valid PromQL is Prometheus's own word: tests/deploy/test_alert_rules.py.
    exposition, _ = driven
    exported = exported_names(exposition)
    expressions = dashboard_queries() + alert_expressions()
    assert len(expressions) >= 15
    for expression in expressions:
        names = METRIC_NAME.findall(expression)
        assert names or FOREIGN_METRIC.search(expression), f"no metric in {expression!r}"
        for name in names:
            assert name in exported, f"{name} (in {expression!r}) is not exported"


def test_the_dashboard_shows_one_release_chosen_by_namespace_then_job():
    """No "All": summing every job in Prometheus would mix releases, as the alerts are careful not to."""
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "job"]
    assert '{namespace="$namespace"}' in variables["job"]["query"]
    for name in ("namespace", "job"):
        assert variables[name]["includeAll"] is False and variables[name]["multi"] is False
    for query in dashboard_queries():
        assert '{namespace="$namespace",job="$job"' in query, query


def test_the_dashboard_takes_its_datasource_from_a_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])


def test_every_latency_panel_shows_exemplars_so_a_slow_bucket_opens_its_trace():
    dashboard = json.loads(DASHBOARD.read_text())
    latency = [target for panel in dashboard["panels"] for target in panel["targets"]
               if "_duration_seconds_bucket" in target["expr"]]
    assert {"scalekit_bridge_publish_duration_seconds_bucket", "scalekit_bridge_request_duration_seconds_bucket"} <= {
        name for target in latency for name in re.findall(r"scalekit_bridge_\w+_bucket", target["expr"])
    }
    assert all(target.get("exemplar") is True for target in latency)


async def test_one_json_log_line_per_delivery_without_bodies_or_secrets(driven):
    _, records = driven
    lines = [json.loads(JsonFormatter().format(r)) for r in records if r.name == "bridge.delivery"]
    assert [line["outcome"] for line in lines] == [
        "published",
        "duplicate",
        "failed",
        "deadlettered",
        "rejected",
        "too_large",
        "published",
        "published",
    ]
    assert [line.get("schema") for line in lines] == ["valid", None, None, None, None, None, "invalid", "unknown_type"]
    published = lines[0]
    assert {"webhook_id", "event_id", "event_type", "topic", "partition", "offset", "outcome", "latency_ms"} <= set(
        published
    )
    everything = "\n".join(JsonFormatter().format(r) for r in records)
    for forbidden in (SECRET, SECRET[6:], "v1,", "not json", sample("role.created")["data"]["description"]):
        assert forbidden not in everything
