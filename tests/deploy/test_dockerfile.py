"""The Dockerfile: checked for the properties the image promises, and its build stage replayed without an engine.

No Docker engine runs on our machines, so the replay does what `docker build` would do with the build
stage (WORKDIR, COPY, RUN, with its ENV) in a temporary directory, then starts the final stage's
ENTRYPOINT from the result against the session's real Kafka and sends it a signed test event.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bridge import __version__
from bridge.testing import free_port
from tests.deploy.dockerfile import Dockerfile
from tests.fake_scalekit import FakeScalekit, sample_events
from tests.integration.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = Dockerfile.parse(ROOT / "Dockerfile")
BUILD = DOCKERFILE.stage("build")
FINAL = DOCKERFILE.final


def test_it_is_multi_stage_on_a_slim_python_base():
    assert len(DOCKERFILE.stages) >= 2
    for stage in DOCKERFILE.stages:
        assert re.match(r"^python:3\.1[1-9]-slim", stage.base), stage.base
    (copy,) = FINAL.all("COPY")
    assert copy.arguments.startswith("--from=build ")


def test_dependencies_get_their_own_layer_before_the_code():
    steps = [(i.keyword, i.arguments) for i in BUILD.instructions if i.keyword in ("COPY", "RUN")]
    first_copy, deps, *rest = steps
    assert first_copy == ("COPY", "pyproject.toml constraints.txt ./")
    assert deps[0] == "RUN" and "-c constraints.txt" in deps[1] and "-r requirements.txt" in deps[1]
    code_copies = [arguments for keyword, arguments in rest if keyword == "COPY"]
    assert "bridge/ bridge/" in code_copies
    (install,) = [arguments for keyword, arguments in rest if keyword == "RUN"]
    assert "--no-deps ." in install


def test_it_runs_as_a_numeric_non_root_user():
    (user,) = FINAL.all("USER")
    uid, _, gid = user.arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid == "" or (gid.isdigit() and int(gid) != 0)


def test_the_entrypoint_is_exec_form_scalekit_bridge_serve():
    (entrypoint,) = FINAL.all("ENTRYPOINT")
    assert entrypoint.exec_form() == ["scalekit-bridge", "serve"]
    assert FINAL.all("CMD") == []


def test_it_suits_a_read_only_root_filesystem():
    assert FINAL.env()["PYTHONDONTWRITEBYTECODE"] == "1"
    (install,) = [i.arguments for i in BUILD.all("RUN") if "--no-deps" in i.arguments]
    assert "compileall" in install  # bytecode is in the image, never written at run time


def test_it_carries_oci_labels():
    labels = FINAL.labels()
    for name in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{name}" in labels, name
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_the_image_version_is_the_packages():
    (version,) = [i.arguments for i in FINAL.all("ARG") if i.arguments.startswith("VERSION=")]
    assert version == f"VERSION={__version__}"


def test_it_exposes_the_default_ports_and_bakes_in_no_secret():
    (expose,) = FINAL.all("EXPOSE")
    assert expose.arguments.split() == ["8080", "8081"]
    for stage in DOCKERFILE.stages:
        assert not [name for name in stage.env() if re.search("SECRET|PASSWORD|TOKEN", name)]


def test_the_build_context_holds_what_the_build_copies_and_nothing_else():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {source.rstrip("/") for i in BUILD.all("COPY") for source in shlex.split(i.arguments)[:-1]}
    assert copied == allowed


def _replay_build(root: Path) -> Path:
    """Run the build stage's steps as `docker build` would; returns the built virtualenv."""
    venv = root / "venv"
    shims = root / "shims"
    shims.mkdir()
    (shims / "python").symlink_to(sys._base_executable)  # the image's `python`
    env = {**os.environ, **BUILD.env(), "VENV": str(venv), "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PIP_NO_CACHE_DIR", None)  # reuse this machine's pip cache; the image keeps none
    workdir = root
    for instruction in BUILD.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = root / instruction.arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, destination = shlex.split(instruction.arguments)
            for source in sources:
                origin, target = ROOT / source, workdir / destination
                if origin.is_dir():
                    shutil.copytree(origin, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction.keyword == "RUN":
            done = subprocess.run(
                ["sh", "-c", instruction.arguments], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, f"RUN {instruction.arguments}\n{done.stdout}\n{done.stderr}"
    assert BUILD.env()["VENV"] == FINAL.all("COPY")[0].arguments.split()[-1], "final stage copies the built venv"
    return venv


def _files(directory: Path) -> set[str]:
    return {str(path) for path in directory.rglob("*")}


@pytest.mark.integration
async def test_the_replayed_image_serves_a_signed_event_into_kafka_and_backfills(
    tmp_path, kafka, kafka_bootstrap, unique
):
    """The image's entrypoint delivers; its `backfill` (the chart's CronJob) reaches the SDK and Kafka."""
    venv = _replay_build(tmp_path)
    entrypoint = FINAL.all("ENTRYPOINT")[0].exec_form()
    assert entrypoint is not None
    command = [str(venv / "bin" / entrypoint[0]), *entrypoint[1:]]
    port, admin = free_port(), free_port()
    env = {
        **{k: v for k, v in FINAL.env().items() if k != "PATH"},
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin",
        "SCALEKIT_WEBHOOK_SECRET": SECRET,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "BRIDGE_PORT": str(port),
        "BRIDGE_ADMIN_PORT": str(admin),
        "BRIDGE_TOPIC_PREFIX": f"t{unique}.",
    }
    workdir = tmp_path / "run"
    workdir.mkdir()
    before = _files(venv)
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None:
                pytest.fail("the entrypoint exited:\n" + server.communicate()[0].decode())
            assert time.monotonic() < deadline, "the entrypoint never became ready"
            time.sleep(0.2)

        sent = subprocess.run(
            [str(venv / "bin" / "scalekit-bridge"), "send-test", "--type", "organization.directory.user_created"],
            env=env, cwd=workdir, capture_output=True, text=True, timeout=60,
        )
        assert sent.returncode == 0 and sent.stdout.startswith("201"), sent.stdout + sent.stderr
        (record,) = await kafka.read_all(f"t{unique}.organization.directory.user_created")
        assert record.header("ce_type") == b"organization.directory.user_created"

        scalekit = FakeScalekit()
        scalekit.start()
        try:
            (lost,) = sample_events(1, start=datetime.now(UTC) - timedelta(minutes=30), types=["role.created"])
            scalekit.add(lost)
            backfill_env = {k: v for k, v in env.items() if k != "SCALEKIT_WEBHOOK_SECRET"} | scalekit.env()
            recovered = subprocess.run(
                [str(venv / "bin" / "scalekit-bridge"), "backfill", "--since", "1h"],
                env=backfill_env, cwd=workdir, capture_output=True, text=True, timeout=120,
            )
        finally:
            scalekit.stop()
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        assert recovered.stdout.splitlines()[-1].startswith("fetched 1, already in Kafka 0, published 1")
        (backfilled,) = await kafka.read_all(f"t{unique}.role.created")
        assert backfilled.header("ce_id") == lost["id"].encode()
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0].decode()
    assert server.returncode == 0, output
    assert _files(venv) == before, "the running image wrote into its own filesystem"
    assert list(workdir.iterdir()) == []
