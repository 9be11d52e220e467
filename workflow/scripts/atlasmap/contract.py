"""The workflow's contract with its config and its users: names, modes, file roles.

Snakemake reads this module while it parses the workflow (``common.smk``), where
only the standard library and Snakemake may be installed (a login node building
the DAG for a cluster executor): it imports the standard library alone, never
scanpy, anndata, numpy or torch. The library's modules take their constants
from here, so that each has one definition.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from .errors import AtlasmapInputError

# --- Query deposits ---------------------------------------------------------------

# The files of a query deposit, each named by its role in the config's source entry
# (the metadata table is optional).
DEPOSIT_ROLES = ("matrix", "features", "barcodes", "metadata")
# File names that download_query gives the deposit files (scanpy's 10x v3 names).
DEPOSIT_FILES = {
    "matrix": "matrix.mtx.gz",
    "features": "features.tsv.gz",
    "barcodes": "barcodes.tsv.gz",
    "metadata": "metadata.csv.gz",
}
GEO_MIRROR = "https://ftp.ncbi.nlm.nih.gov/geo"


def deposit_file_names(prefix: str) -> dict[str, str]:
    """Role -> file name of a GEO 10x deposit whose files share ``prefix``
    (GSE278688_sc -> GSE278688_sc_matrix.mtx.gz, ...)."""
    return {role: f"{prefix}_{DEPOSIT_FILES[role]}" for role in DEPOSIT_ROLES}


# --- Queries read where they are (a `path` query) ----------------------------------

# The formats load_query reads, each with the roles of its files; a Cell Ranger outs/
# folder is read as the one of them it holds (its filtered matrix's .h5, or folder).
READ_FORMATS = {
    "10x_mtx": ("matrix", "features", "barcodes"),
    "10x_h5": ("h5",),
    "h5ad": ("h5ad",),
}
# A Cell Ranger outs/ folder's filtered matrix, as .h5 and as a folder of 10x files.
CELLRANGER_H5 = "filtered_feature_bc_matrix.h5"
CELLRANGER_MTX = "filtered_feature_bc_matrix"
# The files of a folder of 10x matrix files (Cell Ranger v3+, scanpy.read_10x_mtx).
MTX_FOLDER_FILES = {
    "matrix": "matrix.mtx.gz",
    "features": "features.tsv.gz",
    "barcodes": "barcodes.tsv.gz",
}


def detect_query_format(path: str | Path) -> tuple[str, str]:
    """The format of a query's ``path`` (h5ad, 10x_h5, cellranger or 10x_mtx), and why."""
    path = Path(path)
    if path.suffix == ".h5ad":
        return "h5ad", "the .h5ad suffix"
    if path.suffix == ".h5":
        return "10x_h5", "the .h5 suffix"
    if not path.is_dir():
        raise AtlasmapInputError(
            f"{path}: cannot tell the query's format from the path (not an .h5ad, an .h5 "
            "or a folder); name it (format: h5ad, 10x_h5, cellranger or 10x_mtx)"
        )
    if (
        (path / "outs").is_dir()
        or (path / CELLRANGER_H5).exists()
        or (path / CELLRANGER_MTX).is_dir()
    ):
        return "cellranger", "a Cell Ranger outs/ folder"
    if (path / MTX_FOLDER_FILES["matrix"]).exists():
        return "10x_mtx", f"a folder holding {MTX_FOLDER_FILES['matrix']}"
    raise AtlasmapInputError(
        f"{path}: a folder with neither a Cell Ranger outs/ ({CELLRANGER_H5} or "
        f"{CELLRANGER_MTX}/) nor {MTX_FOLDER_FILES['matrix']}; name the format or the file"
    )


def query_read_files(path: str | Path, fmt: str) -> tuple[str, dict[str, str], str]:
    """What load_query reads for a ``path`` query: (read format, role -> file, the
    choice in words for the log). ``fmt`` auto is told from the path."""
    path = Path(path)
    how = f"format {fmt} (configured)"
    if fmt == "auto":
        fmt, why = detect_query_format(path)
        how = f"format {fmt} (from {why})"
    if fmt == "h5ad":
        return "h5ad", {"h5ad": str(path)}, how
    if fmt == "10x_h5":
        return "10x_h5", {"h5": str(path)}, how
    if fmt == "cellranger":
        outs = path / "outs" if (path / "outs").is_dir() else path
        if (outs / CELLRANGER_H5).exists():
            return "10x_h5", {"h5": str(outs / CELLRANGER_H5)}, f"{how}: {CELLRANGER_H5}"
        if (outs / CELLRANGER_MTX).is_dir():
            path, how = outs / CELLRANGER_MTX, f"{how}: {CELLRANGER_MTX}/"
        else:
            raise AtlasmapInputError(
                f"{path}: not a Cell Ranger outs/ folder: neither {CELLRANGER_H5} nor "
                f"{CELLRANGER_MTX}/ is in {outs}"
            )
    if fmt in ("10x_mtx", "cellranger"):
        return "10x_mtx", {role: str(path / name) for role, name in MTX_FOLDER_FILES.items()}, how
    raise AtlasmapInputError(f"{path}: unknown query format {fmt!r}")


# --- References -------------------------------------------------------------------

# The name of the config's one `reference` (results/references/default/); several are
# named by the keys of `references`.
DEFAULT_REFERENCE = "default"


# --- Mapping and its outputs ------------------------------------------------------

# The file a saved scvi-tools model folder holds (read by reference.read_model_info;
# its absence stops the plan, common.smk).
MODEL_FILE = "model.pt"

