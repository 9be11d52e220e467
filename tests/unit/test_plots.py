"""Figures: consistent colours, valid files, and the neighbour/UMAP step behind them."""

import functools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from atlasmap.contract import EMBEDDING_KEY
from atlasmap.embedding import (
    QUERY_UMAP_KEY,
    ThreadedAnnoyTransformer,
    neighbors_umap,
)
from atlasmap.metrics import classification_metrics
from atlasmap.plots import (
    MAPPING_FIGURES,
    UNKNOWN_COLOUR,
    compare_figures,
    confusion_figure,
    label_palette,
    mapping_figures,
    save_figure,
    umap_categorical,
    umap_uncertainty,
)
from atlasmap.settings import EmbeddingSettings
from conftest import assert_valid_figure, run_python

LABELS = ["T cell", "B cell", "Macrophage", "Fibroblast"]


def test_palette_is_a_function_of_the_label_set_not_of_its_order():
    a = label_palette(["T cell", "B cell", "Unknown", "Macrophage"])
    b = label_palette(["Macrophage", "T cell", "B cell"])
    assert {k: v for k, v in a.items() if k != "Unknown"} == {
        k: v for k, v in b.items() if k != "Unknown"
    }
    assert a["Unknown"] == UNKNOWN_COLOUR
    assert len(set(a.values())) == len(a)  # no two labels share a colour


def test_palette_overrides_and_many_labels():
    palette = label_palette([f"type {i}" for i in range(70)], {"type 3": "black"})
    assert palette["type 3"] == "#000000"
    assert len(set(palette.values())) == 71
    assert UNKNOWN_COLOUR not in [v for k, v in palette.items() if k != "Unknown"]


def make_expanded(n_ref=300, n_query=120, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (len(LABELS), 8))
    ref_labels = rng.choice(LABELS, n_ref)
    q_labels = rng.choice(LABELS, n_query)
    latent = np.vstack(
        [
            centres[[LABELS.index(x) for x in ref_labels]],
            centres[[LABELS.index(x) for x in q_labels]],
        ]
    ) + rng.normal(0, 1, (n_ref + n_query, 8))
    predicted = np.concatenate([ref_labels, q_labels]).astype(object)
    predicted[-5:] = "Unknown"
    obs = pd.DataFrame(
        {
            "source": pd.Categorical(["atlas"] * n_ref + ["query"] * n_query),
            "Level_4": list(ref_labels) + [np.nan] * n_query,
            "Sample_ID": [f"D{i % 3}" for i in range(n_ref)]
            + [f"PA0{1 + i % 2}" for i in range(n_query)],
            "predicted_celltype": predicted,
            "prediction_probability": rng.uniform(0.3, 1, n_ref + n_query),
            "prediction_uncertainty": rng.uniform(0, 1, n_ref + n_query),
            "barcode": [f"c{i}" for i in range(n_ref + n_query)],
        },
        index=[f"c{i}" for i in range(n_ref + n_query)],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm[EMBEDDING_KEY] = latent.astype(np.float32)
    return adata, q_labels


def test_neighbors_umap_on_the_latent_all_cells_and_query_alone():
    adata, _ = make_expanded()
    settings = EmbeddingSettings(n_neighbors=10, n_trees=5, seed=3)
    out = neighbors_umap(adata.copy(), settings)
    assert out.obsm["X_umap"].shape == (out.n_obs, 2)
    assert out.uns["neighbors"]["params"]["n_neighbors"] == 10
    assert out.obsp["connectivities"].shape == (out.n_obs, out.n_obs)
    is_query = (out.obs["source"] == "query").to_numpy()
    assert np.isnan(out.obsm[QUERY_UMAP_KEY][~is_query]).all()
    assert np.isfinite(out.obsm[QUERY_UMAP_KEY][is_query]).all()
    again = neighbors_umap(adata.copy(), settings)
    np.testing.assert_array_equal(out.obsm["X_umap"], again.obsm["X_umap"])


def test_threaded_annoy_gives_sklearn_anns_graph_and_near_exact_neighbours():
    from sklearn.neighbors import NearestNeighbors
    from sklearn_ann.kneighbors.annoy import AnnoyTransformer

    class OneThreadBuild(AnnoyTransformer):
        """sklearn-ann's transformer, its trees built on one thread as ours are (its own
        build runs a thread per core, whose trees differ with the core count)."""

        def fit(self, X, y=None):
            super().fit(X)
            self.annoy_.unbuild()
            self.annoy_.build(self.n_trees, n_jobs=1)
            return self

    latent = make_expanded()[0].obsm[EMBEDDING_KEY]
    serial = OneThreadBuild(n_neighbors=10, n_trees=10).fit_transform(latent)
    for n_jobs in (1, 2, 3):
        threaded = ThreadedAnnoyTransformer(n_neighbors=10, n_trees=10, n_jobs=n_jobs)
        graph = threaded.fit_transform(latent)
        assert (graph != serial).nnz == 0, n_jobs
    rows = graph.indices.reshape(len(latent), 11)
    assert (rows[:, 0] == np.arange(len(latent))).all()  # each cell is its own first
    exact = NearestNeighbors(n_neighbors=11).fit(latent).kneighbors(return_distance=False)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows[:, 1:], exact, strict=True)])
    assert recall > 0.9


