"""Durability v2: does the same data in another order give a different end model?

Paired design (experiments/common's statistics standard). For pair i = 0..n-1, every condition trains from
weight-init seed i on the same fixed selection of stories:
  random_s<i>            random order with its own data-order seed 1000 + i (the baseline of pair i)
  asc_<metric>_s<i>      the selection sorted ascending by a metadata column
  desc_<metric>_s<i>     ... descending
so condition − baseline within a pair differs only in the order. A crossed grid of the random baseline
(init seeds 0..g-1 × data-order seeds 1000..1000+g-1; its diagonal is the pairs' own baseline runs) splits the
seed-to-seed variance into init, order and residual. Every run goes through the real modelling/train.py and
eval.py (experiments/common/runner.py: --jobs, resume, skip finished, --plan).

Primary outcome, one per sorted condition (tested at alpha / number of sorted conditions): train.py's
val_loss_sub at the final step — mean loss on the first eval_iters x batch_size stories of the dataset's fixed
validation sample, the same stories for every run (eval.py's val_loss would do as well but costs a full
evaluation per run). Everything else (eval.py's generation metrics and val_loss on its own sample, the
val_loss_sub trajectory, representation similarity) is exploratory, with Benjamini-Hochberg q.

    python experiments/durability/experiment_durability.py --dataset storyworld_4k   # demo size, --name example
    python experiments/durability/experiment_durability.py --size smoke --name smoke  # seconds, for tests
    python experiments/durability/experiment_durability.py --plan                     # the commands, run nothing

Writes out/experiments/durability/NAME/: runs/, logs/, experiment.json, primary.csv, exploratory.csv,
variance.csv, similarity.csv, saturation.csv, runs.csv, curves/, figures/, report.md, description.json.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.errors import UserError, run_main  # noqa: E402
from common.ids import selection_id_of, tokenized_id  # noqa: E402
from common.io import sha256_file  # noqa: E402
from common.paths import DEFAULT_DATASET, DEFAULT_VOCAB, add_root_argument, apply_root, require, tok_dir  # noqa: E402
from experiments.common import runner  # noqa: E402
from experiments.durability.naming import BASELINE, DATA_SEED_OFFSET, GRID, experiments_dir  # noqa: E402

ALPHA = 0.05
# Sizes. train = modelling/train.py options shared by every run (the experiment sets dataset, seeds, sampler,
# selection and max_iters itself); eval = eval.py options (evaluated at the final checkpoint only: the
# trajectory comes from train.py's val_loss_sub at every checkpoint). dtype is pinned: results must not depend
# on a machine's dtype=auto. measured = CPU seconds per training step and per evaluation of one demo run (a
# single-run probe on the 2-core VM), for the idle-machine duration printed before running.
SIZES = {
    "smoke": dict(metric="flesch_ease", orders=("asc",), n_pairs=2, grid=2, n_stories=200,
                  train=dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, max_seq_len=64,
                             batch_size=128, learning_rate=1e-2, warmup_iters=2, eval_interval=1000,
                             eval_iters=1, n_probe_stories=2, probe_len=16, dtype="float32"),
                  eval=dict(n_prompts=1, prefix_tokens=4, max_new_tokens=8, val_stories=8)),
    # ~0.8M parameters (train.py's default shape), 40 steps of 16 segments: past the initial plateau (val loss
    # falls from ln 512 = 6.24 to ~4), 8 pairs (min p 0.0078 < 0.05), 3 x 3 grid -> 22 runs. Ascending only, so
    # that it fits ~20 min of an idle 2-core CPU; --orders asc,desc adds the descending condition (30 runs)
    "demo": dict(metric="flesch_ease", orders=("asc",), n_pairs=8, grid=3, n_stories=344,
                 measured=dict(train_cpu_s_per_step=0.75, eval_cpu_s=15.0),
                 train=dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, multiple_of=32, max_seq_len=256,
                            batch_size=16, learning_rate=3e-3, min_lr=3e-4, warmup_iters=6, eval_interval=1000,
                            eval_iters=4, n_probe_stories=4, probe_len=128, dtype="float32"),
                 eval=dict(n_prompts=2, max_new_tokens=32, val_stories=32)),
    # for a GPU: llama2.c's 15M shape, 16 pairs, 4 x 4 grid (60 runs), the whole train split of the dataset
    "full": dict(metric="flesch_ease", orders=("asc", "desc"), n_pairs=16, grid=4, n_stories=0,
                 train=dict(preset="15M", batch_size=64, learning_rate=5e-4, min_lr=5e-5, warmup_iters=100,
                            eval_interval=500, eval_iters=20, n_probe_stories=8, probe_len=256, dtype="bfloat16",
                            device="cuda"),
                 eval=dict(n_prompts=16, max_new_tokens=200, val_stories=2000)),
}
RESERVED_TRAIN_KEYS = {"out_dir", "dataset", "vocab_size", "seed", "data_seed", "sampler", "sort_by", "sort_order",
                       "filter_column", "threshold", "filter_keep", "n_stories", "selection_seed", "epochs",
                       "max_iters", "init_from"}


# ---- design ----

def parse_set(items):
    """--set key=value pairs (extra train.py overrides), kept as strings: train.py type-checks them."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not key=value — e.g. --set dim=64")
        if key in RESERVED_TRAIN_KEYS:
            raise UserError(f"--set {key}=… is chosen by the experiment per run; use the experiment's own "
                            f"option instead (--dataset, --vocab_size, --n_stories, --pairs, …)")
        overrides[key] = value
    return overrides


