"""Show what fed one optimizer step of a run: its story ids in order, their metadata metrics, and their text.

    python modelling/batch_viewer.py --out_dir out/demo --step 120
    python modelling/batch_viewer.py --out_dir out/demo --step 120 --columns flesch_ease,n_words --chars 0

Reads out/RUN/config.json and the batch log (modelling/batch_log.py), the dataset's shared reader for text and,
when present, data/<raw>/tok<V>/metadata.parquet for the metric columns.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

import pandas as pd

from common.errors import UserError, run_main
from metadata.table import metadata_path
from modelling.checkpoints import load_run
from modelling.samplers import load_metadata


def step_table(run, step, columns=None):
    """DataFrame of the step's stories in training order: position, story_id, n_tokens and metric columns."""
    story_ids = run.batch_log.step(step)
    cfg = run.config["config"]
    table = pd.DataFrame({"position": range(len(story_ids)), "story_id": story_ids})
    if metadata_path(cfg["dataset"], cfg["vocab_size"]).exists():
        metadata = load_metadata(cfg["dataset"], cfg["vocab_size"])
        wanted = list(metadata.columns) if not columns else columns
        unknown = [c for c in wanted if c not in metadata.columns]
        if unknown:
            raise UserError(f"unknown metadata column(s) {', '.join(unknown)}; available: "
                            f"{', '.join(metadata.columns)}")
        table = table.join(metadata[wanted], on="story_id")
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out_dir", required=True, help="run folder, e.g. out/demo")
    ap.add_argument("--step", type=int, required=True, help="optimizer step (1-based)")
    ap.add_argument("--columns", default="", help="comma-separated metadata columns (default: all)")
    ap.add_argument("--chars", type=int, default=300, help="characters of text per story (0 = no text, -1 = all)")
    a = ap.parse_args()

    run = load_run(a.out_dir)
    if run.batch_log is None:
        raise UserError(f"{a.out_dir} has no batch log (trained with --instrument=False?)")
    columns = [c.strip() for c in a.columns.split(",") if c.strip()]
    table = step_table(run, a.step, columns)
    cfg = run.config["config"]
    print(f"{a.out_dir} step {a.step}/{len(run.batch_log)}: {len(table)} stories "
          f"(dataset {cfg['dataset']}, vocab {cfg['vocab_size']}, sampler {cfg['sampler']})")
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_rows", None):
        print(table.to_string(index=False))
    if a.chars:
        from tokenization.dataset import TokenizedDataset
        ds = TokenizedDataset(cfg["dataset"], cfg["vocab_size"])
        for pos, sid in zip(table["position"], table["story_id"]):
            text = ds.text(int(sid))
            if a.chars > 0 and len(text) > a.chars:
                text = text[: a.chars] + " …"
            print(f"\n[{pos}] story {sid}\n{text}")


if __name__ == "__main__":
    run_main(main)
