"""The `scalekit-bridge` pytest plugin: registered on install, inert until a project opts in.

It only adds the ini setting `scalekit_bridge`; set it to true (or pass `-p bridge.testing.fixtures`)
to load the test kit's fixtures.
"""

from __future__ import annotations

import pytest

FIXTURES = "bridge.testing.fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "scalekit_bridge",
        "load scalekit-bridge's test-kit fixtures (bridge.testing.fixtures)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getini("scalekit_bridge") and not config.pluginmanager.has_plugin(FIXTURES):
        config.pluginmanager.import_plugin(FIXTURES)