def metadata_columns(dataset, vocab_size):
    """Numeric columns of the dataset's metadata table, read from its schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = require(tok_dir(dataset, vocab_size) / "metadata.parquet", "metadata table",
                   f"run: python metadata/batch_metadata.py compute_metadata --dataset {dataset} "
                   f"--vocab_size {vocab_size}")
    try:
        schema = pq.read_schema(path)
    except Exception as e:
        raise UserError(f"cannot read {path} ({e.__class__.__name__}) — re-run compute_metadata")
    return [f.name for f in schema if f.name != "story_id" and
            (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]


def pin_selection(design):
    """The selection every run trains on, computed with train.py's own SegmentSampler and fingerprinted; its
    steps per epoch fix every run's length (the batch logs are checked against one multiset afterwards)."""
    from modelling.samplers import SegmentSampler
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset(design["dataset"], design["vocab_size"])
    train_ids = ds.story_ids("train")
    if design["n_stories"] >= len(train_ids):
        design["n_stories"] = 0  # the whole train split
    train = design["train"]
    segments_per_step = int(train.get("batch_size", 16)) * int(train.get("gradient_accumulation_steps", 1))
    schedule = SegmentSampler(train_ids, ds.n_tokens, int(train.get("max_seq_len", 256)), segments_per_step,
                              n_stories=design["n_stories"], selection_seed=design["selection_seed"])
    design["selection"] = {"n_stories": int(len(schedule.selection)), "n_segments": int(len(schedule.segments)),
                           "n_tokens": schedule.n_tokens, "segments_per_step": segments_per_step,
                           "steps": int(schedule.steps_per_epoch),
                           "id": selection_id_of(tokenized_id(ds.dir), {"n_stories": design["n_stories"],
                                                 "selection_seed": design["selection_seed"],
                                                 "max_seq_len": int(train.get("max_seq_len", 256))},
                                                 schedule.selection_sha256)}
    return design


def conditions(design):
    """[(condition, sampler)]: the baseline first, then each sorted order."""
    sampler = {"asc": "sort_ascending", "desc": "sort_descending"}
    return [(BASELINE, "random")] + [(f"{o}_{design['metric']}", sampler[o]) for o in design["orders"]]


def plan_runs(design):
    """Pairs (every condition × init seed i, the baseline with data seed 1000 + i), then the off-diagonal
    cells of the crossed init × order grid of the baseline."""
    steps = design["selection"]["steps"]
    eval_args = {**design["eval"], "steps": [steps]}  # the grid's runs are only trained (val_loss_sub)

    def run(name, condition, sampler, init_seed, data_seed, role, evaluate=eval_args):
        train = {"dataset": design["dataset"], "vocab_size": design["vocab_size"], "seed": init_seed,
                 "data_seed": data_seed, "sampler": sampler, "n_stories": design["n_stories"],
                 "selection_seed": design["selection_seed"], **design["train"]}
        if sampler != "random":
            train["sort_by"] = design["metric"]
        return runner.make_run(name, condition, steps, train, evaluate, init_seed=init_seed, data_seed=data_seed,
                               role=role, sampler=sampler)
    runs = []
    for i in range(design["n_pairs"]):
        for condition, sampler in conditions(design):
            runs.append(run(f"{condition}_s{i}", condition, sampler, i, DATA_SEED_OFFSET + i, "pair"))
    for i in range(design["grid"]):
        for j in range(design["grid"]):
            if i != j:
                runs.append(run(f"{BASELINE}_s{i}_d{j}", GRID, "random", i, DATA_SEED_OFFSET + j, "grid", None))
    return runs


