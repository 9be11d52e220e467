"""The Dockerfile is what `snakemake --containerize` makes of the conda envs, unchanged.

It holds one conda env per workflow/envs/*.yaml, under /conda-envs/<hash of the
env file> (a pin file or post-deploy script beside it counts too), which is
where a run with a `containerized:` image and `--software-deployment-method
apptainer conda` looks for them. Edit an env, and the committed Dockerfile is
stale: regenerate it (the failure says how).

Snakemake asks conda only for its platform (to find `<env>.<platform>.pin.txt`)
and version. No conda is installed here, so a stand-in answers: linux-64, the
platform of the image (FROM condaforge/miniforge3). The output names env files
relative to the working directory and hashes their contents only, so the copy
made here, elsewhere on disk, must give the same file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
REGENERATE = (
    "regenerate it in the repository root: `snakemake --containerize > Dockerfile` "
    "(with conda on PATH, on linux-64), or without conda: "
    "`.venv/bin/python tests/unit/test_container.py > Dockerfile`"
)
# What `conda` answers Snakemake: the image's platform, a version it accepts.
CONDA_STAND_IN = """#!/bin/sh
case "$*" in
  "info --json") echo '{"conda_prefix": "/opt/conda", "platform": "linux-64"}' ;;
  "--version") echo "conda 25.11.0" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "conda stand-in (tests/unit/test_container.py): no answer to: conda $*" >&2; exit 1 ;;
esac
"""


def containerize(workdir: Path, scratch: Path) -> str:
    """What `snakemake --containerize` prints in ``workdir``, conda answered by the stand-in."""
    bindir = scratch / "conda-stand-in"
    bindir.mkdir(parents=True, exist_ok=True)
    conda = bindir / "conda"
    conda.write_text(CONDA_STAND_IN)
    conda.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--containerize"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"snakemake --containerize failed:\n{result.stderr}"
    return result.stdout


def test_the_dockerfile_is_what_snakemake_containerize_makes_of_the_envs(tmp_path):
    clone = tmp_path / "clone"
    for name in ("workflow", "config"):  # what the DAG and the envs come from
        shutil.copytree(REPO / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    made = containerize(clone, tmp_path)
    assert made.startswith("FROM condaforge/miniforge3"), made[:200]
    for env_file in sorted((REPO / "workflow" / "envs").glob("*.yaml")):
        assert f"COPY workflow/envs/{env_file.name} /conda-envs/" in made, env_file.name
    assert DOCKERFILE.is_file(), f"no Dockerfile: {REGENERATE}"
    assert DOCKERFILE.read_text() == made, f"the Dockerfile is stale: {REGENERATE}"


if __name__ == "__main__":  # .venv/bin/python tests/unit/test_container.py > Dockerfile
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        sys.stdout.write(containerize(REPO, Path(scratch)))
