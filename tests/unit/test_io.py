"""Outputs appear whole or not at all."""

import gzip
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from atlasmap.io import atomic_path, copy_as_gzip, read_h5ad, write_h5ad


def test_atomic_path_moves_into_place_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("whole")
        assert not target.exists()
    assert target.read_text() == "whole"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_path_leaves_nothing_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_copy_as_gzip_compresses_plain_files_and_copies_gzip_ones(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("a\tb\n")
    copy_as_gzip(plain, tmp_path / "a.tsv.gz")
    assert gzip.decompress((tmp_path / "a.tsv.gz").read_bytes()) == b"a\tb\n"
    copy_as_gzip(tmp_path / "a.tsv.gz", tmp_path / "b.tsv.gz")
    assert (tmp_path / "b.tsv.gz").read_bytes() == (tmp_path / "a.tsv.gz").read_bytes()


def test_counts_that_are_x_are_stored_once_and_read_back_by_any_reader(tmp_path):
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from atlasmap.io import read_h5ad, write_h5ad

    counts = sp.random(300, 200, density=0.3, format="csr", dtype=np.float32, random_state=0)
    counts.data = np.ceil(counts.data * 10)
    obs = pd.DataFrame({"Sample_ID": ["PA01", "PA02"] * 150}, index=[f"c{i}" for i in range(300)])
    adata = ad.AnnData(X=counts, obs=obs)
    adata.layers["counts"] = adata.X
    adata.layers["other"] = counts * 2
    write_h5ad(adata, tmp_path / "shared.h5ad")
    assert adata.layers["counts"] is adata.X  # the caller's object is left as it was
    with h5py.File(tmp_path / "shared.h5ad") as f:
        assert f["layers"].get("counts", getlink=True).path == "/X"
    twice = adata.copy()  # the same data, counts a copy of X: written twice
    write_h5ad(twice, tmp_path / "twice.h5ad")
    assert (tmp_path / "shared.h5ad").stat().st_size < 0.8 * (
        tmp_path / "twice.h5ad"
    ).stat().st_size
    ours = read_h5ad(tmp_path / "shared.h5ad")
    assert ours.layers["counts"] is ours.X
    anndatas = ad.read_h5ad(tmp_path / "shared.h5ad")  # any anndata reader follows the link
    for read in (ours, anndatas, ad.read_h5ad(tmp_path / "shared.h5ad", backed="r")):
        assert (sp.csr_matrix(read.layers["counts"][:]) != counts).nnz == 0
        assert (sp.csr_matrix(read.layers["other"][:]) != counts * 2).nnz == 0
        assert list(read.obs["Sample_ID"]) == list(obs["Sample_ID"])


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_an_output_gets_the_umasks_mode_not_a_temporary_files(tmp_path, umask):
    before = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out.tsv") as tmp:
            tmp.write_text("whole")
    finally:
        os.umask(before)
    assert (tmp_path / "out.tsv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_reading_annotations_gives_obs_obsm_uns_as_stored_and_no_counts_or_graphs(tmp_path):
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from atlasmap.io import read_annotations, write_h5ad

    rng = np.random.default_rng(0)
    counts = sp.random(50, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {"source": pd.Categorical(["atlas"] * 30 + ["query"] * 20), "n": np.arange(50)},
            index=[f"cell{i}" for i in range(50)],
        ),
        obsm={"X_umap": rng.normal(size=(50, 2)), "X_latent": rng.normal(size=(50, 5))},
        obsp={"connectivities": sp.identity(50, format="csr")},
        uns={"atlasmap": {"labels_key": "cell_type"}},
    )
    adata.layers["counts"] = adata.X
    write_h5ad(adata, tmp_path / "a.h5ad")

    read = read_annotations(tmp_path / "a.h5ad", obsm=["X_umap", "absent"])
    pd.testing.assert_frame_equal(read.obs, adata.obs)
    assert list(read.obsm) == ["X_umap"]
    np.testing.assert_array_equal(read.obsm["X_umap"], adata.obsm["X_umap"])
    assert read.uns["atlasmap"] == {"labels_key": "cell_type"}
    assert read.X is None and not read.layers and not read.obsp
    assert list(read_annotations(tmp_path / "a.h5ad").obsm) == ["X_latent", "X_umap"]


def test_annotations_are_written_beside_counts_never_read(tmp_path):
    """neighbors_umap adds obs, obsm, obsp and uns to a million cells' file without
    holding its counts: the counts and var are the source file's, byte for byte."""
    import scipy.sparse as sp
    from atlasmap.io import read_annotations, write_beside_counts

    counts = sp.random(30, 8, density=0.3, format="csr", dtype=np.float32, random_state=0)
    source = ad.AnnData(X=counts, obs=pd.DataFrame(index=[f"c{i}" for i in range(30)]))
    source.var["gene_ids"] = [f"ENSG{i}" for i in range(8)]
    source.layers["counts"] = source.X
    write_h5ad(source, tmp_path / "embedded.h5ad")
    annotations = read_annotations(tmp_path / "embedded.h5ad")
    annotations.obs["call"] = pd.Categorical(["A", "B"] * 15)
    annotations.obsm["X_umap"] = np.ones((30, 2), dtype=np.float32)
    annotations.obsp["distances"] = sp.identity(30, format="csr")
    annotations.uns["neighbors"] = {"n_neighbors": 15}
    write_beside_counts(annotations, tmp_path / "embedded.h5ad", tmp_path / "mapped.h5ad")
    mapped = read_h5ad(tmp_path / "mapped.h5ad")
    assert (counts != mapped.X).nnz == 0 and mapped.layers["counts"] is mapped.X
    assert list(mapped.var["gene_ids"]) == list(source.var["gene_ids"])
    assert list(mapped.obs["call"]) == ["A", "B"] * 15
    assert mapped.obsm["X_umap"].shape == (30, 2) and "distances" in mapped.obsp
    assert mapped.uns["neighbors"]["n_neighbors"] == 15
