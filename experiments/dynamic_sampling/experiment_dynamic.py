"""Dynamic sampling experiment: does drawing the next batches by the model's reducible loss beat a random
order and a static curriculum, at exactly the same token budget?

Three conditions over one fixed selection of training stories, each trained for the same whole number of
epochs, so every run trains exactly the same multiset of segments (every token of every selected story once
per epoch — checked from the batch logs) and only the order differs:
    random      a fresh random permutation per epoch (data_seed = the pair's seed)
    dynamic     --sampler=dynamic: every dynamic_interval steps a pool is scored with the current model by
                reducible loss (model loss − reference n-gram loss, RHO-LOSS) and the next block drawn with
                probability ∝ exp(score / T), without replacement within the epoch (modelling/dynamic_sampler.py)
    curriculum  a static easy-to-hard order: sort_ascending by ppl_ref, the reference n-gram's perplexity
Pair i shares the weight-init seed i (and random/dynamic the data seed i). Primary outcome, fixed before the
runs: the final val_loss_sub of train.py's val log (the first eval_iters × batch_size stories of the dataset's
fixed iid validation sample, the same stories for every run), dynamic − random, paired exact sign-flip test at
alpha = 0.05; curriculum − random and dynamic − curriculum are exploratory (BH q).

Runs go through the kit's run_all (plan, --jobs, resume, experiment.json) as train-only runs: eval.py's fixed
per-checkpoint probes cost more than these small runs' training. --eval adds eval.py at every checkpoint of every
run, for the generation metrics; the analysis is the same.

    python experiments/dynamic_sampling/experiment_dynamic.py            # --name example --size demo
    python experiments/dynamic_sampling/experiment_dynamic.py --plan     # the runs as shell commands

Writes out/experiments/dynamic_sampling/NAME/ (the kit's layout: runs/, logs/, experiment.json, results.csv,
comparisons.csv, order.csv, decisions.csv, curves/, figures/, report.md, description.json). Re-running the same
command resumes: finished runs are skipped, killed ones continue from their resume checkpoint.
"""
import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.errors import UserError, run_main  # noqa: E402
from common.io import atomic_write_json  # noqa: E402
from common.machine import machine_info  # noqa: E402
from common.paths import DEFAULT_DATASET, DEFAULT_VOCAB, add_root_argument, apply_root, root, tok_dir  # noqa: E402

from experiments.common import runner  # noqa: E402
from experiments.dynamic_sampling.analysis import TIMING_NAME, analyse  # noqa: E402

KIND = "dynamic_sampling"
CONDITIONS = ("random", "dynamic", "curriculum")
BASELINE = "random"
PRIMARY = ("dynamic", "random")  # the one pre-registered comparison (condition, baseline)
EXPLORATORY = (("curriculum", "random"), ("dynamic", "curriculum"))
CURRICULUM_COLUMN = "ppl_ref"  # static curriculum: easy (low reference perplexity) to hard

