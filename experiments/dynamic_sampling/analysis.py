"""Analysis of the dynamic sampling experiment: equal budgets checked, paired comparisons, what the orders did.

    analyse(exp_dir, design, runs, wall_s) -> path of report.md

From the run folders (runs/<condition>_s<seed>/): the batch logs (same multiset of segments and targets in
every run — the equal token budget, checked, not assumed), train.py's val_log.csv (val_loss_sub per
checkpoint: the first eval_iters × batch_size stories of the fixed validation sample; the final one is the
primary outcome), the dynamic runs' decision logs (dynamic_log.jsonl) and the
story metadata (ppl_ref). Writes results.csv (one row per run), comparisons.csv (paired sign-flip, t-interval,
MDE, Hedges' g_av; BH q over the exploratory ones), order.csv (Spearman ρ between a segment's position in the
training stream and its story's log ppl_ref: ~0 for random, +1 for the curriculum, measured for dynamic),
decisions.csv (per decision: mean score of the pool and of the drawn segments, effective share of the pool),
curves/, figures/, report.md and description.json (experiments/common/describe.py).
"""
import hashlib
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy import stats as sps

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.errors import UserError  # noqa: E402
from common.io import atomic_write_text, save_png  # noqa: E402
from common.machine import machine_info  # noqa: E402
from experiments.common import describe, stats  # noqa: E402
from metadata.table import read_metadata  # noqa: E402
from modelling.batch_log import BatchLog  # noqa: E402
from modelling.data import segment_keys  # noqa: E402
from modelling.dynamic_sampler import read_decisions  # noqa: E402

OUTCOME = "val_loss_sub"  # train.py's val log: the first eval_iters * batch_size stories of the fixed val sample
TIMING_NAME = "timing.json"  # per invocation of the runner: start time, wall seconds, load average at start/end
COLORS = {"random": "#555555", "dynamic": "#d62728", "curriculum": "#1f77b4"}


def _fmt(x, digits=3):
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


# ---- per run ----

def run_table(exp_dir, runs):
    """One row per run: condition, seed, steps, targets trained, multiset fingerprint, final val_loss."""
    status = json.loads((Path(exp_dir) / "experiment.json").read_text()).get("status", {})
    rows = []
    for run in runs:
        run_dir = Path(exp_dir) / "runs" / run["name"]
        log = BatchLog(run_dir)
        trained = log.steps(1, len(log))
        last = pd.read_csv(run_dir / "val_log.csv").sort_values("step").iloc[-1]
        rows.append({"run": run["name"], "condition": run["condition"], "seed": run["seed"], "steps": len(log),
                     "targets": int(trained["n_tokens"].sum()),
                     "multiset_sha256": hashlib.sha256(np.sort(segment_keys(trained)).tobytes()).hexdigest(),
                     "final_step": int(last["step"]), OUTCOME: float(last[OUTCOME]),
                     "train_s": status.get(run["name"], {}).get("train_s"),
                     "eval_s": status.get(run["name"], {}).get("eval_s")})
    return pd.DataFrame(rows)


def order_table(exp_dir, runs, log_ppl_ref):
    """Spearman ρ between a segment's position in the training stream and its story's log ppl_ref."""
    rows = []
    for run in runs:
        log = BatchLog(Path(exp_dir) / "runs" / run["name"])
        trained = log.steps(1, len(log))
        step = np.repeat(np.arange(1, len(log) + 1), log.segments_per_step())
        rho = sps.spearmanr(step, log_ppl_ref.reindex(trained["story_id"]).to_numpy(), nan_policy="omit")[0]
        rows.append({"run": run["name"], "condition": run["condition"], "seed": run["seed"],
                     "rho_step_log_ppl_ref": float(rho)})
    return pd.DataFrame(rows)


def decision_table(exp_dir, runs):
    """Per decision of each dynamic run: pool and drawn mean scores, and exp(entropy of the first-draw
    probabilities) / pool size — 1 = uniform, small = a few candidates take almost all the mass."""
    rows = []
    for run in runs:
        if run["condition"] != "dynamic":
            continue
        for d in read_decisions(Path(exp_dir) / "runs" / run["name"]):
            scores = np.array([np.nan if s is None else s for s in d["scores"]], dtype=float)
            p = np.array(d["probabilities"], dtype=float)
            drawn = scores[np.asarray(d["draws"], dtype=int)]
            entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
            rows.append({"run": run["name"], "seed": run["seed"], "decision": d["decision"], "step": d["step"],
                         "epoch": d["epoch"], "n_pool": len(scores), "n_drawn": len(drawn),
                         "pool_score": float(np.nanmean(scores)), "drawn_score": float(np.nanmean(drawn)),
                         "effective_share": float(np.exp(entropy) / len(p))})
    return pd.DataFrame(rows)


# ---- comparisons ----

