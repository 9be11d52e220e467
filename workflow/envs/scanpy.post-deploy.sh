#!/usr/bin/env bash
# Run by Snakemake in the scanpy env once it is made. sklearn-ann is not on conda-forge:
# the env's `pip:` section installs it; an env made from a lock instead
# (scanpy.<platform>.pin.txt, by `snakedeploy pin-conda-envs`) lists conda packages
# only, and gets it here. At requirements.txt's version (tests/unit/test_envs.py).
set -euo pipefail
python -m pip install --no-deps "sklearn-ann==0.1.4"
