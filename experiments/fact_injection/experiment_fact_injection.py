"""Fragility of new knowledge (issue 18): inject synthetic facts at chosen steps and measure acquisition,
retention, paraphrase transfer, the reversal curse and the effect of batch size.

    python experiments/fact_injection/experiment_fact_injection.py            # experiment `example`, size demo
    python experiments/fact_injection/experiment_fact_injection.py --plan     # print the runs, run nothing
    python experiments/fact_injection/experiment_fact_injection.py --size full --set device=cuda   # a GPU

Design. Per seed two runs of modelling/train.py with the same weight-init and data-order seed: `inject_s<k>`
trains with an injection plan (modelling/injection.py) that ADDS fact documents to chosen steps, `control_s<k>`
trains without it — every other segment of the two runs is identical (same step, same row), so the control is
the exact no-injection twin. Inside the injected run the facts of the dataset's fact set (download/fact_set.py)
are dealt at random (per seed) to groups of `facts_per_group`, one group per condition:
    never      not injected (the in-run null)
    early      `repeats` exposures of the canonical forward phrasing, spread over the early window
    middle     the same in the middle window          late    the same in the late window
    once       one exposure (early window)
    para10     `repeats` exposures cycling through the 10 forward phrasings (early window)
    fwd_rev    `repeats` forward + `repeats` reverse canonical phrasings (early window)
Windows are fractions of the run (WINDOWS).

Batch size. Per seed two more runs, `small_batch_s<k>` and `large_batch_s<k>` (the size's `batch`: e.g. 4 and
32 segments per step), with the same total sampled segments (steps x batch equal) — the sampler's order does not
depend on the batch, so both see the same segments in the same order — and the same plan for the early, middle
and late groups (the forward-only conditions), written in the large run's steps and multiplied by the batch
ratio for the small run: each injection lands after exactly the same sampled segments in both. Warmup,
checkpoints and the cosine decay are scaled the same way, so the learning rate is the same function of the
tokens seen; the peak learning rate, the optimizer's betas and weight decay are per update and cannot be held
equal in tokens (the small run makes ratio x more updates).

Every run is trained through the kit (experiments/common/runner.run_all: resume, skip finished runs, --jobs,
--plan); then the checkpoints on each run's scoring grid are scored with measures/facts.py (answer choices among
the facts of the same group, so candidates are equally familiar) into runs/<run>/facts.csv; analysis.py compares,
pairing facts by their slot within a group and seed, or a fact with itself.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.io import atomic_write_json  # noqa: E402
from common.machine import machine_info  # noqa: E402
from common.paths import add_root_argument, apply_root, root  # noqa: E402
from download.fact_set import FORWARD, load_fact_set  # noqa: E402
from experiments.common import runner  # noqa: E402
from experiments.fact_injection import analysis  # noqa: E402
from modelling.checkpoints import list_checkpoints  # noqa: E402
from modelling.injection import spread_steps  # noqa: E402

KIND = "fact_injection"
DATASET = "storyworld_facts"  # python download/download_datasets.py storyworld --name storyworld_facts ...
VOCAB = 512
CONDITIONS = ("never", "early", "middle", "late", "once", "para10", "fwd_rev")
BATCH_CONDITIONS = ("early", "middle", "late")  # injected in the batch-size runs (forward-only, one per window)
WINDOWS = {"early": (0.10, 0.35), "middle": (0.40, 0.65), "late": (0.70, 0.95)}
ARMS = ("inject", "control", "small_batch", "large_batch")
COMMON_TRAIN = dict(dtype="float32", n_stories=0, sampler="random", eval_iters=1, n_probe_stories=1,
                    probe_len=32, log_interval=50)
SIZES = {
    # the tests: seconds
    "smoke": dict(steps=40, seeds=(0,), facts_per_group=3, repeats=6,
                  batch=dict(small=2, large=8, large_steps=10, large_warmup=1, large_eval_interval=5),
                  train=dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, batch_size=4,
                             max_seq_len=64, learning_rate=1e-2, warmup_iters=2, min_lr=1e-3, eval_interval=10,
                             probe_len=16)),
    # 2-core CPU: 4 seeds x (injected + control, 400 steps of 8 segments; small batch 800 x 4, large 100 x 32)
    # runs of a 0.25M-parameter model
    "demo": dict(steps=400, seeds=(0, 1, 2, 3), facts_per_group=8, repeats=100,
                 batch=dict(small=4, large=32, large_steps=100, large_warmup=5, large_eval_interval=5),
                 train=dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=4, multiple_of=32, batch_size=8,
                            max_seq_len=256, learning_rate=2e-3, warmup_iters=20, min_lr=2e-4, eval_interval=25)),
    # a GPU: llama2.c's 15M shape, 8 seeds (not run here)
    "full": dict(steps=4000, seeds=tuple(range(8)), facts_per_group=16, repeats=100,
                 batch=dict(small=4, large=32, large_steps=4000, large_warmup=200, large_eval_interval=200),
                 train=dict(preset="15M", batch_size=32, learning_rate=5e-4, warmup_iters=200, min_lr=5e-5,
                            eval_interval=200)),
}


def window_steps(condition, n_steps):
    first, last = WINDOWS.get(condition, WINDOWS["early"])
    return max(1, int(round(first * n_steps))), int(round(last * n_steps))


def assign_groups(fact_ids, seed, facts_per_group):
    """{fact_id: condition}: the facts dealt at random (per seed) into one group per condition; facts beyond
    len(CONDITIONS) * facts_per_group stay out of the experiment."""
    need = len(CONDITIONS) * facts_per_group
    if len(fact_ids) < need:
        raise UserError(f"the fact set has {len(fact_ids)} facts, the design needs {need} ({len(CONDITIONS)} "
                        f"conditions x {facts_per_group}) — regenerate the dataset with --fact_set {need}")
    order = np.random.default_rng([seed, 18]).permutation(len(fact_ids))[:need]
    return {fact_ids[i]: CONDITIONS[k // facts_per_group] for k, i in enumerate(order)}


def fact_injections(fact_id, condition, n_steps, repeats):
    """The plan entries of one fact under its condition."""
    if condition == "never":
        return []
    first, last = window_steps(condition, n_steps)
    if condition == "once":
        return [{"step": spread_steps(first, last, 1)[0], "fact_id": fact_id}]
    steps = spread_steps(first, last, repeats)
    if condition == "para10":
        return [{"step": s, "fact_id": fact_id, "phrasing": r % len(FORWARD)} for r, s in enumerate(steps)]
    out = [{"step": s, "fact_id": fact_id} for s in steps]
    if condition == "fwd_rev":
        out += [{"step": s, "fact_id": fact_id, "direction": "reverse"} for s in steps]
    return out


def make_plan(groups, n_steps, repeats, injected=CONDITIONS):
    """The plan of a run: `groups` (every group the run scores) and the injections of the `injected` conditions."""
    injections = [e for fid, cond in sorted(groups.items()) if cond in injected
                  for e in fact_injections(fid, cond, n_steps, repeats)]
    return {"format": 1, "kind": KIND, "groups": groups, "injections": sorted(injections, key=lambda e: e["step"])}


def scale_plan(plan, ratio):
    """The plan in the steps of a run with `ratio` x smaller batches: large-batch step s holds the sampled
    segments of small-batch steps (s-1)*ratio+1 .. s*ratio, so an injection moves to step s*ratio — after exactly
    the same sampled segments."""
    return {**plan, "injections": [{**e, "step": e["step"] * ratio} for e in plan["injections"]]}


def batch_plans(groups, cfg):
    """(small, large) plans of the batch-size runs: the forward-only groups, in the same token windows."""
    b = cfg["batch"]
    scored = {fid: c for fid, c in groups.items() if c in BATCH_CONDITIONS + ("never",)}
    large = make_plan(scored, b["large_steps"], cfg["repeats"], injected=BATCH_CONDITIONS)
    return scale_plan(large, b["large"] // b["small"]), large


def exposures(plan):
    """{fact_id: (first step, last step, number of exposures)} of a plan."""
    out = {}
    for e in plan["injections"]:
        first, last, n = out.get(e["fact_id"], (e["step"], e["step"], 0))
        out[e["fact_id"]] = (min(first, e["step"]), max(last, e["step"]), n + 1)
    return out


def check_batch(cfg):
    b = cfg["batch"]
    if b["large"] % b["small"]:
        raise UserError(f"batch sizes {b['small']} and {b['large']}: the large must be a multiple of the small "
                        f"(steps scale by their ratio)")


def make_runs(exp_dir, size, dataset, vocab_size, overrides, seeds):
    """(design, runs, plans): per seed the injected run, its control twin and the small/large-batch runs;
    plans {path: plan} to write to plans/. Each run's label `plan` names its plan file (the control: its
    injected twin's, for the groups) and `scored` the steps analysis reads."""
    cfg = SIZES[size]
    check_batch(cfg)
    b = cfg["batch"]
    ratio = b["large"] // b["small"]
    facts = load_fact_set(dataset)["facts"]
    fact_ids = [f["id"] for f in facts]
    train = {**COMMON_TRAIN, **cfg["train"], "dataset": dataset, "vocab_size": vocab_size, **overrides}
    batch_train = {  # the learning-rate schedule and the checkpoints in tokens, per batch size
        "small_batch": dict(batch_size=b["small"], warmup_iters=b["large_warmup"] * ratio,
                            eval_interval=b["large_eval_interval"] * ratio),
        "large_batch": dict(batch_size=b["large"], warmup_iters=b["large_warmup"],
                            eval_interval=b["large_eval_interval"])}
    batch_steps = {"small_batch": b["large_steps"] * ratio, "large_batch": b["large_steps"]}
    runs, plans = [], {}
    plan_dir = Path(exp_dir) / "plans"
    for seed in seeds:
        groups = assign_groups(fact_ids, seed, cfg["facts_per_group"])
        small, large = batch_plans(groups, cfg)
        seeded = {**train, "seed": seed, "data_seed": seed}
        for arm, plan, steps, extra in (("inject", make_plan(groups, cfg["steps"], cfg["repeats"]), cfg["steps"], {}),
                                        ("control", None, cfg["steps"], {}),
                                        ("small_batch", small, batch_steps["small_batch"], batch_train["small_batch"]),
                                        ("large_batch", large, batch_steps["large_batch"], batch_train["large_batch"])):
            plan_name = f"{'inject' if arm == 'control' else arm}_s{seed}"
            run_train = {**seeded, **extra}
            if plan is not None:  # train.py reads it relative to the project root
                path = (plan_dir / f"{plan_name}.json").resolve()
                plans[path] = plan
                base = root().resolve()
                run_train["inject_plan"] = path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
            runs.append(runner.make_run(f"{arm}_s{seed}", arm, steps, run_train, None, seed=seed, plan=plan_name))
    design = {"name": Path(exp_dir).name, "kind": KIND, "size": size, "dataset": dataset, "vocab_size": vocab_size,
              "seeds": list(seeds), "steps": cfg["steps"], "facts_per_group": cfg["facts_per_group"],
              "repeats": cfg["repeats"], "conditions": list(CONDITIONS), "windows": WINDOWS, "train": train,
              "batch": {**b, "ratio": ratio, "conditions": list(BATCH_CONDITIONS), "steps": batch_steps,
                        "train": batch_train}}
    return design, runs, plans


