"""A query split into shards by sample, each mapped, called and projected by jobs of its
own, and the shards' outputs gathered back into one query's files (mapping.scatter).

A shard is a set of whole samples, packed in sample order up to ``max_cells``; a
sample larger than that is cut into near-equal chunks in file order, each its own
shard. Whole samples keep the per-sample parts of the calls (the smoothing among a
batch's own cells, each batch's novelty shift) as they are unscattered; a chunk
smooths among its own cells only.

The shard jobs read their rows of the query file and nothing else of it; the gather
jobs write the query's files in the query's own cell order, streaming the count
matrices block by block rather than holding them whole.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .contract import (
    EMBEDDED_ATLAS_KEY,
    EMBEDDING_KEY,
    PROBABILITIES_KEY,
    SOURCE_COLUMN,
)
from .errors import AtlasmapInputError

log = logging.getLogger(__name__)

PLAN_COLUMNS = ["shard", "sample", "chunk", "chunks", "cells"]
# Rows of a count matrix read or written at once by the gathers.
BLOCK_ROWS = 50_000


def plan_shards(samples: pd.Series, max_cells: int) -> pd.DataFrame:
    """The shards of a query whose cells' samples are ``samples``: one row per (shard,
    sample, chunk), columns :data:`PLAN_COLUMNS`. Samples in sorted order, whole ones
    packed into a shard while it holds at most ``max_cells``; a sample larger than
    ``max_cells`` cut into ``ceil(cells / max_cells)`` chunks, a shard each."""
    if max_cells < 1:
        raise AtlasmapInputError(f"mapping.scatter.max_cells must be positive, not {max_cells}")
    counts = samples.astype(str).value_counts().sort_index()
    pieces = []  # (sample, chunk, chunks, cells), in the order they are packed
    for sample, n in counts.items():
        chunks = -(-int(n) // max_cells)
        sizes = [len(part) for part in np.array_split(np.arange(n), chunks)]
        pieces += [(sample, i, chunks, size) for i, size in enumerate(sizes)]
    rows, shard, held = [], 0, 0
    for sample, chunk, chunks, cells in pieces:
        if rows and (chunks > 1 or held + cells > max_cells or rows[-1][3] > 1):
            shard, held = shard + 1, 0
        rows.append((shard, sample, chunk, chunks, cells))
        held += cells
    width = max(3, len(str(shard + 1)))
    return pd.DataFrame(
        [(f"shard{s + 1:0{width}d}", *rest) for s, *rest in rows], columns=PLAN_COLUMNS
    )


def describe_plan(plan: pd.DataFrame, max_cells: int) -> str:
    """One line for the log: how the query was split, and why."""
    shards = plan.groupby("shard", sort=False)["cells"].sum()
    chunked = sorted(set(plan.loc[plan["chunks"] > 1, "sample"]))
    line = (
        f"{int(shards.sum()):,} cells of {plan['sample'].nunique()} samples in "
        f"{len(shards)} shards of at most {max_cells:,} cells (largest {int(shards.max()):,})"
    )
    if chunked:
        line += f"; samples larger than a shard, cut into chunks: {', '.join(chunked)}"
    return line


def shard_names(plan: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(plan["shard"]))


def shard_rows(samples: pd.Series, plan: pd.DataFrame, shard: str) -> np.ndarray:
    """Positions (in file order) of the query cells of ``shard``."""
    values = samples.astype(str).to_numpy()
    mine = plan[plan["shard"] == shard]
    if mine.empty:
        raise AtlasmapInputError(f"no shard {shard!r} in the plan (shards {shard_names(plan)})")
    rows = []
    for sample, chunk, chunks in mine[["sample", "chunk", "chunks"]].itertuples(index=False):
        cells = np.flatnonzero(values == str(sample))
        rows.append(np.array_split(cells, int(chunks))[int(chunk)])
    return np.sort(np.concatenate(rows))


def read_plan(path: str | os.PathLike) -> pd.DataFrame:
    plan = pd.read_csv(path, sep="\t", dtype={"shard": str, "sample": str})
    missing = set(PLAN_COLUMNS) - set(plan.columns)
    if missing:
        raise AtlasmapInputError(f"{path}: not a shard plan (no column {sorted(missing)})")
    return plan


def sample_column(obs: pd.DataFrame, batch_key: str, where: str) -> pd.Series:
    if batch_key not in obs.columns:
        raise AtlasmapInputError(
            f"{where}: no column {batch_key!r} (reference.batch_key) to scatter the query by "
            f"sample; its columns are {list(obs.columns)}"
        )
    return obs[batch_key]


def plan_shards_files(*, query_path, plan_path, batch_key: str, max_cells: int) -> pd.DataFrame:
    """The shard plan of the query file (its obs alone is read) to ``plan_path``."""
    from .io import atomic_path, read_annotations

    obs = read_annotations(query_path, obsm=(), uns=False).obs
    plan = plan_shards(sample_column(obs, batch_key, str(query_path)), max_cells)
    log.info("scatter by sample: %s", describe_plan(plan, max_cells))
    for shard, part in plan.groupby("shard", sort=False):
        pieces = (
            f"{sample} ({cells:,}{f', chunk {chunk + 1} of {chunks}' if chunks > 1 else ''})"
            for sample, chunk, chunks, cells in part[
                ["sample", "chunk", "chunks", "cells"]
            ].itertuples(index=False)
        )
        log.info("%s: %s", shard, ", ".join(pieces))
    with atomic_path(plan_path) as tmp:
        plan.to_csv(tmp, sep="\t", index=False)
    return plan


def _linked_to_x(group, key: str) -> bool:
    return getattr(group.get(key, getlink=True), "path", None) == "/X"


def read_rows(path: str | os.PathLike, rows: np.ndarray) -> ad.AnnData:
    """Rows ``rows`` (sorted positions) of an h5ad file: obs, var, X, layers and obsm,
    read for those rows alone (anndata's ``backed`` mode would load every layer whole).
    A layer linked to ``/X`` stays one matrix with ``X``."""
    from anndata.io import read_elem, sparse_dataset

    def part(element):
        if isinstance(element, h5py.Group) and element.attrs.get("encoding-type", "").endswith(
            "_matrix"
        ):
            return sparse_dataset(element)[rows]
        if isinstance(element, h5py.Dataset):
            return element[rows] if len(rows) else element[:0]
        return read_elem(element)[rows]

    with h5py.File(path, "r") as f:
        obs = read_elem(f["obs"]).iloc[rows]
        x = part(f["X"]) if "X" in f else None
        layers = f.get("layers", {})
        linked = [key for key in layers if _linked_to_x(layers, key)]
        adata = ad.AnnData(
            X=x,
            obs=obs,
            var=read_elem(f["var"]),
            layers={key: part(layers[key]) for key in layers if key not in linked},
            obsm={key: part(value) for key, value in f.get("obsm", {}).items()},
            uns=read_elem(f["uns"]) if "uns" in f else None,
        )
    for key in linked:
        adata.layers[key] = adata.X
    return adata


def read_shard(query_path, plan_path, shard: str, batch_key: str) -> ad.AnnData:
    """The query cells of ``shard``, read from the query file alone."""
    from .io import read_annotations

    obs = read_annotations(query_path, obsm=(), uns=False).obs
    rows = shard_rows(sample_column(obs, batch_key, str(query_path)), read_plan(plan_path), shard)
    shard_data = read_rows(query_path, rows)
    log.info("shard %s: %d of the query's %d cells", shard, len(rows), len(obs))
    return shard_data


def map_shard_files(
    *,
    query_path: str | Path,
    plan_path: str | Path,
    shard: str,
    model_dir: str | Path,
    mode: str,
    settings,
    embedded: str | Path,
    qc: str | Path,
    embedded_atlas: str | Path | None = None,
):
    """One shard of a scattered query (:mod:`atlasmap.scatter`) mapped: its cells read from
    the query file, the reference side without its counts, the query cells alone written.
    Surgery trains on mini-batches scaled to the shard (:func:`shard_batch_size`)."""
    import dataclasses

    from .mapping import map_query, read_reference_side, reference_latent, write_mapping

    query = read_shard(query_path, plan_path, shard, settings.batch_key)
    if mode == "surgery":
        plan = read_plan(plan_path)
        batch_size = shard_batch_size(settings.train_batch_size, query.n_obs, plan["cells"].sum())
        log.info(
            "surgery on mini-batches of %d cells: %d (mapping.surgery.batch_size) x this shard's "
            "share of the query, %d of %d cells",
            batch_size,
            settings.train_batch_size,
            query.n_obs,
            plan["cells"].sum(),
        )
        settings = dataclasses.replace(settings, train_batch_size=batch_size)
    atlas = reference = None
    if embedded_atlas:
        atlas = read_reference_side(embedded_atlas, settings.atlas_layer)
        reference = reference_latent(atlas, where=str(embedded_atlas))
    where = f"{query_path} (shard {shard})"
    result = map_query(
        query, atlas, model_dir, mode, settings, where=where, reference=reference, query_only=True
    )
    write_mapping(result, embedded, qc)
    return result


def shard_batch_size(batch_size: int, shard_cells: int, query_cells: int) -> int:
    """Surgery's mini-batch size for a shard: the query's, times the shard's share of it.

    Surgery updates a sample's own weights at every step whose mini-batch holds some of
    its cells. Mapped whole, an epoch of a query of N cells takes N / batch_size steps;
    a shard of n cells on mini-batches of the same size would take n / batch_size, so its
    samples' weights would move less (on the small test demo, a fifth less latent shift, and 1.3% of
    the calls changed). On mini-batches of batch_size x n / N cells, a shard takes as
    many steps as the whole query, each holding as many of a sample's cells: the same
    training, up to which cells each mini-batch draws."""
    if query_cells <= 0 or shard_cells >= query_cells:
        return batch_size
    return max(2, round(batch_size * shard_cells / query_cells))


def query_order(barcodes: Sequence[str], query_barcodes: pd.Index) -> np.ndarray:
    """Positions in the query of the gathered cells named ``barcodes``, all of the shards'
    together; refuses a cell missing, foreign or twice (shards of another split)."""
    positions = pd.Index(query_barcodes).get_indexer(pd.Index(barcodes))
    foreign = int((positions < 0).sum())
    if (
        foreign
        or len(positions) != len(query_barcodes)
        or len(np.unique(positions)) != len(positions)
    ):
        raise AtlasmapInputError(
            f"the shards hold {len(barcodes)} cells, {foreign} of them not in the query's "
            f"{len(query_barcodes)}: they come from another split; rerun the shards"
        )
    return positions


def gather_tables(paths: Sequence[str | os.PathLike], barcodes: pd.Index) -> pd.DataFrame:
    """The shards' prediction tables as one, in the query's cell order."""
    tables = [pd.read_csv(p, sep="\t", dtype={"barcode": str}) for p in paths]
    table = pd.concat(tables, ignore_index=True)
    order = query_order(table["barcode"], barcodes)
    return table.iloc[np.argsort(order)].reset_index(drop=True)


def gather_mapping_qc(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The shards' per-sample mapping QC as one table: a sample cut into chunks summed
    (cells) and averaged by cells (latent shift), and the query's own ``all`` row."""
    parts = pd.concat([pd.read_csv(p, sep="\t") for p in paths], ignore_index=True)
    parts = parts[parts["sample"].astype(str) != "all"].copy()
    parts["sample"] = parts["sample"].astype(str)
    parts["weighted_shift"] = parts["latent_shift_mean"] * parts["cells"]

    def combined(group: pd.DataFrame, sample: str) -> dict:
        row = group.iloc[0].to_dict()
        cells = int(group["cells"].sum())
        row.update(
            sample=sample,
            cells=cells,
            latent_shift_mean=round(float(group["weighted_shift"].sum()) / max(cells, 1), 4),
        )
        return row

    rows = [combined(group, sample) for sample, group in parts.groupby("sample", sort=True)]
    rows.append(combined(parts, "all"))
    return pd.DataFrame(rows).drop(columns="weighted_shift")[
        [c for c in parts.columns if c != "weighted_shift"]
    ]