# The {mode} wildcard: scArches surgery or a frozen embedding.
MODES = ("surgery", "embed")
# obs["source"] of the expanded atlas, as the tutorial's extend_atlas writes it.
SOURCE_COLUMN = "source"
ATLAS, QUERY = "atlas", "query"
SOURCES = (ATLAS, QUERY)
# The expanded atlas's obsm: the scANVI latent space, the classifier's probabilities
# of every cell (their labels in uns["atlasmap"]), the UMAP of every cell and the
# query-alone UMAP (NaN for atlas cells).
EMBEDDING_KEY = "X_scANVI_emb"
PROBABILITIES_KEY = "scanvi_probabilities"
UMAP_KEY = "X_umap"
QUERY_UMAP_KEY = "X_umap_query"
# uns key of an atlas embedded by embed_reference: its classifier labels and model.
EMBEDDED_ATLAS_KEY = "atlasmap_reference"
# Each reference cell's Annoy neighbours (itself first), in the reference layout's file.
REFERENCE_GRAPH_KEY = "annoy_neighbors"
# The call of a cell no label fits (low probability, or unlike every atlas cell).
UNKNOWN = "Unknown"


def query_mask(obs):
    """Which cells of an expanded atlas's obs are query cells (a boolean array)."""
    return (obs[SOURCE_COLUMN] == QUERY).to_numpy()


def atlas_mask(obs):
    """Which cells of an expanded atlas's obs are atlas cells (a boolean array)."""
    return (obs[SOURCE_COLUMN] == ATLAS).to_numpy()


# Columns the call step writes for query cells (query metadata may not clash with them).
CALL_COLUMNS = [
    "predicted_celltype",
    "candidate_celltype",
    "prediction_probability",
    "prediction_uncertainty",
    "novelty_score",
    "unknown_reason",
    # Each member of the call's ensemble: its best label and that label's probability
    # (the expression member's only where the method has one).
    "knn_celltype",
    "knn_probability",
    "expression_celltype",
    "expression_probability",
]

# --- Figures ----------------------------------------------------------------------

# Every per-mode figure of plot_mapping, in the report's order; its caption is
# workflow/report/<name>.rst.
MAPPING_FIGURES = (
    "umap_celltype",
    "umap_query",
    "umap_sample",
    "umap_uncertainty",
    "umap_query_alone",
    "umap_query_alone_sample",
    "label_distribution",
    "label_distribution_atlas",
)
# Drawn only when the config asks for them (umap.query_alone).
QUERY_ALONE_FIGURES = ("umap_query_alone", "umap_query_alone_sample")


def mapping_figure_names(query_alone: bool) -> tuple[str, ...]:
    """The per-mode figures a run draws: all, less the query-alone UMAPs unless asked for."""
    return tuple(name for name in MAPPING_FIGURES if query_alone or name not in QUERY_ALONE_FIGURES)


# --- Where a query's deposit files are, from its config ---------------------------


def shards_in_plan(path: str | Path) -> list[str]:
    """The shard names of plan_shards's table (atlasmap.scatter), in its order: read while
    the workflow plans the jobs of each shard, so with the standard library alone."""
    import csv

    with open(path, newline="") as table:
        return list(dict.fromkeys(row["shard"] for row in csv.DictReader(table, delimiter="\t")))


def geo_supplementary_url(accession: str, filename: str, mirror: str = GEO_MIRROR) -> str:
    """URL of a GEO series' supplementary file, as GEO lays them out.

    GSE278688 + GSE278688_sc_matrix.mtx.gz ->
    <mirror>/series/GSE278nnn/GSE278688/suppl/GSE278688_sc_matrix.mtx.gz
    """
    match = re.fullmatch(r"GSE(\d+)", accession)
    if not match:
        raise AtlasmapInputError(f"source.geo: {accession!r} is not a GEO series accession (GSE…)")
    digits = match[1]
    stub = f"GSE{digits[:-3]}nnn" if len(digits) > 3 else "GSEnnn"
    quoted = urllib.parse.quote(filename)
    return f"{mirror.rstrip('/')}/series/{stub}/{accession}/suppl/{quoted}"


def resolve_sources(
    source: Mapping, where: str = "source", geo_mirror: str = GEO_MIRROR
) -> dict[str, str]:
    """Map each deposit role to a path or URL, from a config ``source`` entry.

    ``{"geo": GSE, "files": {role: name}}`` gives GEO supplementary URLs;
    ``{"dir": D, "files": {role: name}}`` local paths ``D/name``;
    ``{"urls": {role: url}}`` URLs (or paths) as they are.
    """
    if "urls" in source:
        locations = dict(source["urls"])
    elif "geo" in source:
        files = source.get("files") or {}
        locations = {
            role: geo_supplementary_url(source["geo"], name, geo_mirror)
            for role, name in files.items()
        }
    elif "dir" in source:
        files = source.get("files") or {}
        locations = {role: str(Path(source["dir"]) / name) for role, name in files.items()}
    else:
        raise AtlasmapInputError(f"{where}: give 'geo' with 'files', 'dir' with 'files', or 'urls'")
    missing = [role for role in DEPOSIT_ROLES[:3] if role not in locations]
    if missing:
        raise AtlasmapInputError(f"{where}: no file given for {missing}")
    # The metadata table is optional: without one, each cell has only its barcode.
    return {role: locations[role] for role in DEPOSIT_ROLES if role in locations}


def local_threads(wanted: int, cores: int | None) -> int:
    """Threads of a job that others can run beside, in a local run on ``cores`` cores:
    at most half of them (Snakemake keeps no cores free for a job waiting for several),
    at least one; ``wanted`` where each job has cores of its own (``cores`` None)."""
    return max(1, min(wanted, cores // 2)) if cores else wanted


def is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in {"http", "https", "file"}
