"""The query sample sheet: each row the config entry it stands for; every mistake
refused naming the sheet, the line and the column."""

from pathlib import Path

import pytest
from atlasmap.errors import AtlasmapInputError
from atlasmap.sheet import parse_subset, read_query_sheet, sheet_columns

REPO = Path(__file__).resolve().parents[2]
HEADER = "name\tformat\tpath\tmetadata\tsample_column\tsubset\ttruth\treference\tcounts_layer"
ONE_REFERENCE = {"default": "Sample_ID"}


def write_sheet(tmp_path, *rows, header=HEADER):
    path = tmp_path / "queries.tsv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def row(**cells):
    columns = HEADER.split("\t")
    unknown = set(cells) - set(columns)
    assert not unknown, unknown
    return "\t".join(cells.get(column, "") for column in columns)


def test_the_demo_sheet_reads_as_a_deposit_and_an_h5ad():
    queries, origins = read_query_sheet(REPO / "config" / "queries.tsv", ONE_REFERENCE)
    assert list(queries) == ["demo", "demo_h5ad"]
    deposit, h5ad = queries["demo"], queries["demo_h5ad"]
    prefix = "resources/synthetic/deposit/DEMO_sc"
    assert deposit["source"] == {
        "urls": {
            "matrix": f"{prefix}_matrix.mtx.gz",
            "features": f"{prefix}_features.tsv.gz",
            "barcodes": f"{prefix}_barcodes.tsv.gz",
            "metadata": f"{prefix}_metadata.csv.gz",
        }
    }
    assert deposit["sample_column"] == "patients"
    assert deposit["subset"] == {"Sample_ID": ["PA01", "PA02"]}
    assert deposit["truth"] == "author_cell_type"
    assert h5ad["path"] == "resources/synthetic/query.h5ad"
    assert (h5ad["format"], h5ad["counts_layer"]) == ("h5ad", "counts")
    assert h5ad["subset"] == {"Sample_ID": ["PA03", "PA04"]}
    assert origins["demo_h5ad"].endswith("queries.tsv, line 3")


def test_a_geo_prefix_names_the_series_and_its_files(tmp_path):
    sheet = write_sheet(
        tmp_path,
        row(
            name="chen", format="geo", path="GSE278688_sc", metadata="GSE278688_sc_metadata.csv.gz"
        ),
    )
    (entry,) = read_query_sheet(sheet, ONE_REFERENCE)[0].values()
    assert entry["source"]["geo"] == "GSE278688"
    assert entry["source"]["files"]["matrix"] == "GSE278688_sc_matrix.mtx.gz"
    assert entry["source"]["files"]["metadata"] == "GSE278688_sc_metadata.csv.gz"
    assert entry["subset"] is None and entry["truth"] is None


def test_an_accession_is_told_apart_from_a_file_without_a_format(tmp_path):
    sheet = write_sheet(
        tmp_path,
        row(name="geo", path="GSE1_x"),
        row(name="h5", path="data/sample.h5"),
        row(name="url", path="https://example.org/deposit/S1"),
    )
    queries = read_query_sheet(sheet, ONE_REFERENCE)[0]
    assert queries["geo"]["source"]["geo"] == "GSE1"
    assert queries["h5"] == {**queries["h5"], "path": "data/sample.h5", "format": "auto"}
    assert queries["url"]["source"]["urls"]["barcodes"] == (
        "https://example.org/deposit/S1_barcodes.tsv.gz"
    )


def test_the_sheet_names_a_reference_of_the_config(tmp_path):
    sheet = write_sheet(
        tmp_path,
        row(name="a", path="a.h5ad", reference="lung", subset="D1"),
        row(name="b", path="b.h5ad", reference="blood", subset="D2"),
    )
    queries = read_query_sheet(sheet, {"lung": "donor", "blood": "Sample_ID"})[0]
    assert queries["a"]["reference"] == "lung"
    # A subset of sample names selects on the batch column of the query's reference.
    assert queries["a"]["subset"] == {"donor": ["D1"]}
    assert queries["b"]["subset"] == {"Sample_ID": ["D2"]}


def test_a_subset_lists_samples_or_names_its_columns():
    assert parse_subset("", "Sample_ID") is None
    assert parse_subset("PA01, PA02", "Sample_ID") == {"Sample_ID": ["PA01", "PA02"]}
    assert parse_subset("tissue=tumor;Sample_ID=PA01,PA03", "x") == {
        "tissue": ["tumor"],
        "Sample_ID": ["PA01", "PA03"],
    }


