"""Queries from a sample sheet and several references, planned by the real Snakemake."""

import re

import pytest
import yaml
from conftest import copy_workflow, run_snakemake, with_demo_query

pytestmark = pytest.mark.workflow

SHEET_HEADER = "name\tformat\tpath\tmetadata\tsample_column\tsubset\ttruth\treference\tcounts_layer"


def job_counts(output: str) -> dict[str, int]:
    """Rule -> planned jobs, from a dry run's job stats table."""
    table = output[output.index("Job stats:") :].split("total")[0]
    return {
        match[1]: int(match[2]) for match in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
    }


def planned_outputs(output: str) -> set[str]:
    return {
        path
        for line in output.splitlines()
        if line.strip().startswith("output:")
        for path in line.split(":", 1)[1].replace(",", " ").split()
    }


def write_config(workdir, config, name):
    (workdir / "config" / name).write_text(yaml.safe_dump(config))
    return f"config/{name}"


def test_a_config_in_todays_form_plans_the_same_jobs_as_its_sheet_row(tmp_path):
    """The YAML form keeps working: the demo's first query as a config mapping plans
    exactly the jobs (and files) of the same query as one row of a sheet."""
    workdir = copy_workflow(tmp_path)
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    todays = write_config(workdir, with_demo_query(dict(demo)), "todays.yaml")
    rows = (workdir / "config" / "queries.tsv").read_text().splitlines()
    (workdir / "config" / "first.tsv").write_text("\n".join(rows[:2]) + "\n")
    sheet = write_config(workdir, {**demo, "queries": "config/first.tsv"}, "sheet.yaml")

    by_yaml = run_snakemake(workdir, "-n", "--configfile", todays).stdout
    by_sheet = run_snakemake(workdir, "-n", "--configfile", sheet).stdout
    assert job_counts(by_yaml) == job_counts(by_sheet)
    assert planned_outputs(by_yaml) == planned_outputs(by_sheet)
    counts = job_counts(by_yaml)
    assert counts["load_query"] == 1 and counts["map_query"] == 2
    assert counts["train_reference"] == 1 and counts["summarize_queries"] == 1
    outputs = planned_outputs(by_yaml)
    assert "results/references/default/scanvi_model" in outputs
    assert "results/demo/surgery/predictions.tsv" in outputs
    assert "results/summary.tsv" in outputs


def sheet_with(workdir, *rows):
    (workdir / "config" / "bad.tsv").write_text("\n".join([SHEET_HEADER, *rows]) + "\n")
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    return write_config(workdir, {**demo, "queries": "config/bad.tsv"}, "bad.yaml")


DEMO_ROW = "demo\t10x_mtx\tresources/synthetic/deposit/DEMO_sc\t\tpatients\tPA01\t\t\t"


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        (
            [DEMO_ROW, DEMO_ROW],
            ["config/bad.tsv, line 3 (query demo), column name", "also the name on"],
        ),
        (
            [DEMO_ROW, "mine\th5ad\tdata/not_there.h5ad\t\t\t\t\t\t"],
            ["config/bad.tsv, line 3, column path: data/not_there.h5ad is not there"],
        ),
        (
            [DEMO_ROW.replace("\t\t\t", "\t\tliver\t", 1)],
            ["config/bad.tsv, line 2 (query demo), column reference", "'liver'"],
        ),
        (
            ["mine\tloom\tdata/x.loom\t\t\t\t\t\t"],
            ["config/bad.tsv, line 2 (query mine), column format", "'loom'"],
        ),
    ],
    ids=["duplicate name", "path not there", "unknown reference", "unknown format"],
)
def test_a_sheet_mistake_stops_the_plan_naming_the_sheet_line_and_column(tmp_path, rows, said):
    workdir = copy_workflow(tmp_path)
    config = sheet_with(workdir, *rows)
    result = run_snakemake(workdir, "--configfile", config, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    for part in said:
        assert part in text, text[-3000:]
    # Refused before any job: nothing written.
    assert not (workdir / "resources").exists() and not (workdir / "results").exists()


def test_reference_and_references_together_are_refused(tmp_path):
    workdir = copy_workflow(tmp_path)
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config = write_config(
        workdir, {**demo, "references": {"other": demo["reference"]}}, "both.yaml"
    )
    result = run_snakemake(workdir, "-n", "--configfile", config, check=False)
    assert result.returncode != 0
    assert "gives both `reference` and `references`" in result.stdout + result.stderr


def test_with_several_references_a_query_must_name_one(tmp_path):
    workdir = copy_workflow(tmp_path)
    demo = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    reference = demo.pop("reference")
    config = write_config(
        workdir,
        {**with_demo_query(demo), "references": {"fine": reference, "coarse": reference}},
        "two.yaml",
    )
    result = run_snakemake(workdir, "-n", "--configfile", config, check=False)
    assert result.returncode != 0
    assert "config key queries.demo: the query names no reference" in (
        result.stdout + result.stderr
    )
