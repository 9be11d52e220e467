"""Publication figures of a mapping: UMAPs, label distribution, confusion, mode agreement.

Every figure is drawn with matplotlib directly (not scanpy's plotting) so that
legends sit outside the data, fonts are sized for print (7 pt at the saved
size) and the same label keeps the same colour in every figure of a run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402

from .contract import (  # noqa: E402
    ATLAS,
    MAPPING_FIGURES,  # noqa: F401 - figure names, with the figures
    QUERY,
    QUERY_UMAP_KEY,
    SOURCE_COLUMN,
    UMAP_KEY,
    UNKNOWN,
    atlas_mask,
    query_mask,
)
from .io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

UNKNOWN_COLOUR = "#9e9e9e"
REFERENCE_COLOUR = "#e3e3e3"
QUERY_COLOUR = "#c0392b"
MM = 1 / 25.4  # inches per millimetre
DOUBLE_COLUMN = 180 * MM
SINGLE_COLUMN = 89 * MM

STYLE = {
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.title_fontsize": 7,
    "axes.linewidth": 0.5,
    "xtick.major.width": 0.5,
    "ytick.major.width": 0.5,
    "pdf.fonttype": 42,  # editable text in Illustrator/Inkscape
    "svg.fonttype": "none",
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


def _qualitative_colours(n: int) -> list[str]:
    """n distinct colours, chosen as scanpy chooses them (its 20-, 28- or 102-colour
    palette by the number of labels), without the greys that mean Unknown or reference."""
    from scanpy.plotting import palettes

    greys = {"#7f7f7f", "#c7c7c7", "#bec1d4", "#d6bcc0"}
    for palette in (palettes.default_20, palettes.default_28, palettes.default_102):
        colours = [mcolors.to_hex(c) for c in palette if mcolors.to_hex(c) not in greys]
        if n <= len(colours):
            return colours[:n]
    hues = np.linspace(0, 1, n - len(colours), endpoint=False)
    return colours + [mcolors.to_hex(mcolors.hsv_to_rgb((h, 0.65, 0.85))) for h in hues]


def label_palette(
    labels: Iterable[str], overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Colour of each label: a fixed function of the sorted label set, so every
    figure of a run (both modes, the comparison) agrees. ``Unknown`` is grey;
    ``overrides`` (config ``plots.colors``) win."""
    names = sorted({str(x) for x in labels if pd.notna(x)} - {UNKNOWN})
    palette = dict(zip(names, _qualitative_colours(len(names)), strict=True))
    palette[UNKNOWN] = UNKNOWN_COLOUR
    for label, colour in (overrides or {}).items():
        palette[str(label)] = mcolors.to_hex(colour)
    return palette


def point_size(n_cells: int) -> float:
    """Marker area that keeps a UMAP readable from 1k to 300k cells (as scanpy does)."""
    return float(np.clip(120_000 / max(n_cells, 1), 0.3, 20.0))


def _rgba(colours: Sequence[str]) -> np.ndarray:
    """Per-point RGBA of per-point colour names, each distinct name converted once
    (matplotlib converts a list of names one by one: seconds at 300k cells)."""
    codes, distinct = pd.factorize(np.asarray(colours, dtype=object))
    return mcolors.to_rgba_array(list(distinct))[codes]


def _scatter(ax, coords, colours, size, order=None):
    order = np.arange(len(coords)) if order is None else order
    ax.scatter(
        coords[order, 0],
        coords[order, 1],
        c=_rgba(colours)[order],
        s=size,
        linewidths=0,
        rasterized=True,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(ax, palette: Mapping[str, str], labels: Sequence[str], title: str | None = None):
    handles = [
        plt.Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markersize=4,
            markerfacecolor=palette[label],
            markeredgewidth=0,
            label=label,
        )
        for label in labels
    ]
    ncol = int(np.ceil(len(labels) / 22))
    ax.legend(
        handles=handles,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        ncol=ncol,
        handletextpad=0.2,
        columnspacing=0.8,
        borderaxespad=0,
    )


