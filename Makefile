# The two commands of the README, and the checks behind them.
# Both create (once) and reuse .venv with the packages pinned in requirements.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch goes in first, at the pin of requirements.txt: installed later as a
# dependency of scvi-tools, pip would pick a multi-GB CUDA build.
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)

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
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
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
