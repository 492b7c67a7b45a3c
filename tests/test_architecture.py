"""Imports run one way: ``service → index`` and ``training → index``; ``index`` imports neither; inside each
package, from higher layers to lower ones (:data:`LAYERS`), without a cycle.

The shared contract (binary codes, binary k-means, the bundle manifest, reader and serving featurizers)
lives in ``index``, so serving never needs training code (nor torch). The import graph is read from the
AST of every module, function-level imports and imports by name (``importlib.import_module("…")``,
``__import__("…")``) included, so neither a lazy import nor a string one can hide an arrow.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "index", "service")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_BY_NAME = {"import_module", "__import__"}  # importlib.import_module / import_module / __import__


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments: a module name kept in a constant is still a literal."""
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _imported_by_name(node: ast.Call, constants: dict[str, str]) -> str | None:
    """The module a call such as ``importlib.import_module("training.x")`` imports, when named by a literal
    or by a module-level constant."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    first = node.args[0] if node.args else None
    if name not in _BY_NAME or first is None:
        return None
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return constants.get(first.id) if isinstance(first, ast.Name) else None


def _imported(source: str, package: str) -> set[str]:
    """Absolute names of the modules a module of ``package`` imports (relative imports resolved, imports
    by a literal name included)."""
    names = set()
    tree = ast.parse(source)
    constants = _constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (by_name := _imported_by_name(node, constants)):
            names.add(by_name)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _imports_by_module() -> dict[str, set[str]]:
    imports = {}
    for path in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        module = _module_name(path)
        imports[module] = _imported(
            path.read_text(), module if path.name == "__init__.py" else module.rpartition(".")[0]
        )
    return imports


def _top(name: str) -> str:
    return name.partition(".")[0]


def package_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level package → the other top-level packages of the project its modules import."""
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for module, names in imports.items():
        graph[_top(module)] |= {_top(n) for n in names if _top(n) in PACKAGES} - {_top(module)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a path that returns to its start, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_layering() -> None:
    assert find_cycle({"training": {"index"}, "index": {"training"}, "service": {"index"}}) == [
        "index",
        "training",
        "index",
    ]
    assert find_cycle({"training": {"index"}, "index": set(), "service": {"index"}}) is None


def test_imports_are_read_with_relative_and_lazy_ones_resolved() -> None:
    source = "import a.b\nfrom . import c\nfrom ..d import e\ndef f():\n    from training import g\n"
    assert _imported(source, "index.bundle") == {
        "a.b", "index.bundle", "index.bundle.c", "index.d", "index.d.e", "training", "training.g"
    }  # fmt: skip


def test_imports_by_a_literal_name_are_read_too() -> None:
    source = (
        "import importlib\nfrom importlib import import_module\nREADER = 'training.z'\n"
        "def f():\n    importlib.import_module('training.datasets.openclipart')\n"
        "    import_module('training.x')\n    __import__('training.y')\n    importlib.import_module(READER)\n"
        "    getattr(x, 'import_module')\n"
    )
    assert _imported(source, "service") == {
        "importlib", "importlib.import_module", "training.datasets.openclipart", "training.x", "training.y",
        "training.z",
    }  # fmt: skip


def test_no_import_cycle_between_the_top_level_packages() -> None:
    graph = package_graph(_imports_by_module())
    assert find_cycle(graph) is None, f"import cycle {find_cycle(graph)}; package imports: {graph}"


@pytest.mark.parametrize("package", ["index", "service"])
def test_index_and_service_import_nothing_of_training(package: str) -> None:
    offending = {
        module: sorted(n for n in names if _top(n) == "training")
        for module, names in _imports_by_module().items()
        if _top(module) == package
    }
    assert not {m: names for m, names in offending.items() if names}


def test_index_imports_nothing_of_service() -> None:
    offending = [m for m, names in _imports_by_module().items() if _top(m) == "index" and "service" in map(_top, names)]
    assert not offending


def test_importing_the_service_app_loads_no_training_module() -> None:
    """In a fresh interpreter: ``import service.app`` (and so every route, the runtime and the bundle
    reader) leaves ``sys.modules`` without any ``training`` module, nor torch or scikit-learn."""
    probe = (
        "import sys, service.app; "
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in {'training', 'torch', 'sklearn'}))"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