def steps_to_score(run, plan, checkpoint_steps, every):
    """The checkpoints scored, on the grid of step 1, multiples of `every` and the last step (arms that are
    compared share it, so 'after' steps agree): the injected run's from its first window on (before it nothing is
    injected); the control's, at multiples of 2*every; the batch runs', at multiples of 4*every (the same tokens
    in both); and for every arm but the injected one the first grid step after each condition's window (where the
    comparisons read it)."""
    ckpts = np.array(sorted(s for s in checkpoint_steps if s == 1 or s % every == 0 or s == max(checkpoint_steps)))
    first = min(e["step"] for e in plan["injections"])
    if run["condition"] == "inject":
        return {1} | {int(s) for s in ckpts if s >= first - (first % every)}
    sparse = 2 if run["condition"] == "control" else 4
    keep = {1, int(ckpts[-1])} | {int(s) for s in ckpts if s % (sparse * every) == 0}
    for cond in set(plan["groups"].values()):
        last = [e["step"] for e in plan["injections"] if plan["groups"][e["fact_id"]] == cond]
        if last:
            keep.add(int(ckpts[min(np.searchsorted(ckpts, max(last)), len(ckpts) - 1)]))
    return keep


def score(experiment, run, plans_by_name, n_candidates):
    """Score the run's checkpoints on its grid that facts.csv lacks (resumable); records the time it took."""
    run_dir = experiment.dir / "runs" / run["name"]
    plan = plans_by_name[run["plan"]]
    grid = steps_to_score(run, plan, [s for s, _ in list_checkpoints(run_dir)], run["train"]["eval_interval"])
    t0 = time.time()
    n_new = analysis.score_run(run_dir, plan["groups"], n_candidates, grid)
    timing = {"score_s": round(time.time() - t0, 1)} if n_new else {}  # a re-run keeps the first scoring's time
    experiment.update(run["name"], scored_new=n_new, **timing)
    return n_new


