"""The package's shape: which module may know which library, and what the service never loads.

The runtime modules are `bridge/*.py` and `bridge/kafka/`; `bridge/dev/` and `bridge/testing/` are tools
around them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bridge"
RUNTIME = sorted(
    path for path in [*PACKAGE.glob("*.py"), *PACKAGE.glob("kafka/*.py")] if path.name != "__main__.py"
)


def imported_modules(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module `path` imports (relative imports are not used in this package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def importers_of(library: str, paths: list[Path]) -> set[str]:
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in paths
        if any(name == library or name.startswith(library + ".") for name in imported_modules(path))
    }


def test_only_the_kafka_package_knows_aiokafka():
    assert {path.split("/")[0] for path in importers_of("aiokafka", RUNTIME)} == {"kafka"}


def test_only_the_otel_module_knows_opentelemetry():
    assert importers_of("opentelemetry", RUNTIME) == {"otel.py"}


def test_tracing_off_imports_nothing_of_opentelemetry():
    probe = (
        "import sys, bridge.cli, bridge.app, bridge.backfill, bridge.replay, bridge.tracing, bridge.traces;"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'bridge.otel')))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_only_the_app_module_knows_aiohttp():
    assert importers_of("aiohttp", RUNTIME) == {"app.py"}


def test_only_the_events_api_module_knows_the_scalekit_sdk():
    assert importers_of("scalekit", RUNTIME) == {"eventsapi.py"}


def test_the_core_does_not_import_the_kafka_adapter():
    assert importers_of("bridge.kafka", [PACKAGE / "pipeline.py", PACKAGE / "core.py"]) == set()


@pytest.mark.parametrize("path", RUNTIME, ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_no_runtime_module_imports_the_dev_tools_or_the_test_kit_at_import_time(path):
    tools = {
        name for name in imported_modules(path, top_level_only=True)
        if name.startswith(("bridge.dev", "bridge.testing"))
    }
    assert tools == set()


def test_serve_and_backfill_load_neither_dev_tools_nor_test_only_libraries():
    probe = (
        "import sys, bridge.cli, bridge.app, bridge.backfill;"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('cloudevents', 'yaml', 'pytest', 'testcontainers') or m.startswith(('bridge.dev', 'bridge.testing')))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_the_runtime_dependencies_are_exactly_the_libraries_the_service_imports():
    declared = {
        normalized(re.split(r"[<>=!~;\[ ]", requirement)[0])
        for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    standard = sys.stdlib_module_names | {"bridge"}
    third_party = {
        name.split(".")[0] for path in RUNTIME for name in imported_modules(path) if name.split(".")[0] not in standard
    }
    distributions = packages_distributions()
    provided_by = {module: {normalized(d) for d in distributions[module]} for module in third_party}
    assert [module for module, providers in provided_by.items() if not providers & declared] == []
    assert declared - set().union(*provided_by.values()) == set()
