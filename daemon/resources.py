"""Files the daemon ships beside its code, found in a checkout or in the installed package.

``agent_recipe()``: the folder holding ``build-default.sh``, the recipe that builds the
default agent image offline. ``CORRAL_AGENT_RECIPE`` (a folder holding a
``build-default.sh``) overrides it; tests use it to stand a tiny image in.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPE_VARIABLE = "CORRAL_AGENT_RECIPE"
RECIPE_SCRIPT = "build-default.sh"

_ROOT = Path(__file__).resolve().parent.parent


def agent_recipe() -> Path | None:
    """The agent image recipe's folder, or None when neither the override nor a checkout's
    ``images/agent`` holds a ``build-default.sh``."""
    override = os.environ.get(RECIPE_VARIABLE)
    if override:
        folder = Path(override).expanduser()
        return folder if (folder / RECIPE_SCRIPT).is_file() else None
    folder = _ROOT / "images" / "agent"
    return folder if (folder / RECIPE_SCRIPT).is_file() else None