# Sizes. `train` = train.py options shared by every run; `dynamic` = the dynamic condition's sampler options;
# `eval` = eval.py options. smoke: 4 steps per run (tests). demo: a 2-core CPU shared with other work: 6 pairs
# (the fewest whose sign-flip test can reach p < 0.05: 2/2^6 = 0.031), 600 stories, a ~0.1M-parameter model,
# few steps so that eval.py (its fixed per-checkpoint probes dominate) stays cheap; its committed output is
# experiments/dynamic_sampling/example. full: a GPU (llama2.c's 15M shape on the whole train split, 16 pairs).
SIZES = {
    "smoke": dict(seeds=[0, 1], n_stories=30, epochs=1,
                  train=dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, max_seq_len=512,
                             batch_size=8, learning_rate=1e-2, warmup_iters=1, eval_interval=1000, eval_iters=2,
                             n_probe_stories=1, probe_len=16, dtype="float32"),
                  dynamic=dict(dynamic_interval=2, dynamic_pool=2, dynamic_temperature=0.1),
                  eval=dict(n_prompts=1, prefix_tokens=4, max_new_tokens=4, val_stories=32)),
    "demo": dict(seeds=[0, 1, 2, 3, 4, 5], n_stories=600, epochs=1,
                 train=dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, multiple_of=32, max_seq_len=256,
                            batch_size=32, learning_rate=8e-3, warmup_iters=4, min_lr=8e-4, eval_interval=1000,
                            eval_iters=3, n_probe_stories=1, probe_len=32, dtype="float32"),
                 dynamic=dict(dynamic_interval=2, dynamic_pool=2, dynamic_temperature=0.1),
                 eval=dict(n_prompts=1, max_new_tokens=8, val_stories=100)),
    "full": dict(seeds=list(range(16)), n_stories=0, epochs=1,
                 train=dict(preset="15M", batch_size=64, learning_rate=5e-4, warmup_iters=100, eval_interval=500,
                            eval_iters=32, dtype="bfloat16", device="cuda"),
                 dynamic=dict(dynamic_interval=10, dynamic_pool=4, dynamic_temperature=0.1),
                 eval=dict(n_prompts=64, max_new_tokens=200)),
}
SELECTION_SEED = 0


def condition_options(condition, dynamic):
    if condition == "random":
        return {"sampler": "random"}
    if condition == "dynamic":
        return {"sampler": "dynamic", "dynamic_score": "reducible_loss", **dynamic}
    return {"sampler": "sort_ascending", "sort_by": CURRICULUM_COLUMN}


def steps_per_epoch(dataset, vocab_size, size):
    """Optimizer steps of one epoch of the selection (the same for every order of it)."""
    from modelling.samplers import SegmentSampler
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset(dataset, vocab_size)
    train = size["train"]
    max_seq_len = train.get("max_seq_len", 256)  # the 15M preset's too
    sampler = SegmentSampler(ds.story_ids("train"), ds.n_tokens, max_seq_len, train["batch_size"], "random", 0,
                             n_stories=size["n_stories"], selection_seed=SELECTION_SEED)
    return sampler.steps_per_epoch, len(sampler.selection)


def plan(dataset, vocab_size, size, with_eval=False):
    """The runs: every condition × seed, the same selection, steps = whole epochs; train only unless
    with_eval."""
    spe, n_selected = steps_per_epoch(dataset, vocab_size, size)
    steps = spe * size["epochs"]
    runs = []
    for seed in size["seeds"]:
        for condition in CONDITIONS:
            train = {"dataset": dataset, "vocab_size": vocab_size, **size["train"], "seed": seed,
                     "data_seed": seed, "n_stories": size["n_stories"], "selection_seed": SELECTION_SEED,
                     **condition_options(condition, size["dynamic"])}
            runs.append(runner.make_run(f"{condition}_s{seed}", condition, steps, train,
                                        size["eval"] if with_eval else None, seed=seed))
    return runs, {"steps": steps, "n_selected": n_selected}


def record_timing(exp_dir, t0, load_start, finished=None):
    """This invocation's start, wall time and load averages in timing.json (the report states them). Written at
    the start (wall_s null) and again at the end; `finished`: the end is the last finished run's evaluation
    (an invocation stopped before the end, analysed with --finished_only)."""
    path = exp_dir / TIMING_NAME
    timing = json.loads(path.read_text()) if path.exists() else []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
    timing = [t for t in timing if t["started"] != started]
    end = time.time() if finished is None else finished
    timing.append({"started": started, "t0": t0, "wall_s": round(end - t0, 1) if end else None,
                   "load_start": load_start, "load_end": machine_info()["load_avg"][0] if end else None})
    atomic_write_json(path, timing)


