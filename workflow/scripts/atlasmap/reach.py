"""What a rule's script runs of the atlasmap library, found by reading the code (``ast``).

Two uses. Each rule's params carry a digest of the library code its script reaches
(``code_digests``), so that a change to that code reruns the rule, and nothing else
does: not a comment, a docstring or a reformatting, not a function the script never
calls, not a new mtime from a fresh clone or a source cache. And the env test checks
that every third-party package a script reaches is in its rule's conda env
(``Reach.third_party``).

The scan follows what is used: the script whole; an imported module's top-level
statements (they run on import); the functions and classes that reached code names,
transitively, through re-exports and lazy imports inside functions. The library is a
flat package (``atlasmap.<module>``); ``read(name)`` gives the text of module
``name`` (``"calls"``, or ``"__init__"`` for the package) wherever it lies: a checkout,
or Snakemake's source cache when the workflow is a module from a git host.

Standard library only: it runs while Snakemake parses the workflow.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

PACKAGE = "atlasmap"
MODULE = "<module>"  # a module's own statements, run when it is imported


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(tree: ast.AST):
    """ast.walk, less ``if TYPE_CHECKING:`` bodies and annotations (they run nothing)."""
    todo = list(tree.orelse) if _is_type_checking(tree) else [tree]
    while todo:
        node = todo.pop()
        yield node
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if not isinstance(child, ast.AST):
                    continue
                if _is_type_checking(child):
                    todo.extend(child.orelse)
                else:
                    todo.append(child)


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """``tree`` with the docstring of the module, each class and each function removed."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _runs_on_import(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """A def's decorators and default values, evaluated when the def runs."""
    defaults = function.args.defaults + [d for d in function.args.kw_defaults if d]
    return function.decorator_list + defaults


@dataclass
class Unit:
    """What one piece of code (a function, a class's methods, or a module's top-level
    statements) imports from outside, binds from atlasmap, and names."""

    code: str  # its normalised syntax tree: no comments, docstrings, positions
    third_party: set[str] = field(default_factory=set)
    bindings: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)


class Library:
    """The atlasmap package as ``read`` gives its modules, parsed once each."""

    def __init__(self, read: Callable[[str], str]):
        self._read = read
        self._modules: dict[str, dict[str, Unit]] = {}
        # What the package itself defines: `from atlasmap import X` names a module otherwise.
        self._package_names = {
            target.id if isinstance(target, ast.Name) else (target.asname or target.name)
            for node in ast.parse(read("__init__")).body
            for target in (
                node.targets
                if isinstance(node, ast.Assign)
                else node.names
                if isinstance(node, ast.Import | ast.ImportFrom)
                else []
            )
            if isinstance(target, ast.Name | ast.alias)
        }

    def module_of(self, dotted: str) -> str | None:
        """The library module a dotted import names (``atlasmap.calls`` -> ``calls``),
        the package itself (``__init__``), or None for an attribute of a module."""
        parts = dotted.split(".")
        if parts[0] != PACKAGE or len(parts) > 2:
            return None
        if len(parts) == 1:
            return "__init__"
        return None if parts[1] in self._package_names else parts[1]

    def units(self, module: str) -> dict[str, Unit]:
        """Unit name -> Unit of ``module``. Reading a module reads every module it
        imports anywhere, reached or not: where ``read`` fetches them into Snakemake's
        source cache, each is there before a script could import it."""
        if module not in self._modules:
            units = self._modules[module] = self._parse(module, self._read(module))
            for unit in units.values():
                for target, _ in unit.bindings.values():
                    if (imported := self.module_of(target)) and imported not in self._modules:
                        self.units(imported)
        return self._modules[module]

    def _parse(self, module: str, text: str) -> dict[str, Unit]:
        return split_units(text, PACKAGE if module == "__init__" else f"{PACKAGE}.{module}", self)


def split_units(text: str, name: str, library: Library | None, whole: bool = False):
    """Unit name -> Unit of the Python source ``text`` (module ``name``): its top-level
    statements (class bodies included: they run on import), each top-level function,
    each class's methods together; with ``whole``, one unit of everything (a script)."""
    tree = _without_docstrings(ast.parse(text))
    package = name.rpartition(".")[0] or name
    functions: dict[str, list[ast.AST]] = {}
    top: list[ast.AST] = []
    for stmt in tree.body:
        if whole:
            top.append(stmt)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            functions[stmt.name] = [stmt]
            top.extend(_runs_on_import(stmt))
        elif isinstance(stmt, ast.ClassDef):
            # The class body runs on import; its methods when the class is used.
            top.extend(stmt.decorator_list + stmt.bases + stmt.keywords)
            methods = []
            for inner in stmt.body:
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    methods.append(inner)
                    top.extend(_runs_on_import(inner))
                else:
                    top.append(inner)
            functions[stmt.name] = methods
        else:
            top.append(stmt)
    units = {MODULE: _unit(top, package, library)}
    units.update({fn: _unit(nodes, package, library) for fn, nodes in functions.items()})
    return units


