"""vs_scpdac.py's report: its tables from the run's summary, in the template
benchmarks/templates/vs_scpdac.md.tmpl, and the summary as JSON beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bench import template
from vs_scpdac_data import SURGERY_EPOCHS, TOOLS, WARMUP_CELLS

# The report's fixed text: str.format fields for the run's figures and tables.
REPORT = "vs_scpdac.md.tmpl"


def _fmt(x, digits=1):
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:,.{digits}f}"


def runs_table(summary: dict) -> str:
    """Each run's seconds, cells per second and peak memory, per tool."""
    lines = [
        "| path | cells | tool | seconds | cells/s | peak above read (MB) | total peak (MB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in summary["runs"]:
        for tool in TOOLS:
            r = run[tool]
            if "error" in r:
                lines.append(f"| {run['mode']} | {run['cells']:,} | {tool} | {r['error'][:80]} |")
                continue
            seconds = _fmt(r["seconds"])
            if tool == "atlasmap" and "map_query_seconds" in r:
                seconds += f" ({_fmt(r['map_query_seconds'])} + {_fmt(r['calls_seconds'])})"
            lines.append(
                f"| {run['mode']} | {run['cells']:,} | {tool} | {seconds} | "
                f"{_fmt(r['cells_per_second'], 0)} | {_fmt(r['peak_above_baseline_mb'], 0)} | "
                f"{_fmt(r['peak_rss_mb'], 0)} |"
            )
    return "\n".join(lines)


def ratios_table(summary: dict) -> str:
    """Each run's ratios (atlasmap over scpdac) and the two tools' agreement."""
    lines = [
        "| path | cells | time | time, map_query only | peak above read | total peak | "
        "same label where atlasmap calls one | atlasmap Unknown | same argmax, all cells | "
        "max latent difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in summary["runs"]:
        r, g = run.get("ratios") or {}, run.get("agreement") or {}

        def pct(key, digits=2, g=g):
            return f"{_fmt(100 * g[key], digits)}%" if key in g else "—"

        latent = g.get("latent_max_abs_difference")
        lines.append(
            f"| {run['mode']} | {run['cells']:,} | "
            f"{_fmt(r.get('time_atlasmap_over_scpdac'), 2)} | "
            f"{_fmt(r.get('time_map_query_only_over_scpdac'), 2)} | "
            f"{_fmt(r.get('peak_above_baseline_atlasmap_over_scpdac'), 2)} | "
            f"{_fmt(r.get('total_peak_atlasmap_over_scpdac'), 2)} | "
            f"{pct('label_agreement_where_atlasmap_calls')} | "
            f"{pct('atlasmap_unknown_fraction', 1)} | {pct('argmax_agreement_all_cells')} | "
            f"{'—' if latent is None else f'{latent:.1e}'} |"
        )
    return "\n".join(lines)


def write_results(path: Path, summary: dict) -> None:
    """The report (``path``) and the summary it is made from (JSON beside it)."""
    machine = summary["machine"]
    text = template(REPORT).format(
        date=summary["date"],
        cpu=machine["cpu"],
        cores=machine["cores"],
        memory_gb=machine["memory_gb"],
        torch_threads=summary["torch_threads"],
        command=summary["command"],
        versions=", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        warmup=WARMUP_CELLS,
        atlas_cells=summary["atlas_cells"],
        surgery_epochs=SURGERY_EPOCHS,
        runs=runs_table(summary),
        ratios=ratios_table(summary),
        notes="".join(f"\n\n{note}" for note in summary.get("notes", [])),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