def _stacked_shares(
    ax,
    shares: pd.DataFrame,
    palette: Mapping[str, str],
    linewidth: float = 0.2,
    min_annotated: float | None = None,
) -> None:
    """Each row of ``shares`` (its shares per label, the columns, in drawing order) as
    one horizontal 100%-stacked bar, top to bottom in the rows' order, coloured by
    ``palette``; a segment of at least ``min_annotated`` of its bar is labelled with
    its percentage. Each label's segments are one container, named by the label."""
    y = np.arange(len(shares))
    start = np.zeros(len(shares))
    for label in shares.columns:
        share = shares[label].to_numpy(dtype=float)
        colour = palette.get(label, UNKNOWN_COLOUR)
        ax.barh(
            y,
            share,
            left=start,
            color=colour,
            height=0.75,
            edgecolor="white",
            linewidth=linewidth,
            label=label,
        )
        if min_annotated is not None:
            for i in np.flatnonzero(share >= min_annotated):
                ax.text(
                    start[i] + share[i] / 2,
                    i,
                    f"{100 * share[i]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=5,
                    color=_text_colour(colour),
                )
        start += share
    ax.set_ylim(len(shares) - 0.5, -0.5)  # the first row on top
    ax.set_xlim(0, 1)


def _shuffled(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def umap_categorical(
    coords: np.ndarray,
    values: pd.Series,
    palette: Mapping[str, str],
    title: str,
    legend_title: str | None = None,
    background: np.ndarray | None = None,
    width: float = DOUBLE_COLUMN * 0.62,
):
    """UMAP coloured by a categorical column; ``background`` cells drawn grey underneath."""
    values = values.astype(str).to_numpy()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(width, width * 0.7))
        if background is not None and background.any():
            _scatter(
                ax,
                coords[background],
                [REFERENCE_COLOUR] * int(background.sum()),
                point_size(len(coords)),
            )
        shown = np.ones(len(coords), bool) if background is None else ~background
        idx = np.flatnonzero(shown)
        colours = [palette.get(v, UNKNOWN_COLOUR) for v in values[idx]]
        _scatter(ax, coords[idx], colours, point_size(len(coords)), order=_shuffled(len(idx)))
        present = [label for label in palette if label in set(values[idx])]
        _legend(ax, palette, present, legend_title)
        ax.set_title(title)
    return fig


