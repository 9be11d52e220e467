"""The library code a rule's script reaches, and its digests (atlasmap.reach)."""

import ast
import re
import textwrap
from pathlib import Path

import pytest
from atlasmap.reach import MODULE, Library, code_digests, reach
from conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"

# A small library: a script calls `vote` in calls, which calls `kernel`; `unused` is
# never reached; io is imported lazily inside `vote`; api re-exports `vote`.
LIBRARY = {
    "__init__": '"""The package."""\n__version__ = "1.0"\n',
    "calls": '''
        """Calls."""
        import numpy as np

        LIMIT = 3


        def kernel(d):
            """The kernel."""
            return np.exp(-d)


        def vote(d):
            from .io import write  # lazy

            write(kernel(d) * LIMIT)


        def unused():
            import torch

            return torch.zeros(1)
    ''',
    "io": """
        import anndata


        def write(x):
            return anndata.AnnData(x)
    """,
    "api": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import torch\n"
    "from .calls import vote\n",
}
SCRIPT = "from atlasmap.api import vote\n\nvote(snakemake.input[0])\n"


def library(**changed) -> Library:
    sources = {name: textwrap.dedent(text) for name, text in {**LIBRARY, **changed}.items()}
    return Library(sources.__getitem__)


def edited(module: str, old: str, new: str) -> dict:
    text = textwrap.dedent(LIBRARY[module])
    assert old in text
    return {module: text.replace(old, new)}


def test_the_scan_follows_calls_re_exports_and_lazy_imports_but_not_unused_code():
    found = reach(SCRIPT, library())
    assert {("calls", "vote"), ("calls", "kernel"), ("io", "write"), ("api", MODULE)} <= set(
        found.units
    )
    assert ("calls", "unused") not in found.units
    assert found.third_party == {"numpy": "atlasmap/calls.py", "anndata": "atlasmap/io.py"}


def test_a_code_change_in_reached_code_changes_that_modules_digest_only():
    before = code_digests(SCRIPT, library())
    after = code_digests(SCRIPT, library(**edited("calls", "np.exp(-d)", "np.exp(-2 * d)")))
    assert {m for m in before if before[m] != after[m]} == {"calls"}
    constant = code_digests(SCRIPT, library(**edited("calls", "LIMIT = 3", "LIMIT = 4")))
    assert constant["calls"] != before["calls"]


@pytest.mark.parametrize(
    "module, old, new",
    [
        ("calls", '"""The kernel."""', '"""The kernel, reworded."""'),
        ("calls", "LIMIT = 3\n", "LIMIT = 3  # why three\n\n\n"),
        ("calls", "torch.zeros(1)", "torch.ones(1)"),  # a function the script never calls
        ("io", "return anndata.AnnData(x)", "return anndata.AnnData(\n        x,\n    )"),
        ("__init__", '"1.0"', '"1.1"'),  # a release
    ],
    ids=["docstring", "comment", "unreached function", "formatting", "version"],
)
def test_what_is_no_change_to_the_science_leaves_every_digest(module, old, new):
    assert code_digests(SCRIPT, library(**edited(module, old, new))) == code_digests(
        SCRIPT, library()
    )


def test_the_package_init_holds_no_code_so_skipping_it_hides_none():
    tree = ast.parse((SCRIPTS / "atlasmap" / "__init__.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "Assign"}, kinds


def imported_anywhere(path: Path) -> set[str]:
    """The atlasmap modules the file at ``path`` imports, in any function."""
    modules = {p.stem for p in (SCRIPTS / "atlasmap").glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or node.module == "atlasmap"):
            found |= {node.module or ""} | {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module.startswith("atlasmap."):
            found.add(node.module.partition(".")[2])
    return found & modules


def test_reading_the_library_reads_every_module_a_script_can_import():
    """A module from a git host has only the files Snakemake cached: reading a module
    reads (caches) every module it imports anywhere, reached or not."""
    read: set[str] = set()

    def read_module(name):
        read.add(name)
        return (SCRIPTS / "atlasmap" / f"{name}.py").read_text()

    lib = Library(read_module)
    todo = set()
    for script in SCRIPTS.glob("*.py"):
        reach(script.read_text(), lib, script.name)
        todo |= imported_anywhere(script)
    importable = set()
    while todo:
        module = todo.pop()
        importable.add(module)
        todo |= imported_anywhere(SCRIPTS / "atlasmap" / f"{module}.py") - importable
    assert len(importable) > 10
    assert importable <= read, sorted(importable - read)


def test_every_script_rule_digests_its_own_script():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    blocks = re.split(r"\n(?=\s*(?:rule|checkpoint) \w+:)", rules)
    checked = 0
    for block in blocks:
        script = re.search(r'script:\s+"\.\./scripts/(\w+\.py)"', block)
        if script:
            name = re.search(r"(?:rule|checkpoint) (\w+):", block)[1]
            assert f'code=library_code("{script[1]}")' in block, name
            checked += 1
    assert checked == len(list(SCRIPTS.glob("*.py")))


def test_train_reference_does_not_reach_the_kernel_of_the_calls():
    lib = Library(lambda name: (SCRIPTS / "atlasmap" / f"{name}.py").read_text())
    train = reach((SCRIPTS / "train_reference.py").read_text(), lib).units
    calls = reach((SCRIPTS / "call_celltypes.py").read_text(), lib).units
    assert ("calls", "kernel_weights") in calls
    assert ("calls", "kernel_weights") not in train
    assert ("folds", "calibration_folds") in train  # held-out folds of the training
