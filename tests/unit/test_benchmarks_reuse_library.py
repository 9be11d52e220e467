"""The benchmarks measure the shipped library, not a copy of it.

A benchmark that (re)defines a name of the library's contract or calls (Unknown, the
modes, the methods, the model's file, the latent's key, ...) measures its own copy,
which drifts from the library unseen: every such name comes from the library. The
names and values checked here are read from the library itself, so the test follows it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"
# The one module of benchmarks/ that changes sys.path (the library's folder, scpdac's).
HELPER = BENCHMARKS / "bench.py"
# The library's modules whose names a benchmark takes and never defines: the contract
# and the calls, with the modules the calls are split into (each where it exists).
LIBRARY_MODULES = ("contract", "calls", "reference_calls", "call_adapters", "settings")
# Keys and file names no benchmark writes as a string of its own, anywhere in it.
DISTINCTIVE = (
    "MODEL_FILE",
    "EMBEDDING_KEY",
    "PROBABILITIES_KEY",
    "EMBEDDED_ATLAS_KEY",
    "QUERY_UMAP_KEY",
    "REFERENCE_GRAPH_KEY",
)


def library_modules() -> list:
    return [
        importlib.import_module(f"atlasmap.{name}")
        for name in LIBRARY_MODULES
        if importlib.util.find_spec(f"atlasmap.{name}") is not None
    ]


def defined_names(node) -> list[str]:
    """The names a module-level statement defines."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def library_names() -> set[str]:
    """The public names those modules define themselves (not those they import)."""
    names = set()
    for module in library_modules():
        for node in ast.parse(Path(module.__file__).read_text()).body:
            names |= set(defined_names(node))
    return {n for n in names if not n.startswith("_")}


def library_values() -> dict[str, object]:
    """Their constants (upper-case names) that hold a string, or strings (as a set)."""
    out = {}
    for module in library_modules():
        for name, value in vars(module).items():
            if not name.isupper() or name.startswith("_"):
                continue
            strings = isinstance(value, tuple | list) and value
            if isinstance(value, str):
                out[name] = value
            elif strings and all(isinstance(v, str) for v in value):
                out[name] = frozenset(value)
    return out


def literal(node):
    """The string, or the set of strings of a tuple, list or set, that ``node`` writes."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, str):
        return value
    strings = isinstance(value, tuple | list | set | frozenset) and value
    return frozenset(value) if strings and all(isinstance(v, str) for v in value) else None


def module_level(tree: ast.Module):
    """A module's own statements, those under a module-level if, try or with included."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    todo.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def redefinitions(text: str, where: str, names: set[str], values: dict) -> list[str]:
    """Where a benchmark's source defines a library name, gives a module-level name a
    library constant's value, or writes one of the DISTINCTIVE keys as a string."""
    tree = ast.parse(text, filename=where)
    by_value: dict = {}
    for name, value in values.items():
        by_value.setdefault(value, []).append(name)
    found = []
    for node in module_level(tree):
        for name in defined_names(node):
            if name in names:
                found.append(f"{where}:{node.lineno}: defines {name}, a name of the library")
        value = getattr(node, "value", None)
        if isinstance(node, ast.Assign | ast.AnnAssign) and value is not None:
            own = literal(value)
            if own is not None and own in by_value:
                found.append(
                    f"{where}:{node.lineno}: {', '.join(defined_names(node))} holds the value "
                    f"of the library's {', '.join(by_value[own])}"
                )
    distinctive = {values[n]: n for n in DISTINCTIVE if n in values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            name = distinctive.get(node.value)
            if name:
                found.append(
                    f"{where}:{node.lineno}: writes {node.value!r} itself: use the library's {name}"
                )
    return found


def path_changes(text: str, where: str) -> list[str]:
    """Where a source changes sys.path (insert, append, extend, assignment)."""
    out = []
    for node in ast.walk(ast.parse(text, filename=where)):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if isinstance(t, ast.Attribute)), None)
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "path"
            and isinstance(target.value, ast.Name)
            and target.value.id == "sys"
        ):
            out.append(f"{where}:{node.lineno}")
    return out


def benchmark_sources() -> list[tuple[str, str]]:
    """(source, its path from the repository) of every Python file under benchmarks/."""
    return [
        (path.read_text(), str(path.relative_to(REPO)))
        for path in sorted(BENCHMARKS.rglob("*.py"))
        if "runs" not in path.relative_to(BENCHMARKS).parts
    ]


def test_the_checks_read_the_library():
    from atlasmap.contract import EMBEDDING_KEY, MODEL_FILE, UNKNOWN

    names, values = library_names(), library_values()
    for name in ("UNKNOWN", "MODES", "METHODS", "MODEL_FILE", "EMBEDDING_KEY", "CallSettings"):
        assert name in names, name
    assert {"call_cells", "call_mapping", "call_embedded", "query_mask"} <= names
    assert values["UNKNOWN"] == UNKNOWN and values["MODEL_FILE"] == MODEL_FILE
    assert values["EMBEDDING_KEY"] == EMBEDDING_KEY


