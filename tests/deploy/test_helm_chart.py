"""The Helm chart, rendered by a real helm: lint, schema-valid manifests, and the promises each one makes.

Renderings: `ci/minimal-values.yaml` (one secret and a broker, everything else default),
`ci/everything-values.yaml` (every optional piece on) and `ci/existing-secret-sasl-values.yaml`
(secrets managed outside the chart, SASL_SSL). Core resources are validated with kubernetes-validate
(strict: unknown fields are errors) for the oldest Kubernetes the chart supports and a current one;
custom resources with the schemas their operators publish.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trustme
import yaml

from bridge import __version__, dedup, otel
from bridge.cli import command_line
from bridge.config import BackfillSettings, ReplaySettings, Settings
from bridge.contract import Contract
from bridge.dev.samples import sample_types
from bridge.window import parse_moment
from tests import tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "scalekit-bridge"
VALUES = {path.stem.removesuffix("-values"): path for path in sorted((CHART / "ci").glob("*-values.yaml"))}
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CUSTOM_GROUPS = ("monitoring.coreos.com", "kafka.strimzi.io", "gateway.networking.k8s.io")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def helm() -> Path:
    return tools.required(tools.helm)


@pytest.fixture(scope="module")
def crd_models() -> Path:
    return tools.required(tools.crd_models)


def run_helm(helm: Path, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args, str(chart)], capture_output=True, text=True, timeout=120)


@cache
def _render(helm: Path, values: str, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    done = run_helm(helm, "template", "bridge", "--namespace", "prod", "-f", str(VALUES[values]), *extra)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(helm: Path, values: str, *extra: str) -> list[dict[str, Any]]:
    return list(_render(helm, values, tuple(extra)))


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [
        doc for doc in docs if doc["kind"] == kind and "helm.sh/hook" not in doc["metadata"].get("annotations", {})
    ]
    return found


def bridge_config(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The ConfigMap the bridge takes its environment from."""
    name = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    (found,) = [doc["data"] for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name]
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return main


def webhook_service(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == "Service" and doc["metadata"]["name"] == "bridge-scalekit-bridge"]
    return found