def umap_query_highlight(coords: np.ndarray, is_query: np.ndarray, title: str):
    """Query cells in colour on top of the reference in grey."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN * 1.25, SINGLE_COLUMN * 1.0))
        size = point_size(len(coords))
        _scatter(ax, coords[~is_query], [REFERENCE_COLOUR] * int((~is_query).sum()), size)
        _scatter(ax, coords[is_query], [QUERY_COLOUR] * int(is_query.sum()), size)
        _legend(ax, {ATLAS: REFERENCE_COLOUR, QUERY: QUERY_COLOUR}, [ATLAS, QUERY])
        ax.set_title(title)
    return fig


def umap_uncertainty(
    coords: np.ndarray,
    is_query: np.ndarray,
    uncertainty: np.ndarray,
    unknown: np.ndarray,
    title: str,
):
    """Query cells coloured by kNN uncertainty; cells called Unknown ringed in black."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN * 1.3, SINGLE_COLUMN * 1.0))
        size = point_size(len(coords))
        _scatter(ax, coords[~is_query], [REFERENCE_COLOUR] * int((~is_query).sum()), size)
        q = np.flatnonzero(is_query)
        order = q[np.argsort(uncertainty[q], kind="stable")]  # most uncertain on top
        points = ax.scatter(
            coords[order, 0],
            coords[order, 1],
            c=uncertainty[order],
            cmap="plasma",
            vmin=0,
            vmax=1,
            s=size,
            linewidths=0,
            rasterized=True,
        )
        u = np.flatnonzero(is_query & unknown)
        if len(u):
            ax.scatter(
                coords[u, 0],
                coords[u, 1],
                s=size * 6,
                facecolors="none",
                edgecolors="black",
                linewidths=0.4,
                rasterized=True,
                label=f"Unknown ({len(u)})",
            )
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), frameon=False)
        bar = fig.colorbar(points, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label("prediction uncertainty")
        bar.outline.set_linewidth(0.5)
        ax.set_title(title)
    return fig


def label_distribution(
    labels: pd.Series,
    samples: pd.Series,
    palette: Mapping[str, str],
    title: str,
    counted: str = "query cells",
    composition: str = "composition per sample",
    per_label: str = "cells per predicted label",
):
    """Labels as horizontal bars: counts per label (left), each sample's fractions (right)."""
    table = pd.crosstab(labels.astype(str), samples.astype(str))
    order = [label for label in palette if label in table.index]
    order += [label for label in table.index if label not in order]
    table = table.loc[order]
    totals = table.sum(axis=1)
    fractions = table / table.sum(axis=0)
    n_labels, n_samples = table.shape
    height = max(1.6, 0.13 * n_labels + 0.5, 0.22 * n_samples + 0.8)
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(
            1,
            2,
            figsize=(DOUBLE_COLUMN, height),
            gridspec_kw={"width_ratios": [1, 1.2]},
            layout="constrained",
        )
        y = np.arange(n_labels)
        left.barh(
            y, totals.to_numpy(), color=[palette.get(x, UNKNOWN_COLOUR) for x in order], height=0.75
        )
        left.set_yticks(y, order)
        left.invert_yaxis()
        left.set_xlabel(counted)
        for i, total in enumerate(totals):
            left.text(total, i, f" {total}", va="center", fontsize=5)
        left.set_xlim(0, totals.max() * 1.18)
        left.set_title(per_label)
        _stacked_shares(right, fractions.T, palette)
        right.set_yticks(
            np.arange(n_samples), [f"{s} (n={n})" for s, n in table.sum(axis=0).items()]
        )
        right.set_xlabel("fraction of the sample's cells")
        right.set_title(composition)
        _legend(right, palette, order)
        for ax in (left, right):
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
        fig.suptitle(title, fontsize=8)
    return fig


def cross_table_heatmap(
    rows: pd.Series,
    columns: pd.Series,
    row_title: str,
    column_title: str,
    title: str,
    row_order: Sequence[str] | None = None,
    column_order: Sequence[str] | None = None,
):
    """Row-normalised cross-table as a heatmap, annotated with the cell counts."""
    table = pd.crosstab(rows.astype(str), columns.astype(str))
    if row_order is not None:
        table = table.reindex(
            [r for r in row_order if r in table.index]
            + [r for r in table.index if r not in row_order]
        )
    if column_order is not None:
        cols = list(
            dict.fromkeys([c for c in column_order if c in table.columns] + list(table.columns))
        )
        table = table[cols]
    shares = table.div(table.sum(axis=1), axis=0)
    n_rows, n_cols = table.shape
    cell = 0.2
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(
            figsize=(max(2.5, cell * n_cols + 1.8), max(2.0, cell * n_rows + 1.6))
        )
        image = ax.imshow(shares.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n_cols), table.columns, rotation=60, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n_rows), table.index)
        if n_rows * n_cols <= 900:
            for i in range(n_rows):
                for j in range(n_cols):
                    count = table.iat[i, j]
                    if count:
                        ax.text(
                            j,
                            i,
                            str(count),
                            ha="center",
                            va="center",
                            fontsize=4.5,
                            color="white" if shares.iat[i, j] > 0.6 else "black",
                        )
        ax.set_xlabel(column_title)
        ax.set_ylabel(row_title)
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        bar.set_label(f"share of {row_title.split(' ')[0]} row")
        bar.outline.set_linewidth(0.5)
        ax.set_title(title)
    return fig


def _pixel_box(box, dpi: int):
    """``box`` (inches) moved to whole pixels at ``dpi``, its size kept to half a pixel."""
    from matplotlib.transforms import Bbox

    x0, y0 = (np.round(v * dpi) / dpi for v in (box.x0, box.y0))
    width, height = (np.round(v * dpi) / dpi for v in (box.width, box.height))
    return Bbox.from_bounds(x0, y0, width, height)


