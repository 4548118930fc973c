"""The project's modules import each other without cycles -- not even through imports inside functions
or under ``if TYPE_CHECKING:`` -- and stay within the layers docs/architecture.md describes.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of ``bnas/``, ``analysis/`` and ``run.py``, wherever it sits in a module, those under
``if TYPE_CHECKING:`` included (annotations only, never executed, but a cycle there is still a loop in
the design). Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first, so an import also depends on
the ``__init__`` of every package above it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("bnas", "analysis")
SCRIPTS = ("run.py",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Module name -> file, for every module of the project (packages by their ``__init__``)."""
    mods = {_module_name(p): p for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))}
    mods.update({Path(s).stem: REPO / s for s in SCRIPTS if (REPO / s).is_file()})
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool, type_checking: bool = True) -> list[str]:
    """Dotted names this module imports (``from a import b`` gives ``a.b``, which may be a module
    or a name inside ``a``); ``type_checking=False`` skips ``if TYPE_CHECKING:`` bodies (keeping
    their ``else``)."""
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            out.append(stem)
            out.extend(f"{stem}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules whose code its imports run.

    ``import a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``: every prefix that is a project module counts,
    except the module's own packages (already being imported when its code runs, so an edge back
    to them is no cycle Python trips over).
    """
    mods = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
        deps: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for dotted in _imported_names(tree, name, path.name == "__init__.py"):
            parts = dotted.split(".")
            deps.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = (deps & set(mods)) - own
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_function_level_and_type_checking_imports() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import bnas.errors\n"
        "if TYPE_CHECKING:\n    from bnas.config import DataConfig\n"
        "def f():\n    from bnas.search_space import OPS\n    from . import registry\n"
    )
    names = _imported_names(tree, "bnas.x", is_package=False)
    assert "bnas.errors" in names and "bnas.search_space.OPS" in names and "bnas.registry" in names
    assert "bnas.config.DataConfig" in names  # counted: a cycle through annotations is still a cycle
    runtime = _imported_names(tree, "bnas.x", is_package=False, type_checking=False)
    assert not any(n.startswith("bnas.config") for n in runtime)


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_among_project_modules() -> None:
    graph = import_graph()
    assert {"bnas.config", "bnas.settings", "bnas.platform.study", "analysis.report", "run"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


#: The torch-free configuration leaf: what bnas.config and the modules under it may import.
CONFIG_LEAF = {
    "bnas",
    "bnas.errors",
    "bnas.settings",
    "bnas.setting_types",
    "bnas.catalog",
    "bnas.search_space",
    "bnas.registry",
    "bnas.sections",
    "bnas.yaml_files",
    "bnas.config",
}


def test_configuration_is_a_leaf() -> None:
    graph = import_graph()
    below: set[str] = set()
    todo = ["bnas.config"]
    while todo:  # every project module the configuration's import runs, transitively
        m = todo.pop()
        for d in graph.get(m, ()):
            if d not in below:
                below.add(d)
                todo.append(d)
    assert below <= CONFIG_LEAF, f"bnas.config reaches {sorted(below - CONFIG_LEAF)}"


#: [D] The largest a project module may grow (issue: one concept per module).
MAX_LINES = 500


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in project_modules().items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("bnas.errors", set()),
        ("bnas.search_space", set()),
        ("bnas.registry", set()),
        ("bnas.setting_types", set()),
        ("bnas.settings", {"bnas.errors", "bnas.setting_types"}),
    ],
)
def test_the_bottom_layer_imports_only_the_bottom_layer(module: str, allowed: set[str]) -> None:
    assert import_graph()[module] == allowed


@pytest.mark.parametrize(
    "module",
    [
        "bnas.search_space",
        "bnas.settings",
        "bnas.genotype",
        "bnas.visualize",
        "bnas.config",
        "bnas.catalog",
        "bnas.sections",
        "bnas.diagnostics",
    ],
)
def test_torch_free_modules(module: str) -> None:
    code = f"import sys, {module}; sys.exit(any(m in sys.modules for m in ('torch', 'matplotlib.pyplot')))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
