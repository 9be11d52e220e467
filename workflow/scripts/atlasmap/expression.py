"""The expression member of the calls: a linear classifier on log-normalised expression.

The latent space of a scANVI model trained on one study places cells from another
lab or chemistry less well than their expression does: on real queries a logistic
regression on highly variable genes called 5-7 points more cells right than any
vote in the latent (issue 29). The calls therefore read the cells' expression too.

The genes are the reference's highly variable genes by scanpy's ``seurat``
flavour on log-normalised counts (on the real queries of issue 29 it beat the
model's own ``seurat_v3`` genes by 7 points); the classifier is scikit-learn's
multinomial logistic regression, kept as its coefficients (no pickles) so that
the fit is a plain numpy archive and a query is scored by one sparse product.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .genes import align_to_genes

log = logging.getLogger(__name__)


def log_normalise(
    counts: sp.spmatrix, target_sum: float = 1e4, totals: np.ndarray | None = None
) -> sp.csr_matrix:
    """log1p of counts scaled to ``target_sum`` per cell (scanpy's default), kept sparse.

    ``totals``: each cell's counts over all its genes, when ``counts`` holds only some
    of them (by default, the row sums of ``counts``)."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    if totals is None:
        totals = np.asarray(counts.sum(axis=1)).ravel()
    totals = np.asarray(totals, dtype=np.float32)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    out = sp.diags(scale.astype(np.float32)) @ counts
    out.data = np.log1p(out.data)
    return sp.csr_matrix(out)


def select_genes(logged: sp.spmatrix, gene_names, n_genes: int) -> np.ndarray:
    """Positions of the ``n_genes`` most variable genes of log-normalised cells, by
    scanpy's ``seurat`` flavour (dispersion normalised within mean bins), in gene order.
    All genes when there are no more than ``n_genes``."""
    import scanpy as sc

    n_all = logged.shape[1]
    if n_all <= n_genes:
        return np.arange(n_all)
    adata = ad.AnnData(sp.csr_matrix(logged), var=pd.DataFrame(index=pd.Index(gene_names)))
    adata.var_names_make_unique()
    table = sc.pp.highly_variable_genes(adata, n_top_genes=n_genes, flavor="seurat", inplace=False)
    return np.flatnonzero(table["highly_variable"].to_numpy())


@dataclass
class ExpressionModel:
    """A fitted linear classifier on log-normalised expression of named genes.

    ``coef`` is labels x genes, ``intercept`` one per label; a label the fit never
    saw has an intercept of -inf (probability 0). ``gene_ids`` are the genes'
    Ensembl ids where the atlas names them (empty strings elsewhere), so that a
    query named by ids matches too. ``mean``: the atlas cells' mean log-normalised
    expression of each gene, which stands in for a gene the query does not measure.
    """

    genes: np.ndarray
    gene_ids: np.ndarray | None
    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray | None = None

    def probabilities_of_logged(
        self, logged: sp.spmatrix, unmeasured: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-label probabilities (cells x labels) of cells already on ``genes``, logged.

        ``unmeasured``: a mask of the genes the cells' data set lacks (their columns are
        zero). Read as zero they would say "not expressed", a marker's absence; they take
        the atlas's mean instead, so that they move no cell towards any label."""
        scores = np.asarray(sp.csr_matrix(logged) @ self.coef.T, dtype=np.float64)
        scores += self.intercept
        if unmeasured is not None and unmeasured.any() and self.mean is not None:
            scores += self.coef[:, unmeasured] @ self.mean[unmeasured]
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        return scores / scores.sum(axis=1, keepdims=True)

    def probabilities(self, cells: ad.AnnData, layer: str | None, where: str) -> np.ndarray:
        """Per-label probabilities of ``cells`` (counts in ``layer``), matched on gene names,
        symbols or Ensembl ids; genes they lack count as not expressed, said in the log.
        Each cell is normalised by its counts over all its genes, as the atlas's cells were
        for the fit, not over the classifier's genes alone."""
        id_to_symbol = None
        if self.gene_ids is not None:
            named = self.gene_ids != ""
            id_to_symbol = pd.Series(self.genes[named], index=pd.Index(self.gene_ids[named]))
        aligned, _ = align_to_genes(
            cells,
            list(self.genes),
            layer=layer,
            min_overlap=0.0,
            warn_overlap=0.8,
            id_to_symbol=id_to_symbol,
            where=f"{where} (the calls' expression classifier)",
        )
        counts = cells.layers[layer] if layer else cells.X
        totals = np.asarray(counts.sum(axis=1)).ravel()
        unmeasured = ~aligned.var["in_query"].to_numpy()
        if unmeasured.any():
            log.info(
                "%s: %d of the expression classifier's %d genes are not measured: they take "
                "the atlas's mean expression",
                where,
                int(unmeasured.sum()),
                len(self.genes),
            )
        logged = log_normalise(aligned.layers["counts"], totals=totals)
        return self.probabilities_of_logged(logged, unmeasured)


def fit_linear(
    logged: sp.spmatrix,
    codes: np.ndarray,
    n_labels: int,
    *,
    C: float = 1.0,
    max_iter: int = 300,
    max_cells: int = 20_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (labels x genes) and intercepts of a multinomial logistic regression
    of ``codes`` on ``logged``, one row for each of ``n_labels`` labels: a label without
    cells here gets zero coefficients and an intercept of -inf. At most ``max_cells``
    cells (a seeded sample) are used."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    codes = np.asarray(codes)
    rows = np.arange(len(codes))
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    present = np.unique(codes[rows])
    coef = np.zeros((n_labels, logged.shape[1]), dtype=np.float32)
    intercept = np.full(n_labels, -np.inf)
    if len(present) == 1:
        intercept[present[0]] = 0.0
        return coef, intercept
    classifier = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    # One BLAS thread: with more, summation order (lbfgs stops at max_iter) would make
    # the calls depend on the core count.
    with threadpool_limits(limits=1):
        classifier.fit(sp.csr_matrix(logged)[rows], codes[rows])
    if len(present) == 2:  # scikit-learn keeps one row for two classes: logit of the second
        coef[present[1]] = classifier.coef_[0]
        intercept[present] = [0.0, classifier.intercept_[0]]
    else:
        coef[classifier.classes_] = classifier.coef_
        intercept[classifier.classes_] = classifier.intercept_
    return coef, intercept


def fit_expression_model(
    atlas: ad.AnnData,
    codes: np.ndarray,
    n_labels: int,
    *,
    layer: str | None,
    n_genes: int = 2000,
    C: float = 1.0,
    max_cells: int = 20_000,
    seed: int = 0,
) -> tuple[ExpressionModel, sp.csr_matrix]:
    """The expression classifier on all atlas cells, and the atlas's log-normalised
    expression on its genes (for the out-of-fold fits)."""
    from .genes import gene_ids_of
    from .reference import atlas_counts_layer

    atlas_counts_layer(atlas, layer, "reference.atlas")
    logged = log_normalise(atlas.layers[layer] if layer else atlas.X)
    keep = select_genes(logged, atlas.var_names, n_genes)
    logged = logged[:, keep]
    genes = np.asarray(atlas.var_names[keep].astype(str), dtype=object)
    gene_ids = gene_ids_of(atlas.var, atlas.var_names, genes)
    coef, intercept = fit_linear(logged, codes, n_labels, C=C, max_cells=max_cells, seed=seed)
    log.info(
        "expression classifier: logistic regression on %d seurat-flavour variable genes "
        "of %d atlas cells",
        len(genes),
        min(len(codes), max_cells),
    )
    mean = np.asarray(logged.mean(axis=0), dtype=np.float32).ravel()
    return ExpressionModel(genes, gene_ids, coef, intercept, mean), logged
