"""Shared fixtures: the test images, label sweeps of real containers, real git repositories."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_LABEL = "corral.test"


def _image_from_env_or_build(var: str, script: str) -> str:
    tag = os.environ.get(var)
    if tag:
        return tag
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """Tag of the FROM-scratch busybox image (built once per machine, reused by hash tag)."""
    return _image_from_env_or_build("CORRAL_TEST_BUSYBOX_IMAGE", "build-busybox-image.sh")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(path: Path, branch: str = "main") -> Path:
    """A real git repository with one commit on ``branch``."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", branch)
    _git(path, "config", "user.email", "test@example.invalid")
    _git(path, "config", "user.name", "corral test")
    (path / "README.md").write_text("hello\n")
    _git(path, "add", "README.md")
    _git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def git() -> object:
    return _git


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Commits made by the daemon or tests must not depend on the machine's git config.
    monkeypatch.setenv("GIT_AUTHOR_NAME", "corral test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "corral test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    yield
