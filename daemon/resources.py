"""Files the daemon ships beside its code, found in a checkout or in the installed package.

``web_dir()``: the folder holding the passkey page's files (``login.html``, ``login.js``,
``login.css``) and ``dist/``, the built web UI (``web_dist()``). ``agent_recipe()``: the
folder holding ``build-default.sh``, the recipe that builds the default agent image
offline. ``CORRAL_AGENT_RECIPE`` (a folder holding a ``build-default.sh``) overrides it;
tests use it to stand a tiny image in.

Two layouts, one answer each:

    checkout (also ``pip install -e .``)    installed wheel (``pipx install .``)
    <root>/web/login.*, web/dist/           daemon/_web/login.*, daemon/_web/dist/
    <root>/images/agent/                    daemon/_agent/

The wheel's copies are made at build time by ``build_hooks.py`` (the top of the
checkout). A checkout is recognised by its own files (``pyproject.toml`` and
``web/build.mjs`` beside the package), so an installed package never mistakes whatever
else lies in site-packages for one.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPE_VARIABLE = "CORRAL_AGENT_RECIPE"
RECIPE_SCRIPT = "build-default.sh"

_PACKAGE = Path(__file__).resolve().parent
_ROOT = _PACKAGE.parent
# Where build_hooks.py puts the copies inside the package (keep the two in step).
PACKAGED_WEB = "_web"
PACKAGED_RECIPE = "_agent"


def checkout_root() -> Path | None:
    """The source checkout this code runs from, or None when it runs from an install."""
    if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "web" / "build.mjs").is_file():
        return _ROOT
    return None


def web_dir() -> Path:
    """The folder of the passkey page's files, with the built UI under ``dist/``."""
    root = checkout_root()
    return root / "web" if root is not None else _PACKAGE / PACKAGED_WEB


def web_dist() -> Path:
    """The built web UI: ``index.html`` and the content-hashed ``assets/``. In a checkout
    it may not be built yet (``scripts/build-web.sh``); the daemon then says so at ``/``."""
    return web_dir() / "dist"


def agent_recipe() -> Path | None:
    """The agent image recipe's folder, or None when neither the override, a checkout's
    ``images/agent`` nor the installed package's copy holds a ``build-default.sh``."""
    override = os.environ.get(RECIPE_VARIABLE)
    if override:
        folder = Path(override).expanduser()
        return folder if (folder / RECIPE_SCRIPT).is_file() else None
    root = checkout_root()
    folder = root / "images" / "agent" if root is not None else _PACKAGE / PACKAGED_RECIPE
    return folder if (folder / RECIPE_SCRIPT).is_file() else None
