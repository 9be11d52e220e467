"""Shared fixtures: a small demo study made by the project itself, written as deposits."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
from atlasmap.demo import make_demo_study, write_10x_deposit
from atlasmap.query import DEPOSIT_FILES

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
    """Copy what a user clones (Snakefile, config, workflow, profiles) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config", "workflow", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
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
