"""Scoring and analysis of the fact injection experiment (experiment_fact_injection.py runs it).

score_run(run_dir, groups, n_candidates)   every checkpoint's fact measures -> runs/<run>/facts.csv (resumable)
analyse(exp_dir, design, runs, plans, check)   CSVs, figures, report.md, description.json
    plans: {arm: {seed: plan}} — the plan whose groups and windows each arm's runs are read with (the control
    arm: its injected twin's)

Comparisons pair facts by (seed, slot): the k-th fact (by id) of one condition's group with the k-th of the
other's in the same injected run, or a fact with itself (forward vs reverse; injected vs control run; small vs
large batch). Each is a paired sign-flip test (experiments/common/stats.compare_paired) over seeds x facts pairs,
with Bonferroni over the N_PRIMARY primary comparisons. Measured at 'after' = the first checkpoint at or after
the last exposure of the condition's window (acquisition), and at the final step (retention). A side naming
several conditions pools their facts, each read at its own 'after'.
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from common.io import atomic_write_text, save_png  # noqa: E402
from download.fact_set import load_fact_set  # noqa: E402
from experiments.common import describe, stats  # noqa: E402
from measures import facts as fm  # noqa: E402
from modelling.checkpoints import list_checkpoints, load_model  # noqa: E402
from tokenization.dataset import TokenizedDataset  # noqa: E402

FACTS_CSV = "facts.csv"
OUTCOME = "p_choice"
ACQUIRED = 0.5  # p_choice at which a fact counts as acquired (4x chance with 8 candidates)
FORWARD_ONLY = ("early", "middle", "late")  # 100 forward exposures, no reverse phrasing: one per window
# (name, question, a: (arm, condition(s), kind, at), b: ..., pairing) — a minus b
PRIMARY = [
    ("acquisition", "Do injected facts become known? early, injected vs the same facts in the control run",
     ("inject", "early", "forward", "after"), ("control", "early", "forward", "after"), "fact"),
    ("reversal_curse", "Forward-only facts (early, middle, late pooled): is the forward answer known better "
     "than the reverse?", ("inject", FORWARD_ONLY, "forward", "after"), ("inject", FORWARD_ONLY, "reverse", "after"),
     "fact"),
    ("reverse_phrasings", "Do reverse phrasings close the gap? reverse answer, fwd_rev vs early",
     ("inject", "fwd_rev", "reverse", "after"), ("inject", "early", "reverse", "after"), "slot"),
    ("paraphrase_transfer", "Held-out paraphrases: 10 trained phrasings vs 1",
     ("inject", "para10", "paraphrase_forward", "after"), ("inject", "early", "paraphrase_forward", "after"), "slot"),
    ("repetition", "Repeats vs once (forward, early window)",
     ("inject", "early", "forward", "after"), ("inject", "once", "forward", "after"), "slot"),
    ("stage_middle", "Middle vs early window (forward, right after each window)",
     ("inject", "middle", "forward", "after"), ("inject", "early", "forward", "after"), "slot"),
    ("stage_late", "Late vs early window (forward, right after each window)",
     ("inject", "late", "forward", "after"), ("inject", "early", "forward", "after"), "slot"),
    ("batch_window", "Small vs large batch at equal tokens: forward answer right after each window (early, middle, "
     "late pooled)", ("small_batch", FORWARD_ONLY, "forward", "after"), ("large_batch", FORWARD_ONLY, "forward",
                                                                       "after"), "fact"),
    ("batch_final", "Small vs large batch at equal tokens: forward answer at the end of the run",
     ("small_batch", FORWARD_ONLY, "forward", "final"), ("large_batch", FORWARD_ONLY, "forward", "final"), "fact"),
]
N_PRIMARY = len(PRIMARY)
RETENTION_CONDITIONS = ("early", "middle", "para10", "fwd_rev")


# ---------------------------------------------------------------------------------------------------------
# scoring

def score_run(run_dir, groups, n_candidates, steps=None):
    """Score the run's checkpoints (those in `steps`; None: all) not yet in facts.csv (written after each one).
    Returns how many were new."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "config.json").read_text())
    dataset, vocab = info["config"]["dataset"], info["config"]["vocab_size"]
    ds = TokenizedDataset(dataset, vocab)
    facts = [f for f in load_fact_set(dataset)["facts"] if f["id"] in groups]
    queries = fm.build_queries(facts, n_candidates, groups=groups)
    path = run_dir / FACTS_CSV
    done = pd.read_csv(path) if path.exists() else pd.DataFrame()
    seen = set(done["step"]) if len(done) else set()
    new = 0
    for step, ckpt_path in list_checkpoints(run_dir):
        if step in seen or (steps is not None and step not in steps):
            continue
        model, ckpt = load_model(ckpt_path)
        with torch.no_grad():
            table = fm.score_facts(model, ds.tokenizer, ds.manifest["bos_id"], queries)
        table.insert(0, "tokens_seen", int(ckpt.get("tokens_seen", 0)))
        table.insert(0, "step", step)
        done = pd.concat([done, table], ignore_index=True)
        atomic_write_text(path, done.to_csv(index=False))
        new += 1
    return new