def build_design(args):
    size = SIZES[args.size]
    n_pairs = args.pairs if args.pairs is not None else size["n_pairs"]
    grid = args.grid if args.grid is not None else size["grid"]
    if n_pairs < 1 or grid < 0 or grid == 1 or grid > n_pairs:
        raise UserError(f"--pairs {n_pairs} / --grid {grid}: need pairs >= 1 and a grid of 0 or 2..pairs init seeds "
                        f"(the grid reuses the pairs' baseline runs on its diagonal)")
    metric = args.metric or size["metric"]
    orders = [o.strip() for o in args.orders.split(",") if o.strip()] if args.orders else list(size["orders"])
    if not orders or len(set(orders)) != len(orders) or not set(orders) <= {"asc", "desc"}:
        raise UserError(f"--orders {args.orders!r} must list asc and/or desc — e.g. --orders asc,desc")
    columns = metadata_columns(args.dataset, args.vocab_size)
    if metric not in columns:
        raise UserError(f"unknown metadata column {metric!r} — available: {', '.join(columns)}")
    n_stories = args.n_stories if args.n_stories is not None else size["n_stories"]
    if n_stories < 0:
        raise UserError(f"--n_stories {n_stories} must be >= 0 (0 = the whole train split)")
    data = tok_dir(args.dataset, args.vocab_size)
    design = dict(name=args.name, dataset=args.dataset, vocab_size=args.vocab_size, size=args.size, metric=metric,
                  orders=orders, n_pairs=n_pairs, grid=grid, n_stories=n_stories,
                  selection_seed=args.selection_seed, alpha=ALPHA, primary_outcome="val_loss_sub",
                  train={**size["train"], **parse_set(args.set)}, eval=dict(size["eval"]), baseline=BASELINE,
                  data_ids={"tokenized": tokenized_id(data), "metadata_sha256": sha256_file(data / "metadata.parquet")})
    design = pin_selection(design)
    design["power"] = runner.check_design(n_pairs, ALPHA, n_primary=len(design["orders"]))
    design["runs"] = plan_runs(design)
    return design


def expected_minutes(design, n_runs, jobs):  # n_runs: the runs to do
    """Wall minutes on an idle machine from the size's measured CPU costs (None when not measured or the
    model was changed with --set)."""
    size = SIZES[design["size"]]
    measured = size.get("measured")
    if not measured or design["train"] != size["train"]:
        return None
    cpu_s = sum(design["selection"]["steps"] * measured["train_cpu_s_per_step"] +
                (measured["eval_cpu_s"] if r["eval"] is not None else 0) for r in n_runs)
    return cpu_s / max(1, min(jobs, os.cpu_count() or 1)) / 60


def print_plan(design, exp_dir, todo, jobs):
    names = [c for c, _ in conditions(design)]
    power = design["power"]
    print(f"durability experiment {design['name']} ({design['size']} size) → {exp_dir}\n"
          f"  pairs: {', '.join(names)} × init seeds 0..{design['n_pairs'] - 1} "
          f"(baseline data seeds {DATA_SEED_OFFSET}..{DATA_SEED_OFFSET + design['n_pairs'] - 1}); "
          f"grid {design['grid']}×{design['grid']} of {BASELINE} → {len(design['runs'])} runs\n"
          f"  each run: {design['selection']['n_stories']} stories = {design['selection']['steps']} steps of "
          f"{design['selection']['segments_per_step']} segments, then eval.py at the last step (pairs only)\n"
          f"  power: {'tested' if power['tested'] else 'NOT tested'} — {power['reason']}")
    minutes = expected_minutes(design, todo, jobs)
    if not todo:
        print("  every run is finished: only the analysis runs")
    elif minutes is None:
        print(f"  {len(todo)} run(s) to do; no measured duration for this size/model")
    else:
        print(f"  {len(todo)} run(s) to do with --jobs {jobs}: expected ≈ {minutes:.0f} min on an idle 2-core CPU")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_arguments(p, default_name="example", default_size="demo")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    p.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB, help=f"vocab (default {DEFAULT_VOCAB})")
    p.add_argument("--metric", help="metadata column the sorted orders sort by (default flesch_ease)")
    p.add_argument("--orders", help="sorted conditions, comma-separated: asc and/or desc (default: the size's)")
    p.add_argument("--pairs", type=int, help="init seeds = pairs (default: the size's, demo 8)")
    p.add_argument("--grid", type=int, help="init × order grid side of the baseline (0 = none; demo 3)")
    p.add_argument("--n_stories", type=int, help="selection size (0 = the whole train split; demo 768)")
    p.add_argument("--selection_seed", type=int, default=0, help="which stories the selection picks (all runs)")
    p.add_argument("--partial", action="store_true",
                   help="run nothing: analyse the runs finished so far (the report lists the missing ones)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="extra modelling/train.py override for every run (repeatable), e.g. --set dim=64")
    add_root_argument(p)
    return apply_root(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    runner.check_arguments(args)
    design = build_design(args)
    exp_dir = experiments_dir() / args.name
    todo = runner.pending(exp_dir, design["runs"])
    print_plan(design, exp_dir, todo, args.jobs)
    if args.plan:
        print("\n".join(runner.plan_lines(design["runs"], exp_dir)))
        return
    experiment = runner.Experiment(exp_dir, design) if args.partial else \
        runner.run_all(exp_dir, design, design["runs"], args.jobs)
    from experiments.durability.analysis import analyse

    def record(summary):
        experiment.state["analysis"] = summary
        experiment.save()
    record(analyse(exp_dir, design, record, partial=args.partial))
    print(f"wrote {exp_dir}/report.md, primary.csv, exploratory.csv, figures/, description.json")


if __name__ == "__main__":
    run_main(main)
