"""The query sample sheet (config/queries.tsv): read, checked, made config entries.

Read while Snakemake parses the workflow (``common.smk``), where only Snakemake and
its dependencies may be installed: the standard library, PyYAML and jsonschema.
Each row becomes the entry it would be in the config's ``queries`` mapping, so the
two forms plan the same jobs; the config schema then checks it and fills defaults.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from .contract import deposit_file_names, is_url
from .errors import AtlasmapInputError

SHEET_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "queries.schema.yaml"
GEO_PREFIX = re.compile(r"(GSE[0-9]+)(_[A-Za-z0-9._-]*)?")


@lru_cache
def _schema() -> dict:
    """The sheet's schema, read once (every row is checked against it)."""
    import yaml

    return yaml.safe_load(SHEET_SCHEMA.read_text())


def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each non-empty, non-comment line under the header."""
    try:
        text = path.read_text()
    except OSError as err:
        raise AtlasmapInputError(f"{path}: the query sample sheet cannot be read ({err})") from err
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.startswith("#")
    ]
    if not lines:
        raise AtlasmapInputError(f"{path}: the query sample sheet is empty (no header line)")
    (_, header_line), body = lines[0], lines[1:]
    header = [name.strip() for name in next(csv.reader([header_line], delimiter="\t"))]
    known = list(_schema()["properties"])
    unknown = [name for name in header if name not in known]
    if unknown:
        raise AtlasmapInputError(
            f"{path}, line {lines[0][0]}: unknown column(s) {unknown}; a sheet's columns are "
            f"{known} (tab-separated; workflow/schemas/queries.schema.yaml)"
        )
    rows = []
    for number, line in body:
        cells = next(csv.reader([line], delimiter="\t"))
        if len(cells) > len(header):
            raise AtlasmapInputError(
                f"{path}, line {number}: {len(cells)} cells for {len(header)} columns "
                f"({header}); is a cell split by a tab, or a column missing from the header?"
            )
        row = {name: cell.strip() for name, cell in zip(header, cells, strict=False)}
        rows.append((number, {name: value for name, value in row.items() if value != ""}))
    if not rows:
        raise AtlasmapInputError(f"{path}: the query sample sheet has a header but no query")
    return rows


def _check_row(row: dict[str, str], where: str) -> dict[str, str]:
    """The row checked against the sheet's schema, with its defaults filled in."""
    import jsonschema

    schema = _schema()
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(row), key=lambda e: list(e.path)
    )
    if errors:
        error = errors[0]
        if error.validator == "required":
            column = error.message.split("'")[1]
            raise AtlasmapInputError(f"{where}, column {column}: empty; every query needs one")
        column = error.path[0] if error.path else "?"
        raise AtlasmapInputError(
            f"{where}, column {column}: {row.get(column)!r} is not valid: "
            f"{schema['properties'][column]['description'].strip()}"
        )
    # An empty cell is the column's default: its value, or none ("").
    defaults = {name: spec.get("default", "") for name, spec in schema["properties"].items()}
    return {**defaults, **row}


def parse_subset(text: str, sample_key: str) -> dict[str, list[str]] | None:
    """``PA01,PA02`` -> {sample_key: [PA01, PA02]}; ``col=a,b;col2=c`` -> each column."""
    if not text:
        return None
    if "=" not in text:
        return {sample_key: [value.strip() for value in text.split(",") if value.strip()]}
    subset: dict[str, list[str]] = {}
    for clause in text.split(";"):
        column, values = clause.split("=", 1)
        subset[column.strip()] = [value.strip() for value in values.split(",") if value.strip()]
    return subset


def _deposit_source(row: dict[str, str], where: str) -> dict:
    """A deposit fetched by download_query: a GEO accession prefix (the series'
    supplementary files), or the prefix of files named as GEO names them, local or a URL."""
    prefix, metadata = row["path"], row["metadata"]
    files = deposit_file_names(prefix)
    del files["metadata"]
    if metadata:
        files["metadata"] = metadata
    if row["format"] != "geo":
        return {"urls": files}
    match = GEO_PREFIX.fullmatch(prefix)
    if not match:
        raise AtlasmapInputError(
            f"{where}, column path: {prefix!r} is not a GEO accession prefix: geo reads "
            "the series' supplementary files <prefix>_matrix.mtx.gz … (e.g. GSE278688_sc)"
        )
    return {"geo": match[1], "files": files}


def _query_entry(row: dict[str, str], where: str, sample_key: str) -> dict:
    """The config ``queries`` entry a checked row stands for."""
    fmt, path = row["format"], row["path"]
    if fmt == "auto":
        if GEO_PREFIX.fullmatch(path):
            fmt = "geo"
        elif is_url(path):
            fmt = "10x_mtx"
    deposit = fmt == "geo" or (fmt == "10x_mtx" and (is_url(path) or not Path(path).is_dir()))
    if deposit:
        if row["counts_layer"]:
            raise AtlasmapInputError(
                f"{where}, column counts_layer: only an h5ad has layers; a 10x deposit's "
                "matrix holds the counts"
            )
        entry: dict = {"source": _deposit_source({**row, "format": fmt}, where)}
    else:
        if is_url(path):
            raise AtlasmapInputError(
                f"{where}, column path: {path!r}: a {fmt} file is read where it is; fetch "
                "it first (only 10x_mtx and geo deposits are downloaded)"
            )
        entry = {"path": path, "format": fmt, "counts_layer": row["counts_layer"] or None}
        if row["metadata"]:
            entry["metadata"] = {"table": row["metadata"]}
    entry.update(
        sample_column=row["sample_column"] or None,
        truth=row["truth"] or None,
        reference=row["reference"] or None,
        subset=parse_subset(row["subset"], sample_key),
    )
    return entry


def read_query_sheet(
    path: str | os.PathLike, batch_keys: Mapping[str, str]
) -> tuple[dict[str, dict], dict[str, str]]:
    """The queries of a sample sheet as config entries, and where each was written
    (``config/queries.tsv, line 3``), for messages.

    ``batch_keys``: each reference's batch column, by name: a subset given as sample
    names selects on the batch column of the query's reference.
    """
    path = Path(path)
    queries: dict[str, dict] = {}
    origins: dict[str, str] = {}
    for number, raw in _rows(path):
        where = f"{path}, line {number}" + (f" (query {raw['name']})" if "name" in raw else "")
        row = _check_row(raw, where)
        name = row["name"]
        if name in queries:
            raise AtlasmapInputError(
                f"{where}, column name: {name!r} is also the name on {origins[name]}; "
                "query names must be unique (each is a folder under results/)"
            )
        reference = row.get("reference") or (
            next(iter(batch_keys)) if len(batch_keys) == 1 else None
        )
        if reference is None:
            raise AtlasmapInputError(
                f"{where}, column reference: empty, but the config has {len(batch_keys)} "
                f"references ({sorted(batch_keys)}); name the one to map onto"
            )
        if reference not in batch_keys:
            raise AtlasmapInputError(
                f"{where}, column reference: {reference!r} is not a reference of the config; "
                f"the references are {sorted(batch_keys)}"
            )
        queries[name] = _query_entry(row, where, batch_keys[reference])
        origins[name] = f"{path}, line {number}"
    return queries, origins


def sheet_columns() -> Sequence[str]:
    """The sheet's columns, in the schema's order (for the README and templates)."""
    return list(_schema()["properties"])
