"""Learn and unlearn a bias during pretraining: does overt bias unlearn on a neutral or counter-biased corpus,
how fast at each stage of the parent's training, and does covert bias persist after the overt bias is gone?

    python experiments/bias_unlearning/experiment_bias_unlearning.py                 # --size demo, --name example
    python experiments/bias_unlearning/experiment_bias_unlearning.py --size smoke --name t --plan

Design (docs/experiments.md "bias_unlearning"):
  corpora   storyworld `parent` (--occupation_bias 0.9) and three branch corpora of new stories (other seeds):
            `biased` (0.9, the control for "more training"), `neutral` (0.5), `counter` (0.1); all encoded with
            the parent corpus's tokenizer (pretokenize --tokenizer_from).
  runs      per init seed: the parent, then at each stage (1/8, 1/2 and all of the parent's steps; powers of two,
            so they are checkpoints) one branch per corpus (train.py --init_from the stage checkpoint), each for
            the same number of steps, fresh AdamW, its own warmup/cosine schedule and data order.
  measures  at every checkpoint (measure.py): overt bias (p of the stereotyped pronoun, amplification vs the run
            corpus's own rate with a 95% interval), covert bias (WEAT at the last layer and the embeddings;
            sampled-generation stereotype rate at the parent's stages and end and at branch ends), loss on every corpus's fixed
            validation sample.
  analysis  tokens until overt bias is within the interval of the branch corpus's rate; branch-end overt and
            covert bias per stage x corpus vs the control (paired over init seeds, experiments/common/stats.py);
            the primary comparison: branch-end overt bias, counter minus control, averaged over stages.
Writes out/experiments/bias_unlearning/NAME/: runs/, logs/, experiment.json, measures.csv, unlearn.csv,
results.csv, curves/, figures/, report.md, description.json.
"""
import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.errors import run_main  # noqa: E402
from common.io import atomic_write_text, provenance  # noqa: E402
from common.machine import machine_info  # noqa: E402
from common.paths import out_dir, tok_dir  # noqa: E402
from experiments.common import describe, runner, stats  # noqa: E402

KIND = "bias_unlearning"
MIN_GAP = 0.05  # overt bias: a branch starting closer than this to its target has no half-life (nothing to move)
CORPORA = {"parent": 0.9, "biased": 0.9, "neutral": 0.5, "counter": 0.1}  # occupation_bias of each corpus
BRANCH_CORPORA = ("biased", "neutral", "counter")
CONTROL = "biased"
STAGE_FRACTIONS = (1 / 8, 1 / 2, 1)
# the occupation-pronoun association is learnable on storyworld by a 1-layer model with one-piece occupations
# (vocab 2048; docs/evaluation.md "Bias probe": a 2-layer model of the same width learned none by step 1,200)
MODEL = dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=4, multiple_of=32, max_seq_len=256, batch_size=16,
             learning_rate=1e-2, min_lr=1e-3, warmup_iters=16, weight_decay=0.1, dtype="float32", eval_iters=1,
             n_probe_stories=1, probe_len=32, log_interval=50)
SIZES = {
    # tests: seconds per run
    "smoke": dict(stories=(800, 400), vocab=512, seeds=(0, 1), parent_steps=8, branch_steps=4, eval_interval=4,
                  train=dict(MODEL, dim=16, warmup_iters=4)),
    # 2-core CPU: 6 seeds, the fewest whose paired sign-flip test can reach p < 0.05 (2 / 2^6). Batch 8 for
    # 1,024 steps (the recipe sweep, docs/experiments.md): at the same compute, twice the updates of batch 16 x
    # 512 learn 0.17 of the corpus's 0.39 overt bias instead of 0.06
    "demo": dict(stories=(4000, 2000), vocab=2048, seeds=(0, 1, 2, 3, 4, 5), parent_steps=1024, branch_steps=128,
                 eval_interval=256, train=dict(MODEL, batch_size=8)),
    # a GPU (add --set device=cuda); not run here
    "full": dict(stories=(60000, 20000), vocab=2048, seeds=(0, 1, 2, 3, 4, 5, 6), parent_steps=8192,
                 branch_steps=1024, eval_interval=1024,
                 train=dict(MODEL, n_layers=2, dim=128, batch_size=32, learning_rate=5e-3, min_lr=5e-4,
                            warmup_iters=100)),
}
CORPUS_SEEDS = {"parent": 100, "biased": 101, "neutral": 102, "counter": 103}  # branch corpora: new stories
MEASURES = ["overt_bias", "amp", "amp_lo", "amp_hi", "weat_d_mean", "weat_d_last", "weat_d_emb", "gen_stereo_rate"]
COVERT = "weat_d_mean"  # question 2's covert measure: WEAT d averaged over the embeddings and every layer


# ---------------------------------------------------------------------------------------------------------
# the plan

def corpus_name(prefix, corpus):
    return f"{prefix}_{corpus}"


def stage_steps(parent_steps):
    return [max(1, int(round(parent_steps * f))) for f in STAGE_FRACTIONS]


