"""load_query on a synthetic 10x deposit: this tree against an earlier revision, in one run.

Each version reads the same GEO-shaped deposit (benchmarks/synthetic.py) in
its own process, one after the other; wall time and peak RSS of the whole
`load_query_files` (read, check, join metadata, write the h5ad) are reported,
with the ratios. The earlier revision's library is taken with `git archive`.

    python benchmarks/load_query.py --cells 200000 --baseline af6f3b7 --results benchmarks/load_query.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
from bench import LIBRARY, REPO

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {scripts!r})
import inspect
from pathlib import Path
try:
    from atlasmap.query import load_query_files
except ImportError:  # as it was at the first baseline (af6f3b7)
    from atlasmap.query import load_query_h5ad as load
else:
    if "files" in inspect.signature(load_query_files).parameters:  # the library as it is
        from atlasmap.contract import DEPOSIT_FILES
        def load(deposit, metadata, output, **options):
            files = {{role: Path(deposit) / DEPOSIT_FILES[role] for role in ("matrix", "features", "barcodes")}}
            return load_query_files(files=files, format="10x_mtx", metadata_path=metadata, output=output, **options)
    else:  # a deposit folder, before the query formats (b5395a7)
        def load(deposit, metadata, output, **options):
            return load_query_files(deposit_dir=deposit, metadata_path=metadata, output=output, **options)
start = time.perf_counter()
adata = load({deposit!r}, {metadata!r}, {output!r}, rename={{"patients": "Sample_ID"}})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cells": adata.n_obs, "genes": adata.n_vars, "nnz": int(adata.X.nnz)}}))
"""


def library_at(revision: str, dest: Path) -> Path:
    """The atlasmap library as it was at ``revision``."""
    archive = subprocess.run(
        ["git", "archive", revision, "workflow/scripts"], cwd=REPO, capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    archive_path = dest / "scripts.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(dest, filter="data")
    return dest / "workflow" / "scripts"


def run(scripts: Path, deposit: Path, metadata: Path, output: Path) -> dict:
    code = CHILD.format(
        scripts=str(scripts), deposit=str(deposit), metadata=str(metadata), output=str(output)
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["h5ad_mb"] = output.stat().st_size / 2**20
    output.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=30_000)
    parser.add_argument("--baseline", default="af6f3b7", help="git revision to compare with")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None, help="markdown table to write")
    args = parser.parse_args()
    from atlasmap.contract import DEPOSIT_FILES
    from synthetic import Study

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        names = Study(n_genes=args.genes).write_query(tmp / "deposit", args.cells)
        deposit = tmp / "loaded"
        deposit.mkdir()
        for role, name in names.items():  # the names download_query gives the files
            (tmp / "deposit" / name).rename(deposit / DEPOSIT_FILES[role])
        print(f"deposit written in {time.perf_counter() - start:.0f} s", flush=True)
        baseline = library_at(args.baseline, tmp / "baseline")
        results = {}
        for name, scripts in (("baseline", baseline), ("this tree", LIBRARY)):
            results[name] = run(
                scripts, deposit, deposit / DEPOSIT_FILES["metadata"], tmp / "query.h5ad"
            )
            print(name, results[name], flush=True)
    old, new = results["baseline"], results["this tree"]
    ratios = {k: new[k] / old[k] for k in ("seconds", "peak_mb", "h5ad_mb")}
    print(json.dumps({"results": results, "ratios": ratios}, indent=2))
    if args.results:
        rows = "\n".join(
            f"| {name} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} | {r['h5ad_mb']:,.0f} |"
            for name, r in (
                (f"`{args.baseline}` (before)", old),
                ("this tree", new),
            )
        )
        args.results.write_text(
            f"# load_query, before and after (one run, {time.strftime('%Y-%m-%d')})\n\n"
            f"`python benchmarks/load_query.py --cells {args.cells} --baseline {args.baseline}` "
            f"on {platform.node() or 'this machine'} ({platform.processor() or platform.machine()}"
            f"): a synthetic 10x deposit of {old['cells']:,} cells x {old['genes']:,} genes, "
            f"{old['nnz']:,} stored counts; each version in its own process, read + checks + "
            "metadata join + h5ad write.\n\n"
            "| version | seconds | peak RSS (MB) | query.h5ad (MB) |\n|---|---|---|---|\n"
            f"{rows}\n| ratio (after / before) | {ratios['seconds']:.2f} | "
            f"{ratios['peak_mb']:.2f} | {ratios['h5ad_mb']:.2f} |\n"
        )


if __name__ == "__main__":
    main()