def _unit(nodes: list[ast.AST], package: str, library: Library | None) -> Unit:
    unit = Unit(code="\n".join(ast.dump(node) for node in nodes))
    for root in nodes:
        for node in _walk(root):
            if isinstance(node, ast.Import):
                _bind_import(unit, node)
            elif isinstance(node, ast.ImportFrom):
                _bind_import_from(unit, node, package, library)
            elif isinstance(node, ast.Name):
                unit.names.add(node.id)
            elif isinstance(node, ast.List | ast.Tuple):
                unit.third_party.update(_tools_run(node.elts))
    return unit


def _bind_import(unit: Unit, node: ast.Import) -> None:
    for alias in node.names:
        if alias.name.split(".")[0] == PACKAGE:
            unit.bindings[alias.asname or PACKAGE] = (alias.name, None)
        else:
            unit.third_party.add(alias.name.split(".")[0])


def _bind_import_from(
    unit: Unit, node: ast.ImportFrom, package: str, library: Library | None
) -> None:
    if node.level:  # relative: inside atlasmap
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    if target.split(".")[0] != PACKAGE:
        unit.third_party.add(target.split(".")[0])
        return
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        is_module = library is not None and library.module_of(submodule)
        unit.bindings[alias.asname or alias.name] = (
            (submodule, None) if is_module else (target, alias.name)
        )


def _tools_run(items: list[ast.expr]) -> set[str]:
    """The packages of ``[sys.executable, "-m", tool]`` in a list or tuple."""
    return {
        str(tool.value).split(".")[0]
        for first, flag, tool in zip(items, items[1:], items[2:], strict=False)
        if ast.unparse(first) == "sys.executable"
        and isinstance(flag, ast.Constant)
        and flag.value == "-m"
        and isinstance(tool, ast.Constant)
    }


@dataclass
class Reach:
    """What running a script reaches: library units, and third-party imports."""

    script: Unit  # the script's own code, whole
    units: dict[tuple[str, str], Unit]  # (module, unit name) -> unit
    third_party: dict[str, str]  # import name -> the first module seen importing it


def reach(script: str, library: Library, script_name: str = "script") -> Reach:
    """What running the Python source ``script`` can reach (see the module's docstring)."""
    script_units = split_units(script, "__main__", library, whole=True)
    reached: dict[tuple[str, str], Unit] = {}
    third_party: dict[str, str] = {}
    todo: list[tuple[str, str]] = [(script_name, MODULE)]
    while todo:
        module, name = todo.pop()
        if (module, name) in reached:
            continue
        units = script_units if module == script_name else library.units(module)
        if name not in units:
            continue
        unit = reached[module, name] = units[name]
        where = script_name if module == script_name else f"{PACKAGE}/{module}.py"
        for imported in unit.third_party - set(sys.stdlib_module_names) - {"__future__"}:
            third_party.setdefault(imported, where)
        bindings = {**units[MODULE].bindings, **unit.bindings}
        todo.extend(_modules_imported(library, unit))
        for used in unit.names:
            if used in bindings:
                target, attribute = bindings[used]
                todo.extend(_follow(library, target, attribute))
            elif used in units and used != MODULE:
                todo.append((module, used))
    return Reach(script=reached.pop((script_name, MODULE)), units=reached, third_party=third_party)


def _modules_imported(library: Library, unit: Unit) -> list[tuple[str, str]]:
    """The top level of each library module ``unit`` imports: importing a.b runs a,
    then a.b."""
    found = []
    for target, _ in unit.bindings.values():
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            if module := library.module_of(".".join(parts[:depth])):
                found.append((module, MODULE))
    return found


def _follow(library: Library, target: str, attribute: str | None) -> list[tuple[str, str]]:
    """The units that ``attribute`` of ``target`` (or the whole module) stands for,
    through re-exports."""
    module = library.module_of(target)
    if module is None:
        return []
    units = library.units(module)
    if attribute is None:
        return [(module, name) for name in units]
    if attribute in units:
        return [(module, attribute)]
    if attribute in units[MODULE].bindings:  # re-exported from another module
        return _follow(library, *units[MODULE].bindings[attribute])
    return []  # a constant: the module's top level, reached already


def code_digests(script: str, library: Library):
    """Module -> a short digest of the library code ``script`` reaches in it; ``script``
    -> the script's own. The package's ``__init__`` (its docstring and version) is
    skipped: a release would otherwise rerun every job."""
    reached = reach(script, library)
    by_module: dict[str, list[str]] = {"script": [reached.script.code]}
    for (module, name), unit in reached.units.items():
        if module != "__init__":
            by_module.setdefault(module, []).append(f"{name}\n{unit.code}")
    return {
        module: hashlib.sha256("\n\n".join(sorted(parts)).encode()).hexdigest()[:16]
        for module, parts in sorted(by_module.items())
    }