def write_curves(exp_dir, runs):
    """curves/<run>.csv (step, tokens_seen, val_loss_sub, train_loss from each run's val_log.csv) and their
    description entries, in the kit's format (experiments/common/describe.py)."""
    entries = []
    (Path(exp_dir) / describe.CURVES_DIR).mkdir(exist_ok=True)
    for run in runs:
        log = pd.read_csv(Path(exp_dir) / "runs" / run["name"] / "val_log.csv").sort_values("step")
        path = Path(describe.CURVES_DIR) / f"{run['name']}.csv"
        atomic_write_text(Path(exp_dir) / path, log[["step", "tokens_seen", OUTCOME, "train_loss"]].to_csv(index=False))
        entries.append({"run": run["name"], "condition": run["condition"], "path": path.as_posix(),
                        "labels": {"seed": run["seed"]}})
    return entries


def comparison_table(results, primary, exploratory, alpha):
    """Paired comparisons of the final outcome by seed; the primary one tested at alpha, the rest with BH q."""
    wide = results.pivot(index="seed", columns="condition", values=OUTCOME)
    rows = []
    for kind, pairs in (("primary", [primary]), ("exploratory", exploratory)):
        for a, b in pairs:
            row = stats.compare_paired((wide[a].to_numpy(), wide[b].to_numpy()), alpha=alpha, n_primary=1)
            rows.append({"comparison": f"{a} - {b}", "kind": kind, "outcome": OUTCOME, **row})
    table = pd.DataFrame(rows)
    exp = table["kind"] == "exploratory"
    table["q"] = np.nan
    table.loc[exp, "q"] = stats.bh_q(table.loc[exp, "p"].to_numpy())
    return table


# ---- figures ----

def figure_curves(curves, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    # by step: every run's checkpoints are at the same steps (tokens per step differ between orders; after the
    # last step every run has trained the same targets)
    for condition, group in describe.condition_bands(curves, OUTCOME, x="step").groupby("condition"):
        group = group[group["n"] > 0]
        ax.plot(group["step"], group["mean"], label=condition, color=COLORS.get(condition), marker="o", ms=3)
        ax.fill_between(group["step"], group["ci_lo"], group["ci_hi"], alpha=0.15, color=COLORS.get(condition))
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step (the last step ends the epoch: equal tokens in every run)")
    ax.set_ylabel("val_loss_sub (fixed iid validation stories)")
    ax.set_title("validation loss by condition: mean and 95% t-interval over seeds")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def figure_pairs(results, comparisons, path):
    wide = results.pivot(index="seed", columns="condition", values=OUTCOME)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, row in enumerate(comparisons.itertuples()):
        a, b = row.comparison.split(" - ")
        d = (wide[a] - wide[b]).to_numpy()
        ax.scatter(np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), d, color="#888888", s=14)
        ax.errorbar([i], [row.diff], yerr=[[row.diff - row.ci_lo], [row.ci_hi - row.diff]], fmt="o",
                    color="black", capsize=4)
    ax.axhline(0, color="#aaaaaa", lw=1)
    ax.set_xticks(range(len(comparisons)), comparisons["comparison"])
    ax.set_ylabel(f"Δ final {OUTCOME} (nats)")
    ax.set_title("paired differences per seed, mean and 95% t-interval")
    fig.tight_layout()
    save_png(fig, path)


def figure_decisions(decisions, path):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for seed, group in decisions.groupby("seed"):
        ax.plot(group["step"], group["drawn_score"] - group["pool_score"], color=COLORS["dynamic"], alpha=0.5,
                lw=1, label="drawn − pool" if seed == decisions["seed"].min() else None)
    ax.axhline(0, color="#aaaaaa", lw=1)
    ax.set_xlabel("step of the decision")
    ax.set_ylabel("mean reducible loss (nats)")
    ax.set_title("dynamic runs: how much higher the drawn segments score than their pool")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


# ---- report ----

