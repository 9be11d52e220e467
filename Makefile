# The two commands of the README, and the checks behind them.
# Both create (once) and reuse .venv with the packages pinned in requirements.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch goes in first, at the pin of requirements.txt, from TORCH_INDEX beside PyPI.
# PyPI's Linux wheel of torch is a CUDA build of several GB; PyTorch's CPU index
# (the default) has the same release as a CPU build (2.13.0+cpu), which pip prefers.
# For a GPU machine: make TORCH_INDEX=https://download.pytorch.org/whl/cu126 (or any
# CUDA index of PyTorch's), or TORCH_INDEX= for PyPI's own build. One retry: where the
# index is out of reach (a local wheel found instead), pip's five cost a minute.
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The pins are tested with Python 3.11 (pyproject.toml: requires-python).
PYTHON_VERSION := 3.11

.PHONY: demo test lint format clean slurm-profile

# profiles/local: all cores, commands and failed jobs' logs printed. Not named
# profiles/default, which Snakemake would read on every run, cluster runs too.
demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/local

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check workflow/Snakefile workflow/rules
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt workflow/Snakefile workflow/rules

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(v != "$(PYTHON_VERSION)" and f"atlasmap needs Python $(PYTHON_VERSION), the version its pins are tested with; $(PYTHON) is {v}. Name another: make PYTHON=python$(PYTHON_VERSION) ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --retries 1 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

# `snakemake --profile slurm` finds profiles by name in Snakemake's user config
# folder, $XDG_CONFIG_HOME/snakemake (~/.config/snakemake when that is unset):
# link this repository's profile there (re-run after moving the clone).
SNAKEMAKE_PROFILES ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
slurm-profile:
	mkdir -p $(SNAKEMAKE_PROFILES)
	ln -sfn $(CURDIR)/profiles/slurm $(SNAKEMAKE_PROFILES)/slurm
	@echo "installed: snakemake --profile slurm  ->  $(CURDIR)/profiles/slurm"

clean:
	rm -rf results resources logs .snakemake report.html
