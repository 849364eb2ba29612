"""Stage 3: score every story of a tokenized dataset with the shared metrics (metadata/metrics.py).

    python metadata/batch_metadata.py compute_metadata [--dataset storyworld] [--vocab_size 512]
                                      [--scorer ngram|ckpt:PATH] [--workers K] [--force]

Reads data/<raw>/tok<V>/ through tokenization/dataset.py. Writes, each atomically:
  data/<raw>/tok<V>/metadata.parquet   one row per story_id (train and val): story_id, split, shard, every metric
  data/<raw>/tok<V>/metadata.json      provenance, metric version, scorer spec, column docs, input fingerprint
  data/<raw>/tok<V>/vocabulary.txt     the train split's words (seen >= 2 times) with counts: `oov` of every
                                       story here and of eval's generations is measured against it
  data/<raw>/tok<V>/ngram.npz/.json    the reference n-gram (scorer 'ngram'), fitted once on the train split
  out/tables/batch_metrics.csv (+.json) per shard, per split and overall: count, mean, std, quantiles per metric;
                                       one file for every dataset: this run replaces only its dataset+vocab rows
Idempotent: when the dataset, metric version, metric code and scorer are unchanged it says so and stops.
Read metadata.parquet with metadata.table.read_metadata(dataset, vocab_size) (train, eval, experiments, app).
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.ids import tokenized_id  # noqa: E402
from common.io import atomic_path, atomic_write_json, provenance, sha256_bytes, sha256_file  # noqa: E402
from common.paths import DEFAULT_DATASET, DEFAULT_VOCAB, add_root_argument, apply_root, out_dir  # noqa: E402
from metadata import metrics  # noqa: E402
from metadata.table import read_metadata  # noqa: E402

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
METRIC_CODE = ("metrics.py", "wordlists.py", "ngram.py")  # their hash is part of the input fingerprint


def metric_code_sha():
    here = Path(__file__).resolve().parent
    return sha256_bytes(b"".join((here / name).read_bytes() for name in METRIC_CODE))


def fingerprint(ds, scorer_spec):
    """Everything the table depends on: the tokenized data, the metric definitions and the scorer."""
    fp = {"metric_version": metrics.METRIC_VERSION, "metric_code_sha256": metric_code_sha(),
          "tokenized_id": tokenized_id(ds.dir), "scorer": scorer_spec}  # the id covers shards, tokenizer, split
    if scorer_spec.startswith("ckpt:"):
        path = Path(scorer_spec[len("ckpt:"):])
        fp["scorer_sha256"] = sha256_file(path) if path.is_file() else None
    return fp


def summarize(table, shard_files, dataset, vocab_size):
    """Long table: one row per (scope, metric) with count, mean, std, min, quantiles, max; scope is a shard
    file, a split ('train'/'val') or 'all'. table: a DataFrame, or the path of a metadata.parquet, read one
    column at a time so memory stays at one column (40 MB per 5M stories) whatever the table's size."""
    names = [m.name for m in metrics.METRICS]
    if isinstance(table, pd.DataFrame):
        column = table.__getitem__
    else:
        import pyarrow.parquet as pq
        column = lambda name: pq.read_table(table, columns=[name]).column(0).to_pandas()  # noqa: E731
    shard, split = column("shard").to_numpy(), column("split").to_numpy()
    # a shard's rows as a slice of one stable sort (the same rows in the same order as a mask would give): a
    # mask per shard would hold shards x stories bytes (5 GB at 5M stories in 1,000 shards)
    by_shard = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[by_shard], np.arange(len(shard_files) + 1))
    scopes = [(f, by_shard[bounds[k]:bounds[k + 1]]) for k, f in enumerate(shard_files)]
    scopes += [(s, np.flatnonzero(split == s)) for s in ("train", "val", "val_novel") if (split == s).any()]
    scopes += [("all", None)]
    stats = {}
    for name in names:
        values = column(name).to_numpy(np.float64)
        for scope, rows in scopes:
            col = pd.Series(values if rows is None else values[rows])
            q = col.quantile(list(QUANTILES))
            stats[scope, name] = {"count": int(col.count()), "mean": col.mean(), "std": col.std(), "min": col.min(),
                                  **{f"p{int(p * 100)}": q.at[p] for p in QUANTILES}, "max": col.max()}
    return pd.DataFrame([{"dataset": dataset, "vocab_size": vocab_size, "scope": scope, "metric": name,
                          **stats[scope, name]} for scope, _ in scopes for name in names])


def summary_csv():
    """out/tables/batch_metrics.csv under the project root (one file for every dataset+vocab)."""
    return out_dir() / "tables" / "batch_metrics.csv"


def read_summary():
    """The current batch_metrics.csv, or None when it is missing or unreadable (it is rebuilt from the tables)."""
    try:
        table = pd.read_csv(summary_csv())
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    return table if {"dataset", "vocab_size"} <= set(table.columns) else None