def write_report(exp_dir, design, results, comparisons, order, decisions, timing, jobs):
    primary = comparisons[comparisons["kind"] == "primary"].iloc[0]
    power = design["power"]
    cpu = machine_info()
    equal = results["multiset_sha256"].nunique() == 1 and results["targets"].nunique() == 1
    by_condition = results.groupby("condition")[OUTCOME].agg(["mean", "std", "count"]).reindex(design["conditions"])
    t, d = design["train"], design["dynamic"]
    verdict = ("significant at alpha" if primary["significant"] else "not significant") if primary["tested"] \
        else "not tested (underpowered design)"
    lines = [
        f"# Dynamic sampling experiment `{design['name']}` (size `{design['size']}`)", "",
        "**Question.** Does drawing the next batches by the current model's reducible loss (RHO-LOSS-style "
        "dynamic sampling) give a lower validation loss than a random order or a static easy-to-hard "
        "curriculum, at exactly the same token budget?", "",
        "## Result (primary outcome, fixed before the runs)", "",
        *([f"**Cut short:** {len(design['finished_seeds'])} of the {len(design['seeds'])} planned pairs finished "
           f"(seeds {design['finished_seeds']}; the runs were stopped by the time limit, in plan order, not by "
           f"looking at results); everything below uses those pairs and the power they have.", ""]
          if "finished_seeds" in design else []),
        f"Final `{OUTCOME}` (train.py's val log: the first {t['eval_iters'] * t['batch_size']} stories of the "
        f"dataset's fixed iid validation sample, the same in every run), **{primary['comparison']}** = "
        f"**{_fmt(primary['diff'])} nats** [95% t-interval "
        f"{_fmt(primary['ci_lo'])}, {_fmt(primary['ci_hi'])}], paired exact sign-flip p = {_fmt(primary['p'])} "
        f"over {int(primary['n'])} pairs → {verdict}. Minimum detectable effect at 80% power (measured SD of the "
        f"differences {_fmt(primary['sd_diff'])}): **{_fmt(primary['mde'])} nats** ({_fmt(primary['mde_sd'])} SD); "
        f"smallest attainable p with {int(primary['n'])} pairs: {_fmt(primary['min_p'])} (threshold "
        f"{_fmt(power['threshold'])}). Hedges' g_av {_fmt(primary['g_av'])} [{_fmt(primary['g_ci_lo'])}, "
        f"{_fmt(primary['g_ci_hi'])}].", "",
        "| comparison | kind | Δ (nats) | 95% CI | p | q (BH) | MDE | g_av |", "|---|---|---|---|---|---|---|---|"]
    for r in comparisons.itertuples():
        lines.append(f"| {r.comparison} | {r.kind} | {_fmt(r.diff)} | [{_fmt(r.ci_lo)}, {_fmt(r.ci_hi)}] | "
                     f"{_fmt(r.p)} | {_fmt(r.q)} | {_fmt(r.mde)} | {_fmt(r.g_av)} |")
    lines += ["", f"| condition | mean final {OUTCOME} | SD | runs |", "|---|---|---|---|"]
    for condition, r in by_condition.iterrows():
        lines.append(f"| {condition} | {_fmt(r['mean'], 4)} | {_fmt(r['std'])} | {int(r['count'])} |")
    lines += [
        "", "## Design", "",
        f"- Data: `{design['dataset']}` vocab {design['vocab_size']}, one selection of "
        f"{design['n_stories'] or 'all'} train stories (selection_seed {design['selection_seed']}), "
        f"{design['epochs']} epoch(s) = {design['steps']} steps of {t['batch_size']} segments "
        f"(max_seq_len {t.get('max_seq_len', 256)}) in every run.",
        "- Model: " + ", ".join(f"{k} {t[k]}" for k in ("preset", "dim", "n_layers", "n_heads", "learning_rate",
                                                           "min_lr", "warmup_iters", "dtype") if k in t) + ".",
        f"- Conditions: `random` (data_seed = seed), `dynamic` (--sampler=dynamic, reducible loss = model loss − "
        f"log ppl_ref, every {d['dynamic_interval']} steps a pool of {d['dynamic_pool']}× the block scored, "
        f"temperature {d['dynamic_temperature']}, data_seed = seed), `curriculum` (sort_ascending by ppl_ref); "
        f"pair i = init seed i, seeds {design['seeds']}.",
        f"- Primary: {' - '.join(design['primary']['comparison'])} on final {OUTCOME}, "
        f"alpha {design['primary']['alpha']}; "
        f"design: {power['reason']}. Exploratory: the other comparisons, BH q.",
        "- Relation to RHO-LOSS (Mindermann et al. 2022): the budget is whole epochs, so nothing is skipped — this "
        "tests the order its selection rule produces, not its published claim (fewer steps to a given loss by not "
        "training on low-value points), which the experiment neither reproduces nor refutes.", "",
        "## Checks", "",
        f"- Equal token budget: every run trained the same multiset of segments "
        f"({'yes' if equal else 'NO'}: {results['multiset_sha256'].nunique()} distinct fingerprint(s), targets "
        f"{sorted(results['targets'].unique().tolist())}).",
        "- Order applied — Spearman ρ between a segment's training step and its story's log ppl_ref "
        "(mean [min, max] over seeds):", "",
        "| condition | ρ |", "|---|---|"]
    for condition, group in order.groupby("condition", sort=False):
        rho = group["rho_step_log_ppl_ref"]
        lines.append(f"| {condition} | {_fmt(rho.mean())} [{_fmt(rho.min())}, {_fmt(rho.max())}] |")
    if len(decisions):
        gap = decisions["drawn_score"] - decisions["pool_score"]
        free = decisions["n_pool"] > decisions["n_drawn"]  # decisions with a choice (not the epoch's forced tail)
        lines += ["", f"- Dynamic decisions: {len(decisions)} over {decisions['run'].nunique()} runs; the drawn "
                  f"segments' mean reducible loss exceeds their pool's by {_fmt(gap.mean())} nats on average "
                  f"(decisions before the epoch's forced tail: {_fmt(gap[free].mean())}); effective share of the "
                  f"pool (exp entropy / size) {_fmt(decisions['effective_share'].mean())}."]
    train_s, eval_s = results["train_s"].astype(float), results["eval_s"].astype(float)
    lines += [
        "", "## Cost", "",
        f"- Wall time of the experiment: {sum(t['wall_s'] or 0 for t in timing) / 60:.1f} min, --jobs {jobs}, "
        f"one thread per run: "
        + "; ".join(f"started {t['started']}, {(t['wall_s'] or 0) / 60:.1f} min, load average (1 min) "
                    f"{t['load_start']} at the start, {t['load_end']} at the end" for t in timing) + ".",
        "- Mean per run: " + ", ".join(f"{c} train {train_s[results['condition'] == c].mean():.0f} s"
                                        for c in design["conditions"])
        + f"; train total {np.nansum(train_s) / 60:.1f} min; "
        + (f"eval.py {np.nanmean(eval_s):.0f} s per run." if design.get("eval") else "eval.py not run."),
        f"- Machine: {cpu.get('cpu', 'CPU')} ({cpu.get('cores', '?')} cores; flags "
        f"{', '.join(k for k, v in cpu.get('flags', {}).items() if v) or 'none'}), dtype {t.get('dtype')} pinned.",
        "", "## Files", "",
        "results.csv (per run), comparisons.csv, order.csv, decisions.csv, curves/ (per-run val_loss by step and "
        "tokens), figures/val_loss.png, figures/pairs.png, figures/decisions.png, description.json.", ""]
    path = Path(exp_dir) / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def analyse(exp_dir, design, runs, jobs):
    exp_dir = Path(exp_dir)
    results = run_table(exp_dir, runs)
    if results["multiset_sha256"].nunique() != 1:
        raise UserError(f"{exp_dir}: the runs did not train the same multiset of segments — the budgets differ; "
                        f"delete the folder and re-run the experiment")
    meta = read_metadata(design["dataset"], design["vocab_size"], columns=["story_id", "ppl_ref"])
    log_ppl_ref = np.log(meta.set_index("story_id")["ppl_ref"])
    order = order_table(exp_dir, runs, log_ppl_ref)
    decisions = decision_table(exp_dir, runs)
    comparisons = comparison_table(results, design["primary"]["comparison"], design["exploratory"],
                                   design["primary"]["alpha"])
    for name, table in (("results", results), ("comparisons", comparisons), ("order", order),
                        ("decisions", decisions)):
        atomic_write_text(exp_dir / f"{name}.csv", table.to_csv(index=False))
    curve_runs = write_curves(exp_dir, runs)
    curves = describe.run_curves(exp_dir, {"curves": {"runs": curve_runs}})
    (exp_dir / "figures").mkdir(exist_ok=True)
    figure_curves(curves, exp_dir / "figures" / "val_loss.png")
    figure_pairs(results, comparisons, exp_dir / "figures" / "pairs.png")
    figures = [{"path": "figures/val_loss.png",
                "caption": "val_loss_sub by step, mean and 95% CI per condition"},
               {"path": "figures/pairs.png", "caption": "paired differences of the final val_loss_sub per seed"}]
    if len(decisions):
        figure_decisions(decisions, exp_dir / "figures" / "decisions.png")
        figures.append({"path": "figures/decisions.png", "caption": "dynamic decisions: drawn minus pool score"})
    timing = json.loads((exp_dir / TIMING_NAME).read_text()) if (exp_dir / TIMING_NAME).exists() else []
    report = write_report(exp_dir, design, results, comparisons, order, decisions, timing, jobs)
    primary = comparisons[comparisons["kind"] == "primary"].to_dict("records")
    tables = [{"name": n, "path": f"{n}.csv", "caption": c} for n, c in (
        ("results", "one row per run: final val_loss_sub, targets trained, multiset fingerprint"),
        ("comparisons", "paired comparisons: Δ, t-interval, sign-flip p, MDE, g_av, BH q"),
        ("order", "Spearman ρ of training step vs log ppl_ref per run"),
        ("decisions", "per decision of the dynamic runs: pool vs drawn score"))]
    describe.write_description(exp_dir, "dynamic_sampling", "Dynamic sampling vs random vs curriculum",
                               tables=tables, figures=figures, curve_runs=curve_runs, curve_columns=[OUTCOME],
                               primary=primary, baseline="random", x="step")
    return report
