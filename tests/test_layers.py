"""The package reads bottom-up: aipray's module import graph, built from the source (nothing is
imported), has no cycle, and the maths layers never reach into the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aipray"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module → aipray modules it imports`` anywhere in its source: at the top, inside
    functions and under ``TYPE_CHECKING`` alike (a type-only import is still a dependency).
    ``from package import name`` counts as importing ``package.name`` when that is a module."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.add(sub if sub in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_lazy_and_type_only_imports():
    graph = import_graph()
    assert "aipray.models.base" in graph["aipray.attacks.base"]  # inside a method
    assert "aipray.data.catalog" in graph["aipray.models.base"]  # under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("layer", "above"),
    [
        ("aipray.metrics", ("aipray.models", "aipray.attacks", "aipray.protocol")),
        ("aipray.data", ("aipray.models", "aipray.attacks", "aipray.protocol", "aipray.config")),
        ("aipray.config", ("aipray.pipeline", "aipray.sweep", "aipray.report")),
        ("aipray.grid_checks", ("aipray.config", "aipray.pipeline", "aipray.sweep")),
        ("aipray.protocol", ("aipray.pipeline", "aipray.sweep", "aipray.config")),
    ],
)
def test_lower_layers_import_nothing_above_them(layer, above):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if any(target == a or target.startswith(a + ".") for a in above)
    )
    assert not wrong, "; ".join(wrong)


BOTTOM = ("aipray.params", "aipray.registry", "aipray.store", "aipray.checkpoints", "aipray.pixels")


def test_the_bottom_layer_imports_only_itself():
    graph = import_graph()
    wrong = sorted(f"{m} imports {t}" for m in BOTTOM for t in graph[m] if t not in BOTTOM)
    assert not wrong, "; ".join(wrong)
