"""The embedded demo: a small synthetic PDAC-like study, made offline from a seed.

It mimics the shape of the real study (Chen et al. 2025, GSE278688, mapped onto
a PDAC atlas with labels Level_1 … Level_4) so that every stage of the workflow
meets the same kinds of data it meets in production:

* a reference atlas of raw negative-binomial counts from several donors, each
  with its own batch effect, labelled at four levels where each level refines
  the one above;
* a query holding a cell type the atlas lacks (Schwann cells), which the
  calls must say Unknown to;
* a query written as a GEO 10x deposit (``<prefix>_matrix.mtx.gz``,
  ``_features.tsv.gz``, ``_barcodes.tsv.gz``, ``_metadata.csv.gz``) with a
  ``patients`` column, a query-only ``tissue`` column and a ground-truth label
  column; the query carries a batch effect of its own, misses some reference
  genes and measures some genes the reference does not.

Cell types share expression programmes along the hierarchy, so sister types
(CD4+ vs CD8+ T cells, myCAF vs iCAF, classical vs basal-like PDAC) differ by
only a few genes: the mapping problem is not trivial.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from .contract import DEPOSIT_ROLES, deposit_file_names
from .io import atomic_path, gzip_open_write, write_h5ad

LEVELS = ("Level_1", "Level_2", "Level_3", "Level_4")

# (Level_1, Level_2, Level_3, Level_4): each level refines the one above.
CELL_TYPES: tuple[tuple[str, str, str, str], ...] = (
    ("Epithelial", "Ductal", "Ductal", "Ductal cell"),
    ("Epithelial", "Ductal", "Malignant", "Classical PDAC"),
    ("Epithelial", "Ductal", "Malignant", "Basal-like PDAC"),
    ("Epithelial", "Acinar", "Acinar", "Acinar cell"),
    ("Epithelial", "Endocrine", "Endocrine", "Beta cell"),
    ("Immune", "Lymphoid", "T cell", "CD4+ T cell"),
    ("Immune", "Lymphoid", "T cell", "CD8+ T cell"),
    ("Immune", "Lymphoid", "B cell", "B cell"),
    ("Immune", "Lymphoid", "NK cell", "NK cell"),
    ("Immune", "Myeloid", "Macrophage", "Macrophage"),
    ("Immune", "Myeloid", "Dendritic cell", "cDC2"),
    ("Stromal", "Fibroblast", "CAF", "myCAF"),
    ("Stromal", "Fibroblast", "CAF", "iCAF"),
    ("Stromal", "Endothelial", "Endothelial", "Endothelial cell"),
    ("Stromal", "Neural", "Schwann", "Schwann cell"),
)
# A type of the query that the atlas lacks: the demo's calls must say Unknown to it.
QUERY_ONLY_TYPES = ("Schwann cell",)

# Typical abundance in a PDAC tumour (relative; normalised below).
_BASE_ABUNDANCE = np.array([6, 10, 5, 3, 1, 9, 8, 4, 3, 9, 2, 7, 5, 4, 5], dtype=float)

# Known markers, attached to the node of the hierarchy they mark.
_MARKERS: dict[str, tuple[str, ...]] = {
    "Epithelial": ("EPCAM", "KRT8", "KRT18", "KRT19", "CLDN4"),
    "Ductal": ("KRT7", "SOX9", "ANXA4"),
    "Ductal cell": ("CFTR", "SPP1", "MMP7"),
    "Malignant": ("CEACAM5", "S100P", "MUC1", "TSPAN8"),
    "Classical PDAC": ("GATA6", "TFF1", "LGALS4", "CEACAM6"),
    "Basal-like PDAC": ("KRT5", "KRT6A", "S100A2", "KRT17"),
    "Acinar": ("PRSS1", "CPA1", "CELA3A", "CTRB2"),
    "Endocrine": ("CHGA", "SCG5"),
    "Beta cell": ("INS", "IAPP"),
    "Immune": ("PTPRC", "CORO1A", "LAPTM5"),
    "Lymphoid": ("CD52", "RAC2"),
    "T cell": ("CD3E", "CD3D", "CD2"),
    "CD4+ T cell": ("CD4", "IL7R"),
    "CD8+ T cell": ("CD8A", "CD8B", "GZMK"),
    "B cell": ("MS4A1", "CD79A", "CD19"),
    "NK cell": ("NKG7", "GNLY", "KLRD1"),
    "Myeloid": ("LYZ", "TYROBP", "FCER1G"),
    "Macrophage": ("CD68", "C1QA", "C1QB", "APOE"),
    "Dendritic cell": ("CD1C", "FCER1A", "CLEC10A"),
    "Stromal": ("VIM", "SPARC"),
    "Fibroblast": ("COL1A1", "COL1A2", "DCN", "LUM"),
    "CAF": ("FAP", "PDPN"),
    "myCAF": ("ACTA2", "TAGLN", "MYL9"),
    "iCAF": ("IL6", "CXCL12", "PDGFRA"),
    "Endothelial": ("PECAM1", "VWF", "CDH5", "PLVAP"),
    "Neural": ("S100B", "SOX10", "PLP1"),
    "Schwann": ("MPZ", "NGFR", "CDH19"),
}
_MITO = tuple(
    f"MT-{g}"
    for g in (
        [
            "ND1",
            "ND2",
            "CO1",
            "CO2",
            "ATP8",
            "ATP6",
            "CO3",
            "ND3",
            "ND4L",
            "ND4",
            "ND5",
            "ND6",
            "CYB",
        ]
    )
)
_FAMILIES = [
    "ZNF",
    "SLC",
    "TMEM",
    "CCDC",
    "FAM",
    "ANKRD",
    "LRRC",
    "KLHL",
    "RNF",
    "WDR",
    "TRIM",
    "PPP1R",
    "ABCA",
    "ADAM",
    "ARHGEF",
    "DNAJC",
    "GPR",
    "KCNJ",
    "MAP3K",
    "NUDT",
    "PCDH",
    "RAB",
    "SEC",
    "SNX",
    "TBC1D",
    "USP",
    "ZBTB",
]


@dataclass(frozen=True)
class DemoStudy:
    """A synthetic reference atlas and query (query metadata in ``query.obs``)."""

    reference: ad.AnnData
    query: ad.AnnData


def _gene_table(rng: np.random.Generator, n_genes: int) -> pd.DataFrame:
    """Unique symbols (known markers first) with unique Ensembl-style ids."""
    symbols: list[str] = list(dict.fromkeys(g for gs in _MARKERS.values() for g in gs))
    symbols += list(_MITO)
    seen = set(symbols)
    while len(symbols) < n_genes:
        name = f"{rng.choice(_FAMILIES)}{rng.integers(1, 400)}"
        if name not in seen:
            seen.add(name)
            symbols.append(name)
    symbols = symbols[:n_genes]
    ids = rng.choice(np.arange(100_000, 300_000), size=len(symbols), replace=False)
    return pd.DataFrame({"gene_symbols": symbols, "gene_ids": [f"ENSG00000{i:06d}" for i in ids]})


def _type_programmes(rng: np.random.Generator, genes: pd.DataFrame) -> np.ndarray:
    """Log-fold changes per Level_4 type: the sum of its nodes' programmes."""
    n_genes = len(genes)
    position = {g: i for i, g in enumerate(genes["gene_symbols"])}
    n_known = sum(len(v) for v in _MARKERS.values()) + len(_MITO)
    background = np.arange(n_known, n_genes)
    node_effect: dict[tuple[str, ...], np.ndarray] = {}
    # Coarse levels shift many genes strongly; fine levels few genes, weakly.
    strength = {1: (1.5, 3.0, 40), 2: (1.2, 2.5, 25), 3: (0.6, 1.4, 10), 4: (0.4, 1.0, 6)}
    for path in CELL_TYPES:
        for depth in range(1, 5):
            node = path[:depth]
            if node in node_effect:
                continue
            low, high, n_extra = strength[depth]
            effect = np.zeros(n_genes)
            markers = [position[g] for g in _MARKERS.get(node[-1], ()) if g in position]
            if node[-1] in _MARKERS and depth > 1 and node[-1] == node[-2]:
                markers = []  # a level that repeats its parent's name adds nothing
            effect[markers] = rng.uniform(low + 0.5, high + 0.5, len(markers))
            extra = rng.choice(background, size=n_extra, replace=False)
            effect[extra] += rng.uniform(low, high, n_extra) * rng.choice([-0.5, 1.0], n_extra)
            node_effect[node] = effect
    return np.stack([sum(node_effect[path[:d]] for d in range(1, 5)) for path in CELL_TYPES])