def _draw_scatters_once(fig) -> None:
    """Put in place of each axes' rasterised scatters one picture of them, drawn once.

    Saved to PNG and PDF, a scatter of 300k cells is drawn by Agg for each file (1.7 s
    each). Here the scatters are drawn once, at the figure's dpi (the saving dpi, laid
    out at it: :func:`save_figure`), as matplotlib draws a PDF's rasterised layer (a
    transparent canvas, each axes' clip kept), and each axes shows its part of that
    canvas as an image in their place, pixel for pixel (the saved box starts on a
    whole pixel: :func:`_pixel_box`): every file embeds the same pixels. One picture
    per axes keeps the scatters' order because our UMAP axes hold nothing else. The
    scatters stay in the figure, hidden (legends and colour bars refer to them).
    """
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.collections import PathCollection

    scatters = [
        (ax, artist)
        for ax in fig.axes
        for artist in ax.get_children()
        if isinstance(artist, PathCollection) and artist.get_rasterized() and artist.get_visible()
    ]
    if not scatters:
        return
    width, height = (int(v) for v in fig.bbox.size)
    renderer = RendererAgg(width, height, fig.dpi)
    for ax in dict.fromkeys(ax for ax, _ in scatters):
        mine = [a for owner, a in scatters if owner is ax]
        for artist in sorted(mine, key=lambda a: a.get_zorder()):  # the axes' order
            artist.draw(renderer)
            artist.set_visible(False)
        # The whole pixels around the axes, as rows from the top (Agg's) and columns.
        x0, y0, x1, y1 = ax.bbox.extents
        left, right = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), width)
        bottom, top = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), height)
        picture = np.asarray(renderer.buffer_rgba())[height - top : height - bottom]
        corners = ax.transData.inverted().transform([(left, bottom), (right, top)])
        limits = ax.get_xlim(), ax.get_ylim()
        ax.imshow(
            picture[:, left:right].copy(),
            extent=(corners[0, 0], corners[1, 0], corners[0, 1], corners[1, 1]),
            origin="upper",
            aspect="auto",
            interpolation="nearest",
            zorder=min(a.get_zorder() for a in mine),
        )
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])


def save_figure(fig, paths: Iterable[str | os.PathLike], dpi: int = 300) -> None:
    """Save ``fig`` to every path (format from the suffix), each whole or not at all.

    The tight bounding box is found once, for every format: asked for "tight",
    matplotlib lays the figure out again for each file, and a vector file
    rasterises its scatters twice (seconds per figure at 300k cells). The
    scatters are drawn once for all files (:func:`_draw_scatters_once`).
    """
    # The style again: the font types of PDF and SVG files are read when they are written.
    with plt.rc_context(STYLE):
        # Laid out at the saving dpi, as savefig lays it out again: the scatters' picture
        # and the box are then where the saved figure has its axes.
        fig.set_dpi(dpi)
        fig.draw_without_rendering()
        _draw_scatters_once(fig)
        box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(STYLE["savefig.pad_inches"])
        box = _pixel_box(box, dpi)
        for path in paths:
            path = Path(path)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."), bbox_inches=box)
    plt.close(fig)


# --- The figures of the workflow, from its files --------------------------------


def prediction_column(level: str | None, labels_key: str) -> str:
    """obs/predictions column holding the calls at ``level`` (the labels key by default)."""
    return "predicted_celltype" if level in (None, labels_key) else f"predicted_{level}"


def read_mapped_obs(path: str | os.PathLike):
    """obs and obsm of a mapped.h5ad, without loading its counts or graphs."""
    from .io import read_annotations

    adata = read_annotations(path, uns=False)
    return adata.obs, {k: np.asarray(v) for k, v in adata.obsm.items()}


def run_palette(obs: pd.DataFrame, level: str, column: str, overrides=None) -> dict[str, str]:
    """The palette of a run: every reference label at ``level`` plus every call."""
    labels = set(obs[column].dropna().astype(str))
    if level in obs:
        labels |= set(obs.loc[atlas_mask(obs), level].dropna().astype(str))
    return label_palette(labels, overrides)


