"""Secret files are followed: a changed file is applied once, a refused one is said once and changes nothing."""

from __future__ import annotations

import logging

from bridge.errors import ConfigError
from bridge.rotation import Apply, SecretFiles


def recording() -> tuple[list[tuple[str, ...]], Apply]:
    """A use for the secrets that keeps every text it is handed."""
    applied: list[tuple[str, ...]] = []

    async def apply(texts: tuple[str, ...]) -> None:
        applied.append(texts)

    return applied, apply


async def test_a_changed_file_is_applied_once_and_an_unchanged_one_not_at_all(tmp_path):
    path = tmp_path / "secret"
    path.write_text("one\n")
    applied, apply = recording()
    files = SecretFiles()
    files.follow("S", (("S_FILE", str(path)),), apply)
    await files.check()
    assert applied == []
    path.write_text("two\n")
    await files.check()
    await files.check()
    assert applied == [("two",)]


async def test_a_refused_text_is_logged_once_by_name_and_never_by_content(tmp_path, caplog):
    path = tmp_path / "secret"
    path.write_text("good")

    async def refuse(texts: tuple[str, ...]) -> None:
        raise ConfigError("S", "secret #1: not a whsec_ secret")

    files = SecretFiles()
    files.follow("S", (("S_FILE", str(path)),), refuse)
    path.write_text("hunter2-bad")
    with caplog.at_level(logging.INFO, logger="bridge.rotation"):
        await files.check()
        await files.check()
    (said,) = caplog.records
    assert said.levelno == logging.ERROR and said.secret == "S"
    assert "hunter2" not in said.getMessage() + str(said.__dict__)


async def test_a_file_missing_for_a_moment_keeps_the_secret_in_use(tmp_path, caplog):
    path = tmp_path / "secret"
    path.write_text("one")
    applied, apply = recording()
    files = SecretFiles()
    files.follow("S", (("S_FILE", str(path)),), apply)
    path.unlink()
    await files.check()
    path.write_text("one")
    await files.check()
    assert applied == []
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


async def test_an_unforeseen_failure_is_logged_by_class_and_the_follower_goes_on(tmp_path, caplog):
    path = tmp_path / "secret"
    path.write_text("one")
    calls: list[str] = []

    async def fail_once(texts: tuple[str, ...]) -> None:
        calls.append(texts[0])
        if texts[0] == "two":
            raise RuntimeError("quoting the secret: two")

    files = SecretFiles()
    files.follow("S", (("S_FILE", str(path)),), fail_once)
    path.write_text("two")
    await files.check()
    path.write_text("three")
    await files.check()
    assert calls == ["two", "three"]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and failed[0].error == "RuntimeError"
    assert "quoting" not in failed[0].getMessage() + str(failed[0].__dict__)
