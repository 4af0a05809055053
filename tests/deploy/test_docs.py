"""The documentation site builds strictly (no broken link or anchor, every page in the navigation), and the
README, its front page, links only to what exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "runbooks" / "index.html").is_file()


def test_the_strict_build_fails_on_a_broken_link_and_on_a_page_left_out_of_the_navigation(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs", symlinks=False)
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "docs" / "security.md").write_text((copy / "docs" / "security.md").read_text() + "\n[gone](gone.md)\n")
    (copy / "docs" / "orphan.md").write_text("# An orphan\n")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=copy, capture_output=True,
                          text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""})
    assert done.returncode != 0
    assert "gone.md" in done.stderr and "orphan.md" in done.stderr


def nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    return []


def test_every_page_is_in_the_navigation():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.Loader)  # noqa: S506 - our own file, !!python tags
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert sorted(nav_pages(config["nav"])) == sorted(pages)


def test_the_readme_is_a_front_page_whose_every_link_lands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    headings = {re.sub(r"[^\w\- ]", "", line[3:].strip().lower()).replace(" ", "-")
                for line in readme.splitlines() if line.startswith("## ")}
    for target in LINK.findall(readme):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), target
        else:
            assert anchor in headings, target