def gather_call_reports(paths: Sequence[str | os.PathLike]) -> dict:
    """The calls' report: the fit's (the same for every shard), with every query batch's
    shift from the atlas."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    report = dict(reports[0])
    shifts = {}
    for part in reports:
        shifts.update(part.get("query_batch_shift", {}))
    report["query_batch_shift"] = dict(sorted(shifts.items()))
    return report


def gather_calls_files(
    *,
    predictions: Sequence,
    reports: Sequence,
    mapping_qc,
    query_path,
    batch_key: str,
    predictions_path,
    qc_path,
    report_path,
) -> pd.DataFrame:
    """The shards' calls to call_celltypes's three files, as an unscattered run writes
    them: predictions in the query's cell order, per-sample QC and the fit's report."""
    from .calls import call_qc
    from .io import atomic_path, read_annotations

    barcodes = read_annotations(query_path, obsm=(), uns=False).obs_names.astype(str)
    table = gather_tables(predictions, pd.Index(barcodes))
    qc = call_qc(table, pd.read_csv(mapping_qc, sep="\t"), batch_key)
    report = gather_call_reports(reports)
    with atomic_path(predictions_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(qc_path) as tmp:
        qc.to_csv(tmp, sep="\t", index=False)
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    log.info("gathered the calls of %d query cells from %d shards", len(table), len(predictions))
    return table


def row_blocks(path, rows_per_block: int = BLOCK_ROWS) -> Iterator[sp.csr_matrix]:
    """The count matrix ``X`` of an h5ad file, block by block of rows."""
    from anndata.io import sparse_dataset

    with h5py.File(path, "r") as f:
        matrix = sparse_dataset(f["X"])
        for start in range(0, matrix.shape[0], rows_per_block):
            yield matrix[start : start + rows_per_block]


def merged_row_blocks(
    paths: Sequence, positions: Sequence[np.ndarray], rows_per_block: int = BLOCK_ROWS
) -> Iterator[sp.csr_matrix]:
    """Rows of several files' ``X`` merged into one order, block by block: row ``j`` of
    ``paths[i]`` goes to ``positions[i][j]``; positions cover 0..n-1, each file's increasing."""
    from anndata.io import sparse_dataset

    files = [h5py.File(p, "r") for p in paths]
    try:
        matrices = [sparse_dataset(f["X"]) for f in files]
        source = np.concatenate([np.full(len(p), i) for i, p in enumerate(positions)])
        local = np.concatenate([np.arange(len(p)) for p in positions])
        by_position = np.argsort(np.concatenate(positions), kind="stable")
        source, local = source[by_position], local[by_position]
        for start in range(0, len(source), rows_per_block):
            which, rows = (
                source[start : start + rows_per_block],
                local[start : start + rows_per_block],
            )
            parts, placed = [], []
            for i in np.unique(which):
                mine = np.flatnonzero(which == i)
                parts.append(matrices[i][rows[mine]])
                placed.append(mine)
            block = sp.vstack(parts).tocsr()
            yield block[np.argsort(np.concatenate(placed))]
    finally:
        for f in files:
            f.close()


