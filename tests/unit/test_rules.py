"""Every rule logs and runs a script in a conda env (the envs' contents: test_envs.py)."""

import fnmatch
import re
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


def test_the_fetching_rules_run_where_the_network_is(rules):
    local = {r["name"] for r in rules if r["local"]}
    assert local == {"download_query", "obtain_atlas", "fetch_model_package"}


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


def readme_rule_table() -> dict[str, list[str]]:
    """Rule -> the paths (in backticks) of its row in the README's rule table."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and re.fullmatch(r"(`\w+`(, )?)+", cells[0]):
            for name in re.findall(r"`(\w+)`", cells[0]):
                rows[name] = re.findall(r"`([^`]+)`", cells[1])
    return rows


def readme_patterns(paths: list[str]) -> list[str]:
    """The README's paths as patterns: a bare file name lives in the folder of the path
    before it; {png,pdf} alternatives expanded."""
    patterns, folder = [], ""
    for path in paths:
        path = path if "/" in path else folder + path
        folder = path.rsplit("/", 1)[0] + "/"
        if match := re.search(r"\{(\w+(?:,\w+)+)\}", path):
            patterns += [path.replace(match[0], alt) for alt in match[1].split(",")]
        else:
            patterns.append(path)
    return patterns


def test_readme_rule_table_lists_every_rule_with_its_outputs(rules):
    table = readme_rule_table()
    assert set(table) == {r["name"] for r in rules}
    for rule in rules:
        patterns = readme_patterns(table[rule["name"]])
        if not patterns:  # the row names configured paths in words
            continue
        for output in rule["outputs"]:
            output = re.sub(r"\{(\w+),[^}]*\}", r"{\1}", output)  # wildcard constraints off
            assert any(
                output == p.rstrip("/")
                or fnmatch.fnmatchcase(output, p)
                or (p.endswith("/") and output.startswith(p))
                for p in patterns
            ), f"README's row of {rule['name']} does not name {output} ({patterns})"


def caption_params(caption: Path) -> set[str]:
    """The rule params a report caption reads (``snakemake.params.<name>``)."""
    return set(re.findall(r"snakemake\.params\.(\w+)", caption.read_text()))


def test_every_report_caption_reads_params_its_rule_has(rules):
    """A caption is rendered only by `snakemake --report`, after the run: one that reads a
    param its rule no longer has breaks the report, not the run."""
    checked = 0
    for rule in rules:
        for caption in rule["captions"]:
            path = Path(caption)
            path = path if path.is_absolute() else Path(rule["basedir"], path)
            missing = caption_params(path) - set(rule["params"])
            assert not missing, f"{path.name} ({rule['name']}) reads params {missing}"
            checked += bool(caption_params(path))
    assert checked >= 5
