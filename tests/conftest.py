"""Shared fixtures: a small demo study made by the project itself, written as deposits."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from atlasmap.contract import DEPOSIT_FILES
from atlasmap.demo import make_demo_study, write_10x_deposit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_study():
    """A demo study small enough for unit tests (seconds to make)."""
    return make_demo_study(
        seed=7, n_reference_cells=1200, n_query_cells=400, n_genes=400, n_patients=4
    )


def write_deposit(query, directory: Path) -> Path:
    """Write ``query`` as a deposit under the names download_query gives the files."""
    directory.mkdir(parents=True, exist_ok=True)
    write_10x_deposit(query, {role: directory / name for role, name in DEPOSIT_FILES.items()})
    return directory


@pytest.fixture
def deposit(tmp_path, small_study):
    return write_deposit(small_study.query, tmp_path / "deposit")


def tree_digest(directory: Path) -> dict[str, str]:
    """Name -> sha256 of every file under ``directory``: to prove inputs were not touched."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def copy_workflow(dest: Path) -> Path:
    """Copy what a user clones (config, workflow with its Snakefile, profiles) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config", "workflow", "profiles"):
        src = REPO / name
        if src.is_dir():
            # Bytecode left out; numba's on-disk cache of the library's kernels kept (valid
            # while the source's time and size match, which copytree keeps), as a user's
            # clone has it after its first job: without it every job of every copy
            # compiles them again (7 s each, 8 minutes of the suite).
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="session")
def medium_study():
    """Big enough for a scANVI model to learn the sister types (tens of seconds to train)."""
    return make_demo_study(
        seed=11, n_reference_cells=3000, n_query_cells=400, n_genes=600, n_patients=4
    )


# Test helpers (fault_server, rules_info) live beside this file.
sys.path.insert(0, str(Path(__file__).parent))


# A small demo: the same config for every test that compares runs.
SMALL = {
    "demo": {"reference_cells": 1500, "query_cells": 600, "genes": 400},
    "training": {"n_top_genes": 300, "scvi_max_epochs": 15, "scanvi_max_epochs": 8},
    "surgery": {"max_epochs": 4},
    # The calls' ensemble reads the atlas's and the query's counts: the small runs take
    # that path end to end (the demo's own config keeps the default kNN vote).
    "calls": {"method": "ensemble"},
}


# The demo's first query as a config mapping (the form before the sample sheet, which
# config/config.yaml now names): tests that edit a query's keys edit this.
DEMO_QUERY = {
    "source": {
        "dir": "resources/synthetic/deposit",
        "files": {
            "matrix": "DEMO_sc_matrix.mtx.gz",
            "features": "DEMO_sc_features.tsv.gz",
            "barcodes": "DEMO_sc_barcodes.tsv.gz",
            "metadata": "DEMO_sc_metadata.csv.gz",
        },
    },
    "rename": {"patients": "Sample_ID"},
    "subset": {"Sample_ID": ["PA01", "PA02"]},
    "truth": "author_cell_type",
}


def with_demo_query(config: dict) -> dict:
    """``config`` with its queries replaced by the demo's first, as a config mapping."""
    import copy

    config["queries"] = {"demo": copy.deepcopy(DEMO_QUERY)}
    return config


def write_small_config(workdir: Path, name: str = "small.yaml", edit=None) -> str:
    """config/config.yaml made small (SMALL), optionally edited; returns its relative path."""
    import yaml

    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["demo"].update(SMALL["demo"])
    config["reference"]["training"].update(SMALL["training"])
    config["mapping"]["surgery"].update(SMALL["surgery"])
    config["mapping"].setdefault("calls", {}).update(SMALL["calls"])
    if edit:
        edit(config)
    (workdir / "config" / name).write_text(yaml.safe_dump(config))
    return f"config/{name}"


def run_snakemake(workdir, *args, check=True, timeout=900, env=None):
    """The real Snakemake CLI in ``workdir`` (2 cores)."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def run_benchmark_script(name: str, *args, timeout: int) -> None:
    """Run ``benchmarks/<name>`` with this Python; fail with the end of its output if it fails."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def run_python(script: str) -> str:
    """Run ``script`` in a fresh Python process that sees only the atlasmap library
    (numba's and the loggers' state start empty); its stdout, or fail with its output."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "workflow" / "scripts"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """The whole demo on the SMALL config, run once for every test that reads it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("small_run"))
    run_snakemake(workdir, "--configfile", write_small_config(workdir))
    return workdir


def assert_valid_figure(path: Path) -> None:
    """A PNG that PIL can read whole, or a PDF by its header."""
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            image.verify()
    else:
        assert path.read_bytes()[:5] == b"%PDF-", path


def rules_info() -> list[dict]:
    """Every rule of the workflow as tests/rules_info.py reports it (parsed by Snakemake)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "rules_info.py")],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def neighbour_recall(found, exact) -> float:
    """The share of each row's exact neighbours (``exact``: cells x k) in ``found``."""
    return float(sum(len(set(a) & set(b)) for a, b in zip(found, exact, strict=True)) / exact.size)