def _sample_counts(
    rng: np.random.Generator,
    log_mean: np.ndarray,
    library_size: np.ndarray,
    dispersion: float,
) -> sp.csr_matrix:
    """Negative-binomial counts (gamma-Poisson) with the given per-cell depth."""
    logits = log_mean - log_mean.max(axis=1, keepdims=True)
    proportions = np.exp(logits)
    proportions /= proportions.sum(axis=1, keepdims=True)
    mean = proportions * library_size[:, None]
    rate = rng.gamma(shape=dispersion, scale=mean / dispersion)
    return sp.csr_matrix(rng.poisson(rate).astype(np.float32))


def _barcodes(rng: np.random.Generator, n: int, suffix: int) -> list[str]:
    alphabet = np.array(list("ACGT"))
    codes: set[str] = set()
    while len(codes) < n:
        for row in rng.integers(0, 4, size=(n - len(codes), 16)):
            codes.add("".join(alphabet[row]))
    return [f"{c}-{suffix}" for c in sorted(codes)]


def make_demo_study(
    seed: int = 0,
    n_reference_cells: int = 12_000,
    n_query_cells: int = 5_000,
    n_genes: int = 2_000,
    n_donors: int = 6,
    n_patients: int = 4,
    query_missing_gene_fraction: float = 0.08,
    query_only_genes: int = 120,
) -> DemoStudy:
    """Make the demo reference atlas and query, deterministically from ``seed``."""
    if n_genes < 300:
        raise ValueError(f"demo.genes must be at least 300 (got {n_genes})")
    rng = np.random.default_rng(seed)
    n_types = len(CELL_TYPES)
    genes = _gene_table(rng, n_genes + query_only_genes)
    ref_genes = genes.iloc[:n_genes].reset_index(drop=True)

    baseline = rng.normal(0.0, 1.2, len(genes))
    baseline[genes["gene_symbols"].str.startswith("MT-").to_numpy()] += 3.0
    programmes = _type_programmes(rng, genes)
    base_share = _BASE_ABUNDANCE / _BASE_ABUNDANCE.sum()

    query_only = np.isin([t[-1] for t in CELL_TYPES], QUERY_ONLY_TYPES)

    def draw_cells(n_cells, groups, batch_sd, shared_shift, depth, abundance_alpha, absent=None):
        per_group = np.full(len(groups), n_cells // len(groups))
        per_group[: n_cells % len(groups)] += 1
        obs_parts, x_parts = [], []
        for group, n in zip(groups, per_group, strict=True):
            share = rng.dirichlet(base_share * abundance_alpha)
            if absent is not None:
                share = np.where(absent, 0.0, share)
                share /= share.sum()
            types = rng.choice(n_types, size=n, p=share)
            batch = shared_shift + rng.normal(0.0, batch_sd, len(genes))
            # A continuous within-type state (e.g. stress, cycling) on a gene set.
            state_genes = rng.choice(len(genes), 30, replace=False)
            state = np.outer(rng.beta(1, 4, n), np.isin(np.arange(len(genes)), state_genes))
            log_mean = baseline + programmes[types] + batch + 1.5 * state
            library = rng.lognormal(np.log(depth), 0.45, n)
            x_parts.append(_sample_counts(rng, log_mean, library, dispersion=4.0))
            obs_parts.append(pd.DataFrame({"group": group, "type": types}))
        return pd.concat(obs_parts, ignore_index=True), sp.vstack(x_parts).tocsr()

    # Reference atlas: donors with moderate batch effects.
    donors = [f"ATLAS_D{i + 1:02d}" for i in range(n_donors)]
    ref_obs, ref_x = draw_cells(
        n_reference_cells, donors, 0.25, np.zeros(len(genes)), 1.25 * n_genes, 40.0, query_only
    )
    reference = _reference_atlas(ref_obs, ref_x[:, :n_genes], ref_genes)

    # Query: its own technology shift, patient effects, different composition.
    patients = [f"PA{i + 1:02d}" for i in range(n_patients)]
    tech_shift = rng.normal(0.0, 0.5, len(genes))
    q_obs, q_x = draw_cells(n_query_cells, patients, 0.25, tech_shift, 1.5 * n_genes, 8.0)
    q_obs = _label(q_obs)
    measured = _query_gene_columns(rng, n_genes, len(genes), query_missing_gene_fraction)
    q_x = q_x[:, measured]
    q_genes = genes.iloc[measured].reset_index(drop=True)
    barcodes: list[str] = []
    for i, patient in enumerate(patients):
        n = int((q_obs["group"] == patient).sum())
        barcodes += _barcodes(rng, n, suffix=i + 1)
    query = _query_deposit(q_obs, q_x, q_genes, barcodes, patients)
    return DemoStudy(reference=reference, query=query)


def _reference_atlas(obs: pd.DataFrame, x: sp.csr_matrix, genes: pd.DataFrame) -> ad.AnnData:
    """The atlas as the tutorial's: labels Level_1…4, donors in Sample_ID, counts layer."""
    obs = _label(obs).rename(columns={"group": "Sample_ID"})
    obs.index = [f"atlas_{i:06d}" for i in range(len(obs))]
    var = genes.set_index("gene_symbols", drop=False)
    var.index.name = None
    reference = ad.AnnData(X=x, obs=obs, var=var)
    reference.layers["counts"] = reference.X.copy()
    return reference


def _query_deposit(
    obs: pd.DataFrame, x: sp.csr_matrix, genes: pd.DataFrame, barcodes: list[str], patients
) -> ad.AnnData:
    """The query as Chen et al.'s deposit holds it: Seurat-style metadata (patients,
    tissue, the authors' cell type), Ensembl ids with symbols beside them."""
    tissue = {
        p: ("adjacent normal" if i == len(patients) - 1 else "tumour")
        for i, p in enumerate(patients)
    }
    counts_per_cell = np.asarray(x.sum(axis=1)).ravel()
    mito = genes["gene_symbols"].str.startswith("MT-").to_numpy()
    meta = pd.DataFrame(
        {
            "orig.ident": obs["group"].to_numpy(),
            "nCount_RNA": counts_per_cell.astype(int),
            "nFeature_RNA": np.diff(x.indptr),
            "percent.mt": np.round(
                100 * np.asarray(x[:, mito].sum(axis=1)).ravel() / np.maximum(counts_per_cell, 1),
                3,
            ),
            "patients": obs["group"].to_numpy(),
            "tissue": obs["group"].map(tissue).to_numpy(),
            "author_cell_type": obs["Level_4"].to_numpy(),
        },
        index=pd.Index(barcodes, name=None),
    )
    var = genes.set_index("gene_ids", drop=False)
    var.index.name = None
    var["feature_types"] = "Gene Expression"
    return ad.AnnData(X=x, obs=meta, var=var)


def _label(obs: pd.DataFrame) -> pd.DataFrame:
    labels = np.array(CELL_TYPES, dtype=object)[obs.pop("type").to_numpy()]
    for j, level in enumerate(LEVELS):
        obs[level] = pd.Categorical(labels[:, j])
    obs["group"] = pd.Categorical(obs["group"])
    return obs


def _query_gene_columns(
    rng: np.random.Generator, n_ref: int, n_all: int, missing_fraction: float
) -> np.ndarray:
    """Query genes: most reference genes (some missing) plus query-only ones, reordered."""
    n_missing = int(round(missing_fraction * n_ref))
    missing = rng.choice(n_ref, size=n_missing, replace=False)
    kept = np.setdiff1d(np.arange(n_ref), missing)
    columns = np.concatenate([kept, np.arange(n_ref, n_all)])
    return rng.permutation(columns)


def write_10x_deposit(query: ad.AnnData, paths: dict[str, str | os.PathLike]) -> None:
    """Write ``query`` as a GEO 10x deposit: matrix, features, barcodes, metadata.

    ``paths`` maps ``matrix``, ``features``, ``barcodes`` and ``metadata`` to
    file names (gzip-compressed). Each file appears whole or not at all.
    """
    missing = set(DEPOSIT_ROLES) - set(paths)
    if missing:
        raise ValueError(f"write_10x_deposit: no path for {sorted(missing)}")
    with atomic_path(paths["matrix"]) as tmp, gzip_open_write(tmp) as fh:
        # 10x stores genes x cells, integer counts.
        scipy.io.mmwrite(fh, sp.csc_matrix(query.X).T.astype(np.int64), field="integer")
    features = query.var[["gene_ids", "gene_symbols", "feature_types"]]
    _write_table(features, paths["features"], sep="\t", header=False, index=False)
    _write_table(pd.Series(query.obs_names), paths["barcodes"], sep="\t", header=False, index=False)
    _write_table(query.obs, paths["metadata"], sep=",", header=True, index=True)


def write_10x_h5(query: ad.AnnData, path: str | os.PathLike) -> None:
    """Write ``query``'s counts as a Cell Ranger v3 HDF5 matrix
    (``filtered_feature_bc_matrix.h5``), whole or not at all.

    Group ``matrix``: ``barcodes``, ``data`` (int32 counts), ``indices``, ``indptr``,
    ``shape`` (genes, cells) and ``features`` (``id``, ``name``, ``feature_type``,
    ``genome``, ``_all_tag_keys``), as Cell Ranger writes it. Features are named by
    ``var["gene_ids"]`` and ``var["gene_symbols"]`` (the index where absent), typed by
    ``var["feature_types"]`` (Gene Expression where absent).
    """
    import h5py

    # 10x stores genes x cells as CSC: the cells x genes CSR arrays.
    counts = sp.csr_matrix(query.X)
    if counts.size and not np.array_equal(counts.data, np.round(counts.data)):
        raise ValueError("write_10x_h5: the counts must be integers")
    var = query.var
    names = var.get("gene_symbols", pd.Series(query.var_names, index=var.index))
    ids = var.get("gene_ids", names)
    types = var.get("feature_types", pd.Series("Gene Expression", index=var.index))
    genome = var.get("genome", pd.Series("GRCh38", index=var.index))

    def text(values) -> np.ndarray:
        return np.array([str(v).encode() for v in values], dtype="S")

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["library_ids"] = np.array([b"query"])
        f.attrs["chemistry_description"] = "Single Cell 3' v3"
        group = f.create_group("matrix")
        group.create_dataset("barcodes", data=text(query.obs_names))
        group.create_dataset("data", data=counts.data.astype(np.int32), compression="gzip")
        group.create_dataset("indices", data=counts.indices.astype(np.int64), compression="gzip")
        group.create_dataset("indptr", data=counts.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array([query.n_vars, query.n_obs], dtype=np.int32))
        features = group.create_group("features")
        features.create_dataset("id", data=text(ids))
        features.create_dataset("name", data=text(names))
        features.create_dataset("feature_type", data=text(types))
        features.create_dataset("genome", data=text(genome))
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def write_query_h5ad(query: ad.AnnData, path: str | os.PathLike) -> None:
    """Write ``query`` as a notebook user holds it: X log-normalised (scanpy's
    ``normalize_total`` and ``log1p``, float32), the raw counts in
    ``layers["counts"]``, obs the metadata, var ``gene_ids``, ``gene_symbols`` and
    ``feature_types``. Whole or not at all."""
    import scanpy as sc

    counts = sp.csr_matrix(query.X).astype(np.float32)
    if counts.size and not np.array_equal(counts.data, np.round(counts.data)):
        raise ValueError("write_query_h5ad: the counts must be integers")
    columns = [c for c in ("gene_ids", "gene_symbols", "feature_types") if c in query.var]
    adata = ad.AnnData(X=counts.copy(), obs=query.obs.copy(), var=query.var[columns].copy())
    adata.layers["counts"] = counts
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata.X = sp.csr_matrix(adata.X).astype(np.float32)
    write_h5ad(adata, path)


def _write_table(table, path, **kwargs) -> None:
    with atomic_path(path) as tmp, gzip_open_write(tmp) as fh:
        fh.write(table.to_csv(**kwargs).encode())


def deposit_names(prefix: str) -> dict[str, str]:
    """File names of a GEO 10x deposit with the given prefix (as in GSE278688)."""
    return deposit_file_names(prefix)


def write_demo_study(
    study: DemoStudy, atlas_path: str | os.PathLike, deposit_paths: dict[str, str | os.PathLike]
) -> None:
    """Write the atlas h5ad and the query deposit files."""
    write_h5ad(study.reference, atlas_path)
    write_10x_deposit(study.query, {k: Path(v) for k, v in deposit_paths.items()})
