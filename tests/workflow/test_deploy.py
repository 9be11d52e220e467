"""Deployment: the DAG plans with Snakemake alone, as a module of another workflow (a
local clone, or a tagged release as snakedeploy deploys it), and from the catalog
layout (workflow/Snakefile)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, copy_workflow, run_snakemake, write_small_config
from test_code_changes import CALLS_AND_WHAT_FOLLOWS, change_the_kernel, planned_rules

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


# What `snakedeploy deploy-workflow https://github.com/OWNER/atlasmap DEST --tag TAG` writes
# as DEST/workflow/Snakefile (beside a copy of the release's config/).
DEPLOYED_SNAKEFILE = """\
configfile: "config/config.yaml"


# declare https://github.com/{repo} as a module
module atlasmap:
    snakefile:
        github("{repo}", path="workflow/Snakefile", tag="{tag}")
    config:
        config


# use all rules from https://github.com/{repo}
use rule * from atlasmap
"""
RELEASE_REPO = "atlasmap-tests/atlasmap"


def git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=atlasmap", "-c", "user.email=ci@atlasmap.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def deploy(host, tag):
    (host / "workflow").mkdir(parents=True, exist_ok=True)
    (host / "workflow" / "Snakefile").write_text(
        DEPLOYED_SNAKEFILE.format(repo=RELEASE_REPO, tag=tag)
    )


def test_a_module_from_a_tagged_release_runs_offline_and_reruns_only_what_changed(tmp_path):
    """The working tree released as v0.1.0 (a git repository, tagged), cloned where
    Snakemake keeps its git cache of github.com; a host deployed as snakedeploy does
    runs the demo from it with no network. Release v0.1.1 changes the kNN kernel and
    reworded comments: upgrading reruns the calls and what follows, nothing else."""
    release = copy_workflow(tmp_path / "release")
    git(release, "init", "--quiet")
    git(release, "add", "-A")
    git(release, "commit", "--quiet", "-m", "release")
    git(release, "tag", "v0.1.0")
    cache = tmp_path / "cache"
    git_cache = cache / "snakemake/snakemake/source-cache/snakemake-git-cache/github.com"
    git(tmp_path, "clone", "--quiet", "--bare", str(release), str(git_cache / RELEASE_REPO))
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))

    host = tmp_path / "host"
    shutil.copytree(release / "config", host / "config")
    write_small_config(host, name="config.yaml")  # the user's edit of their copy
    deploy(host, "v0.1.0")
    run_snakemake(host, env=env, timeout=1800)
    for query in ("demo", "demo_h5ad"):
        assert (host / "results" / query / "surgery" / "mapped.h5ad").is_file()
    assert (host / "results" / "summary.tsv").is_file()
    run_snakemake(host, "--report", "report.html", env=env)
    assert "summary_label_distribution" in (host / "report.html").read_text()
    cached = cache / "snakemake/snakemake/source-cache/hosted-git/githubfile/github.com"
    assert (cached / RELEASE_REPO / "v0.1.0/workflow/scripts/atlasmap/calls.py").is_file()

    training = release / "workflow" / "scripts" / "atlasmap" / "training.py"
    training.write_text(training.read_text() + "\n# reworded\n")
    change_the_kernel(release / "workflow" / "scripts" / "atlasmap" / "calls.py")
    git(release, "commit", "--quiet", "-am", "calls: a new kernel")
    git(release, "tag", "v0.1.1")
    git(release, "push", "--quiet", str(git_cache / RELEASE_REPO), "v0.1.1")
    deploy(host, "v0.1.1")
    assert planned_rules(host, env=env) == CALLS_AND_WHAT_FOLLOWS
