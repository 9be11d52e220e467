"""A query split into shards by sample, and the shards' outputs gathered back: the plan,
the rows each shard reads, and the gathers that restore the query's own order."""

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from atlasmap.contract import shards_in_plan
from atlasmap.errors import AtlasmapInputError
from atlasmap.io import CsrBlocks, write_h5ad
from atlasmap.scatter import (
    gather_mapping_qc,
    gather_tables,
    merged_row_blocks,
    plan_shards,
    read_rows,
    shard_rows,
)


def samples_of(sizes: dict[str, int], seed: int = 0) -> pd.Series:
    """Cells of each sample, interleaved in file order as a real query's may be."""
    values = np.concatenate([[name] * n for name, n in sizes.items()])
    return pd.Series(np.random.default_rng(seed).permutation(values))


def test_whole_samples_are_packed_up_to_the_shard_size():
    plan = plan_shards(samples_of({"A": 30, "B": 50, "C": 20, "D": 90}), max_cells=100)
    shards = plan.groupby("shard")["sample"].apply(list).to_dict()
    assert shards == {"shard001": ["A", "B", "C"], "shard002": ["D"]}
    assert (plan["chunks"] == 1).all()
    assert plan.groupby("shard")["cells"].sum().max() <= 100


def test_a_sample_larger_than_a_shard_is_cut_into_chunks_of_its_own():
    samples = samples_of({"A": 10, "BIG": 250, "C": 10})
    plan = plan_shards(samples, max_cells=100)
    big = plan[plan["sample"] == "BIG"]
    assert list(big["cells"]) == [84, 83, 83] and big["shard"].nunique() == 3
    # No chunk shares its shard with another sample.
    assert (plan[plan["shard"].isin(big["shard"])]["sample"] == "BIG").all()
    rows = [shard_rows(samples, plan, shard) for shard in dict.fromkeys(plan["shard"])]
    every = np.sort(np.concatenate(rows))
    assert np.array_equal(every, np.arange(len(samples))), "each cell in exactly one shard"
    assert all(np.all(np.diff(r) > 0) for r in rows), "a shard's rows in file order"


def test_a_query_smaller_than_a_shard_is_one_shard(tmp_path):
    plan = plan_shards(samples_of({"PA01": 200, "PA02": 180}), max_cells=100_000)
    assert list(plan["shard"]) == ["shard001", "shard001"]
    path = tmp_path / "shards.tsv"
    plan.to_csv(path, sep="\t", index=False)
    assert shards_in_plan(path) == ["shard001"]  # what the workflow plans jobs from


def test_a_shard_the_plan_lacks_is_refused_by_name():
    samples = samples_of({"A": 5})
    with pytest.raises(AtlasmapInputError, match="no shard 'shard009'"):
        shard_rows(samples, plan_shards(samples, 10), "shard009")


def test_a_shard_reads_its_rows_alone_and_keeps_the_counts_layer_one_matrix(tmp_path):
    counts = sp.random(40, 12, density=0.3, format="csr", dtype=np.float32, random_state=1)
    obs = pd.DataFrame({"Sample_ID": ["A", "B"] * 20}, index=[f"c{i}" for i in range(40)])
    query = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(12)]))
    query.layers["counts"] = query.X
    path = tmp_path / "query.h5ad"
    write_h5ad(query, path)
    rows = np.flatnonzero(obs["Sample_ID"] == "B")
    shard = read_rows(path, rows)
    assert list(shard.obs_names) == list(obs.index[rows])
    assert (counts[rows] != shard.X).nnz == 0
    assert shard.layers["counts"] is shard.X


def test_the_gathered_table_is_in_the_query_order_and_refuses_foreign_cells(tmp_path):
    barcodes = pd.Index([f"c{i}" for i in range(6)])
    paths = []
    for name, cells in (("one", ["c4", "c0", "c2"]), ("two", ["c1", "c5", "c3"])):
        paths.append(tmp_path / f"{name}.tsv")
        pd.DataFrame({"barcode": cells, "x": range(3)}).to_csv(paths[-1], sep="\t", index=False)
    table = gather_tables(paths, barcodes)
    assert list(table["barcode"]) == list(barcodes)
    with pytest.raises(AtlasmapInputError, match="another split"):
        gather_tables(paths, pd.Index([*barcodes[:5], "elsewhere"]))


def test_a_chunked_samples_qc_is_one_row_again(tmp_path):
    parts = [
        pd.DataFrame({"sample": ["A", "all"], "cells": [10, 10], "latent_shift_mean": [1.0, 1.0]}),
        pd.DataFrame({"sample": ["A", "all"], "cells": [30, 30], "latent_shift_mean": [2.0, 2.0]}),
        pd.DataFrame({"sample": ["B", "all"], "cells": [20, 20], "latent_shift_mean": [0.5, 0.5]}),
    ]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"qc_{i}.tsv")
        part.to_csv(paths[-1], sep="\t", index=False)
    qc = gather_mapping_qc(paths).set_index("sample")
    assert list(qc.index) == ["A", "B", "all"]
    assert qc.loc["A", "cells"] == 40 and qc.loc["A", "latent_shift_mean"] == 1.75
    assert qc.loc["all", "cells"] == 60
    assert qc.loc["all", "latent_shift_mean"] == round((10 + 60 + 10) / 60, 4)


def test_rows_of_several_files_stream_into_one_order(tmp_path):
    full = sp.random(23, 7, density=0.4, format="csr", dtype=np.float32, random_state=3)
    order = np.random.default_rng(0).permutation(23)
    positions = [np.sort(order[:9]), np.sort(order[9:])]
    paths = []
    for i, rows in enumerate(positions):
        paths.append(tmp_path / f"part{i}.h5ad")
        write_h5ad(ad.AnnData(X=full[rows]), paths[-1])
    out = tmp_path / "merged.h5"
    with h5py.File(out, "w") as f:
        writer = CsrBlocks(f.create_group("X"), (23, 7), np.float32, full.nnz)
        for block in merged_row_blocks(paths, positions, rows_per_block=5):
            writer.append(block)
        writer.close()
    with h5py.File(out, "r") as f:
        merged = ad.io.read_elem(f["X"])
    assert (merged != full).nnz == 0


def test_a_shard_trains_with_as_many_steps_as_the_whole_query():
    """Surgery's mini-batches shrink with the shard's share of the query, so that an epoch
    takes as many steps, each holding as many cells of a sample, as mapped whole."""
    from atlasmap.scatter import shard_batch_size

    assert shard_batch_size(128, 100_000, 1_000_000) == 13
    assert shard_batch_size(128, 150, 300) == 64
    assert shard_batch_size(128, 300, 300) == 128  # one shard: the whole query's own
    assert shard_batch_size(128, 10, 1_000_000) == 2  # never a mini-batch of one cell
    for shard, query in ((100_000, 1_000_000), (150, 300), (20_000, 200_000)):
        steps_whole = query / 128
        steps_shard = shard / shard_batch_size(128, shard, query)
        assert abs(steps_shard / steps_whole - 1) < 0.05
