"""Pinned outside tools the checks need, fetched once into the user cache (never into the repo).

- `helm`: built with `go install` from the Go module proxy (checksums verified by Go).
- The official AsyncAPI JSON Schemas: the `@asyncapi/specs` package from the npm registry,
  checked against its pinned sha512 integrity.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from bridge.devkafka import cache_dir

HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION = "v3.22.0"
ASYNCAPI_SPECS = "@asyncapi/specs@6.11.1"
ASYNCAPI_SPECS_INTEGRITY = (
    "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
)
REQUIRE_ENV = "SCALEKIT_BRIDGE_REQUIRE_TOOLS"


class ToolUnavailable(Exception):
    pass


def unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: this check must run here)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(command: list[str], **kwargs: Any) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    if done.returncode != 0:
        raise ToolUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()[-800:]}")


def helm() -> Path:
    """A helm binary of the pinned version; raises ToolUnavailable."""
    home = cache_dir() / "helm" / HELM_VERSION
    binary = home / "helm"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ToolUnavailable("helm is built with Go, and no `go` is on PATH")
    with _locked(home):
        if not binary.exists():
            _run([go, "install", f"{HELM_MODULE}@{HELM_VERSION}"], env={**os.environ, "GOBIN": str(home)})
    return binary


def asyncapi_schema(version: str = "3.0.0") -> dict[str, Any]:
    """The official AsyncAPI JSON Schema of `version`; raises ToolUnavailable."""
    home = cache_dir() / ASYNCAPI_SPECS.replace("/", "_")
    schema = home / "package" / "schemas" / f"{version}.json"
    if not schema.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise ToolUnavailable("the AsyncAPI schemas come from the npm registry, and no `npm` is on PATH")
        with _locked(home):
            if not schema.exists():
                _fetch_npm_package(npm, home)
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
