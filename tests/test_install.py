"""`pipx install .` gives a corral that runs from the installed package, not the checkout.

The repository's own wheel is built offline (the venv's setuptools, no build isolation),
installed with pip into a fresh venv in tmp (its dependencies reached through a .pth naming
the project venv's site-packages: the same pinned versions, without a download), and its
`corral serve` started with the current directory outside the checkout. It must serve the
built UI and the passkey page from the package's own copies, and find the agent image
recipe there. No Docker: the daemon is pointed at an engine socket that does not exist.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


@dataclass
class Installed:
    venv: Path
    python: Path
    corral: Path
    site: Path  # the fresh venv's site-packages, where the wheel went
    outside: Path  # a working directory outside the checkout


def clean_env(tmp: Path) -> dict[str, str]:
    """The environment without anything that would lead back to the checkout or steer the
    daemon (PYTHONPATH, every CORRAL_* variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.pop("PYTHONPATH", None)
    env["CORRAL_CONFIG"] = str(tmp / "absent.toml")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("install")
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "-w", str(wheels)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("corral-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    # The dependencies, from the project venv: a .pth line only appends the folder to
    # sys.path (its own .pth files, such as the editable install's finder, are not run).
    (site / "corral_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    outside = tmp / "elsewhere"
    outside.mkdir()
    return Installed(venv, python, venv / "bin" / "corral", site, outside)


def installed_python(inst: Installed, code: str) -> str:
    result = subprocess.run(
        [str(inst.python), "-c", code], cwd=inst.outside, env=clean_env(inst.outside),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def served(installed: Installed, tmp_path: Path) -> Iterator[str]:
    """`corral serve --port 0` from the install; yields its base URL."""
    env = clean_env(tmp_path)
    env["CORRAL_LOGGING__FORMAT"] = "json"
    env["CORRAL_DOCKER__URL"] = f"unix://{tmp_path}/no-engine.sock"  # nothing to build on
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(installed.corral), "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
            cwd=installed.outside, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 60  # a bound on waiting, not a measurement
        while url is None and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            for line in log_path.read_text().splitlines():
                if '"listening"' in line:
                    url = json.loads(line)["urls"][0].rstrip("/")
            time.sleep(0.05)
        assert url is not None, log_path.read_text()
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(response.status), bytes(response.read())


def test_the_wheel_runs_from_its_own_install(installed: Installed) -> None:
    """Not from the checkout: the package imported is the one pip put in the fresh venv."""
    where = Path(installed_python(installed, "import daemon; print(daemon.__file__)"))
    assert where.is_relative_to(installed.site), where
    assert not where.is_relative_to(ROOT)


def test_installed_corral_serves_the_built_ui_and_the_passkey_page(
    installed: Installed, served: str
) -> None:
    status, page = get(served + "/")
    assert status == 200
    assert b'<div id="app">' in page
    assert b"has not been built" not in page
    assets = re.findall(rb'/assets/(main-[A-Za-z0-9]+\.(?:js|css))"', page)
    assert len(assets) == 2, page
    packaged = installed.site / "daemon" / "_web" / "dist" / "assets"
    for name in assets:
        status, body = get(f"{served}/assets/{name.decode()}")
        assert status == 200
        assert body == (packaged / name.decode()).read_bytes()

    for url, name in (("/login", "login.html"), ("/login.js", "login.js"),
                      ("/login.css", "login.css")):  # fmt: skip
        status, body = get(served + url)
        assert status == 200
        assert body == (ROOT / "web" / name).read_bytes()


def test_installed_agent_recipe_is_the_packaged_copy(installed: Installed) -> None:
    recipe = installed_python(
        installed, "from daemon.resources import agent_recipe; print(agent_recipe())"
    )
    folder = Path(recipe)
    assert folder.is_relative_to(installed.site), recipe
    shipped = {
        p.name
        for p in (ROOT / "images" / "agent").iterdir()
        if p.is_file() and not p.name.startswith(".")
    }  # what the checkout's recipe holds (the CLIs' npm install under cli/ is not shipped)
    assert {"Dockerfile", "build.sh", "build-default.sh", "package.json"} <= shipped
    assert shipped <= {p.name for p in folder.iterdir() if p.is_file()}
    assert not (folder / "cli").exists()
    for script in ("build.sh", "build-default.sh"):
        assert os.access(folder / script, os.X_OK), script


def test_every_package_of_ours_is_in_the_wheel_list() -> None:
    """A new package forgotten in pyproject.toml installs without it: caught here in a
    second, not when an installed ``corral`` fails to import."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for top in ("daemon", "backends", "ws", "client")
        for init in (root / top).rglob("__init__.py")
    }
    assert found - listed == set()