@pytest.fixture
def mapped_files(tmp_path):
    paths = {}
    for mode, seed in (("surgery", 0), ("embed", 1)):
        adata, _ = make_expanded(seed=seed)
        adata = neighbors_umap(adata, EmbeddingSettings(n_neighbors=10, n_trees=5))
        paths[mode] = tmp_path / f"{mode}.h5ad"
        adata.write_h5ad(paths[mode])
    return paths


def test_every_mapping_figure_is_written_as_png_and_pdf(mapped_files, tmp_path):
    names = list(MAPPING_FIGURES)
    outputs = {n: [tmp_path / "plots" / f"{n}.png", tmp_path / "plots" / f"{n}.pdf"] for n in names}
    mapping_figures(
        mapped_files["surgery"],
        outputs,
        labels_key="Level_4",
        batch_key="Sample_ID",
        dpi=100,
        title="t",
    )
    for paths in outputs.values():
        for path in paths:
            assert_valid_figure(path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        f"{n}.{e}" for n in names for e in ("png", "pdf")
    )


def test_vector_figures_keep_their_text_editable_and_unclipped(tmp_path):
    """PDF text as TrueType (Type 42), SVG text as text: an editor can change a label;
    the box found once for both files is matplotlib's own tight box for each."""
    import matplotlib.pyplot as plt
    from PIL import Image

    rng = np.random.default_rng(0)
    coords = rng.normal(size=(500, 2))
    values = pd.Series(rng.choice(LABELS, size=500))

    def figure():
        return umap_categorical(coords, values, label_palette(LABELS), "a title", "Level_4")

    ours = [tmp_path / "ours.png", tmp_path / "ours.pdf", tmp_path / "ours.svg"]
    save_figure(figure(), ours, dpi=100)
    pdf = ours[1].read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf
    assert "<text" in ours[2].read_text()
    fig = figure()
    fig.savefig(tmp_path / "tight.png", dpi=100, bbox_inches="tight", pad_inches=0.02)
    plt.close(fig)
    width, height = Image.open(ours[0]).size
    tight_width, tight_height = Image.open(tmp_path / "tight.png").size
    assert abs(width - tight_width) <= 1 and abs(height - tight_height) <= 1