def plan(args, size):
    """(design dict, parent runs, branch runs)."""
    train = {**size["train"], "vocab_size": size["vocab"], "eval_interval": size["eval_interval"]}
    for item in args.set:
        key, _, value = item.partition("=")
        train[key] = value
    parents, branches = [], []
    for seed in size["seeds"]:
        parent = runner.make_run(f"parent_s{seed}", "parent", size["parent_steps"],
                                 {**train, "dataset": corpus_name(args.prefix, "parent"), "seed": seed,
                                  "data_seed": seed}, None, init_seed=seed, stage=0, corpus="parent")
        parents.append(parent)
        for stage in stage_steps(size["parent_steps"]):
            for corpus in BRANCH_CORPORA:
                branch = runner.make_run(
                    f"st{stage}_{corpus}_s{seed}", corpus, size["branch_steps"],
                    {**train, "dataset": corpus_name(args.prefix, corpus), "seed": seed, "data_seed": 1000 + seed},
                    None, init_seed=seed, stage=stage, corpus=corpus,
                    branch_from=str(Path(args.exp_dir) / "runs" / parent["name"] / "ckpt" / f"step_{stage:06d}.pt"))
                branches.append(branch)
    design = {"name": args.name, "kind": KIND, "size": args.size, "prefix": args.prefix, "corpora": CORPORA,
              "corpus_seeds": CORPUS_SEEDS, "stories": size["stories"], "vocab_size": size["vocab"],
              "seeds": list(size["seeds"]), "parent_steps": size["parent_steps"],
              "stages": stage_steps(size["parent_steps"]), "branch_steps": size["branch_steps"], "train": train}
    return design, parents, branches


# ---------------------------------------------------------------------------------------------------------
# corpora: generated and tokenized by the project's own stages (skipped when already there)

def make_corpora(prefix, size, env):
    repo = runner.REPO_ROOT
    logs = out_dir() / "experiments" / KIND / "corpora_logs"
    parent = corpus_name(prefix, "parent")
    for corpus, bias in CORPORA.items():
        name = corpus_name(prefix, corpus)
        if (tok_dir(name, size["vocab"]) / "manifest.json").exists():
            continue
        n = size["stories"][0 if corpus == "parent" else 1]
        log = logs / f"{name}.log"
        runner.run_stage([sys.executable, str(repo / "download/download_datasets.py"), "storyworld", "--name", name,
                          "--n_stories", str(n), "--seed", str(CORPUS_SEEDS[corpus]), "--occupation_bias",
                          str(bias)], log, f"generating {name}", env)
        pretok = [sys.executable, str(repo / "tokenization/pretokenize.py")]
        if corpus == "parent":
            runner.run_stage(pretok + ["train_vocab", "--dataset", name, "--vocab_size", str(size["vocab"])], log,
                             f"train_vocab {name}", env)
            extra = []
        else:
            extra = ["--tokenizer_from", parent]
        runner.run_stage(pretok + ["pretokenize", "--dataset", name, "--vocab_size", str(size["vocab"]), *extra],
                         log, f"pretokenize {name}", env)


# ---------------------------------------------------------------------------------------------------------
# measuring every checkpoint (a worker process per job; each builds the probes once)

_PROBES = None


def _init_worker(prefix, vocab, max_seq_len, threads):
    global _PROBES
    import torch
    torch.set_num_threads(threads)
    from experiments.bias_unlearning.measure import Probes
    from tokenization.dataset import TokenizedDataset
    _PROBES = Probes({c: TokenizedDataset(corpus_name(prefix, c), vocab) for c in CORPORA}, max_seq_len)


def measured_steps(first, last, also=(), factor=4):
    """Checkpoint steps measured: first + factor^k (k >= 1) up to last, the last, and `also` (the stages).
    Branches use factor 2 (every log-spaced checkpoint from +2), so the half-life interpolates between
    neighbours a factor 2 apart."""
    steps, k = {last, *also}, factor
    while first + k < last:
        steps.add(first + k)
        k *= factor
    return steps


def _measure_run(job):
    """Measure the chosen checkpoints of one run not yet in its measures file; returns the run's full table."""
    from modelling.checkpoints import list_checkpoints, load_model
    run_dir, own, gen_steps, extra, steps = job
    path = Path(run_dir) / "tables" / "bias_unlearning.csv"
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "source"])
    rows = [r for r in old.to_dict("records")]
    done = {(int(r["step"]), r["source"]) for r in rows}
    todo = [(s, p, "own") for s, p in list_checkpoints(run_dir) if s in steps] + \
        [(s, Path(p), "parent") for s, p in extra]
    for step, ckpt_path, source in todo:
        if (step, source) in done:
            continue
        model, ckpt = load_model(ckpt_path)
        row = {"step": step, "source": source, "tokens_seen": int(ckpt.get("tokens_seen") or 0)}
        row.update(_PROBES.measure(model, own, generations=step in gen_steps))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["step", "source"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, table.to_csv(index=False))
    return run_dir, table


