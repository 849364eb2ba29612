"""Fragility of new knowledge (issue 18): inject synthetic facts at chosen steps and measure acquisition,
retention, paraphrase transfer and the reversal curse.

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
Windows are fractions of the run (WINDOWS). After training, every checkpoint of every run is scored with
measures/facts.py (answer choices among the facts of the same group, so candidates are equally familiar) into
runs/<run>/facts.csv; analysis.py compares, pairing facts by their slot within a group and seed.
"""
import argparse
import json
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
from modelling.injection import spread_steps  # noqa: E402

KIND = "fact_injection"
DATASET = "storyworld_facts"  # python download/download_datasets.py storyworld --name storyworld_facts ...
VOCAB = 512
CONDITIONS = ("never", "early", "middle", "late", "once", "para10", "fwd_rev")
WINDOWS = {"early": (0.10, 0.35), "middle": (0.40, 0.65), "late": (0.70, 0.95)}
COMMON_TRAIN = dict(dtype="float32", n_stories=0, sampler="random", eval_iters=1, n_probe_stories=1,
                    probe_len=32, log_interval=50)
SIZES = {
    # the tests: seconds
    "smoke": dict(steps=40, seeds=(0,), facts_per_group=3, repeats=6,
                  train=dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, batch_size=4,
                             max_seq_len=64, learning_rate=1e-2, warmup_iters=2, min_lr=1e-3, eval_interval=10,
                             probe_len=16)),
    # 2-core CPU: 4 seeds x (injected + control) runs of a 0.25M-parameter model, 400 steps of 8 segments
    "demo": dict(steps=400, seeds=(0, 1, 2, 3), facts_per_group=8, repeats=100,
                 train=dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=4, multiple_of=32, batch_size=8,
                            max_seq_len=256, learning_rate=2e-3, warmup_iters=20, min_lr=2e-4, eval_interval=25)),
    # a GPU: llama2.c's 15M shape, 8 seeds (not run here)
    "full": dict(steps=4000, seeds=tuple(range(8)), facts_per_group=16, repeats=100,
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


def make_plan(groups, n_steps, repeats):
    injections = [e for fid, cond in sorted(groups.items()) for e in fact_injections(fid, cond, n_steps, repeats)]
    return {"format": 1, "kind": KIND, "groups": groups, "injections": sorted(injections, key=lambda e: e["step"])}


def exposures(plan):
    """{fact_id: (first step, last step, number of exposures)} of a plan."""
    out = {}
    for e in plan["injections"]:
        first, last, n = out.get(e["fact_id"], (e["step"], e["step"], 0))
        out[e["fact_id"]] = (min(first, e["step"]), max(last, e["step"]), n + 1)
    return out


def make_runs(exp_dir, size, dataset, vocab_size, overrides, seeds):
    """(design, runs): per seed the injected run (its plan written to plans/) and its control twin."""
    cfg = SIZES[size]
    facts = load_fact_set(dataset)["facts"]
    fact_ids = [f["id"] for f in facts]
    train = {**COMMON_TRAIN, **cfg["train"], "dataset": dataset, "vocab_size": vocab_size, **overrides}
    runs, plans = [], {}
    for seed in seeds:
        groups = assign_groups(fact_ids, seed, cfg["facts_per_group"])
        plan = make_plan(groups, cfg["steps"], cfg["repeats"])
        plan_path = Path(exp_dir) / "plans" / f"inject_s{seed}.json"
        plans[plan_path] = plan
        seeded = {**train, "seed": seed, "data_seed": seed}
        runs.append(runner.make_run(f"inject_s{seed}", "inject", cfg["steps"],
                                    {**seeded, "inject_plan": str(plan_path.resolve())}, {}, seed=seed))
        runs.append(runner.make_run(f"control_s{seed}", "control", cfg["steps"], seeded, {}, seed=seed))
    design = {"name": Path(exp_dir).name, "kind": KIND, "size": size, "dataset": dataset, "vocab_size": vocab_size,
              "seeds": list(seeds), "steps": cfg["steps"], "facts_per_group": cfg["facts_per_group"],
              "repeats": cfg["repeats"], "conditions": list(CONDITIONS), "windows": WINDOWS, "train": train}
    return design, runs, plans


def steps_to_score(run, plan, checkpoint_steps, every=25):
    """The checkpoints scored, on the grid of step 1, multiples of `every` and the last step (both arms, so
    'after' steps agree): the injected run's from its first window on (before it nothing is injected), the
    control run's at multiples of 2*every and the first grid step after each condition's window (where the
    comparisons read it)."""
    ckpts = np.array(sorted(s for s in checkpoint_steps if s == 1 or s % every == 0 or s == max(checkpoint_steps)))
    first = min(e["step"] for e in plan["injections"])
    if run["condition"] == "inject":
        return {1} | {int(s) for s in ckpts if s >= first - (first % every)}
    keep = {1, int(ckpts[-1])} | {int(s) for s in ckpts if s % (2 * every) == 0}
    for cond in set(plan["groups"].values()):
        last = [e["step"] for e in plan["injections"] if plan["groups"][e["fact_id"]] == cond]
        if last:
            keep.add(int(ckpts[min(np.searchsorted(ckpts, max(last)), len(ckpts) - 1)]))
    return keep


def train_and_score(experiment, run, env, plans_by_run, n_candidates):
    """Train (fresh / resumed / restarted, as the kit's runner does) then score every checkpoint's facts."""
    run_dir = experiment.dir / "runs" / run["name"]
    log_path = experiment.dir / "logs" / f"{run['name']}.log"
    state = runner.training_state(run_dir, run["steps"])
    if state == "restart":
        import shutil
        shutil.rmtree(run_dir)
    if state != "done":
        t0 = time.time()
        runner.run_stage(runner.train_command(run, run_dir, resume=state == "resume"), log_path,
                         f"training {run['name']}", env)
        experiment.update(run["name"], train={"new": "trained", "restart": "restarted"}.get(state, "resumed"),
                          train_s=round(time.time() - t0, 1))
    t0 = time.time()
    plan = plans_by_run[run["seed"]]
    checkpoint_steps = json.loads((run_dir / "config.json").read_text())["checkpoint_steps"]
    n_new = analysis.score_run(run_dir, plan["groups"], n_candidates, steps_to_score(run, plan, checkpoint_steps,
                                                                                   run["train"]["eval_interval"]))
    timing = {"score_s": round(time.time() - t0, 1)} if n_new else {}  # a re-run keeps the first scoring's time
    experiment.update(run["name"], scored_new=n_new, done=True, **timing)


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
    print(f"{KIND}/{args.name}: {len(runs)} runs ({len(seeds)} seeds x injected + control), {cfg['steps']} steps "
          f"each, {len(CONDITIONS)} conditions x {cfg['facts_per_group']} facts per injected run; "
          f"{check['n_pairs']} fact pairs per comparison (smallest attainable p {check['min_p']:.2g}, "
          f"threshold {check['threshold']:.3g}: {'can' if check['tested'] else 'CANNOT'} reject)")
    if args.plan:  # train.py commands; the scoring of their checkpoints is this script's (analysis.score_run)
        print("\n".join(line.split(" && ")[0] for line in runner.plan_lines(runs, exp_dir)))
        return
    for path, plan in plans.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, plan)
    experiment = runner.Experiment(exp_dir, design)
    env = runner.child_env(args.jobs)
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))  # scoring threads share the cores
    t0 = time.time()
    plans_by_seed = {int(p.stem.split("_s")[-1]): plan for p, plan in plans.items()}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(train_and_score, experiment, run, env, plans_by_seed, cfg["facts_per_group"])
                       for run in runs]:
            future.result()
    experiment.state.setdefault("wall_s", {})[time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))] = \
        round(time.time() - t0, 1)
    experiment.save()
    info = machine_info()
    flags = ", ".join(k for k, v in info["flags"].items() if v) or "no bf16 flags"
    status = experiment.state["status"].values()
    train_s = [v["train_s"] for v in status if "train_s" in v]
    score_s = [v["score_s"] for v in status if "score_s" in v]
    walls = ", ".join(f"{w / 60:.1f} min (started {t})" for t, w in experiment.state["wall_s"].items())
    machine = (f"{info['cpu']} ({flags}), {os.cpu_count()} cores, --jobs {args.jobs}, OMP_NUM_THREADS="
               f"{env.get('OMP_NUM_THREADS')}. Wall per invocation of this command: {walls}. Per run: training "
               f"{np.mean(train_s) / 60 if train_s else float('nan'):.1f} min, scoring every checkpoint "
               f"{np.mean(score_s) / 60 if score_s else float('nan'):.1f} min (means). Load average "
               f"{os.getloadavg()[0]:.1f} at the end (the box was shared with other jobs)")
    analysis.analyse(exp_dir, design, runs, plans_by_seed, check, machine)
    print(f"done: {exp_dir}/report.md")


if __name__ == "__main__":
    run_main(main)
