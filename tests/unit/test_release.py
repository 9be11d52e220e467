"""A release number means one thing everywhere it is written, and the install is honest."""

import re
import shutil
import subprocess
import sys
import tomllib

import atlasmap
from conftest import REPO


def test_the_version_agrees_everywhere_it_is_written():
    version = atlasmap.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == version
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == version, "CHANGELOG.md's newest release"
    assert f"This is atlasmap {version}" in (REPO / "README.md").read_text()
    catalog = (REPO / ".snakemake-workflow-catalog.yml").read_text()
    assert f"# release: v{version}" in catalog


def make_dry_run(*args) -> str:
    """The commands `make` would run to build the venv (none is run)."""
    return subprocess.run(
        ["make", "-n", "-B", "-f", str(REPO / "Makefile"), *args, ".venv/.installed"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_torch_comes_from_pytorchs_cpu_index_unless_told_otherwise():
    default = make_dry_run()
    torch_line = next(line for line in default.splitlines() if '"torch==' in line)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in torch_line
    gpu = make_dry_run("TORCH_INDEX=https://download.pytorch.org/whl/cu126")
    assert "--extra-index-url https://download.pytorch.org/whl/cu126" in gpu
    pypi = make_dry_run("TORCH_INDEX=")
    assert "index-url" not in next(line for line in pypi.splitlines() if '"torch==' in line)


def test_another_python_is_refused_before_anything_is_installed(tmp_path):
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    done = subprocess.run(  # this Python is 3.11: ask for 3.12 to see the refusal
        ["make", f"PYTHON={sys.executable}", "PYTHON_VERSION=3.12", ".venv/.installed"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "atlasmap needs Python 3.12" in done.stderr, done.stderr
    assert f"{sys.executable} is 3.11" in done.stderr
    assert not (tmp_path / ".venv").exists()