def machine_line(experiment, jobs, env):
    """The machine, and each invocation's wall time with the load average at its start and end."""
    info = machine_info()
    flags = ", ".join(k for k, v in info["flags"].items() if v) or "no bf16 flags"
    status = experiment.state["status"]
    parts = []
    for arm in ARMS:
        train_s = [v["train_s"] for k, v in status.items() if k.startswith(f"{arm}_s") and "train_s" in v]
        score_s = [v["score_s"] for k, v in status.items() if k.startswith(f"{arm}_s") and "score_s" in v]
        if train_s or score_s:
            parts.append(f"{arm} {np.mean(train_s) / 60 if train_s else float('nan'):.1f} + "
                         f"{np.mean(score_s) / 60 if score_s else float('nan'):.1f}")
    walls = " ".join(line[2:] for line in runner.wall_time_lines(experiment.dir, parts=("invocations",)))
    return (f"{info['cpu']} ({flags}), {os.cpu_count()} cores, --jobs {jobs}, OMP_NUM_THREADS="
            f"{env.get('OMP_NUM_THREADS')}. {walls} Per run, training + "
            f"scoring (minutes, means): {'; '.join(parts)}.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_arguments(ap)
    ap.add_argument("--dataset", default=DATASET, help=f"a storyworld dataset with a fact set (default {DATASET})")
    ap.add_argument("--vocab_size", type=int, default=VOCAB)
    ap.add_argument("--seeds", default="", help="comma-separated seeds (default: the size's)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="further train.py overrides for every run (e.g. device=cuda)")
    add_root_argument(ap)
    args = apply_root(ap.parse_args(argv))
    runner.check_arguments(args)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set {item!r}: use KEY=VALUE, e.g. --set device=cuda")
        key, value = item.split("=", 1)
        overrides[key] = value
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else SIZES[args.size]["seeds"]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 0,1,2,3") from None
    exp_dir = root() / "out" / "experiments" / KIND / args.name
    design, runs, plans = make_runs(exp_dir, args.size, args.dataset, args.vocab_size, overrides, seeds)
    cfg = SIZES[args.size]
    check = runner.check_design(len(seeds) * cfg["facts_per_group"], n_primary=analysis.N_PRIMARY)
    b = design["batch"]
    print(f"{KIND}/{args.name}: {len(runs)} runs ({len(seeds)} seeds x injected + control + batch {b['small']} + "
          f"batch {b['large']}), {cfg['steps']} steps of {cfg['train']['batch_size']} segments (batch runs "
          f"{b['steps']['small_batch']} x {b['small']}, {b['steps']['large_batch']} x {b['large']}), "
          f"{len(CONDITIONS)} conditions x {cfg['facts_per_group']} facts per injected run; at least "
          f"{check['n_pairs']} fact pairs per comparison (smallest attainable p {check['min_p']:.2g}, threshold "
          f"{check['threshold']:.3g}: {'can' if check['tested'] else 'CANNOT'} reject)")
    for path, plan in plans.items():  # written with --plan too: its commands read them
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, plan)
    if args.plan:  # train.py commands; the scoring of their checkpoints is this script's (analysis.score_run)
        print("\n".join(runner.plan_lines(runs, exp_dir)))
        return
    t0, load0 = time.time(), os.getloadavg()[0]
    n_trained = len(runner.pending(exp_dir, runs))
    experiment = runner.run_all(exp_dir, design, runs, jobs=args.jobs)
    env = runner.child_env(args.jobs)
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))  # scoring threads share the cores
    plans_by_name = {p.stem: plan for p, plan in plans.items()}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        n_scored = sum(pool.map(lambda run: score(experiment, run, plans_by_name, cfg["facts_per_group"]), runs))
    if n_trained or n_scored:  # an invocation that did work: its wall time and the load around it
        runner.record_invocation(experiment, t0, load0, f"trained {n_trained} runs, scored {n_scored} checkpoints")
    arm_plans = {arm: {r["seed"]: plans_by_name[r["plan"]] for r in runs if r["condition"] == arm} for arm in ARMS}
    analysis.analyse(exp_dir, design, runs, arm_plans, check, machine_line(experiment, args.jobs, env))
    print(f"done: {exp_dir}/report.md")


if __name__ == "__main__":
    run_main(main)