def load_scores(exp_dir, runs, plans):
    """All runs' facts.csv as one table with run, arm, seed, condition and slot (rank of the fact in its group)."""
    parts = []
    for run in runs:
        table = pd.read_csv(Path(exp_dir) / "runs" / run["name"] / FACTS_CSV)
        groups = plans[run["condition"]][run["seed"]]["groups"]
        slot = {}
        for cond in sorted(set(groups.values())):
            for k, fid in enumerate(sorted(f for f, c in groups.items() if c == cond)):
                slot[fid] = k
        parts.append(table.assign(run=run["name"], arm=run["condition"], seed=run["seed"],
                                  condition=table["fact_id"].map(groups), slot=table["fact_id"].map(slot)))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------
# analysis

def after_step(scores, plans, condition, arm="inject"):
    """{seed: first scored checkpoint of the arm's run at or after the condition's last exposure} (the final
    step for never)."""
    out = {}
    for seed, plan in plans[arm].items():
        steps = np.sort(scores.loc[(scores["arm"] == arm) & (scores["seed"] == seed), "step"].unique())
        last = [e["step"] for e in plan["injections"] if plan["groups"][e["fact_id"]] == condition]
        at = max(last) if last else steps[-1]
        out[seed] = int(steps[np.searchsorted(steps, at)]) if at <= steps[-1] else int(steps[-1])
    return out


def rows_at(scores, plans, arm, condition, kind, at):
    """The score rows of one arm/condition/kind at 'after' (per seed) or 'final'; condition may be a tuple of
    conditions, each read at its own 'after'."""
    if not isinstance(condition, str):
        return pd.concat([rows_at(scores, plans, arm, c, kind, at) for c in condition], ignore_index=True)
    sel = scores[(scores["arm"] == arm) & (scores["condition"] == condition) & (scores["kind"] == kind)]
    if at == "final":
        step = {s: int(sel["step"].max()) for s in plans[arm]}
    else:
        step = after_step(scores, plans, condition, arm)
    return sel[sel["step"] == sel["seed"].map(step)]


def values_at(scores, plans, arm, condition, kind, at):
    """Series of OUTCOME indexed by (seed, condition, slot, fact_id) for one arm/condition(s)/kind at 'after' or
    'final'."""
    sel = rows_at(scores, plans, arm, condition, kind, at)
    return sel.set_index(["seed", "condition", "slot", "fact_id"])[OUTCOME].sort_index()


def primary_table(scores, plans):
    rows = []
    for name, question, a, b, pairing in PRIMARY:
        va, vb = values_at(scores, plans, *a), values_at(scores, plans, *b)
        level = ["seed", "condition", "slot", "fact_id"] if pairing == "fact" else ["seed", "slot"]
        va, vb = va.groupby(level=level).first(), vb.groupby(level=level).first()
        both = pd.concat([va.rename("a"), vb.rename("b")], axis=1).dropna()
        row = stats.compare_paired((both["a"].to_numpy(), both["b"].to_numpy()), n_primary=N_PRIMARY)
        label = lambda side: "/".join(x if isinstance(x, str) else "+".join(x) for x in side)  # noqa: E731
        rows.append({"comparison": name, "question": question, "a": label(a), "b": label(b),
                     "outcome": OUTCOME, **row})
    return pd.DataFrame(rows)


def condition_table(scores, plans, chance):
    """Per arm x condition x kind x {after, final}: mean OUTCOME with its t interval over facts, its excess over
    chance, the exact-match rate and the mean answer log-prob."""
    rows = []
    for arm in sorted(scores["arm"].unique()):
        for cond in sorted(scores.loc[scores["arm"] == arm, "condition"].dropna().unique()):
            for kind in fm.KINDS:
                for at in ("after", "final"):
                    sel = rows_at(scores, plans, arm, cond, kind, at)
                    mean, lo, hi, n = fm.mean_ci(sel[OUTCOME])
                    rows.append({"arm": arm, "condition": cond, "kind": kind, "at": at, "n": n,
                                 f"{OUTCOME}": mean, "ci_lo": lo, "ci_hi": hi, "excess": mean - chance,
                                 "exact": float(sel["exact"].mean()), "logp": float(sel["logp"].mean())})
    return pd.DataFrame(rows)