def finished_pairs(exp_dir, runs):
    """Runs of the seeds whose every condition finished, and the time the last of them finished."""
    done = [r for r in runs if runner.run_finished(exp_dir / "runs" / r["name"], r)]
    seeds = [s for s in dict.fromkeys(r["seed"] for r in runs)
             if sum(r["seed"] == s for r in done) == len(CONDITIONS)]
    kept = [r for r in done if r["seed"] in seeds]
    end = max(((exp_dir / "runs" / r["name"] / "val_log.csv").stat().st_mtime for r in kept), default=0)
    return kept, seeds, end


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    runner.add_arguments(p)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB)
    p.add_argument("--eval", action="store_true",
                   help="also run eval.py at every checkpoint of every run (the kit's run_all; slower)")
    p.add_argument("--finished_only", action="store_true",
                   help="run nothing; analyse the seeds whose runs all finished (an experiment stopped early)")
    add_root_argument(p)
    args = p.parse_args(argv)
    apply_root(args)
    runner.check_arguments(args)
    if not (tok_dir(args.dataset, args.vocab_size) / "metadata.parquet").exists():
        raise UserError(f"{tok_dir(args.dataset, args.vocab_size)}/metadata.parquet not found — run "
                        f"tokenization/pretokenize.py and metadata/batch_metadata.py compute_metadata for "
                        f"--dataset {args.dataset} --vocab_size {args.vocab_size} first")
    size = SIZES[args.size]
    runs, info = plan(args.dataset, args.vocab_size, size, args.eval)
    exp_dir = root() / "out" / "experiments" / KIND / args.name
    power = runner.check_design(len(size["seeds"]), n_primary=1)
    design = {"name": args.name, "size": args.size, "dataset": args.dataset, "vocab_size": args.vocab_size,
              "conditions": list(CONDITIONS), "seeds": size["seeds"], "n_stories": size["n_stories"],
              "selection_seed": SELECTION_SEED, "epochs": size["epochs"], "steps": info["steps"],
              "train": size["train"], "dynamic": size["dynamic"], "eval": size["eval"] if args.eval else None,
              "primary": {"comparison": list(PRIMARY), "outcome": "val_loss_sub", "alpha": 0.05},
              "exploratory": [list(pair) for pair in EXPLORATORY],
              "power": power}
    if args.plan:
        print("\n".join(runner.plan_lines(runs, exp_dir)))
        return
    if args.finished_only:  # the planned design cut short: only complete pairs, the power of what is there
        kept, seeds, end = finished_pairs(exp_dir, runs)
        if len(seeds) < 2:
            raise UserError(f"{exp_dir}: fewer than 2 seeds have all their runs finished — run the experiment")
        timing = json.loads((exp_dir / TIMING_NAME).read_text()) if (exp_dir / TIMING_NAME).exists() else []
        if timing and timing[-1]["wall_s"] is None:
            record_timing(exp_dir, timing[-1]["t0"], timing[-1]["load_start"], finished=end)
        elif not timing:  # stopped before writing any timing: from the experiment's creation, load unknown
            created = json.loads((exp_dir / "experiment.json").read_text())["provenance"]["created_utc"]
            record_timing(exp_dir, datetime.fromisoformat(created).timestamp(), None, finished=end)
        if len(seeds) < len(size["seeds"]):
            design = {**design, "finished_seeds": seeds, "power": runner.check_design(len(seeds), n_primary=1)}
        print(f"report: {analyse(exp_dir, design, kept, args.jobs)}")
        return
    print(f"{exp_dir}: {len(runs)} runs ({len(CONDITIONS)} conditions x {len(size['seeds'])} seeds) of "
          f"{info['steps']} steps on {info['n_selected']} stories; design {power['reason']}")
    t0, load_start = time.time(), machine_info()["load_avg"][0]
    record_timing(exp_dir, t0, load_start, finished=0)
    runner.run_all(exp_dir, design, runs, args.jobs)
    if runner.pending(exp_dir, runs):
        raise UserError(f"{exp_dir}: some runs are unfinished — re-run the same command to finish them")
    record_timing(exp_dir, t0, load_start)
    report = analyse(exp_dir, design, runs, args.jobs)
    print(f"report: {report}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