def summary_matches(ds):
    """Whether batch_metrics.csv holds rows for this dataset+vocab."""
    table = read_summary()
    return table is not None and bool(((table["dataset"] == ds.dataset) & (table["vocab_size"] == ds.vocab_size)).any())


def write_summary(df, ds):
    """Replace this dataset+vocab's rows of batch_metrics.csv, keeping every other dataset's rows. df: the
    metadata table or its parquet path (summarize)."""
    table = summarize(df, [s["file"] for s in ds.manifest["shards"]], ds.dataset, ds.vocab_size)
    old = read_summary()
    if old is not None:
        others = old[(old["dataset"] != ds.dataset) | (old["vocab_size"] != ds.vocab_size)]
        table = pd.concat([others, table], ignore_index=True) if len(others) else table
    path = summary_csv()
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    sidecar_path = path.with_suffix(".json")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError):
        sidecar = {}
    sources = sidecar.get("sources") if isinstance(sidecar.get("sources"), dict) else {}
    sources[f"{ds.dataset}/tok{ds.vocab_size}"] = {  # per dataset+vocab: what its rows came from
        "provenance": provenance(dataset=ds.dataset, vocab_size=ds.vocab_size),
        "source": str(ds.dir / "metadata.parquet"), "metric_version": metrics.METRIC_VERSION}
    atomic_write_json(sidecar_path, {  # the CSV's provenance sidecar
        "provenance": provenance(dataset=ds.dataset, vocab_size=ds.vocab_size),
        "source": str(ds.dir / "metadata.parquet"), "metric_version": metrics.METRIC_VERSION,
        "quantiles": list(QUANTILES), "sources": sources})
    return table


def shard_story_ids(ds):
    """Story ids of each raw shard (position in manifest.json shards), sorted: one pass over the index, where a
    per-shard mask would cost O(stories) per shard."""
    shard = ds.index["shard"].to_numpy()
    order = np.argsort(shard, kind="stable")  # the index is sorted by story_id: each group stays sorted
    bounds = np.searchsorted(shard[order], np.arange(1, len(ds.manifest["shards"])))
    return np.split(ds.index["story_id"].to_numpy(np.int64)[order], bounds)


_vocab_job = {}  # the dataset and train mask, inherited by the forked vocabulary workers


def _shard_word_counts(k_ids):
    """Word counts of one raw shard's train stories (a worker reads and parses the shard itself)."""
    k, ids = k_ids
    ds, train = _vocab_job["ds"], _vocab_job["train"]
    counts = metrics.word_counts(ds.text(i) for i in ids[train[ids]])
    ds.release_shard(k)
    return counts


def build_vocabulary(ds, path, workers=1):
    """The train split's word vocabulary (metrics.corpus_vocabulary), shard by shard — over `workers` forked
    processes, each reading its shards, when workers > 1 (the counts add up to the same table); written to path."""
    import multiprocessing as mp
    from collections import Counter
    _vocab_job.update(ds=ds, train=(ds.index["split"] == "train").to_numpy(bool))
    shards = list(enumerate(shard_story_ids(ds)))
    counts = Counter()
    try:
        with (mp.get_context("fork").Pool(workers) if workers > 1 and len(shards) > 1
              else contextlib.nullcontext()) as pool:
            parts = pool.imap_unordered(_shard_word_counts, shards) if pool else map(_shard_word_counts, shards)
            for part in tqdm(parts, total=len(shards), desc="vocabulary", unit="shard"):
                counts.update(part)
    finally:
        _vocab_job.clear()
    metrics.save_vocabulary(path, counts)
    return metrics.load_vocabulary(path)