def curves_table(scores):
    rows = []
    for (arm, cond, kind, step), g in scores.groupby(["arm", "condition", "kind", "step"]):
        mean, lo, hi, n = fm.mean_ci(g[OUTCOME])
        rows.append({"arm": arm, "condition": cond, "kind": kind, "step": step, "n": n, OUTCOME: mean,
                     "ci_lo": lo, "ci_hi": hi, "tokens_seen": int(g["tokens_seen"].mean())})
    return pd.DataFrame(rows)


def retention_table(scores, plans):
    """Forward retention after the last exposure, per condition: the excess over the never-injected facts (mean
    over the condition's facts, per seed and step), relative to the excess at 'after'; the seeds' plans share
    their steps, so deltas align. Decay fits on the per-delta mean over seeds. A condition whose excess at
    'after' is not above zero (t interval over seeds x facts) was not acquired: nothing to fit."""
    rows, points = [], []
    inj = scores[(scores["arm"] == "inject") & (scores["kind"] == "forward")]
    null = inj[inj["condition"] == "never"].groupby(["seed", "step"])[OUTCOME].mean().rename("null")
    for cond in RETENTION_CONDITIONS:
        sel = inj[inj["condition"] == cond].join(null, on=["seed", "step"])
        sel = sel.assign(excess=sel[OUTCOME] - sel["null"])
        after = after_step(scores, plans, cond)
        at_after = sel[sel["step"] == sel["seed"].map(after)]["excess"]
        _, lo, _, _ = fm.mean_ci(at_after)
        last = {s: max(e["step"] for e in p["injections"] if p["groups"][e["fact_id"]] == cond)
                for s, p in plans["inject"].items()}
        per_seed = sel.groupby(["seed", "step"])["excess"].mean().reset_index()
        curve = [fm.retention(g[["step", "excess"]].rename(columns={"excess": "value"}),
                              g[["step"]].assign(value=0.0), last[seed]).assign(seed=seed)
                 for seed, g in per_seed.groupby("seed")]
        ret = pd.concat(curve, ignore_index=True)
        mean = ret.groupby("delta")["retained"].mean().reset_index()
        acquired = bool(np.isfinite(lo) and lo > 0)
        fit = fm.fit_decay(mean["delta"], mean["retained"]) if acquired else fm.fit_decay([], [])
        points.append(mean.assign(condition=cond, acquired=acquired))
        rows.append({"condition": cond, "acquired": acquired, "excess_after": float(at_after.mean()),
                     "excess_after_lo": lo, "n_points": fit["n"],
                     "retained_last": float(mean["retained"].iloc[-1]) if len(mean) and acquired else np.nan,
                     "power_a": (fit["power"] or {}).get("a"), "power_b": (fit["power"] or {}).get("b"),
                     "power_rss": (fit["power"] or {}).get("rss"),
                     "exp_a": (fit["exponential"] or {}).get("a"), "exp_tau": (fit["exponential"] or {}).get("tau"),
                     "exp_rss": (fit["exponential"] or {}).get("rss"), "better": fit["better"]})
    return pd.DataFrame(rows), pd.concat(points, ignore_index=True)


def acquisition_table(scores, plans):
    """Per condition: share of facts whose forward p_choice reached ACQUIRED, and the steps it took (median over
    those that did) from the first exposure."""
    rows = []
    inj = scores[(scores["arm"] == "inject") & (scores["kind"] == "forward")]
    for cond in sorted(inj["condition"].dropna().unique()):
        if cond == "never":
            continue
        took = []
        for (seed, fid), g in inj[inj["condition"] == cond].groupby(["seed", "fact_id"]):
            first = min(e["step"] for e in plans["inject"][seed]["injections"] if e["fact_id"] == fid)
            curve = g[["step", OUTCOME]].rename(columns={OUTCOME: "value"}).sort_values("step")
            took.append(fm.acquisition_steps(curve, first, ACQUIRED))
        took = np.asarray(took, dtype=float)
        rows.append({"condition": cond, "n_facts": len(took), "acquired_share": float(np.isfinite(took).mean()),
                     "median_steps": float(np.nanmedian(took)) if np.isfinite(took).any() else np.nan})
    return pd.DataFrame(rows)


