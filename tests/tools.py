"""Pinned outside tools the checks need, fetched once into the user cache (never into the repo).

- `helm`, `helm-docs`, Prometheus's `promtool` and `vegeta` (for `make bench`): built with `go install`
  from the Go module proxy (checksums verified by Go), each at its pinned version.
- The official AsyncAPI JSON Schemas: the `@asyncapi/specs` package from the npm registry,
  checked against its pinned sha512 integrity.
- Schemas of the custom resources the chart renders (Prometheus Operator, Strimzi): the
  `@kubernetes-models` packages, installed with `npm ci` from `tests/deploy/crd-models`' lock file.
- The `docker compose` CLI plugin, built from its module on the Go module proxy (no engine needed
  for `docker compose config`).
- Jaeger's all-in-one, built the same way (inside a copy of its module, which has replace directives),
  for the trace tests.

When a tool cannot be had, the test that needs it is skipped with the reason, or, under
`make test` / CI (`SCALEKIT_BRIDGE_REQUIRE_TOOLS=1`), fails: a check that did not run
must never look like a check that passed.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from bridge.dev.kafka import cache_dir

HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION = "v3.22.0"
# What helm's own release build stamps in (its Makefile derives 1.37 from client-go v0.37): without it
# helm assumes Kubernetes 1.20, refuses charts needing newer, and lints for 1.20's deprecations.
HELM_KUBE_MAJOR, HELM_KUBE_MINOR = "1", "37"
HELM_DOCS_MODULE = "github.com/norwoodj/helm-docs/cmd/helm-docs"
HELM_DOCS_VERSION = "v1.14.2"
# How the chart's README is generated; `make chart-docs` and the test that it is current both use these.
HELM_DOCS_ARGS = ("--skip-version-footer", "--sort-values-order", "file", "--log-level", "warning")
VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
VEGETA_VERSION = "v12.13.0"
PROMTOOL_MODULE = "github.com/prometheus/prometheus/cmd/promtool"
# Prometheus 3's Go module is versioned v0.3xx.y; remove_all_sd leaves out the service-discovery
# plugins promtool does not need here, which halves what a cold machine downloads and compiles.
PROMTOOL_VERSION = "v0.316.0"
PROMTOOL_TAGS = "remove_all_sd"
ASYNCAPI_SPECS = "@asyncapi/specs@6.11.1"
ASYNCAPI_SPECS_INTEGRITY = (
    "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
)
COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"
# Jaeger's all-in-one (v2, on the OpenTelemetry Collector): OTLP in, its query API out, for the trace tests.
JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION = "v1.76.0"
CRD_MODELS = Path(__file__).parent / "deploy" / "crd-models"
REQUIRE_ENV = "SCALEKIT_BRIDGE_REQUIRE_TOOLS"
T = TypeVar("T")


class ToolUnavailable(Exception):
    pass


def unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: this check must run here)", pytrace=False)
    pytest.skip(reason)


def required(tool: Callable[[], T]) -> T:
    """The tool, or the test skipped (failed under make test) with the reason it cannot be had."""
    try:
        return tool()
    except ToolUnavailable as exc:
        unavailable(str(exc))


def _program(name: str, needed_for: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolUnavailable(f"{needed_for}, and no `{name}` is on PATH")
    return path


def _once(home: Path, done: Path, build: Callable[[], None]) -> None:
    """Run `build` unless `done` exists; one process at a time (parallel test runs share the cache)."""
    if done.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            build()


def _run(command: list[str], *, timeout: float = 900, **kwargs: Any) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise ToolUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()[-800:]}")


def helm() -> Path:
    """A helm binary of the pinned version; raises ToolUnavailable."""
    home = cache_dir() / "helm" / HELM_VERSION
    binary = home / "helm"
    stamps = [f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"] + [
        f"-X helm.sh/helm/v3/pkg/{package}.k8sVersion{part}={value}"
        for package in ("lint/rules", "chartutil")
        for part, value in (("Major", HELM_KUBE_MAJOR), ("Minor", HELM_KUBE_MINOR))
    ]
    _once(home, binary, lambda: _run(
        [_program("go", "helm is built with Go"), "install", "-trimpath", "-ldflags", " ".join(stamps),
         f"{HELM_MODULE}@{HELM_VERSION}"],
        env={**os.environ, "GOBIN": str(home)},
    ))
    return binary


def helm_docs() -> Path:
    """A helm-docs binary of the pinned version; raises ToolUnavailable."""
    return _go_install("helm-docs", HELM_DOCS_MODULE, HELM_DOCS_VERSION)


def promtool() -> Path:
    """Prometheus's promtool of the pinned version; raises ToolUnavailable."""
    return _go_install("promtool", PROMTOOL_MODULE, PROMTOOL_VERSION, "-tags", PROMTOOL_TAGS)