def mapping_figures(
    mapped: str | os.PathLike,
    outputs: Mapping[str, Sequence[str | os.PathLike]],
    labels_key: str,
    batch_key: str,
    level: str | None = None,
    colors: Mapping[str, str] | None = None,
    dpi: int = 300,
    title: str = "",
) -> None:
    """Draw every per-mode figure named in ``outputs`` (name -> files, one per format)."""
    obs, obsm = read_mapped_obs(mapped)
    level = level or labels_key
    column = prediction_column(level, labels_key)
    palette = run_palette(obs, level, column, colors)
    coords = obsm[UMAP_KEY]
    query = query_mask(obs)
    sample_palette = label_palette(obs.loc[query, batch_key].astype(str))
    figures = {
        "umap_celltype": lambda: umap_categorical(
            coords, obs[column], palette, f"{title}: predicted {level}", legend_title=level
        ),
        "umap_query": lambda: umap_query_highlight(coords, query, f"{title}: query on the atlas"),
        # The query's samples over the grey atlas: an atlas's hundreds of donors
        # would make a legend no one can read.
        "umap_sample": lambda: umap_categorical(
            coords,
            obs[batch_key],
            sample_palette,
            f"{title}: query {batch_key}",
            legend_title=batch_key,
            background=~query,
        ),
        "umap_uncertainty": lambda: umap_uncertainty(
            coords,
            query,
            obs["prediction_uncertainty"].to_numpy(dtype=float),
            (obs[column].astype(str) == UNKNOWN).to_numpy(),
            f"{title}: uncertainty",
        ),
        "umap_query_alone": lambda: umap_categorical(
            obsm[QUERY_UMAP_KEY][query],
            obs.loc[query, column],
            palette,
            f"{title}: query alone, predicted {level}",
            legend_title=level,
        ),
        "umap_query_alone_sample": lambda: umap_categorical(
            obsm[QUERY_UMAP_KEY][query],
            obs.loc[query, batch_key],
            sample_palette,
            f"{title}: query alone, {batch_key}",
            legend_title=batch_key,
        ),
        "label_distribution": lambda: label_distribution(
            obs.loc[query, column],
            obs.loc[query, batch_key],
            palette,
            f"{title}: predicted {level}",
        ),
        # The tutorial's view: the whole expanded atlas, atlas labels and query calls.
        "label_distribution_atlas": lambda: label_distribution(
            obs[column],
            obs[SOURCE_COLUMN],
            palette,
            f"{title}: {level} in the expanded atlas",
            counted="cells",
            composition="composition of atlas and query",
            per_label="cells per label (atlas: its own; query: called)",
        ),
    }
    for name, paths in outputs.items():
        save_figure(figures[name](), paths, dpi)
        log.info("drew %s", name)


def confusion_figure(
    predictions: str | os.PathLike,
    metrics: str | os.PathLike,
    truth: str,
    outputs: Sequence[str | os.PathLike],
    labels_key: str,
    level: str | None = None,
    colors: Mapping[str, str] | None = None,
    dpi: int = 300,
    title: str = "",
) -> None:
    """Known labels (rows) against the calls at the labels key (columns). The title's
    accuracy is evaluate_mapping's (``metrics``, its metrics.json), which counts Unknown
    right for a cell of a type the atlas lacks."""
    table = pd.read_csv(predictions, sep="\t", dtype={"barcode": str})
    column = prediction_column(labels_key, labels_key)
    order = list(label_palette(pd.concat([table[truth], table[column]]).astype(str), colors))
    accuracy = json.loads(Path(metrics).read_text())["mapping"]["accuracy"]
    fig = cross_table_heatmap(
        table[truth],
        table[column],
        f"{truth} (known)",
        f"predicted {labels_key}",
        f"{title}: accuracy {accuracy:.3f}",
        row_order=order,
        column_order=order,
    )
    save_figure(fig, outputs, dpi)


