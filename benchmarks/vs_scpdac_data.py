"""vs_scpdac.py's plan and its synthetic study: the sizes, and the query and atlas both
tools map (drawn sparse, benchmarks/synthetic.py's cell-type programmes)."""

from __future__ import annotations

import numpy as np

FULL = {"frozen": [10_000, 100_000, 200_000], "surgery": [10_000], "atlas": 10_000}
SMOKE = {"frozen": [1_000], "surgery": [300], "atlas": 300}
N_GENES = 30_000
DROPPED = 0.10
UMIS = 1_150  # about 1,000 detected genes per cell
N_SAMPLES = 14
WARMUP_CELLS = 200
SURGERY_EPOCHS = 10
GENERATOR_VERSION = 1  # bump when the data change: cached h5ad files are named by it
TOOLS = ("scpdac", "atlasmap")


class Panel:
    """The study: 30k genes, the model's genes on the most type-variable of them, a tenth dropped."""

    def __init__(self, model_genes, seed: int = 0):
        from synthetic import _type_log_weights

        rng = np.random.default_rng(seed)
        self.log_weights = _type_log_weights(rng, N_GENES)
        self.n_types = self.log_weights.shape[0]
        self.share = rng.dirichlet(np.full(self.n_types, 5.0))
        model_genes = np.asarray(model_genes, dtype=object)
        # The model's genes are markers: put them on the genes whose level varies most by type.
        self.model_columns = np.argsort(-self.log_weights.var(axis=0), kind="stable")[
            : len(model_genes)
        ]
        self.model_genes = model_genes
        dropped = rng.choice(len(model_genes), int(round(DROPPED * len(model_genes))), False)
        self.dropped = np.sort(dropped)
        names = np.array([f"XGENE{i:05d}" for i in range(N_GENES)], dtype=object)
        kept = np.setdiff1d(np.arange(len(model_genes)), self.dropped)
        names[self.model_columns[kept]] = model_genes[kept]
        self.query_genes = names
        self.tech = rng.normal(0, 0.4, N_GENES)

    def _counts(self, rng, n_cells: int, shifts: list[np.ndarray], chunk: int = 20_000):
        """CSR counts and cell types, sample by sample, chunk by chunk."""
        import scipy.sparse as sp
        from synthetic import _draw

        parts, types_all, samples = [], [], []
        for s, size in enumerate(np.array_split(np.arange(n_cells), len(shifts))):
            for cells in np.array_split(size, max(1, len(size) // chunk)):
                types = rng.choice(self.n_types, len(cells), p=self.share)
                parts.append(_draw(rng, self.log_weights, types, shifts[s], UMIS))
                types_all.append(types)
                samples.append(np.full(len(cells), s))
        return sp.vstack(parts).tocsr(), np.concatenate(types_all), np.concatenate(samples)

    def query(self, n_cells: int, seed: int):
        """The query AnnData: counts in X (float32 CSR), Sample_ID PA01..PA14 (new batches)."""
        import anndata as ad
        import pandas as pd

        rng = np.random.default_rng(seed)
        n_samples = min(N_SAMPLES, max(1, n_cells // 50))
        shifts = [self.tech + rng.normal(0, 0.2, N_GENES) for _ in range(n_samples)]
        counts, types, samples = self._counts(rng, n_cells, shifts)
        obs = pd.DataFrame(
            {
                "Sample_ID": pd.Categorical([f"PA{s + 1:02d}" for s in samples]),
                "tissue": "tumour",
                "synthetic_type": types,
            },
            index=[f"BC{i:09d}-1" for i in range(n_cells)],
        )
        return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=list(self.query_genes)))

    def atlas(self, n_cells: int, model_batches, model_labels, seed: int):
        """A reference over the model's genes: 8 of its batches, one of its labels per type."""
        import anndata as ad
        import pandas as pd

        rng = np.random.default_rng(seed)
        batches = list(model_batches)[:8]
        shifts = [rng.normal(0, 0.25, N_GENES) for _ in batches]
        counts, types, samples = self._counts(rng, n_cells, shifts)
        counts = counts[:, self.model_columns].tocsr()
        # Less the model's unlabelled category (scANVI's; this model names it "Unknown").
        labels = [x for x in model_labels if x != "Unknown"]
        type_label = np.asarray(labels, dtype=object)[
            np.random.default_rng(seed + 1).choice(len(labels), self.n_types, replace=False)
        ]
        obs = pd.DataFrame(
            {
                "Sample_ID": pd.Categorical(np.asarray(batches, dtype=object)[samples]),
                "Level_4": pd.Categorical(type_label[types]),
            },
            index=[f"atlas_{i:07d}" for i in range(n_cells)],
        )
        atlas = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=list(self.model_genes)))
        atlas.layers["counts"] = atlas.X
        return atlas