def test_the_checks_find_a_copy_of_the_library():
    """The checks themselves, on a benchmark that copies the library as real_data.py did."""
    from atlasmap.calls import METHODS
    from atlasmap.contract import EMBEDDING_KEY, MODEL_FILE, UNKNOWN

    text = (
        "import sys\n"
        "sys.path.insert(0, 'workflow/scripts')\n"
        f"UNKNOWN = {UNKNOWN!r}\n"
        f"NOT_KNOWN = {UNKNOWN!r}\n"
        f"KINDS = {tuple(reversed(METHODS))!r}\n"
        "def call_mapping(result):\n"
        f"    return result.obsm[{EMBEDDING_KEY!r}], {MODEL_FILE!r}\n"
    )
    found = redefinitions(text, "copy.py", library_names(), library_values())
    assert sum("defines UNKNOWN" in f for f in found) == 1
    assert any("NOT_KNOWN holds the value of the library's UNKNOWN" in f for f in found)
    assert any("KINDS holds the value of the library's METHODS" in f for f in found)
    assert any("defines call_mapping" in f for f in found)
    assert any("use the library's EMBEDDING_KEY" in f for f in found)
    assert any("use the library's MODEL_FILE" in f for f in found)
    assert path_changes(text, "copy.py") == ["copy.py:2"]


def test_no_benchmark_redefines_a_name_of_the_library():
    names, values = library_names(), library_values()
    found = [
        f for text, where in benchmark_sources() for f in redefinitions(text, where, names, values)
    ]
    assert not found, "\n".join(found)


def test_only_the_helper_module_changes_sys_path():
    assert HELPER.is_file()
    helper = str(HELPER.relative_to(REPO))
    found = [
        f
        for text, where in benchmark_sources()
        if where != helper
        for f in path_changes(text, where)
    ]
    assert not found, "\n".join(found)


# --- The one rule a benchmark mirrors rather than calls --------------------------------


@pytest.fixture(scope="module")
def steps():
    sys.path.insert(0, str(BENCHMARKS))
    import real_data_steps

    return real_data_steps


@pytest.fixture(scope="module")
def fitted_calls():
    """A call model fitted on a small synthetic reference, and a query to call with it:
    cells of the reference's types, cells between two of them and a type it lacks."""
    from atlasmap.calls import fit_call_model
    from atlasmap.settings import CallSettings

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3.0, (4, 6))
    labels = np.repeat(["a", "b", "c", "d"], 150)
    codes = pd.factorize(labels, sort=True)[0]
    latent = centres[codes] + rng.normal(0, 1.0, (len(labels), 6))
    batches = np.tile(["x", "y", "z"], 200)
    settings = CallSettings(method="knn", n_neighbors=15, query_smoothing=0)
    model = fit_call_model(latent, labels, batches, settings=settings)
    seen = centres[codes[::5]] + rng.normal(0, 1.5, (120, 6))
    between = (centres[0] + centres[1]) / 2 + rng.normal(0, 1.0, (60, 6))
    novel = rng.normal(0, 3.0, 6) * 3 + rng.normal(0, 1.0, (60, 6))
    return model, np.vstack([seen, between, novel]), settings


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
def test_the_benchmarks_unknown_rule_is_call_cells_own(steps, fitted_calls, threshold):
    """real_data's tuning re-thresholds one call table at several thresholds without
    calling again: the rule it applies is call_cells' own (inline there), on the same
    cells, with the novelty cut-off and without one."""
    from atlasmap.calls import call_cells, unknown_calls

    model, query, settings = fitted_calls
    table = call_cells(model, query, settings=settings)
    reasons = set()
    for cutoff in (model.novelty_cutoff, np.inf):
        fitted = replace(model, novelty_cutoff=cutoff)
        again = call_cells(fitted, query, settings=replace(settings, unknown_threshold=threshold))
        mirrored, _ = unknown_calls(
            table["candidate_celltype"],
            table["prediction_probability"],
            threshold,
            table["novelty_score"],
            None if np.isinf(cutoff) else cutoff,
        )
        assert list(mirrored) == list(again["predicted_celltype"]), cutoff
        assert ("novelty" in set(again["unknown_reason"])) == np.isfinite(cutoff)
        reasons |= set(again["unknown_reason"])
    # The cells test both parts of the rule.
    assert np.isfinite(model.novelty_cutoff)
    assert threshold < 0.5 or "probability" in reasons


def test_the_benchmarks_unknown_rule_is_the_baseline_comparisons(steps, fitted_calls):
    """Without a cut-off the rule is the one by which the workflow's metrics make a
    baseline's calls Unknown (classification_metrics with unknown_threshold)."""
    from atlasmap.calls import call_cells, unknown_calls
    from atlasmap.metrics import classification_metrics

    model, query, settings = fitted_calls
    table = call_cells(model, query, settings=settings)
    truth = pd.Series(np.r_[np.repeat(["a", "b", "c", "d"], 30), ["a"] * 60, ["e"] * 60])
    best = table["candidate_celltype"].reset_index(drop=True)
    probability = table["prediction_probability"].reset_index(drop=True)
    for threshold in (0.3, 0.5, 0.8):
        library = classification_metrics(truth, best, {"a", "b", "c", "d"}, probability, threshold)
        mirrored, _ = unknown_calls(best, probability, threshold)
        mine = classification_metrics(truth, pd.Series(mirrored), {"a", "b", "c", "d"})
        assert mine == library, threshold
    assert library["share_unknown"] > 0
