"""Style is part of the build: ruff for Python, snakefmt for Snakemake files."""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent


def run(*args):
    tool = shutil.which(args[0], path=str(BIN)) or args[0]
    return subprocess.run([tool, *args[1:]], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_is_ruff_formatted():
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_files_are_snakefmt_formatted():
    result = run("snakefmt", "--check", "workflow/Snakefile", "workflow/rules")
    assert result.returncode == 0, result.stdout + result.stderr
