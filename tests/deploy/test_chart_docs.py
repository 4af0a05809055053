"""The chart's README is helm-docs' rendering of values.yaml's comments, and is kept current."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests import tools

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "scalekit-bridge"


@pytest.fixture(scope="module")
def helm_docs() -> Path:
    return tools.required(tools.helm_docs)


def rendered(helm_docs: Path, chart: Path) -> str:
    done = subprocess.run(
        [str(helm_docs), "--dry-run", *tools.HELM_DOCS_ARGS],
        cwd=chart, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    return done.stdout


def test_the_chart_readme_is_what_helm_docs_makes_of_the_current_values(helm_docs):
    assert rendered(helm_docs, CHART) == (CHART / "README.md").read_text(), "run `make chart-docs`"


def test_every_value_the_chart_reads_has_a_row_in_the_readme():
    table = (CHART / "README.md").read_text()
    documented = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}

    def leaves(node: object, path: str) -> set[str]:
        if isinstance(node, dict) and node and path not in documented:
            return set().union(*(leaves(value, f"{path}.{key}" if path else key) for key, value in node.items()))
        return {path}

    missing = leaves(yaml.safe_load((CHART / "values.yaml").read_text()), "") - documented
    assert missing == set()


def test_a_value_without_a_comment_would_show_in_the_check(helm_docs, tmp_path):
    chart = tmp_path / "scalekit-bridge"
    subprocess.run(["cp", "-r", str(CHART), str(chart)], check=True)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "undocumentedValue: 1\n")
    assert rendered(helm_docs, chart) != (CHART / "README.md").read_text()