def compute_metadata(args):
    from metadata.scorers import load_scorer
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset(args.dataset, args.vocab_size)  # missing folder: one line naming pretokenize
    out_parquet, out_json = ds.dir / "metadata.parquet", ds.dir / "metadata.json"
    fp = fingerprint(ds, args.scorer)
    vocab_path = ds.dir / metrics.VOCABULARY_FILE
    if out_parquet.exists() and out_json.exists() and vocab_path.exists() and not args.force:
        try:
            old = json.loads(out_json.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        old_fp = old.get("fingerprint", {})
        if old_fp == json.loads(json.dumps(fp)):
            try:
                n_rows = len(read_metadata(args.dataset, args.vocab_size, columns=["story_id"]))
            except UserError:
                n_rows = None  # unreadable table: rebuild it below
            if n_rows == len(ds):
                if not summary_matches(ds):
                    write_summary(out_parquet, ds)
                print(f"{out_parquet}: up to date ({n_rows:,} stories, metric version {metrics.METRIC_VERSION}, "
                      f"scorer {args.scorer}) — nothing to do (--force rebuilds)")
                return
        changed = [k for k in fp if old_fp.get(k) != json.loads(json.dumps(fp[k]))]
        print(f"rebuilding {out_parquet}: changed {', '.join(changed) or 'table unreadable or incomplete'}")

    t0 = time.time()
    scorer = load_scorer(args.scorer, ds, args.vocab_size)
    index = ds.index
    vocabulary = build_vocabulary(ds, vocab_path, args.workers)
    n_rows, n_nan, last_id, in_order = 0, {}, -1, True
    split = index["split"]
    pool = metrics.worker_pool(args.workers, vocabulary) if args.workers > 1 else contextlib.nullcontext()
    # the table is streamed to parquet shard by shard (one row group each), so memory does not grow with the
    # corpus; the bar is closed before an error propagates, so the error line is the last thing on screen
    with atomic_path(out_parquet, suffix=".parquet") as tmp, \
            tqdm(total=len(ds), desc="compute_metadata", unit="story", mininterval=1.0) as bar, pool:
        writer = None
        try:
            for k, story_ids in enumerate(shard_story_ids(ds)):  # shard by shard: memory at one raw shard
                texts = [ds.text(i) for i in story_ids]
                token_ids = [ds.tokens(i) for i in story_ids]
                df = metrics.score_texts(texts, token_ids, scorer, bar=bar,
                                         pool=pool if args.workers > 1 else None,
                                         vocabulary=None if args.workers > 1 else vocabulary)
                df.insert(0, "story_id", story_ids)
                df.insert(1, "split", split.iloc[story_ids].to_numpy())  # ids are index positions
                df.insert(2, "shard", np.int16(k))
                df["shard"] = df["shard"].astype(np.int16)
                df = df.sort_values("story_id", ignore_index=True)
                if len(df):
                    in_order &= bool(df["story_id"].iloc[0] > last_id)
                    last_id = int(df["story_id"].iloc[-1])
                for c in metrics.COLUMNS:
                    if c != "nan_reason":
                        n_nan[c] = n_nan.get(c, 0) + int(df[c].isna().sum())
                writer = _write_part(writer, tmp, df)
                n_rows += len(df)
                ds.release_shard(k)  # scored: keep memory at one raw shard
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no shard: an empty table with the columns
            pd.DataFrame(columns=["story_id", "split", "shard"] + metrics.COLUMNS).to_parquet(tmp, index=False)
        elif not in_order:  # shards whose story ids interleave (not what pretokenize writes): sort in memory
            pd.read_parquet(tmp).sort_values("story_id", ignore_index=True).to_parquet(tmp, index=False)
    seconds = time.time() - t0

    write_summary(out_parquet, ds)
    n_nan = {c: n for c, n in n_nan.items() if n}
    atomic_write_json(out_json, {
        "provenance": provenance(dataset=args.dataset, vocab_size=args.vocab_size, workers=args.workers),
        "metric_version": metrics.METRIC_VERSION,
        "scorer": {"spec": scorer.spec, **({"ngram": {k: scorer.info.get(k) for k in (
            "n_train_stories", "n_fit_targets", "n_trigrams", "discounts", "max_tokens")}}
            if hasattr(scorer, "info") else {})},
        "fingerprint": fp,
        "n_stories": n_rows, "seconds": round(seconds, 2), "stories_per_s": round(n_rows / max(seconds, 1e-9), 1),
        "vocabulary": {"file": metrics.VOCABULARY_FILE, "words": len(vocabulary),
                       "min_count": metrics.VOCAB_MIN_COUNT, "from": "train split"},
        "columns": {"story_id": "story id (tokenization index)", "split": "'train', 'val' or 'val_novel'",
                    "shard": "position of the raw shard in manifest.json shards",
                    **{m.name: {"what": m.what, "range": m.range, "library": m.library} for m in metrics.METRICS},
                    "nan_reason": "why a row's metrics are NaN ('' when fully scored; degenerate text: why "
                                  "readability is NaN)"},
        "nan_counts": n_nan,
    })
    print(f"wrote {out_parquet} ({n_rows:,} stories, {len(metrics.COLUMNS)} columns) in {seconds:.1f}s "
          f"({n_rows / max(seconds, 1e-9):,.0f} stories/s), {out_json} and {summary_csv()}")


def _write_part(writer, path, df):
    """Append df to the parquet file at path as one row group (the writer is opened on the first part)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pandas(df, preserve_index=False, schema=None if writer is None else writer.schema)
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
    return writer


def default_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compute_metadata", help="score every story; write metadata.parquet/.json and the summary")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    p.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB,
                   help=f"vocab of the tokenized folder tok<V> (0: Llama 2; default {DEFAULT_VOCAB})")
    p.add_argument("--scorer", default="ngram", help="ngram (default) or ckpt:PATH for ppl_ref")
    p.add_argument("--workers", type=int, default=default_workers(), help="processes for the text metrics")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    add_root_argument(p)
    args = apply_root(parser.parse_args(argv))
    if args.workers < 1:
        raise UserError(f"--workers {args.workers} is invalid — give 1 or more")
    if args.command == "compute_metadata":
        compute_metadata(args)


if __name__ == "__main__":
    run_main(main)
