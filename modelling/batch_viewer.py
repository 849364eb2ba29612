"""Show what fed one optimizer step of a run: its segments row by row, their stories' metadata, and their text.

    python modelling/batch_viewer.py                      # out/demo, step 1
    python modelling/batch_viewer.py --out_dir out/demo --step 120
    python modelling/batch_viewer.py --out_dir out/demo --step 120 --columns flesch_ease,n_words --chars 0

Reads out/RUN/config.json and the batch log (modelling/batch_log.py), the dataset's shared reader for text and,
when present, data/<raw>/tok<V>/metadata.parquet for the metric columns (modelling/batch_table.py).
A chunk of a story longer than max_seq_len shows as "story 812, tokens 256–511" and its text is that chunk's.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

import pandas as pd

from common.errors import run_main
from common.paths import DEFAULT_RUN, add_root_argument, apply_root, default_run_dir
from modelling.batch_table import step_table
from modelling.checkpoints import load_run
from tokenization.dataset import TokenizedDataset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out_dir", default=None, help=f"run folder (default: out/{DEFAULT_RUN})")
    ap.add_argument("--step", type=int, default=1, help="optimizer step, 1-based (default: 1)")
    ap.add_argument("--columns", default="", help="comma-separated metadata columns (default: all)")
    ap.add_argument("--chars", type=int, default=300, help="characters of text per segment (0 = no text, -1 = all)")
    add_root_argument(ap)
    a = apply_root(ap.parse_args())

    out_dir = a.out_dir or default_run_dir()
    run = load_run(out_dir)
    cfg = run.config["config"]
    ds = TokenizedDataset(cfg["dataset"], cfg["vocab_size"])
    columns = [c.strip() for c in a.columns.split(",") if c.strip()]
    table = step_table(run, a.step, columns, ds)
    print(f"{out_dir} step {a.step}/{len(run.batch_log)}: {len(table)} segments in {table['row'].nunique()} rows, "
          f"{int(table['n_tokens'].sum())} tokens trained (dataset {cfg['dataset']}, vocab {cfg['vocab_size']}, "
          f"sampler {cfg['sampler']})")
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_rows", None):
        print(table.to_string(index=False))
    if a.chars:
        for pos, row, sid, start, n, label in zip(table["position"], table["row"], table["story_id"], table["start"],
                                                  table["n_tokens"], table["label"]):
            text = ds.decode(ds.tokens(int(sid))[start:start + n])
            if a.chars > 0 and len(text) > a.chars:
                text = text[: a.chars] + " …"
            print(f"\n[{pos}] row {row}: {label}\n{text}")


if __name__ == "__main__":
    run_main(main)
