"""The user's own atlas and saved model are inputs only: no rerun can delete them.

Snakemake deletes a job's outputs before it runs the job (``snakemake -F``, a rule
whose code changed); a rule whose output was the user's atlas or model folder
deleted them that way.
"""

import hashlib
import shutil

import pytest
from conftest import copy_workflow, run_snakemake, write_small_config

pytestmark = pytest.mark.workflow


def digests(folder):
    return {
        path.relative_to(folder): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_forced_rerun_leaves_the_users_atlas_and_model_as_they_were(small_run, tmp_path):
    user = tmp_path / "user"
    shutil.copytree(
        small_run / "results" / "references" / "default" / "scanvi_model", user / "model"
    )
    shutil.copy2(small_run / "resources" / "synthetic" / "atlas.h5ad", user / "atlas.h5ad")
    before = digests(user)
    workdir = copy_workflow(tmp_path / "run")
    config = write_small_config(
        workdir,
        edit=lambda c: c["reference"].update(
            atlas=str(user / "atlas.h5ad"), model=str(user / "model")
        ),
    )
    plan = run_snakemake(workdir, "-n", "-F", "--configfile", config).stdout
    assert "obtain_atlas" not in plan and "fetch_model_package" not in plan
    assert "train_reference" not in plan  # the saved model is used as it is
    # A real forced run of the job that reads both.
    run_snakemake(workdir, "-F", "--configfile", config, "--until", "embed_reference")
    assert (workdir / "results" / "references" / "default" / "embedded_atlas.h5ad").is_file()
    assert digests(user) == before


@pytest.mark.parametrize(
    "key, name, said_too",
    [
        (
            "atlas",
            "atlas.h5ad",
            [
                "the reference atlas is not there (config key reference.atlas)",
                "reference.atlas_url",  # and how to have it fetched
            ],
        ),
        (
            "model",
            "model",
            ["no saved scvi-tools model there (model.pt; config key reference.model)"],
        ),
    ],
)
def test_a_missing_atlas_or_model_stops_the_plan_naming_it_and_the_config_key(
    tmp_path, key, name, said_too
):
    workdir = copy_workflow(tmp_path / "run")
    missing = tmp_path / "nowhere" / name
    config = write_small_config(workdir, edit=lambda c: c["reference"].update({key: str(missing)}))
    result = run_snakemake(workdir, "-n", "--configfile", config, check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert f"{missing}: {said_too[0]}" in said
    for words in said_too[1:]:
        assert words in said


def test_an_atlas_from_a_url_is_fetched_by_obtain_atlas(tmp_path):
    workdir = copy_workflow(tmp_path / "run")
    fetched = tmp_path / "fetched" / "atlas.h5ad"
    config = write_small_config(
        workdir,
        edit=lambda c: c["reference"].update(
            atlas=str(fetched), atlas_url="https://example.org/atlas.h5ad"
        ),
    )
    plan = run_snakemake(workdir, "-n", "--configfile", config).stdout
    assert plan.count("rule obtain_atlas:") == 1
    assert f"output: {fetched}" in plan
