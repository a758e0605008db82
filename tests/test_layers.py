"""The package layers: ``targets/`` ← ``schedules/`` ← ``compiler/``, no import cycles, and a
runtime that needs none of the compiler. Parsed from the sources, so lazy imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"targets": 0, "schedules": 1, "compiler": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kiln modules ``name`` imports anywhere in its source (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # ``from pkg import mod`` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_imports_flow_from_compiler_to_schedules_to_targets():
    upward = [f"{src} imports {dst}" for src, dsts in _graph().items() for dst in dsts
              if LAYERS[dst.split(".")[0]] > LAYERS[src.split(".")[0]]]
    assert not upward, "imports against the layers targets <- schedules <- compiler:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its own submodules is not a cycle of the design."""
    return {src: {dst for dst in dsts if not (src in LAYERS or dst.startswith(src + "."))}
            for src, dsts in graph.items()}


def test_no_import_cycles():
    cycles = _cycles(_without_package_inits(_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_runtime_needs_nothing_of_the_compiler():
    graph = _graph()
    reached, todo = set(), ["compiler.runtime"]
    while todo:
        for dst in graph[todo.pop()]:
            if dst not in reached:
                reached.add(dst)
                todo.append(dst)
    assert not {m for m in reached if m.startswith("compiler")} - {"compiler"}, sorted(reached)


@pytest.mark.parametrize("module, source", [
    ("targets.registry", "from compiler.build import compile_model\n"),
    ("targets.registry", "def f():\n    import compiler.build\n"),
    ("compiler.passes.anything", "def f():\n    from ..build import compile_model\n"),
])
def test_the_parser_sees_module_level_lazy_and_relative_imports(module, source, tmp_path):
    """The checks above can fail: every spelling of an import is an edge of the graph."""
    path = tmp_path / "module.py"
    path.write_text(source)
    assert "compiler.build" in _imports(module, path, set(_modules()))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
