"""Every rule logs and runs a script in a conda env (the envs' contents: test_envs.py)."""

from pathlib import Path

import pytest
from conftest import REPO, rules_info


@pytest.fixture(scope="module")
def rules():
    return [r for r in rules_info() if r["outputs"]]  # "all" only gathers targets


def pip_pins():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower()] = version or None
    return pins


def test_the_workflow_has_the_query_chain(rules):
    names = {r["name"] for r in rules}
    assert {"generate_demo", "download_query", "load_query", "subset_query"} <= names


def test_every_rule_has_log_conda_and_an_existing_script(rules):
    for rule in rules:
        assert rule["log"], f"rule {rule['name']} has no log"
        assert rule["conda"], f"rule {rule['name']} has no conda env"
        assert rule["script"], f"rule {rule['name']} runs no script"
        base = Path(rule["basedir"])
        assert (base / rule["conda"]).is_file(), f"{rule['name']}: {rule['conda']} missing"
        assert (base / rule["script"]).is_file(), f"{rule['name']}: {rule['script']} missing"
        for log in rule["log"]:
            assert log.startswith(f"logs/{rule['name']}/"), f"{rule['name']} logs to {log}"
        # Wall time and peak memory of every job, for benchmarks/.
        assert rule["benchmark"], f"rule {rule['name']} has no benchmark"
        assert rule["benchmark"].startswith(f"logs/{rule['name']}/")


def test_every_env_file_is_used(rules):
    used = {Path(r["basedir"], r["conda"]).resolve() for r in rules}
    for env_file in (REPO / "workflow" / "envs").glob("*.yaml"):
        assert env_file.resolve() in used, f"{env_file.name} is used by no rule"


def test_every_requirement_is_pinned():
    unpinned = [name for name, version in pip_pins().items() if not version]
    assert not unpinned, f"requirements.txt leaves {unpinned} unpinned"
