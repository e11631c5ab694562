"""The package's layering: no module imports, even lazily, a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import cnnlab

SRC = Path(cnnlab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """cnnlab module -> the cnnlab modules it imports anywhere in its body (lazy imports too)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from cnnlab.models import own` imports the module cnnlab.models.own
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not modules[t].name == "__init__.py":
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_cnnlab_modules():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert "cnnlab.models.nasnet" in graph["cnnlab.models.own"]  # lazy imports are seen too


def test_the_cli_sits_on_top_nothing_below_imports_it():
    graph = import_graph()
    offenders = sorted(m for m, deps in graph.items()
                       if not m.startswith("cnnlab.cli") and any(d.startswith("cnnlab.cli") for d in deps)
                       and m != "cnnlab.__main__")
    assert offenders == []


#: The house's floors (docs/architecture.md): a package imports only packages on lower floors
#: (and itself). cnnlab's top-level package and __main__ sit above everything.
FLOORS = {
    "errors": 0, "utils": 1, "validation": 2, "config": 3,
    "data": 4, "models": 4, "figures": 4, "presets": 4,
    "evaluation": 5, "training": 6, "export": 7, "inference": 8,
    "autofit": 9, "tuning": 9, "predictor": 10, "api": 11,
    "reports": 12, "serving": 12, "cli": 13, "__main__": 14, "": 14,
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a package on the same or a higher floor than the importer's (other than itself)."""
    found = []
    for module, deps in sorted(graph.items()):
        here = _package(module)
        for dep in sorted(deps):
            there = _package(dep)
            if there != here and FLOORS[there] >= FLOORS[here]:
                found.append(f"{module} (floor {FLOORS[here]}) imports {dep} (floor {FLOORS[there]})")
    return found


def test_every_package_has_a_floor():
    assert sorted({_package(m) for m in import_graph()} - set(FLOORS)) == []


def test_no_package_imports_upwards():
    """The predictor sits above autofit, tuning and the inference path; evaluation reaches into neither
    training nor reports; nothing below the CLI imports it (lazy imports inside functions count too)."""
    assert upward_imports(import_graph()) == []


def test_the_layering_check_can_fail():
    graph = {"cnnlab.evaluation.metrics": {"cnnlab.training.core"}, "cnnlab.training.core": set(),
             "cnnlab.predictor": {"cnnlab.autofit.fit"}, "cnnlab.autofit.fit": set()}
    assert upward_imports(graph) == ["cnnlab.evaluation.metrics (floor 5) imports cnnlab.training.core (floor 6)"]