def measure_all(exp_dir, design, parents, branches, jobs):
    """measures.csv: every checkpoint of every run (branches also carry their branch point, the parent's stage
    checkpoint measured against the branch corpus, as source 'parent')."""
    stages = design["stages"]
    jobs_list = []
    for run in parents:
        last = design["parent_steps"]
        jobs_list.append((str(exp_dir / "runs" / run["name"]), "parent", set(stages) | {last}, [],
                          measured_steps(0, last, stages)))
    for run in branches:
        end = run["stage"] + run["steps"]
        jobs_list.append((str(exp_dir / "runs" / run["name"]), run["corpus"], {end},
                          [(run["stage"], run["branch_from"])], measured_steps(run["stage"], end, factor=2)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tables = []
    with ProcessPoolExecutor(jobs, initializer=_init_worker,
                             initargs=(design["prefix"], design["vocab_size"], design["train"]["max_seq_len"],
                                       threads)) as pool:
        for run_dir, table in tqdm(pool.map(_measure_run, jobs_list), total=len(jobs_list), desc="measure",
                                   unit="run"):
            tables.append(table.assign(run=Path(run_dir).name))
    labels = pd.DataFrame([{"run": r["name"], "init_seed": r["init_seed"], "stage": r["stage"],
                            "corpus": r["corpus"], "role": "parent" if r["condition"] == "parent" else "branch"}
                           for r in parents + branches])
    table = pd.concat(tables, ignore_index=True).merge(labels, on="run")
    # tokens after the branch point (0 at the branch point; the parent's own tokens for the parent)
    base = table[table["source"] == "parent"].set_index("run")["tokens_seen"]
    table["tokens_after"] = table["tokens_seen"] - table["run"].map(base).fillna(0)
    table["within_ci"] = (table["amp_lo"] <= 0) & (table["amp_hi"] >= 0)
    return table.sort_values(["role", "stage", "corpus", "init_seed", "step"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# analysis

def half_lives(g):
    """A branch's (rows sorted by step, the branch point first) half-lives of its overt bias: toward 0 (the
    bias halves: `half_life_zero`) and toward the branch corpus's own rate (`half_life_corpus`), each with its
    censored flag."""
    tokens, overt = g["tokens_after"].to_numpy(), g["overt_bias"].to_numpy()
    corpus_rate = float(g.iloc[-1]["corpus_stereo_rate"]) - 0.5
    zero, zero_c = half_life(tokens, overt, 0.0)
    corp, corp_c = half_life(tokens, overt, corpus_rate)
    return {"corpus_overt": corpus_rate, "half_life_zero": zero, "half_life_zero_censored": zero_c,
            "half_life_corpus": corp, "half_life_corpus_censored": corp_c}


def time_to_unlearn(measures):
    """Per branch: tokens after the branch point until the overt bias is first within the 95% interval of
    the branch corpus's rate (NaN when never within the branch: censored at its budget)."""
    rows = []
    for run, g in measures[measures["role"] == "branch"].groupby("run"):
        g = g.sort_values("step")
        hit = g[g["within_ci"]]
        first = g.iloc[0]
        rows.append({"run": run, "init_seed": first["init_seed"], "stage": first["stage"], "corpus": first["corpus"],
                     "overt_start": first["overt_bias"], "overt_end": g.iloc[-1]["overt_bias"],
                     "amp_start": first["amp"], "amp_end": g.iloc[-1]["amp"],
                     "weat_start": first["weat_d_last"], "weat_end": g.iloc[-1]["weat_d_last"],
                     "covert_start": first.get(COVERT, math.nan), "covert_end": g.iloc[-1].get(COVERT, math.nan),
                     "tokens_to_unlearn": float(hit.iloc[0]["tokens_after"]) if len(hit) else math.nan,
                     **half_lives(g),
                     "budget_tokens": float(g.iloc[-1]["tokens_after"]),
                     "weat_when_unlearned": float(hit.iloc[0]["weat_d_last"]) if len(hit) else math.nan})
    return pd.DataFrame(rows)


def crossing_tokens(tokens, values, level):
    """Tokens at which a measured curve crosses `level` for good: after its last checkpoint still on the side of
    its first value, linearly interpolated between that checkpoint and the next; tokens[0] when it starts on
    the level; NaN when its last checkpoint is still on the first value's side (censored at the budget). The
    *last* crossing, not the first: every branch's overt bias dips in its first few steps (fresh AdamW and
    warmup; the equally biased control too) and the control then recovers, so a first crossing would time
    the transient, not the unlearning."""
    tokens, values = np.asarray(tokens, dtype=float), np.asarray(values, dtype=float)
    side = np.sign(values[0] - level)
    if side == 0:
        return float(tokens[0])
    same = np.flatnonzero(np.sign(values - level) == side)
    k = int(same[-1])
    if k == len(values) - 1:
        return math.nan
    t0, t1, v0, v1 = tokens[k], tokens[k + 1], values[k], values[k + 1]
    return float(t0 + (level - v0) / (v1 - v0) * (t1 - t0))


def half_life(tokens, values, target, min_gap=MIN_GAP):
    """Tokens after the branch point until the overt bias has moved halfway from its branch-point value
    values[0] toward `target` and stays there to the end of the branch (crossing_tokens). NaN with censored
    False when the start is within min_gap of the target (nothing to unlearn: no half-life), NaN with censored
    True when it never gets halfway. -> (tokens, censored)."""
    start = float(values[0])
    if not (np.isfinite(start) and np.isfinite(target)) or abs(target - start) < min_gap:
        return math.nan, False
    t = crossing_tokens(tokens, values, start + (target - start) / 2)
    return t, bool(np.isnan(t))


def branch_start(measures, column):
    """[init_seed x (stage, corpus)] of a column at each branch's branch point (the parent's checkpoint)."""
    b = measures[(measures["role"] == "branch") & (measures["source"] == "parent")]
    return b.pivot_table(index="init_seed", columns=["stage", "corpus"], values=column)


def branch_end(measures, column):
    """[init_seed x (stage, corpus)] of a column at each branch's last checkpoint."""
    b = measures[(measures["role"] == "branch") & (measures["source"] == "own")]
    last = b.loc[b.groupby("run")["step"].idxmax()]
    return last.pivot_table(index="init_seed", columns=["stage", "corpus"], values=column)


def comparisons(measures, stages, unlearn=None):
    """results.csv: the primary comparison, then every stage x corpus vs the control (exploratory, BH q)."""
    rows = []
    overt = branch_end(measures, "overt_bias")
    counter = np.mean([overt[(s, "counter")].to_numpy() for s in stages], axis=0)
    control = np.mean([overt[(s, CONTROL)].to_numpy() for s in stages], axis=0)
    rows.append({"comparison": "counter - control (mean over stages)", "outcome": "overt_bias", "stage": "all",
                 "primary": True, **stats.compare_paired((counter, control))})
    for column in ("overt_bias", COVERT, "weat_d_last", "weat_d_emb", "loss_parent", "gen_stereo_rate"):
        if column not in measures:
            continue
        end = branch_end(measures, column)
        for stage in stages:
            for corpus in ("neutral", "counter"):
                if (stage, corpus) not in end or (stage, CONTROL) not in end:
                    continue
                rows.append({"comparison": f"{corpus} - control", "outcome": column, "stage": stage,
                             "primary": False,
                             **stats.compare_paired((end[(stage, corpus)].to_numpy(), end[(stage, CONTROL)].to_numpy()))})
    # covert bias left at the end of the neutral and counter branches, against its null value 0 (no
    # association), and against its own value at the branch point (end - start: how much of it went)
    if COVERT in measures:
        end, start = branch_end(measures, COVERT), branch_start(measures, COVERT)
        for stage in stages:
            for corpus in ("neutral", "counter"):
                if (stage, corpus) in end:
                    rows.append({"comparison": f"{corpus} vs 0", "outcome": COVERT, "stage": stage, "primary": False,
                                 **stats.compare_paired(end[(stage, corpus)].to_numpy())})
                    rows.append({"comparison": f"{corpus} end - branch point", "outcome": COVERT, "stage": stage,
                                 "primary": False, **stats.compare_paired((end[(stage, corpus)].to_numpy(),
                                                                           start[(stage, corpus)].to_numpy()))})
    # how the overt bias's half-life depends on the stage: later stage - earlier stage, paired over the seeds
    # that got halfway in both (censored and n/a ones drop out; n says how many are left; pairs with n < 2 are
    # not compared)
    if unlearn is not None:
        for column in ("half_life_zero", "half_life_corpus"):
            hl = unlearn.pivot_table(index="init_seed", columns=["stage", "corpus"], values=column, dropna=False)
            for i, early in enumerate(stages):
                for stage in stages[i + 1:]:
                    for corpus in ("neutral", "counter"):
                        if (stage, corpus) not in hl or (early, corpus) not in hl:
                            continue
                        a, b = hl[(stage, corpus)].to_numpy(), hl[(early, corpus)].to_numpy()
                        if (np.isfinite(a) & np.isfinite(b)).sum() >= 2:
                            rows.append({"comparison": f"{corpus}: stage {stage} - stage {early}", "outcome": column,
                                         "stage": stage, "primary": False, **stats.compare_paired((a, b))})
    table = pd.DataFrame(rows)
    explore = ~table["primary"]
    table.loc[explore, "q"] = stats.bh_q(table.loc[explore, "p"].to_numpy())
    return table


def grid(unlearn):
    """stage x corpus: seeds within CI by the budget, mean tokens to unlearn over those seeds, overt/WEAT at the
    start and end (mean and t-interval over seeds)."""
    rows = []
    for (stage, corpus), g in unlearn.groupby(["stage", "corpus"]):
        row = {"stage": stage, "corpus": corpus, "n_seeds": len(g), "n_unlearned": int(g["tokens_to_unlearn"].notna().sum()),
               "tokens_to_unlearn_mean": g["tokens_to_unlearn"].mean(), "budget_tokens": g["budget_tokens"].mean()}
        for column in ("overt_start", "overt_end", "amp_end", "weat_start", "weat_end", "covert_start", "covert_end",
                       "half_life_zero", "half_life_corpus"):
            if column not in g:
                continue
            mean, lo, hi = stats.t_interval(g[column].to_numpy())  # half-lives: over the seeds that got halfway
            row.update({column: mean, f"{column}_lo": lo, f"{column}_hi": hi})
        for column in ("half_life_zero", "half_life_corpus"):
            if column in g:
                row[f"{column}_n"] = int(g[column].notna().sum())
                row[f"{column}_n_censored"] = int(g[f"{column}_censored"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------------------
# figures

def figure_curves(measures, path, column, ylabel):
    """column vs tokens seen: each seed's parent curve (grey) with its branches hanging off it."""
    colors = {"biased": "tab:red", "neutral": "tab:gray", "counter": "tab:blue"}
    seeds = sorted(measures["init_seed"].unique())
    fig, axes = plt.subplots(1, len(seeds), figsize=(max(6.4, 3.2 * len(seeds)), 3.4), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        m = measures[measures["init_seed"] == seed]
        p = m[m["role"] == "parent"].sort_values("step")
        ax.plot(p["tokens_seen"], p[column], color="black", lw=1.5, label="parent (0.9)")
        for run, g in m[m["role"] == "branch"].groupby("run"):
            g = g.sort_values("step")
            ax.plot(g["tokens_seen"], g[column], color=colors[g["corpus"].iloc[0]], lw=1, alpha=0.8)
        ax.set_title(f"init seed {seed}", fontsize=9)
        ax.set_xlabel("tokens seen")
        ax.axhline(0, color="0.7", lw=0.5)
    axes[0][0].set_ylabel(ylabel)
    handles = [plt.Line2D([], [], color="black", label="parent (0.9)")] + \
              [plt.Line2D([], [], color=c, label=f"branch: {k}") for k, c in colors.items()]
    fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_grid(table, path):
    """stage x corpus, mean with 95% interval over seeds: the overt bias's half-life (tokens until it halves),
    the overt bias and the covert bias (weat_d_mean) at branch end."""
    panels = [("half_life_zero", "tokens until overt bias halves (reached seeds)"),
              ("overt_end", "overt bias at branch end"), ("covert_end", "covert (WEAT d, mean over layers) at branch end")]
    panels = [p for p in panels if p[0] in table]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    corpora = list(BRANCH_CORPORA)
    for ax, (column, title) in zip(axes[0], panels):
        for k, stage in enumerate(sorted(table["stage"].unique())):
            t = table[table["stage"] == stage].set_index("corpus").reindex(corpora)
            x = np.arange(len(corpora)) + (k - 1) * 0.25
            lo = (t[column] - t[f"{column}_lo"]).fillna(0).clip(lower=0)
            hi = (t[f"{column}_hi"] - t[column]).fillna(0).clip(lower=0)
            ax.errorbar(x, t[column], yerr=[lo, hi], fmt="o", capsize=3, label=f"branch at step {stage}")
        ax.set_xticks(range(len(corpora)), corpora)
        ax.axhline(0, color="0.7", lw=0.5)
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# report

def ci(mean, lo, hi, digits=3):
    return f"{fmt(mean, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def result_row(results, comparison, outcome, stage):
    r = results[(results["comparison"] == comparison) & (results["outcome"] == outcome) &
                (results["stage"].astype(str) == str(stage))]
    return r.iloc[0] if len(r) else None


def said(r, digits=3):
    """'diff [lo, hi], p = …, MDE …' of a results row."""
    if r is None or not np.isfinite(r["diff"]):
        return "n/a"
    return (f"{ci(r['diff'], r['ci_lo'], r['ci_hi'], digits)} (n = {int(r['n'])}, p = {fmt(r['p'], 4)}, "
            f"MDE {fmt(r['mde'], digits)})")


def half_life_cell(r, column):
    """'mean [CI] (k of n reached; c never got halfway; m nothing to move)' of a grid row."""
    n, reached, censored = int(r["n_seeds"]), int(r[f"{column}_n"]), int(r[f"{column}_n_censored"])
    text = ci(r[column], r[f"{column}_lo"], r[f"{column}_hi"], 0) if reached else "censored" if censored else "n/a"
    parts = [f"{reached}/{n} reached"]
    if censored:
        parts.append(f"{censored} censored")
    if n - reached - censored:
        parts.append(f"{n - reached - censored} n/a")
    return f"{text} ({', '.join(parts)})"


def write_report(exp_dir, design, measures, unlearn, table, results, wall_s, power):
    primary = results[results["primary"]].iloc[0]
    stages, train = design["stages"], design["train"]
    parent = measures[measures["role"] == "parent"]
    corpus_overt = float(parent["corpus_stereo_rate"].mean() - 0.5)
    budget = float(table["budget_tokens"].mean())
    lines = [f"# Bias unlearning — {design['name']} ({design['size']})", "",
             "**Question.** A model pretrained on a corpus where occupations come with a stereotyped pronoun 90% of "
             "the time is branched at three stages and trained on new stories that are equally biased (control), "
             "neutral (0.5) or counter-biased (0.1). How fast does the overt bias unlearn, and does the covert "
             "bias persist after the overt bias is gone?", "",
             "## Design", "",
             f"- Corpora (storyworld, one tokenizer of {design['vocab_size']} pieces trained on the parent corpus, "
             f"shared with `pretokenize --tokenizer_from`): parent {design['stories'][0]} stories at 0.9; branch "
             f"corpora of {design['stories'][1]} new stories each (other generator seeds) at 0.9 / 0.5 / 0.1.",
             f"- {measures['init_seed'].nunique()} init seeds analysed of {len(design['seeds'])} planned "
             f"({', '.join(map(str, sorted(measures['init_seed'].unique())))}); parent {design['parent_steps']} "
             f"steps; branches at steps {', '.join(map(str, stages))} (1/8, 1/2, all), each "
             f"{design['branch_steps']} steps (≈ {budget:,.0f} tokens) on each corpus (fresh AdamW, its own warmup "
             f"and cosine schedule, its own data order). Model: dim {train.get('dim')}, layers "
             f"{train.get('n_layers')}, max_seq_len {train.get('max_seq_len')}, batch {train.get('batch_size')}, lr "
             f"{train.get('learning_rate')} → {train.get('min_lr')}, dtype {train.get('dtype')}.",
             "- Overt bias = p(stereotyped pronoun) − 0.5 over the "
             f"{int(measures['n_occ'].max())} stereotyped occupations seen in every corpus (null: 0 for an "
             "untrained model, tests/test_bias_probe.py); amplification vs the run corpus's own rate with a 95% "
             "bootstrap interval. Measured at the branch point and every log-spaced branch checkpoint "
             "(+2, +4, +8, … steps).",
             "- How fast (question 1), per branch: the **half-life** = tokens after the branch point until the "
             "overt bias has fallen halfway from its branch-point value to 0 (the bias halves) for good — the "
             "last crossing, after which it stays past halfway to the branch's end (every branch, the control "
             "too, dips in its first steps, a transient of the fresh optimizer) —, linearly interpolated between "
             "the two checkpoints around the crossing; also halfway to the branch corpus's "
             f"own rate; and tokens until it is within the 95% interval of that rate. A branch that never gets "
             f"there within the budget is *censored* (counted, not averaged); one that starts within {MIN_GAP} of "
             "the target has nothing to move (n/a). Means and t-intervals are over the seeds that got there.",
             "- Covert bias (question 2): `weat_d_mean`, the WEAT effect size of the seen female- vs "
             "male-stereotyped occupations against the she/he token vectors, averaged over the token embeddings "
             "and the hidden state after every layer (at the occupation, neutral frames; nothing asks for a "
             "pronoun; untrained models read ≈ 0, tests/test_bias_probe.py). A model trained without the bias "
             "does not read exactly 0 (which occupations sit near which words differs), so persistence is judged "
             "against the control branch and the branch point, paired by seed, not against 0. Also the "
             "sampled-generation stereotype rate at branch ends. Loss on each corpus's fixed validation sample.",
             f"- Statistics (experiments/common/stats.py): paired over init seeds, exact sign-flip p, t-interval, "
             f"minimum detectable effect (80% power). Power: {power['reason']}.", "",
             "## Primary result", "",
             f"Branch-end overt bias, counter minus control, mean over the three stages: "
             f"{ci(primary['diff'], primary['ci_lo'], primary['ci_hi'])} (95% CI), p = "
             f"{fmt(primary['p'], 4)} ({primary['p_method']}, n = {int(primary['n'])}, smallest attainable p "
             f"{fmt(primary['min_p'], 4)}); minimum detectable effect at 80% power {fmt(primary['mde'])}. "
             f"{'Significant' if primary['significant'] else 'Not significant'} at {fmt(primary['threshold'], 3)}.",
             "", "## How much bias the parent learned", "",
             f"The parent corpus's own overt bias is {fmt(corpus_overt)} (p of the stereotyped pronoun "
             f"{fmt(corpus_overt + 0.5)}). The parent at each stage (mean [95% CI] over seeds):", "",
             "| parent step | overt bias | share of the corpus's | covert `weat_d_mean` | WEAT d (last layer) |",
             "|---|---|---|---|---|"]
    for step in stages:
        p = parent[parent["step"] == step]
        o = stats.t_interval(p["overt_bias"].to_numpy())
        gp = stats.t_interval(p[COVERT].to_numpy()) if COVERT in p else (math.nan,) * 3
        w = stats.t_interval(p["weat_d_last"].to_numpy())
        lines.append(f"| {step} | {ci(*o)} | {fmt(o[0] / corpus_overt, 2)} | {ci(*gp)} | {ci(*w)} |")

    lines += ["", "## 1. How fast does overt bias unlearn (stage × corpus)", "",
              "Half-lives in tokens after the branch point (mean [95% CI] over the seeds that got there; the rest "
              f"censored at the budget of ≈ {budget:,.0f} tokens or n/a).", "",
              "| stage | corpus | overt at branch | overt at end | half-life to 0 | half-life to the corpus's rate "
              "| within the corpus's CI |", "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        within = (f"{r['n_unlearned']}/{r['n_seeds']}, mean {fmt(r['tokens_to_unlearn_mean'], 0)} tokens"
                  if r["n_unlearned"] else f"0/{r['n_seeds']} (censored)")
        lines.append(f"| {r['stage']} | {r['corpus']} (rate {fmt(unlearn[(unlearn['stage'] == r['stage']) & (unlearn['corpus'] == r['corpus'])]['corpus_overt'].mean())}) | "
                     f"{ci(r['overt_start'], r['overt_start_lo'], r['overt_start_hi'])} | "
                     f"{ci(r['overt_end'], r['overt_end_lo'], r['overt_end_hi'])} | "
                     f"{half_life_cell(r, 'half_life_zero')} | {half_life_cell(r, 'half_life_corpus')} | {within} |")
    lines += ["", "Dependence on the stage (half-life at a later stage minus at an earlier one, paired over the "
              "seeds that got halfway in both; pairs with fewer than 2 such seeds are not listed):", ""]
    hl_rows = results[results["outcome"].astype(str).str.startswith("half_life")]
    for _, r in hl_rows.iterrows():
        lines.append(f"- {r['comparison']}, {r['outcome']}: {said(r, 0)}")
    if not len(hl_rows):
        lines.append("- none: no pair of stages has 2 seeds that got halfway in both")
    lines += ["", "## 2. Does covert bias persist after the overt bias is gone", "",
              "Per stage, for the neutral and counter branches: the overt bias at the branch end (does its "
              "interval reach 0), and the covert `weat_d_mean` there against its own value at the branch "
              "point and against the control branch's at the same tokens (paired over seeds); beside it the overt "
              "bias's own difference from the control. Covert bias *persists* where the overt bias differs from the "
              "control's and the covert does not (with the MDE saying how small a covert drop could hide).", "",
              "| stage | corpus | overt at end | overt CI reaches 0 | overt − control | covert at branch | covert at end | "
              "covert end − branch point | covert − control |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table[table["corpus"] != CONTROL].iterrows():
        stage, corpus = r["stage"], r["corpus"]
        gone = "yes" if r["overt_end_lo"] <= 0 else "no"
        lines.append(f"| {stage} | {corpus} | {ci(r['overt_end'], r['overt_end_lo'], r['overt_end_hi'])} | {gone} | "
                     f"{said(result_row(results, f'{corpus} - control', 'overt_bias', stage))} | "
                     f"{ci(r['covert_start'], r['covert_start_lo'], r['covert_start_hi'])} | "
                     f"{ci(r['covert_end'], r['covert_end_lo'], r['covert_end_hi'])} | "
                     f"{said(result_row(results, f'{corpus} end - branch point', COVERT, stage))} | "
                     f"{said(result_row(results, f'{corpus} - control', COVERT, stage))} |")
    lines += ["", "## All comparisons (branch end unless named; paired over seeds; BH q over the exploratory ones)",
              "", "| comparison | outcome | stage | diff [95% CI] | n | p | q (BH) | MDE |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in results.iterrows():
        lines.append(f"| {r['comparison']} | {r['outcome']} | {r['stage']} | {ci(r['diff'], r['ci_lo'], r['ci_hi'])} "
                     f"| {int(r['n'])} | {fmt(r['p'], 4)} | {fmt(r.get('q'), 3)} | {fmt(r['mde'])} |")
    parent_end = parent[parent["step"] == design["parent_steps"]]
    lines += ["", "## Checks", "",
              f"- The parent at its last step: overt bias {fmt(parent_end['overt_bias'].mean())} (seeds "
              f"{', '.join(fmt(v) for v in parent_end['overt_bias'])}) against the corpus's {fmt(corpus_overt)}.",
              "- Loss: `loss_parent` (the parent corpus's validation sample) at branch end, neutral/counter − "
              "control, is in the comparisons table; a branch that lowers the bias while its loss on the parent "
              "corpus matches the control's has not just got worse at the language.", "",
              "## Figures", "", "![overt](figures/overt_curves.png)", "", "![covert](figures/covert_curves.png)", "",
              "![weat](figures/weat_curves.png)", "", "![grid](figures/grid.png)", "",
              "## Run", "",
              f"Wall time of the command that wrote this report {wall_s / 60:.1f} min on "
              f"{machine_info().get('cpu', 'this machine')} ({os.cpu_count()} cores; load average at the end "
              f"{os.getloadavg()[0]:.1f}), dtype {train.get('dtype')}. Commit {provenance().get('git_commit')}.", ""] \
        + runner.wall_time_lines(exp_dir) + [""]
    atomic_write_text(exp_dir / "report.md", "\n".join(lines))


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_arguments(ap)
    ap.add_argument("--prefix", default=None, help="corpus names are PREFIX_parent, PREFIX_biased, … "
                                                   "(default bu_<size>)")
    ap.add_argument("--max_seeds", type=int, default=0,
                    help="run and analyse only the first N seeds of the plan in this invocation (0 = all); "
                         "re-run without it to finish the rest")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a further train.py override for every run, e.g. --set device=cuda")
    args = ap.parse_args(argv)
    runner.check_arguments(args)
    size = SIZES[args.size]
    args.prefix = args.prefix or f"bu_{args.size}"
    exp_dir = out_dir() / "experiments" / KIND / args.name
    args.exp_dir = exp_dir
    design, parents, branches = plan(args, size)
    power = runner.check_design(len(size["seeds"]))  # the planned design; the report states the seeds done
    print(f"{KIND}/{args.name}: {len(parents)} parents x {size['parent_steps']} steps, {len(branches)} branches x "
          f"{size['branch_steps']} steps (stages {design['stages']}); {power['reason']}")
    if args.plan:
        for line in runner.plan_lines(parents + branches, exp_dir):
            print(line)
        return
    t0 = time.time()
    exp_dir.mkdir(parents=True, exist_ok=True)
    make_corpora(args.prefix, size, runner.child_env(args.jobs))
    # seed groups of `jobs`: each group's parents, then its branches (which need the parents' checkpoints), then
    # its measures and the analysis of every seed done so far — so a stopped experiment leaves a valid report
    seeds = list(size["seeds"])[:args.max_seeds or None]
    for start in range(0, len(seeds), args.jobs):
        group = set(seeds[start:start + args.jobs])
        runner.run_all(exp_dir, design, [r for r in parents if r["init_seed"] in group], args.jobs)
        runner.run_all(exp_dir, design, [r for r in branches if r["init_seed"] in group], args.jobs)
        done = set(seeds[:start + args.jobs])
        analyse(exp_dir, design, [r for r in parents if r["init_seed"] in done],
                [r for r in branches if r["init_seed"] in done], args.jobs, t0)


def analyse(exp_dir, design, parents, branches, jobs, t0):
    """Measures (cached per run), derived tables, figures, report and description of the seeds given."""
    measures = measure_all(exp_dir, design, parents, branches, jobs)
    atomic_write_text(exp_dir / "measures.csv", measures.to_csv(index=False))
    unlearn = time_to_unlearn(measures)
    atomic_write_text(exp_dir / "unlearn.csv", unlearn.to_csv(index=False))
    table = grid(unlearn)
    atomic_write_text(exp_dir / "grid.csv", table.to_csv(index=False))
    results = comparisons(measures, design["stages"], unlearn)
    atomic_write_text(exp_dir / "results.csv", results.to_csv(index=False))
    (exp_dir / "figures").mkdir(exist_ok=True)
    figure_curves(measures, exp_dir / "figures/overt_curves.png", "overt_bias", "overt bias (p_stereo − 0.5)")
    figure_curves(measures, exp_dir / "figures/weat_curves.png", "weat_d_last", "WEAT d (last layer)")
    figure_curves(measures, exp_dir / "figures/covert_curves.png", COVERT, "covert: WEAT d, mean over layers")
    figure_grid(table, exp_dir / "figures/grid.png")
    power = runner.check_design(len(parents))
    wall = time.time() - t0  # up to the report, measuring and analysis included
    write_report(exp_dir, design, measures, unlearn, table, results, wall, power)
    per_run = {r["name"]: pd.read_csv(exp_dir / "runs" / r["name"] / "tables" / "bias_unlearning.csv")
               for r in parents + branches}
    curve_runs = describe.write_run_curves(exp_dir, parents + branches, MEASURES + ["loss_parent"], tables=per_run)
    primary = results[results["primary"]].to_dict("records")
    describe.write_description(
        exp_dir, KIND, "Learn and unlearn a bias: overt vs covert after branching", baseline=CONTROL,
        primary=primary, x="tokens_seen", curve_runs=curve_runs, curve_columns=MEASURES + ["loss_parent"],
        tables=[{"name": "results", "path": "results.csv", "caption": "branch end vs control, paired over seeds"},
                {"name": "grid", "path": "grid.csv", "caption": "stage x corpus: overt/covert start and end, "
                                                                "time to unlearn"},
                {"name": "unlearn", "path": "unlearn.csv", "caption": "per branch: tokens until overt bias is "
                                                                      "within the CI of the branch corpus's rate"},
                {"name": "measures", "path": "measures.csv", "caption": "every checkpoint of every run"}],
        figures=[{"path": "figures/overt_curves.png", "caption": "overt bias vs tokens, branches off the parent"},
                 {"path": "figures/covert_curves.png", "caption": "covert bias (WEAT d, mean over layers) vs tokens"},
                 {"path": "figures/weat_curves.png", "caption": "covert bias (WEAT d) vs tokens"},
                 {"path": "figures/grid.png", "caption": "stage x corpus: half-life, overt and covert at branch end"}])
    print(f"wrote {exp_dir}/report.md: {len(parents)} of {len(design['seeds'])} seeds ({wall / 60:.1f} min)")


if __name__ == "__main__":
    run_main(main)