def ratio_table(cond_table, chance):
    """Reverse/forward ratio of excess over chance at 'after', per injected condition."""
    rows = []
    t = cond_table[(cond_table["arm"] == "inject") & (cond_table["at"] == "after")].set_index(["condition", "kind"])
    for cond in sorted({c for c, _ in t.index}):
        f, r = t.loc[(cond, "forward"), OUTCOME] - chance, t.loc[(cond, "reverse"), OUTCOME] - chance
        rows.append({"condition": cond, "forward_excess": f, "reverse_excess": r,
                     "reverse_forward_ratio": fm.reverse_forward_ratio([f], [r])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# figures

def in_order(conditions):
    """The conditions present, in the design's order (the null first, then by window)."""
    order = ("never", "early", "middle", "late", "once", "para10", "fwd_rev")
    return [c for c in order if c in set(conditions)]


def figure_curves(curves, chance, path):
    conds = in_order(curves["condition"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    colors = dict(zip(conds, plt.get_cmap("tab10").colors))
    for ax, kind in zip(axes, ("forward", "reverse", "paraphrase_forward")):
        for cond in conds:
            for arm, style in (("inject", "-"), ("control", ":")):
                g = curves[(curves["arm"] == arm) & (curves["condition"] == cond) & (curves["kind"] == kind)]
                if len(g) == 0 or (arm == "control" and cond not in ("early", "never")):
                    continue
                ax.plot(g["step"], g[OUTCOME], style, color=colors[cond], label=f"{cond}" + (" (control run)"
                                                                                          if arm == "control" else ""))
                if arm == "inject":
                    ax.fill_between(g["step"], g["ci_lo"], g["ci_hi"], color=colors[cond], alpha=0.12)
        ax.axhline(chance, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{kind} question")
        ax.set_xlabel("step")
    axes[0].set_ylabel(f"{OUTCOME} (chance {chance:.3g})")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_png(fig, path)


def figure_directions(cond_table, chance, path):
    t = cond_table[(cond_table["arm"] == "inject") & (cond_table["at"] == "after")]
    conds = in_order(t["condition"])
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.2
    for k, kind in enumerate(fm.KINDS):
        g = t[t["kind"] == kind].set_index("condition").reindex(conds)
        x = np.arange(len(conds)) + (k - 1.5) * width
        ax.bar(x, g[OUTCOME], width, yerr=[g[OUTCOME] - g["ci_lo"], g["ci_hi"] - g[OUTCOME]], label=kind, capsize=2)
    ax.axhline(chance, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(conds)), conds)
    ax.set_ylabel(f"{OUTCOME} right after the window")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def figure_forgetting(points, retention, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for (cond, g), color in zip(points.groupby("condition"), plt.get_cmap("tab10").colors):
        if not g["acquired"].all():
            continue
        ax.plot(g["delta"], g["retained"], "o", color=color, ms=3, label=cond)
        fit = retention.set_index("condition").loc[cond]
        d = np.linspace(max(1, g["delta"].min()), g["delta"].max(), 100) if len(g) else np.array([])
        if pd.notna(fit["power_a"]) and len(d):
            ax.plot(d, fit["power_a"] * d ** -fit["power_b"], "-", color=color, lw=0.8)
        if pd.notna(fit["exp_a"]) and len(d):
            ax.plot(d, fit["exp_a"] * np.exp(-d / fit["exp_tau"]), "--", color=color, lw=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("steps since the last exposure")
    ax.set_ylabel("retained excess (1 = as right after)")
    ax.set_title("forgetting: power law (solid) vs exponential (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


# ---------------------------------------------------------------------------------------------------------
# report

def fmt(x, nd=3):
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}g}" \
        if isinstance(x, float) else str(x)


def markdown(df, cols):
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def verdict(row):
    if not row["tested"]:
        return f"not tested ({row['reason']})"
    side = "higher" if row["diff"] > 0 else "lower"
    if row["significant"]:
        return f"yes: a is {side} by {row['diff']:.3f} [{row['ci_lo']:.3f}, {row['ci_hi']:.3f}], p = {row['p']:.2g}"
    return (f"no detectable difference: {row['diff']:.3f} [{row['ci_lo']:.3f}, {row['ci_hi']:.3f}], p = "
            f"{row['p']:.2g} (minimum detectable effect {row['mde']:.3f})")


def decay_verdict(r):
    """Which decay fits better; within 10% residual sum of squares the two are called indistinguishable."""
    if not r.better:
        return "no fit"
    rss = sorted(x for x in (r.power_rss, r.exp_rss) if x is not None and np.isfinite(x))
    if len(rss) == 2 and rss[1] <= 1.1 * rss[0]:
        return "power law and exponential fit alike (rss within 10%)"
    return f"{r.better} fits better"


def effect_words(row, what):
    """A comparison's answer in words: detected (with its direction) or not, always with the CI and the MDE."""
    ci = f"{row['diff']:+.3f} [{row['ci_lo']:+.3f}, {row['ci_hi']:+.3f}], p = {row['p']:.2g}"
    if not row["tested"]:
        return f"{what}: not testable at this size ({row['reason']}; {ci})"
    if row["significant"]:
        return f"{what} {'raises' if row['diff'] > 0 else 'lowers'} {OUTCOME} by {ci}"
    return (f"no detectable effect of {what} ({ci}); this size detects only differences of about "
            f"{row['mde']:.2f} or more (minimum detectable effect)")


def batch_words(window, final, design, conds, batch):
    """The batch-size answer, and whether it agrees with the published direction (smaller batches help a fact
    stick); then, descriptively, the answer's log-probability and greedy exact recall (not primary outcomes)."""
    b = design["batch"]
    t = conds[(conds["kind"] == "forward") & (conds["at"] == "after")]
    side = {arm: t[(t["arm"] == arm) & t["condition"].isin(FORWARD_ONLY)][["logp", "exact"]].mean()
            for arm in ("small_batch", "large_batch")}
    never = t[(t["arm"] == "large_batch") & (t["condition"] == "never")]["logp"].mean()
    sign = [np.sign(r["diff"]) if r["significant"] else 0 for r in (window, final)]
    if max(sign) > 0 and min(sign) >= 0:
        agree = "agrees with the published direction (smaller batches help a fact stick)"
    elif min(sign) < 0 and max(sign) <= 0:
        agree = "is the OPPOSITE of the published direction (smaller batches help a fact stick)"
    elif max(sign) > 0 > min(sign):
        agree = "is mixed (one reading each way) against the published direction"
    else:
        agree = ("neither confirms nor refutes the published direction (smaller batches help a fact stick): "
                 "nothing detected at this size")
    return (f"small ({b['small']} segments/step) − large ({b['large']}), the same tokens and facts: right after "
            f"each window {window['mean_a']:.3f} vs {window['mean_b']:.3f}, {window['diff']:+.3f} "
            f"[{window['ci_lo']:+.3f}, {window['ci_hi']:+.3f}] (p = {window['p']:.2g}, MDE {window['mde']:.2f}); at "
            f"the end of the run {final['mean_a']:.3f} vs {final['mean_b']:.3f}, {final['diff']:+.3f} "
            f"[{final['ci_lo']:+.3f}, {final['ci_hi']:+.3f}] (p = {final['p']:.2g}, MDE {final['mde']:.2f}). This "
            f"{agree}. Descriptively (not tested): right after the windows the answer's log-probability is "
            f"{side['small_batch']['logp']:.1f} nats (small) vs {side['large_batch']['logp']:.1f} (large; the large "
            f"runs' never-injected facts {never:.1f}), greedy exact recall {side['small_batch']['exact']:.2f} vs "
            f"{side['large_batch']['exact']:.2f}. Both see the same tokens, but at the same peak learning rate the "
            f"large run's {b['ratio']} x fewer updates leave it far less trained overall (final validation loss "
            f"{batch['val_loss_large'].mean():.2f} vs {batch['val_loss_small'].mean():.2f}): the contrast is batch "
            f"size together with the number of updates, as in the published equal-epoch comparisons.")


def write_report(exp_dir, design, check, primary, conds, acq, ret, ratios, nulls, chance, machine, batch):
    p = primary.set_index("comparison")
    b = design["batch"]
    repeats = f"{design['repeats']} exposures vs one"
    lines = [
        f"# Fact injection — `{design['name']}` (size {design['size']})", "",
        "**Question.** How does a small model pick up facts injected during pretraining, and how fragile are "
        "they: is the reverse direction learned (the reversal curse, Berglund et al. 2023), do paraphrases "
        "transfer (Allen-Zhu & Li, Physics of LMs 3.1), how does retention decay after the last exposure "
        "(power law per Chang et al. 2024), and how do stage, repetition, paraphrase count and batch size change "
        "acquisition?", "",
        "**Design.** " + (
            f"{len(design['seeds'])} seed{'s' if len(design['seeds']) != 1 else ''}; per seed an injected run and "
            f"its control twin (same seeds, no "
            f"injection: every other segment identical). {design['steps']} steps, model "
            f"{json.dumps({k: design['train'][k] for k in ('dim', 'n_layers', 'batch_size', 'max_seq_len') if k in design['train']})}"
            f", dtype {design['train']['dtype']}. {len(design['conditions'])} conditions x "
            f"{design['facts_per_group']} facts per run ({', '.join(design['conditions'])}); {design['repeats']} "
            f"exposures per injected fact (once: 1; fwd_rev: {design['repeats']} forward + {design['repeats']} "
            f"reverse), windows {design['windows']} of the run. Outcome: `{OUTCOME}`, the answer's share among "
            f"{design['facts_per_group']} equally-familiar candidates (chance {chance:.3g}); "
            f"at least {check['n_pairs']} fact pairs per comparison (pooled ones: "
            f"{len(FORWARD_ONLY)} x that), Bonferroni over {N_PRIMARY}: threshold {check['threshold']:.3g}, smallest "
            f"attainable p {check['min_p']:.2g}. Batch size: per seed two more runs at {b['small']} and {b['large']} "
            f"segments per step ({b['steps']['small_batch']} and {b['steps']['large_batch']} steps: the same "
            f"sampled segments in the same order), the {', '.join(b['conditions'])} groups injected "
            f"{design['repeats']} times each at the same token positions (the large run's steps x {b['ratio']}); "
            f"warmup, cosine decay and checkpoints scaled by {b['ratio']} so the learning rate is the same function "
            f"of tokens; held per update, so not equal in tokens: the peak learning rate, AdamW's betas and weight "
            f"decay ({b['ratio']} x more updates in the small run). Facts paired with themselves across the two "
            f"runs of a seed."), "",
        f"**Machine.** {machine}", "",
        "## Null checks", "",
        markdown(nulls, ["check", "mean", "ci_lo", "ci_hi", "chance", "covers_chance"]), "",
        "## Primary comparisons (a − b)", "",
        markdown(primary, ["comparison", "a", "b", "n", "mean_a", "mean_b", "diff", "ci_lo", "ci_hi", "p", "mde",
                           "significant"]), "",
    ]
    for name, question, *_ in PRIMARY:
        lines.append(f"- **{name}** — {question} {verdict(p.loc[name])}")
    curse = p.loc["reversal_curse"]
    closes = p.loc["reverse_phrasings"]
    para = p.loc["paraphrase_transfer"]
    acq_row = p.loc["acquisition"]
    lines += ["", "## What this shows", "",
              f"- Acquisition: {'injected facts were acquired above the control run' if acq_row['significant'] and acq_row['diff'] > 0 else 'no acquisition detectable over the control run'} "
              f"(forward {OUTCOME} {acq_row['mean_a']:.3f} vs {acq_row['mean_b']:.3f}).",
              f"- Reversal curse: {'reproduced' if curse['significant'] and curse['diff'] > 0 else 'NOT reproduced'} "
              f"— forward-only facts ({', '.join(FORWARD_ONLY)} pooled, n = {curse['n']}): forward "
              f"{curse['mean_a']:.3f} vs reverse {curse['mean_b']:.3f} (chance "
              f"{chance:.3g}; difference {curse['diff']:.3f} [{curse['ci_lo']:.3f}, {curse['ci_hi']:.3f}], minimum "
              f"detectable effect {curse['mde']:.3f}); with reverse phrasings the reverse answer is "
              f"{closes['mean_a']:.3f} vs {closes['mean_b']:.3f} "
              f"({'gap closed' if closes['significant'] and closes['diff'] > 0 else 'no detectable closing'}).",
              f"- Paraphrase transfer: {'reproduced' if para['significant'] and para['diff'] > 0 else 'NOT reproduced'} "
              f"— held-out paraphrases {para['mean_a']:.3f} (10 phrasings) vs {para['mean_b']:.3f} (1 phrasing; "
              f"minimum detectable effect {para['mde']:.3f}).",
              "- Retention: " + "; ".join(
                  (f"{r.condition}: {decay_verdict(r)} (power b = {fmt(r.power_b)}, rss "
                   f"{fmt(r.power_rss)}; exponential tau = {fmt(r.exp_tau)}, rss {fmt(r.exp_rss)}), retained at "
                   f"the end {fmt(r.retained_last)}") if r.acquired else
                  f"{r.condition}: not acquired (excess {fmt(r.excess_after)}, lower bound {fmt(r.excess_after_lo)})"
                  " — no decay to fit" for r in ret.itertuples()) + ".",
              f"- Repetition: {effect_words(p.loc['repetition'], repeats)}.",
              f"- Stage: middle vs early window: {effect_words(p.loc['stage_middle'], 'the middle window')}; late vs "
              f"early: {effect_words(p.loc['stage_late'], 'the late window')}.",
              f"- Paraphrase count (10 vs 1 trained phrasings), held-out paraphrases: "
              f"{effect_words(para, 'ten phrasings')}.",
              f"- Batch size: {batch_words(p.loc['batch_window'], p.loc['batch_final'], design, conds, batch)}", "",
              "## Per condition (injected run)", "",
              markdown(conds[(conds["arm"] == "inject")], ["condition", "kind", "at", "n", OUTCOME, "ci_lo", "ci_hi",
                                                           "exact", "logp"]), "",
              "## Batch size (forward question; small − large per seed, mean over the seed's facts)", "",
              markdown(batch, ["seed", "at", "n", "small", "large", "diff", "val_loss_small", "val_loss_large"]), "",
              markdown(conds[conds["arm"].isin(["small_batch", "large_batch"]) & (conds["kind"] == "forward")],
                       ["arm", "condition", "at", "n", OUTCOME, "ci_lo", "ci_hi", "exact", "logp"]), "",
              "## Acquisition (forward, p_choice >= %.2g)" % ACQUIRED, "",
              markdown(acq, ["condition", "n_facts", "acquired_share", "median_steps"]), "",
              "## Retention fits", "",
              markdown(ret, ["condition", "acquired", "excess_after", "excess_after_lo", "n_points", "retained_last", "power_a", "power_b", "power_rss", "exp_a",
                             "exp_tau", "exp_rss", "better"]), "",
              "## Reverse / forward", "",
              markdown(ratios, ["condition", "forward_excess", "reverse_excess", "reverse_forward_ratio"]), "",
              "Figures: `figures/curves.png` (acquisition and forgetting curves), `figures/directions.png` "
              "(forward, reverse and paraphrases per condition), `figures/forgetting.png` (decay fits), "
              "`figures/batch.png` (small vs large batch against tokens).", ""]
    atomic_write_text(Path(exp_dir) / "report.md", "\n".join(lines))


def null_table(scores, plans, chance):
    rows = []
    checks = [("never-injected facts, injected run, final", scores[(scores["arm"] == "inject") &
                                                                    (scores["condition"] == "never")]),
              ("all facts, control run, final", scores[scores["arm"] == "control"])]
    checks += [(f"never-injected facts, {arm} runs, final", scores[(scores["arm"] == arm) &
                                                                   (scores["condition"] == "never")])
               for arm in ("small_batch", "large_batch") if arm in set(scores["arm"])]
    for name, sel in checks:
        sel = sel[(sel["kind"] == "forward") & (sel["step"] == sel["step"].max())]
        mean, lo, hi, _ = fm.mean_ci(sel[OUTCOME])
        rows.append({"check": name, "mean": mean, "ci_lo": lo, "ci_hi": hi, "chance": chance,
                     "covers_chance": bool(lo <= chance <= hi)})
    return pd.DataFrame(rows)


def batch_table(exp_dir, scores, plans):
    """Per seed and reading ('after' each window, 'final'): the mean forward OUTCOME of the batch runs' injected
    facts, small and large, and their difference (the seed-level view of batch_window / batch_final); and each
    run's final validation loss (val_log.csv), which tells how trained the model is overall."""
    def val_loss(arm, seed):
        log = pd.read_csv(Path(exp_dir) / "runs" / f"{arm}_s{seed}" / "val_log.csv")
        return float(log["val_loss_sub"].iloc[-1])
    rows = []
    for at in ("after", "final"):
        small = values_at(scores, plans, "small_batch", FORWARD_ONLY, "forward", at)
        large = values_at(scores, plans, "large_batch", FORWARD_ONLY, "forward", at)
        both = pd.concat([small.rename("small"), large.rename("large")], axis=1).dropna()
        for seed, g in both.groupby(level="seed"):
            rows.append({"seed": int(seed), "at": at, "n": len(g), "small": g["small"].mean(),
                         "large": g["large"].mean(), "diff": g["small"].mean() - g["large"].mean(),
                         "val_loss_small": val_loss("small_batch", seed),
                         "val_loss_large": val_loss("large_batch", seed)})
    return pd.DataFrame(rows)


def figure_batch(curves, chance, path):
    fig, axes = plt.subplots(1, len(FORWARD_ONLY), figsize=(13, 3.8), sharey=True)
    for ax, cond in zip(axes, FORWARD_ONLY):
        for arm, color in (("small_batch", "tab:blue"), ("large_batch", "tab:red")):
            g = curves[(curves["arm"] == arm) & (curves["condition"] == cond) & (curves["kind"] == "forward")]
            ax.plot(g["tokens_seen"], g[OUTCOME], "o-", ms=3, color=color, label=arm)
            ax.fill_between(g["tokens_seen"], g["ci_lo"], g["ci_hi"], color=color, alpha=0.12)
        ax.axhline(chance, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{cond} window, forward question")
        ax.set_xlabel("tokens seen")
    axes[0].set_ylabel(f"{OUTCOME} (chance {chance:.3g})")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def write_curve_files(exp_dir, scores):
    """curves/<run>.csv for the dashboard (describe's per-run curve format): step, tokens_seen and one column
    <condition>_<kind> per group and question kind (mean p_choice over the group's facts)."""
    entries, columns = [], set()
    for (run, arm, seed), g in scores.groupby(["run", "arm", "seed"]):
        wide = g.pivot_table(index=["step", "tokens_seen"], columns=["condition", "kind"], values=OUTCOME,
                             aggfunc="mean")
        wide.columns = [f"{c}_{k}" for c, k in wide.columns]
        columns |= set(wide.columns)
        path = Path(describe.CURVES_DIR) / f"{run}.csv"
        atomic_write_text(Path(exp_dir) / path, wide.reset_index().to_csv(index=False))
        entries.append({"run": run, "condition": arm, "path": path.as_posix(), "labels": {"seed": int(seed)}})
    return entries, sorted(columns)


def analyse(exp_dir, design, runs, plans, check, machine=""):
    exp_dir = Path(exp_dir)
    scores = load_scores(exp_dir, runs, plans)
    # only the steps scored in every seed of an arm (a run scored before the grid rule has extra ones)
    n_seeds = scores.groupby("arm")["seed"].nunique()
    per_step = scores.groupby(["arm", "step"])["seed"].nunique()
    common = per_step[per_step.to_numpy() == n_seeds.reindex(per_step.index.get_level_values("arm")).to_numpy()]
    scores = scores.set_index(["arm", "step"]).loc[lambda d: d.index.isin(common.index)].reset_index()
    chance = 1.0 / design["facts_per_group"]
    primary = primary_table(scores, plans)
    conds = condition_table(scores, plans, chance)
    curves = curves_table(scores)
    acq = acquisition_table(scores, plans)
    ret, points = retention_table(scores, plans)
    ratios = ratio_table(conds, chance)
    nulls = null_table(scores, plans, chance)
    batch = batch_table(exp_dir, scores, plans)
    for name, df in (("results", primary), ("conditions", conds), ("curves", curves), ("acquisition", acq),
                     ("retention", ret), ("retention_points", points), ("ratios", ratios), ("nulls", nulls),
                     ("batch", batch)):
        atomic_write_text(exp_dir / f"{name}.csv", df.to_csv(index=False))
    (exp_dir / "figures").mkdir(exist_ok=True)
    figure_curves(curves, chance, exp_dir / "figures" / "curves.png")
    figure_directions(conds, chance, exp_dir / "figures" / "directions.png")
    figure_forgetting(points, ret, exp_dir / "figures" / "forgetting.png")
    figure_batch(curves, chance, exp_dir / "figures" / "batch.png")
    write_report(exp_dir, design, check, primary, conds, acq, ret, ratios, nulls, chance, machine, batch)
    curve_runs, curve_columns = write_curve_files(exp_dir, scores)
    describe.write_description(
        exp_dir, "fact_injection", "Fact injection: acquisition, retention, reversal, paraphrase, batch size",
        curve_runs=curve_runs, curve_columns=curve_columns,
        tables=[{"name": n, "path": f"{n}.csv", "caption": c} for n, c in (
            ("results", "primary paired comparisons"), ("conditions", "per condition x question kind"),
            ("curves", "per-step means with 95% t intervals"), ("retention", "decay fits"),
            ("acquisition", "acquired share and steps"), ("nulls", "null checks"),
            ("batch", "small vs large batch per seed"))],
        figures=[{"path": "figures/curves.png", "caption": "acquisition and forgetting curves"},
                 {"path": "figures/directions.png", "caption": "forward, reverse and paraphrases"},
                 {"path": "figures/forgetting.png", "caption": "retention decay fits"},
                 {"path": "figures/batch.png", "caption": "small vs large batch at equal tokens"}],
        primary=primary[["comparison", "outcome", "diff", "ci_lo", "ci_hi", "p", "mde", "significant"]]
        .to_dict("records"), baseline="control")
    return primary