def compare_figures(
    surgery: str | os.PathLike,
    embed: str | os.PathLike,
    side_by_side: Sequence[str | os.PathLike],
    heatmap: Sequence[str | os.PathLike],
    agreement: str | os.PathLike,
    agreement_summary: str | os.PathLike,
    labels_key: str,
    level: str | None = None,
    colors: Mapping[str, str] | None = None,
    dpi: int = 300,
    title: str = "",
) -> float:
    """Surgery and embed UMAPs side by side, their calls cross-tabulated; returns the agreement."""
    from .metrics import mode_agreement

    level = level or labels_key
    column = prediction_column(level, labels_key)
    (obs_s, obsm_s), (obs_e, obsm_e) = read_mapped_obs(surgery), read_mapped_obs(embed)
    palette = run_palette(pd.concat([obs_s, obs_e]), level, column, colors)
    calls_s, calls_e, share, cross = mode_agreement(obs_s, obs_e, column)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, 2, figsize=(DOUBLE_COLUMN, DOUBLE_COLUMN * 0.42), layout="constrained"
        )
        for ax, obs, obsm, mode in (
            (axes[0], obs_s, obsm_s, "surgery"),
            (axes[1], obs_e, obsm_e, "embed"),
        ):
            values = obs[column].astype(str).to_numpy()
            _scatter(
                ax,
                obsm[UMAP_KEY],
                [palette.get(v, UNKNOWN_COLOUR) for v in values],
                point_size(len(values)),
                order=_shuffled(len(values)),
            )
            ax.set_title(f"{mode}")
        present = [
            label
            for label in palette
            if label in set(obs_s[column].astype(str)) | set(obs_e[column].astype(str))
        ]
        _legend(axes[1], palette, present, level)
        fig.suptitle(
            f"{title}: predicted {level}; the modes agree on {100 * share:.1f}% of query cells",
            fontsize=8,
        )
    save_figure(fig, side_by_side, dpi)
    order = list(palette)
    save_figure(
        cross_table_heatmap(
            calls_s,
            calls_e,
            "surgery call",
            "embed call",
            f"{title}: agreement {100 * share:.1f}%",
            order,
            order,
        ),
        heatmap,
        dpi,
    )
    with atomic_path(agreement) as tmp:
        cross.to_csv(tmp, sep="\t")
    with atomic_path(agreement_summary) as tmp:
        tmp.write_text(
            json.dumps(
                {"level": level, "query_cells": len(calls_s), "agreement": round(share, 4)},
                indent=2,
            )
            + "\n"
        )
    log.info("surgery and embed agree on %.2f%% of %d query cells", 100 * share, len(calls_s))
    return share


# --- The summary across queries, modes and references ----------------------------


def _text_colour(colour: str) -> str:
    """Black or white, whichever reads better on ``colour`` (its relative luminance)."""
    red, green, blue = mcolors.to_rgb(colour)
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"


def label_distribution_across(
    shares: pd.DataFrame,
    palette: Mapping[str, str],
    title: str,
    cells: pd.Series | None = None,
    min_annotated: float = 0.07,
):
    """Each row of ``shares`` (a mapping; its shares of cells per label, the columns)
    as one horizontal 100%-stacked bar, top to bottom in the rows' order, segments in
    the palette's order and colours; a segment of at least ``min_annotated`` of its
    bar is labelled with its percentage. ``cells`` (per row) adds "(n=...)" to the
    bars' names. The legend lists every label of any bar, each once."""
    from matplotlib.ticker import PercentFormatter

    order = [label for label in palette if label in shares.columns]
    order += [label for label in shares.columns if label not in order]
    n_runs, n_labels = len(shares), len(order)
    ncol = int(np.ceil(n_labels / 22))
    legend_rows = int(np.ceil(n_labels / ncol))
    height = max(1.4, 0.24 * n_runs + 0.8, 0.115 * legend_rows + 0.6)
    names = [
        f"{name} (n={int(cells[name]):,})" if cells is not None else str(name)
        for name in shares.index
    ]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(DOUBLE_COLUMN, height), layout="constrained")
        _stacked_shares(ax, shares[order], palette, linewidth=0.3, min_annotated=min_annotated)
        ax.set_yticks(np.arange(n_runs), names)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("share of the mapping's query cells")
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        _legend(ax, palette, order)
        ax.set_title(title)
    return fig
