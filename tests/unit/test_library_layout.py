"""The library's shape: modules of one job each, importing one way, names in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import atlasmap.contract as contract
import pytest
from conftest import REPO

LIBRARY = REPO / "workflow" / "scripts" / "atlasmap"


def sibling_imports() -> dict[str, set[str]]:
    """Module -> the library modules it imports anywhere (lazy imports too: they run)."""
    graph = {}
    for path in LIBRARY.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        graph[path.stem] = found - {path.stem}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from ``start`` back to it, if there is one."""
    todo, seen = [[start]], set()
    while todo:
        chain = todo.pop()
        for module in sorted(graph.get(chain[-1], ())):
            if module == start:
                return [*chain, start]
            if module not in seen:
                seen.add(module)
                todo.append([*chain, module])
    return None


def test_the_library_imports_one_way():
    graph = sibling_imports()
    assert {"calls", "contract", "settings", "mapping"} <= set(graph)
    for module in graph:
        assert cycle_through(graph, module) is None, " -> ".join(cycle_through(graph, module))


def test_a_cycle_is_caught():
    assert cycle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_through({"a": {"b"}, "b": {"c"}, "c": set()}, "a") is None


def contract_names() -> dict[str, object]:
    """contract's string constants and tuples of strings: the shared names."""
    return {
        name: value
        for name, value in vars(contract).items()
        if name.isupper()
        and (
            (isinstance(value, str) and len(value) > 3)
            or (isinstance(value, tuple) and all(isinstance(v, str) for v in value))
        )
    }


@pytest.mark.parametrize("path", sorted(LIBRARY.glob("*.py")), ids=lambda p: p.name)
def test_no_module_redefines_a_name_of_the_contract(path: Path):
    """A key, column or mode name is defined in contract.py alone; another module that
    assigns the same name or value at its top level holds a second copy to keep in step."""
    if path.stem == "contract":
        return
    shared = contract_names()
    values = {repr(value): name for name, value in shared.items()}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    assert name.id not in shared, f"{path.name}: {name.id} is contract's"
        try:
            value = ast.literal_eval(node.value) if node.value is not None else None
        except ValueError:
            continue
        assert repr(value) not in values, (
            f"{path.name}: {value!r} is contract.{values[repr(value)]}"
        )
