"""The house's layers, checked: each module imports only from its own layer or the ones below.

    app      daemon.app, daemon.cli            composition: builds and starts everything
    edge     daemon.http, daemon.auth, ws,     requests and sockets in, calls on the layers
             daemon.keys, client,              below; frames and bytes out; the model
             daemon.gateway                    gateway and egress proxy for containers
    supervise  daemon.supervise                tasks that watch sessions and act on them
    core     daemon.core, daemon.agents,       sessions, store, hub, git, homes, console,
             daemon.credentials                credentials
    base     daemon (version), daemon.settings, daemon.log,
             daemon.resources, backends

So the core never learns about WebSockets or HTTP (a console viewer is a ``Viewer``, not a
``ws`` connection), backends know nothing of the daemon, and a supervisor is reached by the
edge, never the other way round. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "backends", "ws", "client")

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("daemon.settings", "daemon.log", "daemon.resources", "backends", "daemon")),
    ("core", ("daemon.core", "daemon.agents", "daemon.credentials")),
    ("supervise", ("daemon.supervise",)),
    ("edge", ("daemon.http", "daemon.auth", "daemon.keys", "ws", "client", "daemon.gateway")),
    ("app", ("daemon.app", "daemon.cli")),
]


def layer_of(module: str) -> int:
    """The index of the layer ``module`` belongs to (the longest matching prefix wins)."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every project module ``path`` imports, ``from x import y`` giving ``x.y`` when
    ``x.y`` is a module of ours and ``x`` otherwise."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                in_package = path.name == "__init__.py"
                package = module if in_package else module.rsplit(".", node.level)[0]
                base = f"{package}.{base}" if base else package
            names = [base]
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    ROOT / candidate.replace(".", "/") / "__init__.py"
                ).exists():
                    names.append(candidate)
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def test_every_module_imports_only_its_layer_and_those_below() -> None:
    checked = 0
    wrong: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            own = layer_of(module)
            checked += 1
            for imported in sorted(imports_of(path, module)):
                theirs = layer_of(imported)
                if theirs > own:
                    wrong.append(
                        f"{module} ({LAYERS[own][0]}) imports {imported} ({LAYERS[theirs][0]})"
                    )
    assert checked > 60
    assert wrong == []


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: an upward import, also one inside a function, is found."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ws.connection import Connection\n")
    imported = imports_of(source, "daemon.core.m")
    assert "ws.connection" in imported
    assert layer_of("ws.connection") > layer_of("daemon.core.m")