def vegeta() -> Path:
    """The vegeta load generator of the pinned version (open loop, constant rate); raises ToolUnavailable."""
    return _go_install("vegeta", VEGETA_MODULE, VEGETA_VERSION)


def _go_install(name: str, module: str, version: str, *flags: str) -> Path:
    home = cache_dir() / name / version
    binary = home / name
    _once(home, binary, lambda: _run(
        [_program("go", f"{name} is built with Go"), "install", "-trimpath", *flags, f"{module}@{version}"],
        env={**os.environ, "GOBIN": str(home)},
    ))
    return binary


def asyncapi_schema(version: str = "3.0.0") -> dict[str, Any]:
    """The official AsyncAPI JSON Schema of `version`; raises ToolUnavailable."""
    home = cache_dir() / ASYNCAPI_SPECS.replace("/", "_")
    schema = home / "package" / "schemas" / f"{version}.json"
    _once(home, schema, lambda: _fetch_npm_package(
        _program("npm", "the AsyncAPI schemas come from the npm registry"), home
    ))
    document: dict[str, Any] = json.loads(schema.read_text(encoding="utf-8"))
    return document


def _fetch_npm_package(npm: str, home: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        _run([npm, "pack", ASYNCAPI_SPECS, "--silent"], cwd=scratch)
        (tarball,) = Path(scratch).glob("*.tgz")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != ASYNCAPI_SPECS_INTEGRITY:
            raise ToolUnavailable(f"{ASYNCAPI_SPECS} does not match its pinned integrity ({digest})")
        with tarfile.open(tarball) as archive:
            archive.extractall(home, filter="data")


def crd_models() -> Path:
    """A node_modules directory with the custom-resource schema packages; raises ToolUnavailable."""
    lock = (CRD_MODELS / "package-lock.json").read_bytes()
    home = cache_dir() / "crd-models" / hashlib.sha256(lock).hexdigest()[:16]
    _program("node", "the custom-resource schemas run on node")

    def install() -> None:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(CRD_MODELS / name, home / name)
        npm = _program("npm", "the custom-resource schemas come from the npm registry")
        _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=home)
        (home / ".complete").touch()

    _once(home, home / ".complete", install)
    return home / "node_modules"


def docker_compose() -> dict[str, str]:
    """Environment in which `docker compose` works (the plugin built from source); raises ToolUnavailable."""
    _program("docker", "`docker compose` is a plugin of the docker client")
    home = cache_dir() / "compose" / COMPOSE_VERSION
    plugin = home / "docker-config" / "cli-plugins" / "docker-compose"
    version_flag = f"-X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
    _once(home, plugin, lambda: _build_in_module(
        _program("go", "the docker compose plugin is built with Go"),
        COMPOSE_MODULE, COMPOSE_VERSION, "./cmd", plugin, "-ldflags", version_flag,
    ))
    return {**os.environ, "DOCKER_CONFIG": str(home / "docker-config")}


def jaeger() -> Path:
    """Jaeger's all-in-one binary of the pinned version; raises ToolUnavailable."""
    home = cache_dir() / "jaeger" / JAEGER_VERSION
    binary = home / "jaeger"
    _once(home, binary, lambda: _build_in_module(
        _program("go", "Jaeger is built with Go"), JAEGER_MODULE, JAEGER_VERSION, "./cmd/jaeger", binary
    ))
    return binary


def _build_in_module(go: str, module: str, version: str, package: str, output: Path, *flags: str) -> None:
    # `go install module@version` refuses modules whose go.mod has replace/exclude directives,
    # so build inside a copy of the module, as its own main module (its go.mod and go.sum pin every dependency).
    done = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True, text=True, timeout=900, cwd=tempfile.gettempdir(),
    )
    if done.returncode != 0:
        output_text = done.stdout[-400:] + done.stderr[-400:]
        raise ToolUnavailable(f"could not download {module}@{version}: {output_text}")
    source = Path(json.loads(done.stdout)["Dir"])
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "module"
        shutil.copytree(source, work)
        for path in [work, *work.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        output.parent.mkdir(parents=True, exist_ok=True)
        # Jaeger's cold build compiles for about ten minutes on two cores.
        _run([go, "build", "-trimpath", *flags, "-o", str(output), package], cwd=work, timeout=2700)


CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "scalekit-bridge"


def main() -> None:
    """`python -m tests.tools NAME`: print where the pinned tool is, building it first if need be.

    `python -m tests.tools chart-docs` regenerates the chart's README with it (`make chart-docs`).
    """
    import sys

    tools = {"helm": helm, "helm-docs": helm_docs, "promtool": promtool, "vegeta": vegeta, "jaeger": jaeger}
    (name,) = sys.argv[1:]
    try:
        if name == "chart-docs":
            subprocess.run([str(helm_docs()), *HELM_DOCS_ARGS], cwd=CHART, check=True)
        else:
            print(tools[name]())
    except ToolUnavailable as exc:
        sys.exit(f"{name}: {exc}")


if __name__ == "__main__":
    main()