def _gathered_run(runs: list[dict], shifts: np.ndarray, cells: np.ndarray, atlas) -> dict:
    """The mapping's run record of the whole query from its shards': the query's columns in
    the order first seen, the mean latent shift over all its cells, the classifier's
    accuracy on the atlas cells (which no shard holds)."""
    run = dict(runs[0])
    columns = [c for r in runs for c in r.get("query_columns", [])]
    run["query_columns"] = list(dict.fromkeys(columns))
    run["latent_shift_mean"] = float(np.sum(shifts * cells) / max(cells.sum(), 1))
    if atlas is not None and atlas.n_obs:
        labels = np.asarray(atlas.uns[EMBEDDED_ATLAS_KEY]["classifier_labels"])
        best = labels[np.asarray(atlas.obsm[PROBABILITIES_KEY]).argmax(axis=1)]
        truth = atlas.obs[run["labels_key"]].astype(str).to_numpy()
        run["reference_classifier_accuracy"] = float(np.mean(best == truth))
    return run


def gather_embedded_files(
    *, shards: Sequence, query_path, output, embedded_atlas=None
) -> ad.AnnData:
    """The shards' query cells and the embedded atlas's cells to map_query's expanded atlas
    (``embedded.h5ad``), as an unscattered run writes it; the count matrices streamed
    block by block, the rest (obs, latent, probabilities) held. Returns its annotations."""
    from anndata.io import read_elem, write_elem

    from .io import CsrBlocks, atomic_path, read_annotations
    from .mapping import join_obs

    parts = [read_annotations(p) for p in shards]
    runs = [dict(p.uns["atlasmap"]) for p in parts]
    barcodes = read_annotations(query_path, obsm=(), uns=False).obs_names.astype(str)
    every = query_order(np.concatenate([p.obs["barcode"].astype(str) for p in parts]), barcodes)
    positions = np.split(every, np.cumsum([p.n_obs for p in parts])[:-1])
    order = np.argsort(every, kind="stable")
    keep = [*runs[0].get("query_columns", []), SOURCE_COLUMN, "barcode"]
    q_obs = pd.concat([p.obs[[c for c in keep if c in p.obs]] for p in parts]).iloc[order]
    atlas = read_annotations(embedded_atlas) if embedded_atlas else None
    obs = join_obs(atlas.obs if atlas is not None else q_obs.iloc[:0, :0], q_obs)
    obsm = {}
    for key in (EMBEDDING_KEY, PROBABILITIES_KEY):
        query_side = np.concatenate([np.asarray(p.obsm[key]) for p in parts])[order]
        atlas_side = [] if atlas is None else [np.asarray(atlas.obsm[key])]
        obsm[key] = np.concatenate([*atlas_side, query_side]).astype(np.float32)
    cells = np.array([len(p.obs) for p in parts], dtype=float)
    shifts = np.array([r.get("latent_shift_mean", 0.0) for r in runs], dtype=float)
    run = _gathered_run(runs, shifts, cells, atlas)
    with h5py.File(shards[0], "r") as f:
        var, dtype = read_elem(f["var"]), f["X"]["data"].dtype
    sources = [*([embedded_atlas] if embedded_atlas else []), *shards]
    max_nnz = 0
    for source in sources:
        with h5py.File(source, "r") as f:
            max_nnz += f["X"]["data"].shape[0]
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        writer = CsrBlocks(f.create_group("X"), (len(obs), len(var)), dtype, max_nnz)
        for block in row_blocks(embedded_atlas) if embedded_atlas else ():
            writer.append(block.astype(dtype))
        for block in merged_row_blocks(shards, positions):
            writer.append(block)
        writer.close()
        f.create_group("layers")["counts"] = h5py.SoftLink("/X")
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        write_elem(f, "obsm", obsm)
        write_elem(f, "uns", {"atlasmap": run})
        for empty in ("obsp", "varm", "varp"):
            write_elem(f, empty, {})
    log.info(
        "gathered %d query cells from %d shards beside %d atlas cells into %s",
        len(q_obs),
        len(shards),
        0 if atlas is None else atlas.n_obs,
        output,
    )
    return ad.AnnData(obs=obs, obsm=obsm, uns={"atlasmap": run})


def gather_mapping_files(
    *, shards: Sequence, shard_qc: Sequence, query_path, embedded, qc, embedded_atlas=None
) -> ad.AnnData:
    """map_query's two files from a scattered query's shards: the embedded expanded atlas
    (:func:`gather_embedded_files`) and the per-sample mapping QC."""
    from .io import atomic_path

    table = gather_mapping_qc(shard_qc)
    gathered = gather_embedded_files(
        shards=shards, query_path=query_path, output=embedded, embedded_atlas=embedded_atlas
    )
    with atomic_path(qc) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return gathered