# Inside each package, layers from the bottom up: a module imports only modules of its own layer or below
# (and no cycle runs through its own layer: ``test_no_import_cycle_between_the_modules_of_a_package``). A
# module is placed by the longest name of a layer that contains it, so a new module must be placed here.
LAYERS: dict[str, list[set[str]]] = {
    "index": [
        {"index", "index.codes", "index.errors", "index.item_ids", "index.memory", "index.redis_keys",
         "index.stored_values", "index.rerank", "index.collection", "index.redis_server", "index.retrieval_metrics",
         "index.hash_health", "index.redis_connection"},
        {"index.centers", "index.code_space", "index.bundle", "index.scan", "index.redis_calls", "index.shards"},
        {"index.change_feed", "index.layout_upgrade", "index.collection_registry", "index.item_sources",
         "index.rollout_state"},
        {"index.store", "index.shard_store", "index.quality_gate"},
        {"index.import_transaction", "index.rebuild", "index.engine"},
        {"index.bulk_import"},
        {"index.reencode"},
        {"index.__main__"},
    ],
    "service": [
        {"service", "service.settings", "service.metrics", "service.schemas", "service.encoder", "service.embedded",
         "service.routes", "service.routes.fast_json", "service.other_index", "service.micro_batch",
         "service.tick_batch"},
        {"service.runtime", "service.contract"},
        {"service.thumbnails", "service.model_rollout"},
        {"service.collection", "service.ingest"},
        {"service.demo", "service.routes.deps"},
        {"service.routes.items", "service.routes.models", "service.routes.page", "service.routes.search",
         "service.routes.similar", "service.routes.system", "service.routes.thumbnails"},
        {"service.app", "service.__main__"},
    ],
    "training": [
        {"training", "training.datasets"},
        {"training.methods"},
        {"training.featurize"},
        {"training.evaluation", "training.bundle"},
        {"training.registry"},
        {"training.cli", "training.__main__"},
    ],
}  # fmt: skip


def layer_of(module: str, layers: list[set[str]]) -> int | None:
    """The layer of the longest layer name that is ``module`` or a package above it; None when none is."""
    found = [(len(name), rank) for rank, names in enumerate(layers) for name in names
             if module == name or module.startswith(name + ".")]  # fmt: skip
    return max(found)[1] if found else None


def _module_graph(imports: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports (``from a import b`` names module ``a.b`` when
    that is a module, else ``a``)."""
    modules = {m for m in imports if _top(m) == package}
    graph = {}
    for module in modules:
        named = {n if n in modules else n.rpartition(".")[0] for n in imports[module] if _top(n) == package}
        graph[module] = (named & modules) - {module}
    return graph


def test_the_layer_check_places_modules_by_their_longest_layer_name() -> None:
    layers = [{"p", "p.low"}, {"p.high"}]
    assert [layer_of(m, layers) for m in ("p", "p.low.x", "p.high", "p.high.y", "q")] == [0, 0, 1, 1, None]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_inside_a_package_run_from_higher_layers_to_lower_ones(package: str) -> None:
    layers = LAYERS[package]
    graph = _module_graph(_imports_by_module(), package)
    unplaced = sorted(m for m in graph if layer_of(m, layers) is None)
    assert not unplaced, f"place these modules in LAYERS[{package!r}]: {unplaced}"
    upward = sorted(
        f"{module} (layer {layer_of(module, layers)}) → {name} (layer {layer_of(name, layers)})"
        for module, names in graph.items()
        for name in names
        if layer_of(name, layers) > layer_of(module, layers)
    )
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_between_the_modules_of_a_package(package: str) -> None:
    graph = _module_graph(_imports_by_module(), package)
    assert find_cycle(graph) is None, f"import cycle {find_cycle(graph)}"


# -- docs/architecture.md's module table is generated from the tree, so it cannot go stale ---------------------

ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"
TABLE_START, TABLE_END = "<!-- module table: python -m tests.test_architecture -->", "<!-- end of module table -->"


def _summary(path: Path) -> str:
    """The first line of a module's docstring (what it is for), ``|`` escaped for a Markdown table."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0].replace("|", "\\|") if doc.strip() else ""


def module_table() -> str:
    """Every module of the three packages with its layer (0 = lowest) and its docstring's first line."""
    rows = ["| module | layer | what it is for |", "|---|---|---|"]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            rows.append(f"| `{module}` | {package} {layer_of(module, LAYERS[package])} | {_summary(path)} |")
    return "\n".join(rows)


def test_the_architecture_docs_module_table_is_the_trees() -> None:
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text, f"{ARCHITECTURE_DOC} lacks the module table's markers"
    written = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert written == module_table(), "docs/architecture.md is stale: paste `python -m tests.test_architecture`"


if __name__ == "__main__":
    print(module_table())