MISTAKES = [
    pytest.param(
        [row(name="a", path="a.h5ad"), row(name="a", path="b.h5ad")],
        ("line 3", "column name", "'a' is also the name on", "line 2"),
        id="duplicate name",
    ),
    pytest.param(
        [row(name="a", format="loom", path="a.loom")],
        ("line 2", "column format", "'loom'"),
        id="unknown format",
    ),
    pytest.param(
        [row(name="a", path="")],
        ("line 2", "column path", "empty"),
        id="no path",
    ),
    pytest.param(
        [row(name="my query", path="a.h5ad")],
        ("line 2", "column name", "'my query'"),
        id="a name that is not a folder name",
    ),
    pytest.param(
        [row(name="a", path="a.h5ad", reference="liver")],
        ("line 2", "column reference", "'liver'", "default"),
        id="unknown reference",
    ),
    pytest.param(
        [row(name="a", path="prefix_of_a_deposit", format="10x_mtx", counts_layer="counts")],
        ("line 2", "column counts_layer", "only an h5ad has layers"),
        id="a layer of a deposit",
    ),
    pytest.param(
        [row(name="a", format="geo", path="PRJNA123")],
        ("line 2", "column path", "not a GEO accession"),
        id="not an accession",
    ),
    pytest.param(
        [row(name="a", format="h5ad", path="https://example.org/a.h5ad")],
        ("line 2", "column path", "read where it is"),
        id="an h5ad URL",
    ),
    pytest.param(
        [row(name="a", path="a.h5ad", subset="Sample_ID=PA01=PA02")],
        ("line 2", "column subset"),
        id="a malformed subset",
    ),
    pytest.param(
        [row(name="a", path="a.h5ad") + "\textra"],
        ("line 2", "10 cells for 9 columns"),
        id="a cell too many",
    ),
]


@pytest.mark.parametrize(("rows", "expected"), MISTAKES)
def test_every_mistake_names_the_sheet_the_line_and_the_column(tmp_path, rows, expected):
    sheet = write_sheet(tmp_path, *rows)
    with pytest.raises(AtlasmapInputError) as error:
        read_query_sheet(sheet, ONE_REFERENCE)
    message = str(error.value)
    assert message.startswith(str(sheet)), message
    for part in expected:
        assert part in message, message


def test_an_unknown_column_is_refused_listing_the_known_ones(tmp_path):
    sheet = write_sheet(tmp_path, "a\ta.h5ad", header="name\tpaht")
    with pytest.raises(AtlasmapInputError, match=r"line 1: unknown column\(s\) \['paht'\]"):
        read_query_sheet(sheet, ONE_REFERENCE)


def test_a_query_without_a_reference_is_refused_where_there_are_several(tmp_path):
    sheet = write_sheet(tmp_path, row(name="a", path="a.h5ad"))
    with pytest.raises(AtlasmapInputError, match="column reference: empty.*2 references"):
        read_query_sheet(sheet, {"lung": "donor", "blood": "donor"})


def test_the_sheet_and_its_schema_agree_with_the_readme():
    readme = (REPO / "config" / "README.md").read_text()
    for column in sheet_columns():
        assert f"`{column}`" in readme, column


def cellranger_run(tmp_path, h5=True, mtx=False):
    outs = tmp_path / "S1" / "outs"
    outs.mkdir(parents=True)
    if h5:
        (outs / "filtered_feature_bc_matrix.h5").write_bytes(b"")
    if mtx:
        (outs / "filtered_feature_bc_matrix").mkdir()
    return tmp_path / "S1"


def test_auto_tells_each_format_from_the_path_and_says_why(tmp_path):
    from atlasmap.contract import query_read_files

    assert query_read_files("data/x.h5ad", "auto") == (
        "h5ad",
        {"h5ad": "data/x.h5ad"},
        "format h5ad (from the .h5ad suffix)",
    )
    assert query_read_files("data/x.h5", "auto")[:2] == ("10x_h5", {"h5": "data/x.h5"})
    # A Cell Ranger run folder, or its outs/: the filtered .h5 first, else its folder.
    run = cellranger_run(tmp_path / "a", mtx=True)
    h5 = str(run / "outs" / "filtered_feature_bc_matrix.h5")
    for path in (run, run / "outs"):
        fmt, files, how = query_read_files(path, "auto")
        assert (fmt, files) == ("10x_h5", {"h5": h5}), path
        assert "Cell Ranger outs/" in how
    run = cellranger_run(tmp_path / "b", h5=False, mtx=True)
    fmt, files, _ = query_read_files(run, "cellranger")
    folder = run / "outs" / "filtered_feature_bc_matrix"
    assert fmt == "10x_mtx" and files["matrix"] == str(folder / "matrix.mtx.gz")
    matrix_folder = tmp_path / "mtx"
    matrix_folder.mkdir()
    (matrix_folder / "matrix.mtx.gz").write_bytes(b"")
    assert query_read_files(matrix_folder, "auto")[0] == "10x_mtx"


@pytest.mark.parametrize(
    ("make", "fmt", "said"),
    [
        (lambda tmp: tmp / "notes.txt", "auto", "cannot tell the query's format"),
        (lambda tmp: tmp, "auto", "neither a Cell Ranger outs/"),
        (lambda tmp: cellranger_run(tmp, h5=False), "cellranger", "not a Cell Ranger outs/"),
    ],
    ids=["a file of no known suffix", "an empty folder", "outs/ without a matrix"],
)
def test_a_path_of_no_known_format_is_refused_naming_it(tmp_path, make, fmt, said):
    from atlasmap.contract import query_read_files

    path = make(tmp_path)
    with pytest.raises(AtlasmapInputError, match=said) as error:
        query_read_files(path, fmt)
    assert str(error.value).startswith(str(path))
