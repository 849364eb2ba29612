"""description.json: what an experiment folder holds, so the dashboard can draw any experiment.

    {"format": "experiment-description/1", "kind": "durability", "name": "example", "title": "...",
     "baseline": "random", "report": "report.md",
     "primary": [{"comparison": ..., "outcome": ..., "diff": ..., "ci_lo": ..., "p": ..., "mde": ..., ...}],
     "tables":  [{"name": "results", "path": "results.csv", "caption": "..."}],
     "figures": [{"path": "figures/curves.png", "caption": "..."}],
     "curves":  {"x": "step", "columns": ["val_loss", ...],
                 "runs": [{"run": "random_s0", "condition": "random", "path": "curves/random_s0.csv",
                           "labels": {"init_seed": 0, ...}}]},
     "provenance": {...}}

Every path is relative to the experiment folder and stays inside it. Per-run curve files are copies of the
columns the experiment compares from each run's tables/summary.csv (step, tokens_seen, outcomes), so a
committed example draws without its (uncommitted) run folders.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import UserError
from common.io import atomic_write_json, atomic_write_text, provenance
from experiments.common.stats import mean_band

FORMAT = "experiment-description/1"
FILENAME = "description.json"
CURVES_DIR = "curves"


def _json_safe(value):
    """NaN/inf become null (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_run_curves(exp_dir, runs, columns, x_columns=("step", "tokens_seen")):
    """Copy each run's x and outcome columns from runs/<name>/tables/summary.csv to curves/<name>.csv.
    runs: dicts with name and condition (+ labels). Returns the description's curves["runs"] entries."""
    exp_dir = Path(exp_dir)
    entries = []
    for run in runs:
        summary = exp_dir / "runs" / run["name"] / "tables" / "summary.csv"
        if not summary.exists():
            raise UserError(f"{summary} missing — re-run the experiment command to finish run {run['name']}")
        table = pd.read_csv(summary)
        keep = [c for c in list(x_columns) + list(columns) if c in table.columns]
        path = Path(CURVES_DIR) / f"{run['name']}.csv"
        atomic_write_text(exp_dir / path, table[keep].sort_values("step").to_csv(index=False))
        labels = {k: v for k, v in run.items() if k not in ("name", "condition", "train", "eval", "steps")
                  and isinstance(v, (int, float, str, type(None)))}
        entries.append({"run": run["name"], "condition": run["condition"], "path": path.as_posix(), "labels": labels})
    return entries


def write_description(exp_dir, kind, title, *, report="report.md", tables=(), figures=(), curve_runs=(),
                      curve_columns=(), primary=(), baseline=None, x="step", **extra):
    """Write description.json into exp_dir (atomically) and return its path. Paths must exist."""
    exp_dir = Path(exp_dir)
    description = {"format": FORMAT, "kind": kind, "name": exp_dir.name, "title": title, "baseline": baseline,
                   "report": report, "primary": list(primary), "tables": list(tables), "figures": list(figures),
                   "curves": {"x": x, "columns": list(curve_columns), "runs": list(curve_runs)},
                   **extra, "provenance": provenance()}
    for rel in _paths(description):
        if not (exp_dir / rel).exists():
            raise UserError(f"description lists {rel} but {exp_dir / rel} does not exist")
    path = exp_dir / FILENAME
    atomic_write_json(path, _json_safe(description))
    return path


def _paths(description):
    paths = [description["report"]] if description.get("report") else []
    paths += [t["path"] for t in description.get("tables", [])]
    paths += [f["path"] for f in description.get("figures", [])]
    paths += [r["path"] for r in description.get("curves", {}).get("runs", [])]
    return paths


def inside(exp_dir, rel):
    """exp_dir / rel, only when it stays inside exp_dir (a description is data, not trusted paths)."""
    base = Path(exp_dir).resolve()
    path = (base / str(rel)).resolve()
    if not path.is_relative_to(base):
        raise UserError(f"path {rel!r} in {FILENAME} leaves the experiment folder {exp_dir}")
    return path


def read_description(exp_dir):
    """The parsed description.json of exp_dir (checked: format, keys, paths inside the folder)."""
    path = Path(exp_dir) / FILENAME
    if not path.exists():
        raise UserError(f"{path} not found — run the experiment script (it writes {FILENAME} after the analysis)")
    try:
        description = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}) — re-run the experiment's analysis to rewrite it")
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise UserError(f"{path} is not an {FORMAT} file — re-run the experiment's analysis to rewrite it")
    for rel in _paths(description):
        inside(exp_dir, rel)
    return description


def find_experiments(out_root):
    """Experiment folders under out_root/experiments/<kind>/<name> that hold a description.json or an
    experiment.json (still running) -> sorted ['<kind>/<name>', ...]."""
    base = Path(out_root) / "experiments"
    if not base.is_dir():
        return []
    found = []
    for kind in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for folder in sorted(p for p in kind.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            if (folder / FILENAME).exists() or (folder / "experiment.json").exists():
                found.append(f"{kind.name}/{folder.name}")
    return found


def run_curves(exp_dir, description):
    """All per-run curve files as one long table: run, condition, x columns and outcome columns."""
    frames = []
    for entry in description["curves"]["runs"]:
        path = inside(exp_dir, entry["path"])
        if path.exists():
            frames.append(pd.read_csv(path).assign(run=entry["run"], condition=entry["condition"]))
    if not frames:
        raise UserError(f"no per-run curve files under {Path(exp_dir) / CURVES_DIR} yet")
    return pd.concat(frames, ignore_index=True)


def condition_bands(curves, column, x="step"):
    """Mean and 95% t-interval over runs of `column` per condition and x -> DataFrame(condition, x, n, mean,
    ci_lo, ci_hi)."""
    rows = []
    for condition, group in curves.dropna(subset=[column]).groupby("condition", sort=False):
        wide = group.pivot_table(index=x, columns="run", values=column, aggfunc="first")
        mean, lo, hi = mean_band(wide.to_numpy().T)
        rows.append(pd.DataFrame({"condition": condition, x: wide.index, "n": np.isfinite(wide.to_numpy()).sum(1),
                                  "mean": mean, "ci_lo": lo, "ci_hi": hi}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["condition", x, "n", "mean", "ci_lo", "ci_hi"])
