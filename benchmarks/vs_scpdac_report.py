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
                lines.append(f"| {run['mode']} | {_size(run)} | {tool} | {r['error'][:80]} |")
                continue
            seconds = _fmt(r["seconds"])
            if tool == "atlasmap" and "map_query_seconds" in r:
                seconds += f" ({_fmt(r['map_query_seconds'])} + {_fmt(r['calls_seconds'])})"
            lines.append(
                f"| {run['mode']} | {_size(run)} | {tool} | {seconds} | "
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
            f"| {run['mode']} | {_size(run)} | "
            f"{_fmt(r.get('time_atlasmap_over_scpdac'), 2)} | "
            f"{_fmt(r.get('time_map_query_only_over_scpdac'), 2)} | "
            f"{_fmt(r.get('peak_above_baseline_atlasmap_over_scpdac'), 2)} | "
            f"{_fmt(r.get('total_peak_atlasmap_over_scpdac'), 2)} | "
            f"{pct('label_agreement_where_atlasmap_calls')} | "
            f"{pct('atlasmap_unknown_fraction', 1)} | {pct('argmax_agreement_all_cells')} | "
            f"{'—' if latent is None else f'{latent:.1e}'} |"
        )
    return "\n".join(lines)


def _size(run: dict) -> str:
    """A run's size, and which of its size's pairs it is where there are several."""
    return f"{run['cells']:,}" + (f" (#{run['repeat']})" if run.get("repeats", 1) > 1 else "")


def spread_table(summary: dict) -> str:
    """Per path and size run more than once: each ratio's median and range over the pairs
    (each pair's two runs back to back, so a change in the machine's load reaches both);
    empty where every size ran once."""
    groups: dict = {}
    for run in summary["runs"]:
        if run.get("ratios"):
            groups.setdefault((run["mode"], run["cells"]), []).append(run["ratios"])
    if all(len(pairs) < 2 for pairs in groups.values()):
        return ""
    keys = (
        ("time_atlasmap_over_scpdac", "time"),
        ("time_map_query_only_over_scpdac", "time, map_query only"),
        ("peak_above_baseline_atlasmap_over_scpdac", "peak above read"),
    )
    lines = [
        "\n\n## Spread over the pairs of runs\n",
        "Median (lowest–highest) of each ratio over the pairs of runs of one size, and "
        "scpdac's cells per second over atlasmap's (the speed-up) at the median time ratio.\n",
        "| path | cells | pairs | " + " | ".join(label for _, label in keys) + " | speed-up |",
        "|---|---:|---:|" + "---:|" * (len(keys) + 1),
    ]
    for (mode, cells), pairs in groups.items():
        if len(pairs) < 2:
            continue
        cols = []
        for key, _ in keys:
            values = np.array([p[key] for p in pairs if key in p])
            cols.append(
                f"{np.median(values):.3f} ({values.min():.3f}–{values.max():.3f})"
                if values.size
                else "—"
            )
        speedup = 1 / np.median([p["time_atlasmap_over_scpdac"] for p in pairs])
        lines.append(
            f"| {mode} | {cells:,} | {len(pairs)} | " + " | ".join(cols) + f" | {speedup:.1f}x |"
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
        spread=spread_table(summary),
        notes="".join(f"\n\n{note}" for note in summary.get("notes", [])),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
