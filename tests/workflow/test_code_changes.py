"""A change to the science reruns the jobs whose code changed, and what follows them.

The rules run thin scripts; the science is the atlasmap library. Each rule's params carry
digests of the library code its script reaches (workflow/rules/common.smk,
library_code), so Snakemake's params trigger sees a change to that code, and only to it.
"""

import re
import shutil

import pytest
from conftest import run_snakemake

pytestmark = pytest.mark.workflow

# The kNN vote's kernel: fit on the atlas (fit_calls) and applied to the query
# (call_celltypes); everything downstream of the calls reads them.
KERNEL = "    squared = distances**2\n"
CALLS_AND_WHAT_FOLLOWS = {
    "fit_calls",
    "call_celltypes",
    "neighbors_umap",
    "evaluate_mapping",
    "plot_mapping",
    "plot_confusion",
    "compare_modes",
    "summarize_queries",
    "all",
}


def planned_rules(workdir, *args, env=None) -> set[str]:
    """The rules of the jobs a dry run in ``workdir`` plans."""
    out = run_snakemake(workdir, "-n", *args, env=env).stdout
    return set(re.findall(r"^(?:local)?rule (\w+):", out, re.MULTILINE))


def change_the_kernel(calls):
    text = calls.read_text()
    assert KERNEL in text, "the test's anchor in calls.py moved: update KERNEL"
    calls.write_text(text.replace(KERNEL, KERNEL + "    squared = squared + 0.0\n"))


def test_a_change_to_the_calls_reruns_the_calls_and_what_follows(small_run, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(small_run, work, symlinks=True)  # file times kept
    config = ("--configfile", "config/small.yaml")
    assert planned_rules(work, *config) == set()

    library = work / "workflow" / "scripts" / "atlasmap"
    # A comment, a docstring and a new file time are no change to the science.
    for module in ("calls.py", "training.py", "reference.py"):
        path = library / module
        path.write_text(path.read_text().replace('"""', '"""Reworded. ', 1) + "\n# note\n")
    assert planned_rules(work, *config) == set()

    change_the_kernel(library / "calls.py")
    planned = planned_rules(work, *config)
    assert planned == CALLS_AND_WHAT_FOLLOWS
    assert not {"train_reference", "embed_reference", "map_query", "load_query"} & planned