def admin_service(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [
        doc for doc in docs if doc["kind"] == "Service" and doc["metadata"]["name"] == "bridge-scalekit-bridge-admin"
    ]
    return found


def cronjob(docs: list[dict[str, Any]], component: str = "backfill") -> dict[str, Any]:
    """The backfill's CronJob, or the replay's (`component`)."""
    (found,) = [
        doc for doc in docs
        if doc["kind"] == "CronJob" and doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def backfill_pod(docs: list[dict[str, Any]], component: str = "backfill") -> dict[str, Any]:
    pod: dict[str, Any] = cronjob(docs, component)["spec"]["jobTemplate"]["spec"]["template"]
    return pod


def rendered_env(
    docs: list[dict[str, Any]],
    files: Path,
    secrets: dict[str, dict[str, str]] | None = None,
    of: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> dict[str, str]:
    """A container's environment (the bridge's by default) as the kubelet would build it.

    Its Secret volumes are written under `files`, at their mount paths, and every variable naming a
    mounted file is pointed there. Secrets the chart does not render are passed in; a mounted Secret
    that is neither (the cluster's CA) gets a stand-in CA certificate.
    """
    pod, main = of or (one(docs, "Deployment")["spec"]["template"]["spec"], container(docs))
    available = {
        doc["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
        for doc in docs
        if doc["kind"] == "Secret"
    }
    available.update(secrets or {})
    volumes = {volume["name"]: volume["secret"] for volume in pod.get("volumes", [])}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in main.get("volumeMounts", [])}
    env = dict(bridge_config(docs))
    for variable in main["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = available[ref["name"]][ref["key"]]
    for name, value in env.items():
        mount_path, _, file_name = value.rpartition("/")
        secret = mounts.get(mount_path)
        if secret is None:
            continue
        local = files / value.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        keys = {item["path"]: item["key"] for item in secret.get("items", [])}
        data = available.get(secret["secretName"], {})
        if data:
            local.write_text(data[keys.get(file_name, file_name)])
        else:
            trustme.CA().cert_pem.write_to_path(str(local))
        env[name] = str(local)
    return env


# --- helm lint and schema validity -----------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUES))
def test_helm_lint_passes_strictly(helm, values):
    done = run_helm(helm, "lint", "--strict", "-f", str(VALUES[values]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", sorted(VALUES))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_core_resource_is_valid_for_the_kubernetes_version(helm, values, kube_version):
    core = [doc for doc in render(helm, values) if doc["apiVersion"].split("/")[0] not in CUSTOM_GROUPS]
    assert core
    for doc in core:
        kubernetes_validate.validate(doc, kube_version, strict=True)  # raises on any error


@pytest.mark.parametrize("values", sorted(VALUES))
def test_every_custom_resource_is_valid_for_its_operator(helm, crd_models, values):
    custom = [doc for doc in render(helm, values) if doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS]
    assert validate_custom(crd_models, custom) == [None] * len(custom)


def validate_custom(crd_models: Path, resources: list[dict[str, Any]]) -> list[Any]:
    done = subprocess.run(
        ["node", str(Path(__file__).with_name("validate_crds.mjs")), str(crd_models)],
        input=json.dumps(resources),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_custom_resource_check_does_catch_a_broken_resource(helm, crd_models):
    docs = render(helm, "everything")
    topic = json.loads(json.dumps(next(doc for doc in docs if doc["kind"] == "KafkaTopic")))
    monitor = one(docs, "ServiceMonitor")
    topic["spec"]["partitions"] = "three"
    monitor = json.loads(json.dumps(monitor))
    monitor["spec"]["endpoints"][0]["interval"] = 30
    results = validate_custom(crd_models, [topic, monitor])
    assert all(results), results


def test_the_core_check_does_catch_a_broken_resource(helm):
    deployment = json.loads(json.dumps(one(render(helm, "minimal"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesysten"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


# --- what each rendering contains --------------------------------------------------------------------


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def test_a_minimal_install_is_the_core_and_nothing_optional(helm):
    assert kinds(render(helm, "minimal")) == [
        "ConfigMap",
        "CronJob",  # the replay's, suspended: the runbooks' tools run as its Jobs
        "Deployment",
        "Pod",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",
        "ServiceAccount",
    ]


def test_everything_enabled_adds_each_optional_piece(helm):
    docs = render(helm, "everything")
    assert set(kinds(docs)) >= {
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "KafkaTopic",
        "CronJob",
    }
    assert sorted(doc["metadata"]["name"] for doc in docs if doc["kind"] == "ConfigMap") == [
        "bridge-scalekit-bridge",
        "bridge-scalekit-bridge-dashboard",
    ]
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the HPA owns the replica count


# Secrets a release names but does not render (the operator's own).
OUTSIDE = {
    "scalekit-webhook": {"signing-secret": "whsec_" + base64.b64encode(b"k" * 32).decode()},
    "kafka-credentials": {"username": "u", "password": "p"},
    "otel-collector-auth": {"headers": "authorization=Bearer not-a-real-token"},
    # As Strimzi's User Operator writes a scram-sha-512 KafkaUser's Secret: no username in it.
    "scalekit-bridge-prod": {"password": "p", "sasl.jaas.config": "org.apache.kafka...ScramLoginModule required;"},
}


@pytest.mark.parametrize("values", sorted(VALUES))
def test_the_rendered_environment_is_one_the_bridge_accepts(helm, values, tmp_path):
    docs = render(helm, values)
    env = rendered_env(docs, tmp_path, OUTSIDE)
    settings = Settings.from_env(env)
    assert settings.port == webhook_service(docs)["spec"]["ports"][0]["port"]
    assert settings.admin_port == admin_service(docs)["spec"]["ports"][0]["port"]


def test_existing_secrets_and_sasl_ssl_come_from_the_named_secrets(helm):
    docs = render(helm, "existing-secret-sasl")
    assert "Secret" not in kinds(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"]: [i["key"] for i in v["secret"].get("items", [])] for v in pod["volumes"]}
    assert mounted == {
        "scalekit-webhook": ["signing-secret"],
        "kafka-credentials": ["username", "password"],
    }
    assert not [v for v in container(docs)["env"] if "valueFrom" in v]  # files, which the bridge follows
    config = bridge_config(docs)
    assert (config["KAFKA_SECURITY_PROTOCOL"], config["KAFKA_SASL_MECHANISM"]) == ("SASL_SSL", "SCRAM-SHA-256")
    (test_pod,) = [doc for doc in docs if doc["kind"] == "Pod"]
    assert test_pod["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "scalekit-webhook"


@pytest.mark.parametrize("values", sorted(VALUES))
def test_secrets_reach_the_pods_as_files_the_kubelet_keeps_current(helm, values):
    """Mounted whole (never with subPath, which the kubelet does not update) and named by *_FILE variables."""
    docs = render(helm, values)
    containers = [container(docs)]
    if values in BACKFILLED:
        containers.append(backfill_pod(docs)["spec"]["containers"][0])
    for main in containers:
        assert all("subPath" not in mount for mount in main["volumeMounts"])
        names = {variable["name"] for variable in main["env"]}
        assert not names & {"SCALEKIT_WEBHOOK_SECRET", "KAFKA_SASL_PASSWORD", "SCALEKIT_CLIENT_SECRET"}
    assert "SCALEKIT_WEBHOOK_SECRET_FILE" in {variable["name"] for variable in container(docs)["env"]}


def test_a_strimzi_kafkausers_certificate_is_mounted_and_named_for_the_bridge(helm, tmp_path):
    """`authentication: tls` gives a KafkaUser a Secret with user.crt and user.key, renewed by Strimzi."""
    docs = render(helm, "minimal", "--set", "kafka.securityProtocol=SSL", "--set", "kafka.clientCertSecret=bridge-user")
    issued = trustme.CA().issue_cert("bridge-user")
    user = {"user.crt": issued.cert_chain_pems[0].bytes().decode(), "user.key": issued.private_key_pem.bytes().decode()}
    env = rendered_env(docs, tmp_path, {"bridge-user": user})
    kafka = Settings.from_env(env).kafka
    assert Path(kafka.ssl_certfile or "").read_text() == user["user.crt"]
    assert Path(kafka.ssl_keyfile or "").read_text() == user["user.key"]
    backfill = backfill_pod(render(helm, "everything", "--set", "kafka.clientCertSecret=bridge-user"))
    assert "kafka-client" in [mount["name"] for mount in backfill["spec"]["containers"][0]["volumeMounts"]]
    refused = run_helm(helm, "template", "bridge", "-f", str(VALUES["minimal"]), "--set", "kafka.clientCertSecret=u")
    assert refused.returncode != 0 and "kafka.clientCertSecret needs kafka.securityProtocol SSL" in refused.stderr


def test_a_strimzi_scram_users_secret_is_read_as_strimzi_writes_it(helm, tmp_path):
    """Its Secret holds `password` (and `sasl.jaas.config`); the user is the KafkaUser's name, from the values."""
    docs = render(helm, "existing-secret-sasl", "--set", "kafka.sasl.existingSecret=scalekit-bridge-prod",
                  "--set", "kafka.sasl.passwordKey=password", "--set", "kafka.sasl.username=scalekit-bridge-prod")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (sasl,) = [v["secret"] for v in pod["volumes"] if v["secret"]["secretName"] == "scalekit-bridge-prod"]
    assert sasl["items"] == [{"key": "password", "path": "password"}]
    kafka = Settings.from_env(rendered_env(docs, tmp_path, OUTSIDE)).kafka
    assert (kafka.sasl_username, kafka.sasl_password.reveal() if kafka.sasl_password else None) == (
        "scalekit-bridge-prod", "p"
    )


def test_the_chart_s_kafka_user_is_strimzis_and_its_secret_is_what_every_pod_reads(helm, tmp_path):
    docs = render(helm, "strimzi-user")
    user = one(docs, "KafkaUser")
    assert user["metadata"]["name"] == "scalekit-bridge-prod"
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert "namespace" not in user["metadata"]  # the release's: where its pods can mount the Secret
    acls = [(acl["resource"].get("name"), acl["resource"].get("patternType"))
            for acl in user["spec"]["authorization"]["acls"]]
    assert acls == [("prod.scalekit.", "prefix"), (None, None)]  # the dead-letter topic is under the prefix
    assert "scalekit-bridge-prod" not in {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Secret"}
    kafka = Settings.from_env(rendered_env(docs, tmp_path, OUTSIDE)).kafka
    assert kafka.sasl_username == "scalekit-bridge-prod" and kafka.sasl_mechanism == "SCRAM-SHA-512"


def test_the_chart_s_tls_kafka_user_gives_every_pod_its_certificate(helm, tmp_path):
    docs = render(helm, "strimzi-user", "--set", "kafka.securityProtocol=SSL", "--set", "kafka.sasl.mechanism=")
    assert one(docs, "KafkaUser")["spec"]["authentication"]["type"] == "tls"
    issued = trustme.CA().issue_cert("scalekit-bridge-prod")
    secret = {  # as Strimzi writes a tls user's Secret
        "user.crt": issued.cert_chain_pems[0].bytes().decode(), "user.key": issued.private_key_pem.bytes().decode(),
        "ca.crt": "", "user.p12": "", "user.password": "",
    }
    kafka = Settings.from_env(rendered_env(docs, tmp_path, {"scalekit-bridge-prod": secret})).kafka
    assert Path(kafka.ssl_certfile or "").read_text() == secret["user.crt"]


def release(helm: Path, name: str, namespace: str, values: str, *extra: str) -> list[dict[str, Any]]:
    done = run_helm(helm, "template", name, "--namespace", namespace, "-f", str(VALUES[values]), *extra)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_two_releases_with_their_own_prefixes_share_no_name_in_one_namespace_and_one_kafka(helm):
    common = ("--set", "backfill.enabled=true", "--set", "backfill.environmentUrl=https://acme.scalekit.example",
              "--set", "eventTypes[0]=organization.directory.user_created",
              "--set", "backfill.clientId=c", "--set", "backfill.clientSecret=s",
              "--set", "grafanaDashboard.enabled=true", "--set", "prometheusRule.enabled=true")
    staging = release(helm, "staging", "scalekit", "strimzi-user", "--set", "config.topicPrefix=staging.scalekit.",
                      "--set", "kafkaUser.name=", *common)
    prod = release(helm, "prod", "scalekit", "strimzi-user", "--set", "kafkaUser.name=", *common)

    def names(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        return {(d["kind"], d["metadata"].get("namespace", "scalekit"), d["metadata"]["name"]) for d in docs}

    def topics(docs: list[dict[str, Any]]) -> set[str]:
        return {d["spec"]["topicName"] for d in docs if d["kind"] == "KafkaTopic"}

    def dashboard(docs: list[dict[str, Any]]) -> str:
        (board,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
        return str(json.loads(board["data"]["scalekit-bridge-dashboard.json"])["uid"])

    assert names(staging) & names(prod) == set()
    assert topics(staging) & topics(prod) == set()
    assert {"staging.scalekit.deadletter", "staging.scalekit.backfill-state"} <= topics(staging)
    assert {"prod.scalekit.deadletter", "prod.scalekit.backfill-state"} <= topics(prod)
    assert dashboard(staging) != dashboard(prod) and len(dashboard(prod)) <= 40
    assert bridge_config(staging)["BRIDGE_DEADLETTER_TOPIC"] == "staging.scalekit.deadletter"


def test_no_secret_value_is_written_outside_the_secret(helm):
    docs = render(helm, "everything")
    everything_but_secrets = yaml.safe_dump_all([doc for doc in docs if doc["kind"] != "Secret"])
    values = yaml.safe_load(VALUES["everything"].read_text())
    for secret in [
        *values["webhook"]["secret"].split(),
        values["kafka"]["sasl"]["password"],
        values["backfill"]["clientSecret"],
    ]:
        assert secret not in everything_but_secrets


# --- the Deployment's promises -----------------------------------------------------------------------


def test_probes_use_the_admin_port(helm):
    main = container(render(helm, "minimal"))
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"webhook": 8080, "admin": 8081}


def test_a_stopping_pod_gets_time_to_answer_every_delivery_in_flight(helm):
    docs = render(helm, "minimal")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    config = bridge_config(docs)
    pre_stop = int(container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
    publish_timeout = float(config["BRIDGE_PUBLISH_TIMEOUT"])
    shutdown_grace = float(config["BRIDGE_SHUTDOWN_GRACE"])
    assert pre_stop > 0
    assert publish_timeout < shutdown_grace
    assert pre_stop + shutdown_grace < pod["terminationGracePeriodSeconds"]


def test_the_shortest_accepted_grace_period_still_drains_for_the_whole_publish_timeout(helm):
    docs = render(helm, "minimal", "--set", "terminationGracePeriodSeconds=16")  # 5 + 8 + 3
    assert float(bridge_config(docs)["BRIDGE_SHUTDOWN_GRACE"]) >= float(bridge_config(docs)["BRIDGE_PUBLISH_TIMEOUT"])
    done = run_helm(
        helm, "template", "bridge", "-f", str(VALUES["minimal"]), "--set", "terminationGracePeriodSeconds=15"
    )
    assert done.returncode != 0
    assert (
        "terminationGracePeriodSeconds (15) must be at least "
        "preStopSleepSeconds + config.publishTimeoutSeconds + 3 (16)"
        in done.stderr
    )


def test_the_pod_is_hardened(helm):
    docs = render(helm, "minimal")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]


def test_a_config_change_rolls_the_pods(helm):
    before = one(render(helm, "minimal"), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = one(render(helm, "minimal", "--set", "config.logLevel=DEBUG"), "Deployment")["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert before["checksum/config"] != after["checksum/config"]


def test_the_disruption_budget_keeps_a_replica_serving(helm):
    docs = render(helm, "minimal")
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert one(docs, "Deployment")["spec"]["replicas"] == 2


def test_the_disruption_budget_lets_a_drain_evict_unready_pods(helm):
    """While Kafka is down every pod is unready; a budget counting them would hang every node drain."""
    budget = one(render(helm, "minimal"), "PodDisruptionBudget")
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("service_type", ["ClusterIP", "LoadBalancer", "NodePort"])
def test_only_the_webhook_port_can_be_made_public(helm, service_type):
    docs = render(helm, "minimal", "--set", f"service.type={service_type}")
    public, admin = webhook_service(docs), admin_service(docs)
    assert public["spec"]["type"] == service_type
    assert [port["targetPort"] for port in public["spec"]["ports"]] == ["webhook"]
    assert admin["spec"]["type"] == "ClusterIP"
    assert [port["targetPort"] for port in admin["spec"]["ports"]] == ["admin"]


# --- the optional pieces -----------------------------------------------------------------------------


def test_the_ingress_exposes_only_the_webhook_path(helm):
    ingress = one(render(helm, "everything"), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (rule["host"], path["path"], path["pathType"]) == ("hooks.example.com", "/webhooks/scalekit", "Exact")
    assert path["backend"]["service"]["port"] == {"name": "webhook"}
    assert ingress["spec"]["tls"][0]["hosts"] == ["hooks.example.com"]


def test_the_http_route_exposes_only_posts_to_the_webhook_path(helm):
    docs = render(helm, "everything")
    route = one(docs, "HTTPRoute")["spec"]
    assert route["parentRefs"] == [{"name": "public", "namespace": "gateways", "sectionName": "https"}]
    assert route["hostnames"] == ["hooks.example.com"]
    (rule,) = route["rules"]
    assert rule["matches"] == [{"path": {"type": "Exact", "value": "/webhooks/scalekit"}, "method": "POST"}]
    service = webhook_service(docs)
    assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}]
    assert "HTTPRoute" not in kinds(render(helm, "minimal"))


def test_the_service_monitor_scrapes_the_admin_port(helm):
    docs = render(helm, "everything")
    monitor = one(docs, "ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")
    wanted = monitor["selector"]["matchLabels"].items()
    selected = [doc for doc in docs if doc["kind"] == "Service" and wanted <= doc["metadata"]["labels"].items()]
    assert selected == [admin_service(docs)]  # so its Prometheus job is the admin Service's name


def test_the_alerts_and_dashboard_are_the_observability_files_not_copies(helm):
    placeholder = "https://github.com/scalekit-bridge/scalekit-bridge/blob/main/docs/runbooks.md"  # the file's
    docs = render(helm, "everything", "--set", f"prometheusRule.runbookBaseUrl={placeholder}")
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "scalekit-bridge-rules.yaml").read_text())
    spec = copy.deepcopy(one(docs, "PrometheusRule")["spec"])  # the renderings are cached: change a copy
    for rule in (rule for group in spec["groups"] for rule in group["rules"]):  # the release's names, undone
        rule["expr"] = (
            rule["expr"]
            .replace('job="bridge-scalekit-bridge-admin", namespace="prod"', 'job="scalekit-bridge"')
            .replace(', namespace="prod"', "")
            .replace("bridge-scalekit-bridge-backfill", "scalekit-bridge-backfill")
        )
    assert spec == rules
    (dashboard_map,) = [
        doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard")
    ]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "scalekit-bridge-dashboard.json").read_text())
    rendered = json.loads(dashboard_map["data"]["scalekit-bridge-dashboard.json"])
    assert (rendered.pop("uid"), rendered.pop("title")) == ("scalekit-bridge-" + release_digest("prod", "bridge"),
                                                          "scalekit-bridge (prod/bridge)")  # the release's own
    assert rendered == {key: value for key, value in dashboard.items() if key not in ("uid", "title")}
    assert dashboard_map["metadata"]["namespace"] == "monitoring"
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name in ("scalekit-bridge-rules.yaml", "scalekit-bridge-dashboard.json", "asyncapi.yaml"):
        assert (CHART / "files" / name).is_symlink(), name


def release_digest(namespace: str, name: str) -> str:
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:12]


def is_receipts_topic(doc: dict[str, Any], config: dict[str, str]) -> bool:
    return bool(doc["spec"]["topicName"] == config["BRIDGE_RECEIPTS_TOPIC"])


def test_kafka_topics_cover_every_documented_type_and_the_dead_letter_topic(helm):
    docs = render(helm, "everything")
    (job,) = backfill_pod(docs)["spec"]["containers"]
    state_topic = next(v["value"] for v in job["env"] if v["name"] == "BRIDGE_BACKFILL_STATE_TOPIC")
    (kept,) = [doc for doc in docs if doc["kind"] == "KafkaTopic" and doc["spec"]["topicName"] == state_topic]
    assert kept["spec"]["config"]["cleanup.policy"] == "compact" and kept["spec"]["partitions"] == 1
    config = bridge_config(docs)
    (receipts,) = [doc for doc in docs if doc["kind"] == "KafkaTopic" and is_receipts_topic(doc, config)]
    topics = [doc for doc in docs if doc["kind"] == "KafkaTopic" and doc not in (kept, receipts)]
    expected = {config["BRIDGE_TOPIC_PREFIX"] + t for t in Contract.load().event_types} | {
        config["BRIDGE_DEADLETTER_TOPIC"]
    }
    assert {topic["spec"]["topicName"] for topic in topics} == expected
    assert len(topics) == len(sample_types()) + 1
    for topic in topics:
        assert DNS_SUBDOMAIN.match(topic["metadata"]["name"]), topic["metadata"]["name"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "my-cluster"
        assert topic["spec"]["config"]["min.insync.replicas"] == "2"
        assert int(topic["spec"]["config"]["max.message.bytes"]) > int(config["BRIDGE_MAX_BODY_BYTES"])
    assert config["BRIDGE_CREATE_TOPICS"] == "false"  # Strimzi owns them now


def test_the_receipts_topic_is_the_prefixs_compacted_and_kept_for_the_window(helm, tmp_path):
    """Created as the bridge would create it: compacted and deleted after BRIDGE_DEDUP_WINDOW, in 24 segments."""
    docs = render(helm, "everything", "--set", "dedup.windowSeconds=7200")
    config = bridge_config(docs)
    (receipts,) = [doc for doc in docs if doc["kind"] == "KafkaTopic" and is_receipts_topic(doc, config)]
    assert config["BRIDGE_RECEIPTS_TOPIC"] == config["BRIDGE_TOPIC_PREFIX"] + "dedup-receipts"
    assert config["BRIDGE_DEDUP"] == "true" and config["BRIDGE_DEDUP_WINDOW"] == "7200"
    settings = {"cleanup.policy": "compact,delete", "retention.ms": "7200000", "segment.ms": "300000"}
    assert settings.items() <= receipts["spec"]["config"].items()
    bridge_settings = Settings.from_env(rendered_env(docs, tmp_path, OUTSIDE))
    assert dedup.topic_configs(bridge_settings) == {config["BRIDGE_RECEIPTS_TOPIC"]: settings}


def test_without_dedup_there_is_no_receipts_topic_and_the_bridge_is_told(helm):
    docs = render(helm, "everything", "--set", "dedup.enabled=false")
    config = bridge_config(docs)
    assert config["BRIDGE_DEDUP"] == "false"
    assert not [doc for doc in docs if doc["kind"] == "KafkaTopic" and "receipts" in doc["spec"]["topicName"]]


def test_the_alerts_that_fire_on_absence_watch_this_release_by_name(helm):
    """`up` of the job the ServiceMonitor creates, and the release's own backfill CronJob, in its namespace."""
    docs = render(helm, "everything")
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    expressions = {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}
    job = admin_service(docs)["metadata"]["name"]
    cronjob_name = cronjob(docs)["metadata"]["name"]
    assert f'absent(up{{job="{job}", namespace="prod"}})' in expressions["ScalekitBridgeDown"]
    backfill = expressions["ScalekitBridgeBackfillFailing"]
    assert f'kube_cronjob_status_last_successful_time{{cronjob="{cronjob_name}", namespace="prod"}}' in backfill
    assert f'job_name=~"{cronjob_name}-[0-9]+", namespace="prod"' in backfill
    assert "scalekit-bridge-backfill\"" not in backfill.replace(cronjob_name, "")


def alerts(docs: list[dict[str, Any]]) -> list[str]:
    return [rule["alert"] for group in one(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


def test_the_absence_alert_is_rendered_only_for_a_scrape_job_that_exists(helm):
    """Without the ServiceMonitor nothing may scrape job=<admin Service>: ScalekitBridgeDown would fire for ever."""
    without = render(helm, "everything", "--set", "serviceMonitor.enabled=false")
    assert "ScalekitBridgeDown" not in alerts(without) and "ScalekitBridgeNotReady" in alerts(without)
    named = render(helm, "everything", "--set", "serviceMonitor.enabled=false", "--set",
                   "prometheusRule.scrapeJob=kubernetes-pods")
    (down,) = [rule for group in one(named, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]
               if rule["alert"] == "ScalekitBridgeDown"]
    assert 'job="kubernetes-pods"' in down["expr"]
    assert "ScalekitBridgeDown" in alerts(render(helm, "everything"))  # its ServiceMonitor makes the job


def test_every_runbook_link_can_point_at_the_operators_own_copy(helm):
    base = "https://wiki.example.com/sre/scalekit-bridge-runbooks"
    docs = render(helm, "everything", "--set", f"prometheusRule.runbookBaseUrl={base}")
    rules = [rule for group in one(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"{base}#{rule['alert'].lower()}"
    unlinked = one(render(helm, "everything", "--set", "prometheusRule.runbookBaseUrl="), "PrometheusRule")
    for rule in (rule for group in unlinked["spec"]["groups"] for rule in group["rules"]):
        assert "runbook_url" not in rule["annotations"] and rule["annotations"]["description"]


def test_kafka_topics_are_kept_and_go_where_strimzi_watches(helm):
    """Uninstalling, turning kafkaTopics off or renaming the prefix must never let Strimzi delete a topic."""
    topics = [doc for doc in render(helm, "everything") if doc["kind"] == "KafkaTopic"]
    assert topics
    for topic in topics:
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert topic["metadata"]["namespace"] == "kafka"
    in_release = [doc for doc in render(helm, "existing-secret-sasl") if doc["kind"] == "KafkaTopic"]
    assert {topic["metadata"]["namespace"] for topic in in_release} == {"prod"}


def test_kafka_topics_follow_a_custom_prefix(helm):
    docs = render(helm, "existing-secret-sasl", "--set", "config.topicPrefix=acme.scalekit.")
    topics = [doc for doc in docs if doc["kind"] == "KafkaTopic"]
    assert "acme.scalekit.organization.directory.user_created" in {t["spec"]["topicName"] for t in topics}


def strimzi_versions(docs: list[dict[str, Any]]) -> set[str]:
    return {doc["apiVersion"] for doc in docs if doc["apiVersion"].startswith("kafka.strimzi.io/")}


@pytest.mark.parametrize(
    ("cluster_serves", "expected"),
    [
        ((), "kafka.strimzi.io/v1"),  # helm template: no cluster to ask
        (("kafka.strimzi.io/v1",), "kafka.strimzi.io/v1"),  # Strimzi 1.x
        (("kafka.strimzi.io/v1", "kafka.strimzi.io/v1beta2"), "kafka.strimzi.io/v1"),  # 0.49-0.52: v1 lasts
        (("kafka.strimzi.io/v1beta2",), "kafka.strimzi.io/v1beta2"),  # before 0.49
    ],
)
def test_strimzi_resources_render_the_api_the_cluster_serves(helm, cluster_serves, expected):
    served = [arg for version in cluster_serves for arg in ("--api-versions", version)]
    assert strimzi_versions(render(helm, "everything", *served)) == {expected}


def test_an_api_version_set_in_the_values_wins(helm):
    docs = render(helm, "everything", "--api-versions", "kafka.strimzi.io/v1",
                  "--set", "kafkaTopics.apiVersion=kafka.strimzi.io/v1beta2")
    assert strimzi_versions(docs) == {"kafka.strimzi.io/v1beta2"}


def test_strimzi_resources_asked_for_as_v1beta2_are_valid_for_a_strimzi_before_0_49(helm, crd_models):
    docs = render(helm, "everything", "--set", "kafkaTopics.apiVersion=kafka.strimzi.io/v1beta2")
    custom = [doc for doc in docs if doc["apiVersion"].startswith("kafka.strimzi.io/")]
    assert custom and validate_custom(crd_models, custom) == [None] * len(custom)


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def test_the_network_policy_opens_only_the_two_ports_and_lets_helm_test_in(helm):
    policy = named(render(helm, "everything"), "NetworkPolicy", "bridge-scalekit-bridge")["spec"]
    webhook, admin = policy["ingress"]
    assert webhook["ports"] == [{"port": "webhook", "protocol": "TCP"}]
    assert {"app.kubernetes.io/component": "helm-test", "app.kubernetes.io/instance": "bridge"} in [
        peer.get("podSelector", {}).get("matchLabels") for peer in webhook["from"]
    ]
    assert admin["ports"] == [{"port": "admin", "protocol": "TCP"}]
    assert policy["policyTypes"] == ["Ingress", "Egress"]


def test_tracing_reaches_every_pod_with_the_collectors_credentials_from_their_secret(helm, tmp_path, monkeypatch):
    docs = render(helm, "everything")
    for of in (None, *((backfill_pod(docs, c)["spec"], backfill_pod(docs, c)["spec"]["containers"][0])
                       for c in ("backfill", "replay"))):
        env = rendered_env(docs, tmp_path, OUTSIDE, of)
        assert env["BRIDGE_TRACING"] == "true"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
        assert env["OTEL_EXPORTER_OTLP_HEADERS"] == "authorization=Bearer not-a-real-token"
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == "k8s.namespace.name=prod,deployment.environment.name=prod"
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert otel.configure(lambda reason, count: None).enabled  # the SDK's variables as the chart sets them
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in bridge_config(docs)
    assert "BRIDGE_TRACING" not in {k for k, v in bridge_config(render(helm, "minimal")).items() if v == "true"}


def test_every_network_policy_lets_the_pods_reach_the_collector_and_only_on_its_port(helm):
    docs = render(helm, "everything")
    collector = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
    policies = [doc["spec"] for doc in docs if doc["kind"] == "NetworkPolicy"]
    assert len(policies) == 3
    for policy in policies:
        assert {"ports": [{"port": 4318, "protocol": "TCP"}], "to": [collector]} in policy["egress"]


def test_tracing_without_a_collector_is_refused_naming_the_value(helm):
    refused = run_helm(helm, "template", "bridge", "--set", "webhook.secret=whsec_x",
                       "--set", "kafka.bootstrapServers=k:9092", "--set", "tracing.enabled=true")
    assert refused.returncode != 0 and "tracing.endpoint" in refused.stderr


def test_the_chart_and_its_app_are_the_packages_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__


# --- the backfill CronJob ----------------------------------------------------------------------------

BACKFILLED = ("everything", "existing-secret-sasl")


@pytest.mark.parametrize("values", BACKFILLED)
def test_the_backfill_environment_is_one_backfill_accepts_with_the_webhook_secret(helm, values, tmp_path):
    """The webhook secret lets backfill trust a dead letter only when its kept signature verifies."""
    docs = render(helm, values)
    (job,) = backfill_pod(docs)["spec"]["containers"]
    outside = {"scalekit-api-client": {"SCALEKIT_CLIENT_ID": "skc_1", "SCALEKIT_CLIENT_SECRET": "s"}, **OUTSIDE}
    env = rendered_env(docs, tmp_path, outside, of=(backfill_pod(docs)["spec"], job))
    settings = BackfillSettings.from_env(env)
    assert settings.api.environment_url == "https://acme.scalekit.example"
    assert settings.topic_prefix == bridge_config(docs)["BRIDGE_TOPIC_PREFIX"]
    assert settings.signing_keys == Settings.from_env(rendered_env(docs, tmp_path, OUTSIDE)).signing_keys != ()


def test_the_backfill_runs_every_15_minutes_over_two_hours_never_twice_at_once(helm):
    docs = render(helm, "everything")
    cron = cronjob(docs)["spec"]
    (job,) = backfill_pod(docs)["spec"]["containers"]
    assert cron["schedule"] == "*/15 * * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    assert job["command"] == [
        "scalekit-bridge", "backfill", "--since", "2h", "--until", "25m", "--resume", "--max-lookback", "7d"
    ]
    assert job["image"] == container(docs)["image"]


def test_the_backfill_window_ends_behind_scalekits_retries():
    """Scalekit retries for about 22 minutes: a younger event may still come by webhook."""
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["backfill"]
    assert now - parse_moment(values["until"], now) >= timedelta(minutes=22)


def test_the_subscribed_types_narrow_the_backfill_and_the_topics(helm):
    types = ["organization.directory.user_created", "organization.directory.user_deleted"]
    sets = [arg for n, t in enumerate(types) for arg in ("--set", f"eventTypes[{n}]={t}")]
    docs = render(helm, "everything", *sets, "--set", "backfill.extraArgs[0]=--organization",
                  "--set", "backfill.extraArgs[1]=org_1")
    (job,) = backfill_pod(docs)["spec"]["containers"]
    args = command_line().parse_args(job["command"][1:])
    assert (args.command, args.types, args.organization, args.until) == ("backfill", types, "org_1", "25m")
    topics = {doc["spec"]["topicName"] for doc in docs if doc["kind"] == "KafkaTopic"}
    assert topics == {
        "scalekit.deadletter", "scalekit.backfill-state", "scalekit.dedup-receipts", *(f"scalekit.{t}" for t in types)
    }


def test_without_event_types_every_documented_type_gets_its_kafka_topic(helm):
    """Under kafkaTopics the bridge creates no topic: a type without a KafkaTopic would be dead-lettered."""
    docs = render(helm, "existing-secret-sasl")
    topics = {doc["spec"]["topicName"] for doc in docs if doc["kind"] == "KafkaTopic"}
    documented = {f"scalekit.{t}" for t in Contract.load().event_types}
    assert topics - {"scalekit.backfill-state", "scalekit.dedup-receipts"} == {"scalekit.deadletter", *documented}


def test_event_types_name_the_newest_families_and_a_type_this_release_does_not_know_yet(helm):
    types = ["connected_account.token_refresh_failed", "organization.domain_dns_verification_failed",
             "organization.widget_created"]
    sets = [arg for n, t in enumerate(types) for arg in ("--set", f"eventTypes[{n}]={t}")]
    docs = render(helm, "existing-secret-sasl", *sets)
    topics = {doc["spec"]["topicName"] for doc in docs if doc["kind"] == "KafkaTopic"}
    own = {"scalekit.backfill-state", "scalekit.dedup-receipts"}
    assert topics - own == {"scalekit.deadletter", *(f"scalekit.{t}" for t in types)}
    names = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "KafkaTopic"}
    assert "scalekit.connected-account.token-refresh-failed" in names  # Kubernetes names have no '_'


def test_every_rendered_backfill_command_is_one_the_cli_accepts(helm):
    for values in BACKFILLED:
        (job,) = backfill_pod(render(helm, values))["spec"]["containers"]
        assert job["command"][0] == "scalekit-bridge"
        assert command_line().parse_args(job["command"][1:]).command == "backfill"


def test_the_backfill_has_room_for_a_documented_catch_up(helm):
    """About 100 MiB and up to 7 KB per event of the window (docs/recovery/backfill.md): the limit fits 60,000."""
    (job,) = backfill_pod(render(helm, "everything"))["spec"]["containers"]
    limit = job["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert int(limit[:-2]) * 2**20 >= 100 * 2**20 + 60_000 * 7 * 1024


# --- the replay CronJob ------------------------------------------------------------------------------


def test_the_replay_never_runs_by_itself_and_is_there_by_default_for_the_runbooks_jobs(helm):
    for values in ("minimal", "everything"):
        cron = cronjob(render(helm, values), "replay")
        assert cron["spec"]["suspend"] is True
        assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
        assert cron["spec"]["failedJobsHistoryLimit"] >= 2  # the run before the last failed one's list too
    assert [d for d in render(helm, "minimal", "--set", "replay.enabled=false") if d["kind"] == "CronJob"] == []


@pytest.mark.parametrize("values", ["everything", "existing-secret-sasl"])
def test_the_replay_environment_is_one_replay_accepts_with_the_bridges_secret(helm, values, tmp_path):
    docs = render(helm, values, "--set", "replay.enabled=true")
    pod = backfill_pod(docs, "replay")
    (job,) = pod["spec"]["containers"]
    outside = OUTSIDE
    env = rendered_env(docs, tmp_path, outside, of=(pod["spec"], job))
    settings = ReplaySettings.from_env(env)
    bridge = Settings.from_env(rendered_env(docs, tmp_path, outside))  # the same mount paths, the same files
    assert settings.signing_keys == bridge.signing_keys
    assert (settings.topic_prefix, settings.deadletter_topic) == (bridge.topic_prefix, bridge.deadletter_topic)
    assert settings.kafka == bridge.kafka
    assert "SCALEKIT_CLIENT_SECRET_FILE" not in env


def test_the_rendered_replay_command_is_one_the_cli_accepts(helm):
    (job,) = backfill_pod(render(helm, "everything"), "replay")["spec"]["containers"]
    assert job["command"][0] == "scalekit-bridge"
    args = command_line().parse_args(job["command"][1:])
    assert (args.command, args.since, args.reason) == ("replay", "48h", "does not exist")


def test_the_replay_pod_is_hardened_like_the_bridge(helm):
    docs = render(helm, "everything")
    pod = backfill_pod(docs, "replay")["spec"]
    (job,) = pod["containers"]
    assert pod["securityContext"] == one(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert job["securityContext"] == container(docs)["securityContext"]
    assert (pod["automountServiceAccountToken"], pod["restartPolicy"]) == (False, "Never")
    assert job["volumeMounts"] == container(docs)["volumeMounts"]


def test_the_backfill_pod_is_hardened_like_the_bridge(helm):
    docs = render(helm, "everything")
    pod, bridge_pod = backfill_pod(docs)["spec"], one(docs, "Deployment")["spec"]["template"]["spec"]
    (job,) = pod["containers"]
    assert pod["securityContext"] == bridge_pod["securityContext"]
    assert job["securityContext"] == container(docs)["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    shared = [mount for mount in container(docs)["volumeMounts"]
              if mount["name"] in ("kafka-sasl", "kafka-ca", "webhook-secret")]
    assert [mount for mount in job["volumeMounts"] if mount["name"] != "scalekit-api"] == shared  # Kafka's, webhook


def test_nothing_that_selects_the_bridge_selects_a_backfill_or_helm_test_pod(helm):
    """The Service must not route deliveries to such a pod, nor the budget or policy count it."""
    docs = render(helm, "everything")
    (test_pod,) = [doc for doc in docs if doc["kind"] == "Pod"]
    selectors = [
        webhook_service(docs)["spec"]["selector"],
        admin_service(docs)["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        named(docs, "NetworkPolicy", "bridge-scalekit-bridge")["spec"]["podSelector"]["matchLabels"],
    ]
    for labels in (backfill_pod(docs)["metadata"]["labels"], test_pod["metadata"]["labels"]):
        for selector in selectors:
            assert not selector.items() <= labels.items()
    labels = backfill_pod(docs)["metadata"]["labels"]
    backfill_policy = named(docs, "NetworkPolicy", "bridge-scalekit-bridge-backfill")["spec"]
    assert backfill_policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert backfill_policy["ingress"] == []
    assert {"port": 443, "protocol": "TCP"} in [p for rule in backfill_policy["egress"] for p in rule["ports"]]


@pytest.mark.parametrize("mode", ["probe", "publish"])
def test_helm_test_reaches_the_bridge_through_the_service_and_writes_only_when_asked(helm, mode):
    """By default it proves the install without writing an event into a topic consumers read."""
    docs = render(helm, "everything", "--set", f"tests.mode={mode}")
    (pod,) = [doc for doc in docs if doc["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    args = command_line().parse_args(command[1:])
    assert (command[0], args.command, args.event_type in sample_types()) == ("scalekit-bridge", "send-test", True)
    service, admin = webhook_service(docs), admin_service(docs)
    assert args.url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/webhooks/scalekit"
    assert args.probe is (mode == "probe")
    if mode == "probe":
        assert args.ready_url == f"http://{admin['metadata']['name']}:{admin['spec']['ports'][0]['port']}/readyz"
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # The NetworkPolicy lets the test pod reach both ports, whoever else may.
    ingress = named(docs, "NetworkPolicy", "bridge-scalekit-bridge")["spec"]["ingress"]
    for rule in ingress:
        selectors = [peer.get("podSelector", {}).get("matchLabels", {}) for peer in rule.get("from", [])]
        assert not rule.get("from") or any(s.items() <= pod["metadata"]["labels"].items() for s in selectors if s)


def render_notes(helm: Path, values: str | Path, tmp_path: Path) -> str:
    """NOTES.txt as helm renders it after an install (helm template does not print notes); `values` names a
    values set of ci/ or is a file of the test's own."""
    chart = tmp_path / "scalekit-bridge"
    shutil.copytree(CHART, chart)  # links resolved, as `helm package` does
    (chart / "files" / "notes-under-test.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ tpl (.Files.Get "files/notes-under-test.txt") . | indent 4 }}\n'
    )
    done = run_helm(
        helm,
        "template",
        "bridge",
        "-n",
        "prod",
        "-f",
        str(values if isinstance(values, Path) else VALUES[values]),
        "--show-only",
        "templates/notes-under-test.yaml",
        chart=chart,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["data"]["notes"]


@pytest.mark.parametrize("values", sorted(VALUES))
def test_no_notes_runbook_or_readme_line_runs_a_tool_inside_a_serving_pod(helm, tmp_path, values):
    """A tool beside the bridge in its 256 Mi container can take it over its limit: the OOM kill takes the
    bridge. Tools run as Jobs from the replay CronJob instead, and every command they run is one the CLI takes."""
    texts = {"NOTES": render_notes(helm, values, tmp_path)}
    pages = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md", CHART / "README.md"]
    texts |= {str(path.relative_to(ROOT)): path.read_text() for path in pages}
    for name, text in texts.items():
        assert not re.search(r"kubectl[^\n]*\sexec\s", text), name
    for command in re.findall(r"command = (\[\"scalekit-bridge\"[^\]]*\])", texts["NOTES"]):
        assert command_line().parse_args(json.loads(command)[1:]).command in ("replay", "tail")


def test_extra_env_and_env_from_reach_every_container_the_chart_renders(helm):
    """On a proxied cluster the backfill (the one part that calls Scalekit) needs HTTPS_PROXY as much as the bridge."""
    docs = render(helm, "everything", "--set", "extraEnv[0].name=HTTPS_PROXY", "--set",
                  "extraEnv[0].value=http://proxy.internal:3128", "--set", "extraEnvFrom[0].configMapRef.name=site-env")
    pods = [doc["spec"]["template"]["spec"] for doc in docs if doc["kind"] == "Deployment"]
    pods += [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] for doc in docs if doc["kind"] == "CronJob"]
    pods += [doc["spec"] for doc in docs if doc["kind"] == "Pod"]
    assert len(pods) == 4  # the bridge, backfill, replay and the helm test
    for pod in pods:
        for main in pod["containers"]:
            assert {"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"} in main["env"], main["name"]
            assert {"configMapRef": {"name": "site-env"}} in main["envFrom"], main["name"]


def test_the_notes_print_the_webhook_url_to_register_in_scalekit(helm, tmp_path):
    notes = render_notes(helm, "everything", tmp_path)
    assert "https://hooks.example.com/webhooks/scalekit" in notes
    assert "helm test bridge -n prod" in notes
    minimal = render_notes(helm, "minimal", tmp_path / "minimal")
    assert "kubectl -n prod port-forward svc/bridge-scalekit-bridge 8080" in minimal


def test_the_notes_name_the_url_of_the_exposure_the_release_has(helm, tmp_path):
    chart_values = yaml.safe_load(VALUES["everything"].read_text())
    routed = tmp_path / "routed-values.yaml"
    routed.write_text(yaml.safe_dump(chart_values | {
        "ingress": {**chart_values["ingress"], "enabled": False},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}],
                      "hostnames": ["hooks.acme.example"]},
    }))
    notes = render_notes(helm, routed, tmp_path / "chart")
    assert "https://hooks.acme.example/webhooks/scalekit" in notes and "Gateway public (gateways)" in notes
    assert "No Ingress was enabled" not in notes


def test_the_notes_say_how_to_backfill_after_an_outage(helm, tmp_path):
    notes = render_notes(helm, "everything", tmp_path)
    assert "kubectl -n prod create job --from=cronjob/bridge-scalekit-bridge-backfill backfill-now" in notes
    assert ".spec.template.spec.containers[0].command[3] = " in notes  # the outage's start replaces --since's
    (job,) = backfill_pod(render(helm, "everything"))["spec"]["containers"]
    assert job["command"][2] == "--since"
    assert "set backfill.enabled" in render_notes(helm, "minimal", tmp_path / "minimal")


def test_the_docs_name_the_cronjob_their_own_install_creates(helm):
    readme = "".join((ROOT / "docs" / page).read_text() for page in ("operating/kubernetes.md", "recovery/backfill.md"))
    install = re.search(r"helm install (\S+) deploy/helm/scalekit-bridge -n (\S+)", readme)
    assert install
    release, namespace = install.groups()
    done = run_helm(helm, "template", release, "-n", namespace, "-f", str(VALUES["everything"]))
    assert done.returncode == 0, done.stderr
    cronjob_name = cronjob([doc for doc in yaml.safe_load_all(done.stdout) if doc])["metadata"]["name"]
    assert f"kubectl -n {namespace} create job --from=cronjob/{cronjob_name} backfill-now" in readme


# --- refusing bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            "config.schemaValidation=strict",
            "at '/config/schemaValidation': value must be one of 'off', 'warn', 'enforce'",
        ),
        ("replicaCount=0", "at '/replicaCount': minimum: got 0, want 1"),
        ("kafka.securityProtocol=TLS", "at '/kafka/securityProtocol': value must be one of"),
        ("webhook.secret=hunter2", "at '/webhook/secret'"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("config.publishTimeoutSeconds=120", "at '/config/publishTimeoutSeconds': maximum: got 120, want 60"),
        ("backfill.since=yesterday", "at '/backfill/since'"),
        ("backfill.environmentUrl=http://acme.scalekit.example", "at '/backfill/environmentUrl'"),
        ("replay.args[0]=--dry-run", "at '/replay/args'"),
    ],
)
def test_the_values_schema_refuses_a_bad_value_with_a_clear_message(helm, bad, message):
    done = run_helm(helm, "template", "bridge", "-f", str(VALUES["minimal"]), "--set", bad)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr


def test_a_bad_values_file_is_refused_by_lint_too(helm, tmp_path):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(VALUES["minimal"].read_text() + "config:\n  cloudeventsMode: batch\n")
    done = run_helm(helm, "lint", "-f", str(bad))
    assert done.returncode != 0
    assert "at '/config/cloudeventsMode': value must be one of 'binary', 'structured'" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"bootstrapServers": "k:9092"}}, "set webhook.secret"),
        ({"webhook": {"existingSecret": "s"}}, "set kafka.bootstrapServers"),
        (
            {
                "webhook": {"existingSecret": "s"},
                "kafka": {"bootstrapServers": "k:9092", "securityProtocol": "SASL_SSL"},
            },
            "kafka.securityProtocol=SASL_SSL needs kafka.sasl.mechanism",
        ),
        (
            {
                "webhook": {"existingSecret": "s"},
                "kafka": {"bootstrapServers": "k:9092", "securityProtocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN"}},
            },
            "needs kafka.sasl.username and kafka.sasl.password, or kafka.sasl.existingSecret",
        ),
        (
            {"webhook": {"existingSecret": "s"}, "kafka": {"bootstrapServers": "k:9092"}, "ingress": {"enabled": True}},
            "ingress.enabled needs ingress.host",
        ),
        (
            {
                "webhook": {"existingSecret": "s"},
                "kafka": {"bootstrapServers": "k:9092"},
                "httpRoute": {"enabled": True},
            },
            "httpRoute.enabled needs httpRoute.parentRefs",
        ),
        (
            {
                "webhook": {"existingSecret": "s"},
                "kafka": {"bootstrapServers": "k:9092"},
                "kafkaTopics": {"enabled": True},
            },
            "kafkaTopics.enabled needs kafkaTopics.clusterName",
        ),
        (
            {
                "webhook": {"existingSecret": "s"},
                "kafka": {"bootstrapServers": "k:9092"},
                "backfill": {"enabled": True},
            },
            "backfill.enabled needs backfill.environmentUrl",
        ),
        (
            {
                "webhook": {"existingSecret": "s"},
                "kafka": {"bootstrapServers": "k:9092"},
                "backfill": {"enabled": True, "environmentUrl": "https://acme.scalekit.example", "clientId": "skc_1"},
            },
            (
                "backfill.enabled needs backfill.clientId and backfill.clientSecret (a Scalekit API client), "
                "or backfill.existingSecret"
            ),
        ),
    ],
)
def test_a_missing_required_setting_is_named(helm, tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = run_helm(helm, "template", "bridge", "-f", str(path))
    assert done.returncode != 0
    assert message in done.stderr


# --- the values schema and the bridge's own reader agree --------------------------------------------

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# The values that become the bridge's environment (config.*, the two ports, the shutdown timing).
REACHING_THE_BRIDGE = [
    *(f"config.{name}" for name in SCHEMA["properties"]["config"]["properties"]),
    "service.port",
    "service.adminPort",
    "preStopSleepSeconds",
    "terminationGracePeriodSeconds",
]


def schema_of(path: str) -> dict[str, Any]:
    node: dict[str, Any] = SCHEMA
    for part in path.split("."):
        node = node["properties"][part]
    return node


def boundaries() -> list[tuple[str, object, bool]]:
    """(value path, value, inside the schema) at and just past every bound the schema states."""
    cases: list[tuple[str, object, bool]] = []
    for path in REACHING_THE_BRIDGE:
        node = schema_of(path)
        step = 1 if "integer" in node["type"] else 0.1
        if "minimum" in node:
            cases += [(path, node["minimum"], True), (path, round(node["minimum"] - step, 3), False)]
        if "maximum" in node:
            cases += [(path, node["maximum"], True), (path, round(node["maximum"] + step, 3), False)]
        for value in node.get("enum", []):
            cases.append((path, value, True))
        if "pattern" in node:  # the empty string: refused, or (a name derived when unset) rendered and taken
            cases.append((path, "", re.search(node["pattern"], "") is not None))
    return cases


def test_every_value_that_reaches_the_bridge_has_bounds_to_try():
    tried = {path for path, _, _ in boundaries()}
    assert tried >= set(REACHING_THE_BRIDGE) - {"config.createTopics"}


@pytest.mark.parametrize(("path", "value", "inside"), boundaries(), ids=lambda v: str(v))
def test_what_the_chart_renders_at_a_bound_the_bridge_accepts(helm, tmp_path, path, value, inside):
    """Whatever helm renders, the bridge starts on: the schema (or the templates' own checks, which name
    the value) refuses first. Values past a stated bound never render at all."""
    flag = "--set-string" if isinstance(value, str) else "--set"
    done = run_helm(helm, "template", "bridge", "-n", "prod", "-f", str(VALUES["minimal"]), flag, f"{path}={value}")
    if not inside:
        assert done.returncode != 0, f"the schema took {path}={value!r}"
        return
    if done.returncode != 0:  # a combination the templates refuse, with a message naming the value
        assert path.split(".")[-1] in done.stderr, done.stderr
        return
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    Settings.from_env(rendered_env(docs, tmp_path))


@pytest.mark.parametrize(
    ("base", "values", "message"),
    [
        ("minimal", ["terminationGracePeriodSeconds=620"], "may be at most preStopSleepSeconds + 603 (608)"),
        ("minimal", ["service.adminPort=8080"], "service.adminPort (8080) must differ from service.port"),
        ("minimal", ["config.topicMinInsyncReplicas=4"], "must not exceed config.topicReplication (3)"),
        ("minimal", ["config.topicPrefix="], "at '/config/topicPrefix'"),
        # A Secret of one's own named like the one the chart creates for the values it is given.
        ("minimal", ["kafka.caSecret=bridge-scalekit-bridge-credentials", "kafka.securityProtocol=SSL"],
         "bridge-scalekit-bridge-credentials is the name of the Secret"),
        ("minimal", ["backfill.enabled=true", "backfill.environmentUrl=https://a.scalekit.example",
                     "backfill.clientId=c", "backfill.clientSecret=s"], "backfill.enabled needs eventTypes"),
        # A KafkaUser the chart cannot wire.
        ("strimzi-user", ["kafka.sasl.mechanism=SCRAM-SHA-256"], "needs kafka.sasl.mechanism SCRAM-SHA-512"),
        ("strimzi-user", ["kafka.sasl.existingSecret=mine"],
         "leave kafka.sasl.username, password and existingSecret empty"),
        ("strimzi-user", ["kafka.securityProtocol=PLAINTEXT"], "kafkaUser.enabled needs kafka.securityProtocol SSL"),
        ("strimzi-user", ["kafkaTopics.clusterName="], "kafkaUser.enabled needs kafkaUser.clusterName"),
    ],
)
def test_combinations_the_bridge_refuses_are_refused_by_name(helm, base, values, message):
    sets = [arg for value in values for arg in ("--set", value)]
    done = run_helm(helm, "template", "bridge", "-f", str(VALUES[base]), *sets)
    assert done.returncode != 0
    assert message in done.stderr
