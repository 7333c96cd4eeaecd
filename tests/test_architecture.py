"""The package tree is the data flow (docs/architecture.md): each layer imports only the layers
below it, and the pure core imports no kernel, netlink or process library. The imports are read
from the source (module-level and the lazy ones inside functions alike: a lazy import is still a
dependency), so a new module cannot slip an upward import past this test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nsg_agent"

# Lowest first. A module may import its own package and any package to its left.
LAYERS = ["", "desired", "semantics", "compiler", "host", "sources", "kernel", "flowlogs", "daemon", "lab", "cli",
          "testing"]
# The pure core: what the user wrote, what Azure means by it, and the compiled ruleset.
PURE = {"", "desired", "semantics", "compiler"}
IMPURE_LIBRARIES = {"nftables", "pyroute2", "watchdog", "subprocess", "socket", "prometheus_client"}
# socket's address conversions are pure functions (the compiler's fastest int -> text); nothing
# else of socket is allowed in the pure core.
PURE_SOCKET = {"inet_ntop", "inet_pton", "AF_INET", "AF_INET6"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "nsg_agent":  # from nsg_agent import desired, ...
                out += [(node.lineno, f"nsg_agent.{a.name}") for a in node.names]
    return out


def _socket_uses(path: Path) -> set[str]:
    return {n.attr for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "socket"}


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"packages without a layer in LAYERS: {packages - set(LAYERS)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    me = _module_of(path)
    mine = LAYERS.index(_layer(me))
    upward = [f"line {line}: {mod} ({_layer(mod) or 'top'})" for line, mod in _imports(path)
              if mod.startswith("nsg_agent.") and LAYERS.index(_layer(mod)) > mine]
    assert not upward, f"{me} ({_layer(me) or 'top'}) imports a higher layer: {upward}"


@pytest.mark.parametrize("path", [p for p in MODULES if _layer(_module_of(p)) in PURE],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_core_does_no_io(path):
    used = [f"line {line}: {mod}" for line, mod in _imports(path) if mod.split(".")[0] in IMPURE_LIBRARIES
            and not (mod == "socket" and _socket_uses(path) <= PURE_SOCKET)]
    assert not used, f"{_module_of(path)} is in the pure core but imports {used}"


def test_one_module_talks_to_libnftables():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in MODULES
                       if any(mod.split(".")[0] == "nftables" for _, mod in _imports(p)))
    assert importers == ["kernel/backend.py"]


def test_the_agent_never_imports_its_test_doubles():
    """nsg_agent.testing (the fakes) is for tests and embedders: a fake reached from the agent
    itself would enforce nothing."""
    users = sorted(f"{p.relative_to(PACKAGE)}:{line}" for p in MODULES if _layer(_module_of(p)) != "testing"
                   for line, mod in _imports(p) if mod == "nsg_agent.testing" or mod.startswith("nsg_agent.testing."))
    assert not users, f"the agent imports nsg_agent.testing: {users}"
