"""The folders are the architecture (ARCHITECTURE.md): every import goes down a floor, never up or sideways.

The shard's floors, bottom up: ``storage`` < ``registry`` < ``auth`` < ``apis`` < ``controllers``, with
``endpoints`` (HTTP API over the registry) and ``http`` (bytes on the wire) beside them; the top-level modules
(``app``, ``shard``, ``cli``, ``testing``, ``pki``, ``shardclient``) assemble them. ``kcp_virtual`` never imports
``server``; inside it the stock virtual workspaces and the external process build on ``framework`` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: floor -> the floors it may import (besides itself and kcp_virtual)
SERVER_FLOORS = {
    "storage": set(),
    "registry": {"storage"},
    "auth": {"registry", "storage"},
    "apis": {"auth", "registry", "storage"},
    "endpoints": {"registry", "storage"},
    "controllers": {"apis", "auth", "registry", "storage"},
    "http": {"auth"},
}
SERVER_TOP = {"app", "shard", "cli", "testing", "pki", "shardclient", "frontproxy"}
#: kcp_virtual package -> the kcp_virtual packages it may import; a package not listed is a virtual workspace
VIRTUAL_PACKAGES = {
    "framework": set(),
    "transport": {"framework"},
    "external": {"framework", "transport"},
    "cli": set(),
}


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__"), path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("server", "kcp_virtual")}


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_server_module_lives_on_a_known_floor():
    strays = [module for module, _ in _modules("server")
              if module != "server" and _floor(module) not in SERVER_FLOORS.keys() | SERVER_TOP]
    assert not strays, "put these on a floor (tests/unit/test_layout.py names them): " + ", ".join(strays)


def test_server_imports_go_down_a_floor():
    upward = []
    for module, path in _modules("server"):
        floor = _floor(module)
        if floor not in SERVER_FLOORS:
            continue
        allowed = SERVER_FLOORS[floor] | {floor}
        upward += [f"{module} imports {name} ({floor} may import {sorted(allowed)})" for name in _imports(path)
                   if name.startswith("server.") and _floor(name) in SERVER_FLOORS.keys() | SERVER_TOP
                   and _floor(name) not in allowed]
    assert not upward, "\n".join(upward)


def test_kcp_virtual_never_imports_server_and_builds_on_the_framework():
    wrong = []
    for module, path in _modules("kcp_virtual"):
        package = _floor(module)
        allowed = VIRTUAL_PACKAGES.get(package, {"framework"}) | {package}
        for name in _imports(path):
            if name.startswith("server"):
                wrong.append(f"{module} imports {name}: kcp_virtual never imports server")
            elif (name.startswith("kcp_virtual.") and (ROOT / "kcp_virtual" / _floor(name)).is_dir()
                  and _floor(name) not in allowed):
                wrong.append(f"{module} imports {name} ({package} may import {sorted(allowed)})")
    assert not wrong, "\n".join(wrong)


def test_no_module_only_re_exports_another():
    shims = [module for module, path in [*_modules("server"), *_modules("kcp_virtual")]
             if any(isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
                    for node in ast.parse(path.read_text()).body)]
    assert not shims, "these re-export with import *; import the real module instead: " + ", ".join(shims)
