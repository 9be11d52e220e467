"""The workflow fetches a GEO-shaped deposit from a real (faulty) server and loads it."""

import gzip
import hashlib
import random

import anndata as ad
import pytest
import yaml
from atlasmap.demo import deposit_names, write_10x_deposit
from conftest import copy_workflow
from fault_server import CUT_BYTES, running_fault_server
from test_query_stages import snakemake

pytestmark = pytest.mark.workflow
ACCESSION = "GSE278688"


def test_geo_deposit_through_load_and_subset_despite_faults(tmp_path, small_study):
    files = deposit_names(f"{ACCESSION}_sc")
    deposit = tmp_path / "deposit"
    deposit.mkdir()
    write_10x_deposit(small_study.query, {role: deposit / name for role, name in files.items()})
    workdir = copy_workflow(tmp_path / "run")
    with running_fault_server() as server:
        modes = {"matrix": "cut-once", "metadata": "500-once", "features": "ok", "barcodes": "ok"}
        for role, name in files.items():
            server.serve(
                f"/geo/series/GSE278nnn/{ACCESSION}/suppl/{name}",
                (deposit / name).read_bytes(),
                modes[role],
            )
        config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
        config["queries"] = {
            "chen": {
                "source": {
                    "geo": ACCESSION,
                    "files": files,
                    "checksums": {
                        "matrix": "sha256:"
                        + hashlib.sha256((deposit / files["matrix"]).read_bytes()).hexdigest()
                    },
                },
                "rename": {"patients": "Sample_ID"},
                "subset": {"Sample_ID": ["PA01", "PA02"]},
            }
        }
        config["download"] = {
            "geo_mirror": f"{server.url}/geo",
            "retries": 3,
            "timeout": 5,
            "backoff": 0.05,
        }
        (workdir / "config" / "geo.yaml").write_text(yaml.safe_dump(config))
        snakemake(workdir, "results/chen/query/subset.h5ad", "--configfile", "config/geo.yaml")
        cut = server.requests[f"/geo/series/GSE278nnn/{ACCESSION}/suppl/{files['matrix']}"]
        failed = server.requests[f"/geo/series/GSE278nnn/{ACCESSION}/suppl/{files['metadata']}"]
    assert cut == 2 and failed == 2  # each fault was met and overcome
    subset = ad.read_h5ad(workdir / "results" / "chen" / "query" / "subset.h5ad")
    meta = small_study.query.obs
    assert list(subset.obs_names) == list(meta.index[meta["patients"].isin(["PA01", "PA02"])])
    log = (workdir / "logs" / "download_query" / "chen_matrix.mtx.gz.log").read_text()
    assert "resuming at byte" in log and "sha256 checksum verified" in log
    assert (workdir / "resources" / "queries" / "chen" / "matrix.mtx.gz").read_bytes() == (
        deposit / files["matrix"]
    ).read_bytes()


def test_a_failed_download_job_is_resumed_by_the_rerun(tmp_path):
    """Every try of the first run is cut, Snakemake's retry too; the rerun asks for the rest."""
    body = gzip.compress(random.Random(0).randbytes(1_000_000), mtime=0)
    name = f"{ACCESSION}_sc_matrix.mtx.gz"
    path = f"/geo/series/GSE278nnn/{ACCESSION}/suppl/{name}"
    workdir = copy_workflow(tmp_path / "run")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    target = "resources/queries/chen/matrix.mtx.gz"
    with running_fault_server() as server:
        files = deposit_names(f"{ACCESSION}_sc")
        config["queries"] = {"chen": {"source": {"geo": ACCESSION, "files": files}}}
        config["download"] = {
            "geo_mirror": f"{server.url}/geo",
            "retries": 1,
            "timeout": 5,
            "backoff": 0.05,
        }
        (workdir / "config" / "geo.yaml").write_text(yaml.safe_dump(config))
        server.serve(path, body, "cut-range-always", etag='"v1"')
        args = (target, "--configfile", "config/geo.yaml")
        failed = snakemake(workdir, *args, "--retries", "1", check=False)
        assert failed.returncode != 0
        assert not (workdir / target).exists()
        held = workdir / "resources" / "queries" / "chen" / ".partial" / "matrix.mtx.gz.part"
        assert held.stat().st_size == 4 * CUT_BYTES  # 2 jobs x 2 tries, each resumed
        server.serve(path, body, "ok", etag='"v1"', if_range=True)
        snakemake(workdir, *args)
        sent = server.sent[path]
    assert (workdir / target).read_bytes() == body
    assert sent == len(body) < 2 * len(body)
    log = (workdir / "logs" / "download_query" / "chen_matrix.mtx.gz.log").read_text()
    assert f"resuming at byte {4 * CUT_BYTES}" in log
    assert not held.exists()
