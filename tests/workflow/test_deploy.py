"""Deployment: the DAG plans with Snakemake alone, as a module of another workflow,
and from the catalog layout (workflow/Snakefile)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, copy_workflow, run_snakemake

pytestmark = pytest.mark.workflow

# What a login node with only Snakemake (and an executor plugin) lacks.
HEAVY = ("scanpy", "anndata", "scipy", "torch", "scvi", "sklearn", "matplotlib")


def without_heavy_packages(stubs) -> dict:
    """An environment where importing any of HEAVY raises ImportError."""
    for name in HEAVY:
        package = stubs / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed here (test stub)')\n"
        )
    return dict(os.environ, PYTHONPATH=str(stubs))


def test_the_dag_plans_without_the_science_stack(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    env = without_heavy_packages(tmp_path / "stubs")
    for name in HEAVY:
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True
        )
        assert probe.returncode != 0 and "test stub" in probe.stderr, name
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "-n"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule map_query:" in result.stdout
    assert "results/demo/surgery/mapped.h5ad" in result.stdout


def test_the_library_package_and_its_contract_import_light(tmp_path):
    env = without_heavy_packages(tmp_path / "stubs")
    env["PYTHONPATH"] += os.pathsep + str(REPO / "workflow" / "scripts")
    code = "import atlasmap, atlasmap.contract, atlasmap.errors; print(atlasmap.contract.MODES)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "surgery" in result.stdout


def test_the_workflow_plans_as_a_module_of_another(tmp_path):
    """As a deployment leaves it: the host's own config/ (the config and its sample
    sheet, read from the working directory) beside a Snakefile using the module."""
    host = tmp_path / "host"
    shutil.copytree(REPO / "config", host / "config")
    (host / "Snakefile").write_text(
        textwrap.dedent(
            f"""\
            configfile: "config/config.yaml"


            module atlasmap:
                snakefile:
                    "{REPO / "workflow" / "Snakefile"}"
                config:
                    config


            use rule * from atlasmap
            """
        )
    )
    out = run_snakemake(host, "-n").stdout
    assert "rule map_query:" in out
    assert "results/demo/surgery/mapped.h5ad" in out
    assert "results/demo/compare/agreement.json" in out


def test_the_catalog_layout_runs_from_the_repository_root(tmp_path):
    workdir = copy_workflow(tmp_path)
    assert not (workdir / "Snakefile").exists()
    assert (workdir / "workflow" / "Snakefile").is_file()
    out = run_snakemake(workdir, "-n").stdout
    assert "rule all:" in out
    for name in ("LICENSE", ".snakemake-workflow-catalog.yml"):
        assert (REPO / name).is_file(), name
