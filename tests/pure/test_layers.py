"""The package's shape: no import cycle at all, and sub-packages that import only downwards.

Every import counts — module level, inside functions, and under ``if TYPE_CHECKING:`` — because
each of those is a dependency a reader must hold in mind, and a cycle hidden in a function is
still a cycle (it also blocks compiling the modules with mypyc). Imports are read with ``ast``
from the source, so nothing is imported to check them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import l7switch

PACKAGE = Path(l7switch.__file__).resolve().parent
ROOT = "l7switch"
# Lowest first. A module may import from its own sub-package or from a lower layer; two
# sub-packages of one layer may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("spec", "errors", "units", "version", "stats"),
    ("http",),
    ("balance", "net"),
    ("guard",),  # per-client limits: keys are balance/persistence.source_key
    ("config",),
    ("proxy", "checks"),
    ("passthrough",),
    ("monitor",),  # the browser monitor and /metrics: fed and acted on through runtime's admin commands
    ("runtime",),
    ("devtools",),  # origin servers for tests and the demo; not on the serving path
    ("cli",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
TOP = len(LAYERS)  # the package root (the public facade) and __main__


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The l7switch modules ``name`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import name": the submodule pkg.name if there is one, else pkg itself.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # "import l7switch.http.rules.x" -> the longest module
                t = t.rpartition(".")[0]
            if t.startswith(ROOT) and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return TOP, ROOT
    return RANK[parts[1]], parts[1]


def test_the_checker_sees_imports_in_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..proxy import state\n"
           "def f():\n    from .rules import Router\n    import l7switch.spec\n")
    path = PACKAGE / "http" / "message.py"
    fake = tmp_path / "m.py"
    fake.write_text(src)
    known = modules()
    got = imports_of("l7switch.http.message", fake, known)
    assert got == {"l7switch.proxy.state", "l7switch.http.rules", "l7switch.spec"}
    assert path.exists()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_sub_package_has_a_layer() -> None:
    tops = {name.split(".")[1] for name in modules() if name.count(".") >= 1}
    assert tops - set(RANK) <= {"__main__"}, f"sub-packages without a layer: {tops - set(RANK)}"


@pytest.mark.parametrize("layer_names", LAYERS, ids=["/".join(n) for n in LAYERS])
def test_imports_point_down(layer_names: tuple[str, ...]) -> None:
    bad = []
    for src, targets in graph().items():
        src_rank, src_pkg = layer(src)
        if src_pkg not in layer_names:
            continue
        for dst in sorted(targets):
            dst_rank, dst_pkg = layer(dst)
            if dst_rank > src_rank or (dst_rank == src_rank and dst_pkg != src_pkg):
                bad.append(f"{src} -> {dst}")
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)