def test_scatters_are_drawn_once_for_all_formats_and_look_as_drawn_directly(tmp_path, monkeypatch):
    """A UMAP saved as PNG and PDF draws each scatter once (the slow part at 300k
    cells), and the PNG has the pixels matplotlib draws itself: the same size, and
    the same colour in all but a few pixels (rounding of the blend)."""
    import matplotlib.pyplot as plt
    from atlasmap.plots import STYLE, _pixel_box
    from matplotlib.collections import PathCollection
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 4000
    coords = rng.normal(size=(n, 2))
    is_query = rng.random(n) < 0.6

    def figures():
        yield (
            "labels",
            umap_categorical(
                coords,
                pd.Series(rng.choice(LABELS, size=n)),
                label_palette(LABELS),
                "labels",
                "Level_4",
                background=~is_query,
            ),
        )
        yield (
            "uncertainty",
            umap_uncertainty(coords, is_query, rng.random(n), rng.random(n) < 0.05, "uncertainty"),
        )

    direct = {}
    for name, fig in figures():  # matplotlib alone, on the same whole-pixel box
        with plt.rc_context(STYLE):
            fig.set_dpi(150)
            fig.draw_without_rendering()
            box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.02)
            fig.savefig(tmp_path / f"{name}_direct.png", dpi=150, bbox_inches=_pixel_box(box, 150))
        plt.close(fig)
        direct[name] = np.asarray(Image.open(tmp_path / f"{name}_direct.png").convert("RGB"))

    rng = np.random.default_rng(0)
    rng.normal(size=(n, 2)), rng.random(n)  # the same draws as above
    drawn = []
    draw = PathCollection.draw

    @functools.wraps(draw)
    def counted(self, renderer):
        if self.get_visible() and self.axes is not None and self in self.axes.collections:
            drawn.append(id(self))
        return draw(self, renderer)

    monkeypatch.setattr(PathCollection, "draw", counted)
    for name, fig in figures():
        drawn.clear()
        files = [tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"]
        save_figure(fig, files, dpi=150)
        # Each scatter of the axes (not a legend's marker): the layout pass, which draws
        # nothing, and one picture; drawn for each file, it would be three times.
        assert len(set(drawn)) >= 2 and all(drawn.count(i) == 2 for i in drawn), name
        assert_valid_figure(files[1])
        ours = np.asarray(Image.open(files[0]).convert("RGB"))
        assert ours.shape == direct[name].shape, name
        differ = np.abs(ours.astype(int) - direct[name]).max(axis=2) > 8
        assert differ.mean() < 0.001, name


def test_a_rule_log_is_not_flooded_by_font_embedding(tmp_path):
    """matplotlib embeds fonts in a PDF through fontTools, which logs each table it
    prunes at INFO: a rule's log would hold hundreds of such lines per figure."""
    log = tmp_path / "rule.log"
    script = (
        "from atlasmap.logs import log_to\n"
        f"log_to({str(log)!r})\n"
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "from atlasmap.plots import save_figure\n"
        "fig, ax = plt.subplots()\nax.set_title('a title')\n"
        f"save_figure(fig, [{str(tmp_path / 'f.pdf')!r}])\n"
        "import logging\nlogging.getLogger('atlasmap').info('done')\n"
    )
    run_python(script)
    lines = log.read_text().splitlines()
    assert lines[-1].endswith("atlasmap: done")
    assert not [line for line in lines if "fontTools" in line]


def test_comparison_reports_agreement(mapped_files, tmp_path):
    out = {
        k: tmp_path / f"{k}"
        for k in ("a.png", "a.pdf", "h.png", "h.pdf", "agree.tsv", "agree.json")
    }
    share = compare_figures(
        mapped_files["surgery"],
        mapped_files["embed"],
        [out["a.png"], out["a.pdf"]],
        [out["h.png"], out["h.pdf"]],
        out["agree.tsv"],
        out["agree.json"],
        labels_key="Level_4",
        dpi=100,
    )
    s = ad.read_h5ad(mapped_files["surgery"]).obs.query("source == 'query'")
    e = ad.read_h5ad(mapped_files["embed"]).obs.query("source == 'query'")
    expected = np.mean(
        s["predicted_celltype"].astype(str).to_numpy()
        == e["predicted_celltype"].astype(str).to_numpy()
    )
    assert share == pytest.approx(expected)
    table = pd.read_csv(out["agree.tsv"], sep="\t", index_col=0)
    assert table.to_numpy().sum() == len(s)
    for key in ("a.png", "a.pdf", "h.png", "h.pdf"):
        assert_valid_figure(out[key])


def test_confusion_figure(tmp_path):
    table = pd.DataFrame(
        {
            "barcode": ["a", "b", "c"],
            "predicted_celltype": ["T", "B", "Unknown"],
            "truth": ["T", "T", "B"],
        }
    )
    table.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    (tmp_path / "m.json").write_text('{"mapping": {"accuracy": 0.3333}}')
    confusion_figure(
        tmp_path / "p.tsv",
        tmp_path / "m.json",
        "truth",
        [tmp_path / "c.png"],
        labels_key="Level_4",
        dpi=100,
    )
    assert_valid_figure(tmp_path / "c.png")


def test_the_confusion_title_counts_unknown_right_for_an_unseen_type(tmp_path, monkeypatch):
    """A cell of a type the atlas lacks, called Unknown, is right in metrics.json: the
    title says the same accuracy, not the share of identical labels."""
    import json

    import atlasmap.plots as plots

    table = pd.DataFrame(
        {
            "barcode": ["a", "b", "c", "d"],
            "predicted_celltype": ["T", "B", "Unknown", "T"],
            "truth": ["T", "T", "Schwann", "T"],
        }
    )
    table.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    metrics = tmp_path / "metrics.json"
    right = classification_metrics(table["truth"], table["predicted_celltype"], {"T", "B"})
    metrics.write_text(json.dumps({"mapping": right}))
    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, paths, dpi: drawn.update(fig=fig))
    confusion_figure(
        tmp_path / "p.tsv", metrics, "truth", ["c.png"], labels_key="Level_4", title="q"
    )
    assert right["accuracy"] == 0.75
    assert drawn["fig"].axes[0].get_title() == "q: accuracy 0.750"


def test_the_tutorials_sample_and_distribution_views(mapped_files, tmp_path, monkeypatch):
    """umap_sample names the query's samples only (over the grey atlas); the query alone
    by sample; the whole expanded atlas's label distribution, atlas beside query."""
    import atlasmap.plots as plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, paths, dpi: drawn.update({paths: fig}))
    names = ["umap_sample", "umap_query_alone_sample", "label_distribution_atlas"]
    mapping_figures(
        mapped_files["surgery"],
        {name: name for name in names},
        labels_key="Level_4",
        batch_key="Sample_ID",
        title="t",
    )

    def legend_texts(fig):
        return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]

    assert legend_texts(drawn["umap_sample"]) == ["PA01", "PA02"]  # no atlas donor D0-D2
    assert legend_texts(drawn["umap_query_alone_sample"]) == ["PA01", "PA02"]
    grey = drawn["umap_sample"].axes[0].collections[0]  # the atlas, drawn first
    assert len(grey.get_offsets()) == 300
    left, right = drawn["label_distribution_atlas"].axes[:2]
    assert sum(bar.get_width() for bar in left.patches) == 420  # every cell, atlas and query
    assert [t.get_text() for t in right.get_yticklabels()] == ["atlas (n=300)", "query (n=120)"]
