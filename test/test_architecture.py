"""The shape of the package, read from its source with ``ast``: no import cycles, imports run
only downwards (``cli`` → ``server``/``node``/``client`` → ``utils`` → ``core``), ``server``,
``node`` and ``client`` never import each other, and no module is over 400 lines.

Every import counts: at module level, inside a function (a lazy import, as ``cli`` does for
the server and the node) and under ``TYPE_CHECKING``. Two modules that need each other's names,
even only for types, are one concern split in two, or want a Protocol between them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "mgpu"
MAX_LINES = 400

# Which top-level parts of the package each part may import (besides itself).
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "utils": frozenset({"core"}),
    "server": frozenset({"core", "utils"}),
    "node": frozenset({"core", "utils"}),
    "client": frozenset({"core", "utils"}),
    "cli": frozenset({"core", "utils", "client", "server", "node"}),
    # The package's root: the public API re-exports and ``python -m mgpu``.
    "__init__": frozenset({"core", "utils", "client", "server", "node"}),
    "__main__": frozenset({"cli"}),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    """``mgpu.server.api`` → ``server``; ``mgpu`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """The package's modules that ``module`` imports: (at import time, anywhere)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    eager: set[str] = set()
    every: set[str] = set()

    def resolve(node: ast.Import | ast.ImportFrom) -> set[str]:
        found: set[str] = set()
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
            return found
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in known:
                found.add(full)
            elif base in known:
                found.add(base)
        return found

    def walk(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                got = {g for g in resolve(child) if g.startswith("mgpu") and g != module}
                every.update(got)
                if not lazy:
                    eager.update(got)
                continue
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            walk(child, inner)

    walk(tree, False)
    return eager, every


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = modules()
    known = set(mods)
    eager: dict[str, set[str]] = {}
    every: dict[str, set[str]] = {}
    for name, path in mods.items():
        eager[name], every[name] = imports_of(name, path, known)
    return eager, every


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_imports_of_every_kind() -> None:
    eager, every = graph()
    assert "mgpu.core.messages" in eager["mgpu.server.master"]
    assert "mgpu.server.master" not in eager["mgpu.cli"] | eager.get("mgpu.cli.commands", set())
    assert any(part_of(m) == "server" for m in every["mgpu"] | every.get("mgpu.cli", set())
               | set().union(*(every[n] for n in every if n.startswith("mgpu.cli"))))
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    _, every = graph()
    assert cycles(every) == []


def test_imports_run_only_downwards() -> None:
    _, every = graph()
    wrong = []
    for module, targets in sorted(every.items()):
        mine = part_of(module)
        allowed = LAYERS.get(mine)
        assert allowed is not None, f"{module}: {mine} is not a known part of the package"
        for target in sorted(targets):
            theirs = part_of(target)
            if theirs != mine and theirs not in allowed and target != "mgpu":
                wrong.append(f"{module} imports {target}")
            if target == "mgpu" and mine != "__init__":
                wrong.append(f"{module} imports the package root (import the module itself)")
    assert wrong == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(
    p.relative_to(PACKAGE)))
def test_no_module_is_over_the_size_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines: split it"
