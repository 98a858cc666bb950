"""setuptools build steps: the wheel carries the built web UI and the agent image recipe.

Named in pyproject.toml's ``[tool.setuptools.cmdclass]``. ``build_py`` (what a wheel is
made of) first makes sure the web UI is built (``scripts/build-web.sh`` from a checkout,
which needs npm and is a no-op when ``web/dist`` is up to date), then copies

    web/dist/**, web/login.*   ->  daemon/_web/...
    images/agent/** (not cli/, the host's npm install of the agent CLIs)  ->  daemon/_agent/...

into the build tree only, never into the source tree, so a checkout keeps serving its own
files (``daemon/resources.py`` finds either layout). ``sdist`` makes sure the UI is built
too, so an sdist carries ``web/dist`` and builds a wheel without npm (MANIFEST.in lists
the files). An editable install copies nothing: it runs from the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
RECIPE = ROOT / "images" / "agent"
# Where daemon/resources.py looks inside the installed package (keep the two in step).
PACKAGED_WEB = Path("daemon") / "_web"
PACKAGED_RECIPE = Path("daemon") / "_agent"
# Never shipped from images/agent: the host's npm install of the CLIs (hundreds of MB).
RECIPE_SKIP = {"cli", "node_modules", "__pycache__"}

NPM_FIX = (
    "building corral's web UI needs npm (Node.js 18+): install it (Debian/Ubuntu: "
    "`sudo apt-get install nodejs npm`), then build again; or run scripts/build-web.sh "
    "where npm is and build from that checkout"
)


def ensure_web_built() -> None:
    """Build ``web/dist`` from a checkout (a no-op when it is up to date); in an unpacked
    sdist, which has no build script, use the ``web/dist`` it carries."""
    script = ROOT / "scripts" / "build-web.sh"
    built = (WEB / "dist" / "index.html").is_file()
    if script.is_file() and (WEB / "build.mjs").is_file():
        if shutil.which("npm") is None:
            if built:
                print(
                    f"corral build: npm is missing; shipping the web UI already in {WEB / 'dist'}"
                )
                return
            raise SetupError(NPM_FIX)
        print("corral build: scripts/build-web.sh")
        result = subprocess.run(["bash", str(script)], cwd=ROOT, check=False)
        if result.returncode != 0:
            raise SetupError(
                f"scripts/build-web.sh failed (exit {result.returncode}, see above); "
                "fix it and build again"
            )
        return
    if not built:
        raise SetupError(
            f"no built web UI in {WEB / 'dist'} and no scripts/build-web.sh to make it"
        )


def _copy_tree(source: Path, target: Path, skip: set[str]) -> list[Path]:
    copied: list[Path] = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part in skip or part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)  # keeps the scripts' executable bits
            copied.append(destination)
    return copied


def copy_resources(build_lib: Path) -> list[Path]:
    """Copy the UI and the recipe into ``build_lib``, replacing an earlier build's copies
    (the UI's asset names carry content hashes, so stale ones would pile up)."""
    web_target = build_lib / PACKAGED_WEB
    recipe_target = build_lib / PACKAGED_RECIPE
    for target in (web_target, recipe_target):
        shutil.rmtree(target, ignore_errors=True)
    copied = _copy_tree(WEB / "dist", web_target / "dist", set())
    for page in sorted(WEB.glob("login.*")):
        web_target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(page, web_target / page.name)
        copied.append(web_target / page.name)
    copied += _copy_tree(RECIPE, recipe_target, RECIPE_SKIP)
    return copied


class BuildPy(build_py):  # type: ignore[misc]
    """``build_py`` plus the web UI and the agent image recipe."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        ensure_web_built()
        copied = copy_resources(Path(self.build_lib))
        print(f"corral build: {len(copied)} web UI and agent recipe files in the package")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        build_lib = Path(self.build_lib)
        for folder in (PACKAGED_WEB, PACKAGED_RECIPE):
            outputs += [str(p) for p in sorted((build_lib / folder).rglob("*")) if p.is_file()]
        return outputs


class Sdist(sdist):  # type: ignore[misc]
    """``sdist`` with the web UI built first, so the archive carries ``web/dist``."""

    def run(self) -> None:
        ensure_web_built()
        super().run()
