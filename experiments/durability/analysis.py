"""Analysis of a finished durability v2 experiment: checks, paired statistics, variance decomposition,
trajectories, model similarity, figures, report.md and description.json.

Reads only the run folders' shared artifacts (batch log, val_log.csv, tables/summary.csv, checkpoints) and
writes into the experiment folder:
  primary.csv      per sorted condition: the primary outcome's paired comparison with the baseline (effect,
                   t-interval, exact sign-flip p, min attainable p, MDE at 80% power, g_av, tested)
  exploratory.csv  the same for every other outcome, with Benjamini-Hochberg q over all of them
  variance.csv     init / order / residual SD from the crossed grid of the baseline, per outcome
  similarity.csv   model-to-model similarity (CKA of final hidden states, embedding Procrustes, symmetric KL)
                   by kind of pair: same init other order (sorted or random), other init
  saturation.csv   per run: the val_loss_sub trajectory's class (measures.saturation) and plateau step
  runs.csv         per run: seeds, role, multiset hash, order rho, final outcome values
  curves/          per run: step, tokens_seen, val_loss_sub, train_loss (what the dashboard draws)
  figures/         trajectories.png, pairs.png, grid.png, similarity.png
"""
import hashlib
import itertools
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from scipy import stats as sps
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.errors import UserError  # noqa: E402
from common.io import atomic_path, atomic_write_text, save_png  # noqa: E402
from experiments.common import describe, runner, stats  # noqa: E402
from experiments.durability import similarity  # noqa: E402
from experiments.durability.naming import BASELINE, DATA_SEED_OFFSET, GRID  # noqa: E402
from metadata.table import read_metadata  # noqa: E402

PRIMARY = "val_loss_sub"   # train.py's loss on the first eval_iters x batch_size stories of the fixed val sample
TRAJECTORY = "val_loss_sub"
# exploratory end-point outcomes from eval.py's summary at the final step, when it wrote them
SUMMARY_OUTCOMES = ["val_loss", "val_loss_novel", "out_ppl_ref", "out_bleu", "out_rougeL", "out_prefix_token_acc",
                    "out_distinct2", "icl_score", "bias_amplification", "tox_mass"]
FIG_DPI = 90


# ---- loading ----

def load_runs(exp_dir, design, partial=False):
    """Per planned run: batch-log segments, val_log (trajectory) and the final summary row. partial: skip the
    runs not finished yet instead of refusing."""
    from experiments.common.runner import run_finished
    from modelling.batch_log import BatchLog
    runs = []
    for run in design["runs"]:
        run_dir = Path(exp_dir) / "runs" / run["name"]
        summary_path = run_dir / "tables" / "summary.csv"
        if partial and not run_finished(run_dir, run):
            continue
        evaluated = run["eval"] is not None  # the grid's runs are only trained
        if (evaluated and not summary_path.exists()) or not (run_dir / "val_log.csv").exists():
            raise UserError(f"{run_dir} lacks tables/summary.csv or val_log.csv — re-run the experiment command "
                            f"to finish run {run['name']}")
        batch_log = BatchLog(run_dir)
        segments = batch_log.steps(1, len(batch_log))
        final = None
        if evaluated:
            summary = pd.read_csv(summary_path)
            final = summary[summary.step == run["steps"]]
            if final.empty:
                raise UserError(f"{summary_path} has no row for the final step {run['steps']} — re-run the command")
            final = final.iloc[-1]
        val_log = pd.read_csv(run_dir / "val_log.csv").sort_values("step").drop_duplicates("step", keep="last")
        runs.append({**run, "dir": run_dir, "segments": segments, "final": final, "val_log": val_log})
    return runs


# ---- checks ----

def multiset_hash(segments):
    """Order-free fingerprint of the segments a run trained on: sha256 of the sorted (story_id, start,
    n_tokens) triples."""
    triples = np.stack([segments["story_id"], segments["start"], segments["n_tokens"]], axis=1).astype("<i8")
    return hashlib.sha256(triples[np.lexsort(triples.T[::-1])].tobytes()).hexdigest()


def check_same_multiset(runs):
    """Every run must have trained on exactly the same multiset of segments (else orders are not comparable)."""
    hashes = {r["name"]: multiset_hash(r["segments"]) for r in runs}
    reference = runs[0]["name"]
    mismatched = [name for name, h in hashes.items() if h != hashes[reference]]
    return {"same_multiset": not mismatched, "reference_run": reference, "multiset_sha256": hashes[reference],
            "n_segments": int(len(runs[0]["segments"])),
            "n_distinct_stories": int(len(np.unique(runs[0]["segments"]["story_id"]))),
            "mismatched_runs": mismatched}


def order_correlations(runs, design):
    """Spearman rho between position in the training stream and the sort metric, per run: +1 ascending,
    -1 descending, about 0 random — each condition got the order it asked for."""
    meta = read_metadata(design["dataset"], design["vocab_size"],
                         columns=["story_id", design["metric"]]).set_index("story_id")
    rhos = {}
    for r in runs:
        values = meta[design["metric"]].reindex(r["segments"]["story_id"]).to_numpy(dtype=np.float64)
        position = np.arange(len(values))
        ok = np.isfinite(values)
        rhos[r["name"]] = float(sps.spearmanr(position[ok], values[ok]).statistic) if ok.sum() > 2 else np.nan
    return rhos


# ---- outcomes per run ----

def trajectory_mean(val_log):
    """Mean of val_loss_sub over the checkpoints: checkpoints are log-spaced, so this is the area under the
    trajectory on a log-step axis per checkpoint; a condition's difference from its pair's is the area
    between the curves."""
    return float(val_log[TRAJECTORY].mean())


def final_values(runs, summary_outcomes):
    """{run name: {outcome: final value}}: the primary (val_loss_sub at the last step), eval.py's exploratory
    outcomes at the last step, and val_loss_sub's mean over checkpoints."""
    finals = {}
    for r in runs:
        last = r["val_log"][r["val_log"].step == r["steps"]]
        if last.empty:
            raise UserError(f"{r['dir']}/val_log.csv has no row for the last step {r['steps']} — re-run the command")
        row = {PRIMARY: float(last[PRIMARY].iloc[-1])}
        if r["final"] is not None:
            row.update({c: float(r["final"][c]) for c in summary_outcomes})
        row[f"{TRAJECTORY}_mean_over_checkpoints"] = trajectory_mean(r["val_log"])
        finals[r["name"]] = row
    return finals


def paired_values(runs, finals, condition, outcome):
    """(condition values, baseline values) ordered by init seed over the pairs."""
    by = {(r["condition"], r["init_seed"]): finals[r["name"]][outcome] for r in runs if r["role"] == "pair"}
    seeds = sorted({r["init_seed"] for r in runs if r["role"] == "pair"})
    return (np.array([by.get((condition, s), np.nan) for s in seeds]),
            np.array([by.get((BASELINE, s), np.nan) for s in seeds]))


def sorted_conditions(runs):
    return list(dict.fromkeys(r["condition"] for r in runs if r["role"] == "pair" and r["condition"] != BASELINE))


def primary_table(runs, finals, design):
    n_primary = len(sorted_conditions(runs))
    rows = []
    for condition in sorted_conditions(runs):
        a, b = paired_values(runs, finals, condition, PRIMARY)
        rows.append({"comparison": f"{condition} − {BASELINE}", "condition": condition, "outcome": PRIMARY,
                     **stats.compare_paired((a, b), alpha=design["alpha"], n_primary=n_primary)})
    return pd.DataFrame(rows)


def exploratory_table(runs, finals, design):
    outcomes = list(dict.fromkeys(o for r in runs if r["role"] == "pair" for o in finals[r["name"]] if o != PRIMARY))
    rows = []
    for condition in sorted_conditions(runs):
        for outcome in outcomes:
            a, b = paired_values(runs, finals, condition, outcome)
            rows.append({"comparison": f"{condition} − {BASELINE}", "condition": condition, "outcome": outcome,
                         **stats.compare_paired((a, b), alpha=design["alpha"])})
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("p") + 1, "q", stats.bh_q(table["p"]))
    table["significant"] = False  # exploratory: reported with q, never a finding on its own
    return table


def variance_table(runs, finals, design):
    """Init / order / residual SD of each outcome over the baseline's crossed grid (pair runs on the diagonal)."""
    g = design["grid"]
    if g < 2:
        return pd.DataFrame()
    data_seeds = [DATA_SEED_OFFSET + j for j in range(g)]
    cell = {(r["init_seed"], r["data_seed"]): finals[r["name"]] for r in runs if r["condition"] in (BASELINE, GRID)}
    rows = []
    for outcome in [PRIMARY, f"{TRAJECTORY}_mean_over_checkpoints"]:  # what every grid run has
        grid = np.array([[cell[(i, d)][outcome] if (i, d) in cell else np.nan for d in data_seeds]
                         for i in range(g)])
        rows.append({"outcome": outcome, **stats.crossed_variance(grid), "grid_mean": float(np.nanmean(grid))})
    return pd.DataFrame(rows)


def saturation_table(runs):
    from measures.saturation import METHOD, classify_curve
    rows = []
    for r in runs:
        log = r["val_log"].dropna(subset=[TRAJECTORY])
        result = classify_curve(log["step"].to_numpy(), log[TRAJECTORY].to_numpy())
        rows.append({"run": r["name"], "condition": r["condition"], "class": result.cls,
                     "plateau_step": result.plateau_step if result.cls == "plateaued" else np.nan})
    return pd.DataFrame(rows), METHOD


# ---- model similarity ----

@torch.no_grad()
def final_model_outputs(runs):
    """Per run's last checkpoint: next-token logits and final hidden states (after the last norm) on the probe
    set of the first run (val-story probes, fed to every model), and the token embedding matrix."""
    from modelling.checkpoints import list_checkpoints, load_model
    probes = json.loads((runs[0]["dir"] / "attn_probes.json").read_text())
    probe_tokens = [p["tokens"] for p in probes if p.get("story_id") is not None] or [p["tokens"] for p in probes]
    outputs = {}
    for r in tqdm(runs, desc="final models", unit="run", leave=False):
        _, path = list_checkpoints(r["dir"])[-1]
        model, _ = load_model(path)
        model.eval()
        hidden = []
        hook = model.norm.register_forward_hook(lambda _m, _i, out: hidden.append(out[0].float().numpy()))
        logits = [model(torch.tensor(t[:model.params.max_seq_len], dtype=torch.long)[None])[0].float().numpy()
                  for t in probe_tokens]
        hook.remove()
        outputs[r["name"]] = {"logits": np.concatenate(logits), "hidden": np.concatenate(hidden),
                              "embedding": model.tok_embeddings.weight.detach().float().numpy()}
    return outputs


def similarity_pairs(runs):
    """(kind, run a, run b) for every model pair the similarity table compares."""
    pair = {(r["condition"], r["init_seed"]): r["name"] for r in runs if r["role"] == "pair"}
    seeds = sorted({s for _, s in pair})
    out = []
    for condition in sorted_conditions(runs):
        out += [(f"same init: {condition} vs {BASELINE}", pair.get((condition, s)), pair.get((BASELINE, s)))
                for s in seeds]
    for r in runs:
        if r["role"] == "grid":  # same init as random_s<i>, another random order
            out.append(("same init: two random orders", r["name"], pair.get((BASELINE, r["init_seed"]))))
    out += [(f"other init and order: {BASELINE} vs {BASELINE}", pair.get((BASELINE, a)), pair.get((BASELINE, b)))
            for a, b in itertools.combinations(seeds, 2)]
    return [(kind, a, b) for kind, a, b in out if a and b]  # a partial analysis lacks some runs


def similarity_table(runs, outputs):
    rows = []
    for kind, a, b in tqdm(similarity_pairs(runs), desc="model pairs", unit="pair", leave=False):
        oa, ob = outputs[a], outputs[b]
        rows.append({"kind": kind, "run_a": a, "run_b": b,
                     "cka_hidden": similarity.linear_cka(oa["hidden"], ob["hidden"]),
                     "procrustes_embedding": similarity.procrustes_similarity(oa["embedding"], ob["embedding"])[0],
                     "symmetric_kl": similarity.symmetric_kl(oa["logits"], ob["logits"])})
    pairs = pd.DataFrame(rows)
    summary = []
    for kind, group in pairs.groupby("kind", sort=False):
        row = {"kind": kind, "n_pairs": len(group)}
        for column in ("cka_hidden", "procrustes_embedding", "symmetric_kl"):
            mean, lo, hi = stats.t_interval(group[column])
            row.update({column: mean, f"{column}_ci_lo": lo, f"{column}_ci_hi": hi})
        summary.append(row)
    return pd.DataFrame(summary), pairs


# ---- figures ----

def condition_colors(runs):
    colors = {BASELINE: "black", GRID: "grey"}
    palette = ["tab:blue", "tab:red", "tab:green", "tab:orange"]
    for k, condition in enumerate(sorted_conditions(runs)):
        colors[condition] = palette[k % len(palette)]
    return colors


def plot_trajectories(runs, colors, path):
    """val_loss_sub per checkpoint: mean ± 95% CI per condition (pairs only), and the paired difference
    condition − baseline per checkpoint."""
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    pair_runs = [r for r in runs if r["role"] == "pair"]
    wide = {}
    for r in pair_runs:
        wide.setdefault(r["condition"], {})[r["init_seed"]] = r["val_log"].set_index("step")[TRAJECTORY]
    for condition, by_seed in wide.items():
        table = pd.DataFrame(by_seed)
        mean, lo, hi = stats.mean_band(table.to_numpy().T)
        ax.plot(table.index, mean, color=colors[condition], label=condition)
        ax.fill_between(table.index, lo, hi, color=colors[condition], alpha=0.15, lw=0)
        if condition != BASELINE:
            diff = table - pd.DataFrame(wide[BASELINE])
            mean, lo, hi = stats.mean_band(diff.to_numpy().T)
            ax_d.plot(diff.index, mean, color=colors[condition], label=f"{condition} − {BASELINE}")
            ax_d.fill_between(diff.index, lo, hi, color=colors[condition], alpha=0.15, lw=0)
    ax_d.axhline(0, color="black", lw=0.8)
    for a, title in ((ax, f"{TRAJECTORY} (mean ± 95% CI over pairs)"), (ax_d, "paired difference (nats)")):
        a.set_xscale("log")
        a.set_xlabel("step")
        a.set_title(title, fontsize=10)
        a.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=FIG_DPI)


def plot_pairs(primary, runs, finals, colors, path):
    """Each pair's difference in the primary outcome (dots), the mean with its t-interval, and ± MDE."""
    fig, ax = plt.subplots(figsize=(7, 0.9 * len(primary) + 1.8))
    for y, (_, row) in enumerate(primary.iterrows()):
        a, b = paired_values(runs, finals, row["condition"], PRIMARY)
        ax.scatter(a - b, np.full(len(a), y) + np.linspace(-0.15, 0.15, len(a)), s=14, color=colors[row["condition"]],
                   alpha=0.6)
        if np.isfinite(row["ci_lo"]):
            ax.errorbar(row["diff"], y, xerr=[[row["diff"] - row["ci_lo"]], [row["ci_hi"] - row["diff"]]], fmt="D",
                        color="black", capsize=4)
        if np.isfinite(row["mde"]):
            ax.plot([-row["mde"], row["mde"]], [y + 0.3, y + 0.3], "|", color="grey", ms=12)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(primary)))
    ax.set_yticklabels(primary["comparison"])
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ final {PRIMARY} (nats); dots: pairs; ◆: mean, 95% t-interval; |: ± MDE (80% power)")
    fig.tight_layout()
    save_png(fig, path, dpi=FIG_DPI)


def plot_grid(runs, finals, design, path):
    g = design["grid"]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    if g >= 2:
        base = {(r["init_seed"], r["data_seed"]): finals[r["name"]][PRIMARY] for r in runs
                if r["condition"] in (BASELINE, GRID)}
        data_seeds = [DATA_SEED_OFFSET + j for j in range(g)]
        grid = np.array([[base.get((i, d), np.nan) for d in data_seeds] for i in range(g)])
        im = ax.imshow(grid, cmap="viridis")
        for i, j in itertools.product(range(g), range(g)):
            ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xticks(range(g), [str(d) for d in data_seeds])
        ax.set_yticks(range(g), [str(i) for i in range(g)])
        ax.set_xlabel("data-order seed")
        ax.set_ylabel("init seed")
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"final {PRIMARY}, {BASELINE} order grid", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=FIG_DPI)


def plot_similarity(sim, path):
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(sim) + 1.8), sharey=True)
    for ax, column in zip(axes, ("cka_hidden", "procrustes_embedding", "symmetric_kl")):
        y = np.arange(len(sim))
        err = np.vstack([sim[column] - sim[f"{column}_ci_lo"], sim[f"{column}_ci_hi"] - sim[column]])
        ax.errorbar(sim[column], y, xerr=np.nan_to_num(err), fmt="o", capsize=3)
        ax.set_title(column, fontsize=10)
    axes[0].set_yticks(np.arange(len(sim)), sim["kind"], fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    save_png(fig, path, dpi=FIG_DPI)


# ---- report ----

def _fmt(x, digits=3):
    if x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.0f}"


def _ci(mean, lo, hi, digits=3):
    return f"{_fmt(mean, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def headline(primary, design):
    """One sentence per primary comparison: an effect found, or bounded."""
    out = []
    for _, row in primary.iterrows():
        if not row["tested"]:
            out.append(f"- `{row['comparison']}`: not tested ({row['reason']}); Δ {PRIMARY} = "
                       f"{_ci(row['diff'], row['ci_lo'], row['ci_hi'])} nats.")
        elif row["significant"]:
            out.append(f"- `{row['comparison']}`: **order effect found** — Δ {PRIMARY} = "
                       f"{_ci(row['diff'], row['ci_lo'], row['ci_hi'])} nats, p = {_fmt(row['p'], 2)} < "
                       f"{_fmt(row['threshold'], 2)}, g_av = {_fmt(row['g_av'], 2)}.")
        else:
            bound = max(abs(row["ci_lo"]), abs(row["ci_hi"]))
            out.append(f"- `{row['comparison']}`: **no order effect detected** — Δ {PRIMARY} = "
                       f"{_ci(row['diff'], row['ci_lo'], row['ci_hi'])} nats (p = {_fmt(row['p'], 2)}); an effect "
                       f"larger than {_fmt(bound, 2)} nats is excluded by the 95% interval, and this design detects "
                       f"{_fmt(row['mde'], 2)} nats ({_fmt(row['mde_sd'], 2)} SD of the pair differences) with 80% "
                       f"power.")
    return out


def write_report(exp_dir, design, runs, check, rhos, primary, exploratory, variance, sim, saturation, sat_method):
    cfg = json.loads((runs[0]["dir"] / "config.json").read_text())["config"]
    power = design["power"]
    conds = sorted_conditions(runs)
    missing = [r["name"] for r in design["runs"] if r["name"] not in {x["name"] for x in runs}]
    lines = [f"# Durability v2: `{design['name']}`", ""]
    if missing:
        lines += [f"> **Partial analysis:** {len(runs)} of {len(design['runs'])} planned runs finished; missing: "
                  f"{', '.join(missing)}. Pairs lacking a run are left out of every comparison.", ""]
    lines += [
             "**Question.** Does the same training data in another order give a different end model? Every run "
             "trained on exactly the same multiset of segments; within a pair only the order differs.", "",
             "## Minimum detectable effect (read this first)", "",
             f"Primary outcome: final `{PRIMARY}` — train.py's mean loss on the first "
             f"{cfg.get('eval_iters', 0) * cfg.get('batch_size', 0)} stories of the dataset's fixed validation sample "
             f"(the same stories for every run) at the last step. "
             f"{len(conds)} primary comparison{'s' if len(conds) > 1 else ''}, tested at alpha / {len(conds)} = "
             f"{_fmt(power['threshold'], 3)} "
             f"with the exact paired sign-flip test. MDE: the true mean difference a two-sided paired t-test detects "
             f"with 80% power at that level, from the measured SD of the pair differences.", "",
             "| comparison | pairs | SD of differences | min attainable p | threshold | MDE (nats) | MDE (SD) "
             "| tested |",
             "|---|---|---|---|---|---|---|---|"]
    for _, row in primary.iterrows():
        lines.append(f"| {row['comparison']} | {row['n']} | {_fmt(row['sd_diff'])} | {_fmt(row['min_p'], 2)} | "
                     f"{_fmt(row['threshold'], 2)} | {_fmt(row['mde'])} | {_fmt(row['mde_sd'], 3)} | "
                     f"{'yes' if row['tested'] else 'no — ' + row['reason']} |")
    lines += ["", "## Result", ""] + headline(primary, design) + ["",
              "| comparison | Δ (nats) [95% t-interval] | p (sign-flip) | g_av [95% CI] | baseline mean |",
              "|---|---|---|---|---|"]
    for _, row in primary.iterrows():
        lines.append(f"| {row['comparison']} | {_ci(row['diff'], row['ci_lo'], row['ci_hi'])} | {_fmt(row['p'], 2)} "
                     f"| {_ci(row['g_av'], row['g_ci_lo'], row['g_ci_hi'], 2)} | {_fmt(row['mean_b'], 4)} |")
    lines += ["", "![pairs](figures/pairs.png)", "", "## Design", "",
              f"- Data: `{design['dataset']}`, vocab {design['vocab_size']}; one fixed selection of "
              f"{check['n_distinct_stories']} train stories ({check['n_segments']} segments, every token once), "
              f"{runs[0]['steps']} optimizer steps of {design['selection']['segments_per_step']} segments per run.",
              f"- Model: dim {cfg.get('dim')}, {cfg.get('n_layers')} layers, {cfg.get('n_heads')} heads, max_seq_len "
              f"{cfg.get('max_seq_len')}, batch {cfg.get('batch_size')}, lr {cfg.get('learning_rate')} → "
              f"{cfg.get('min_lr')}, dtype **{cfg.get('dtype')}** (pinned), size `{design['size']}`.",
              f"- Pairs: init seeds 0..{design['n_pairs'] - 1}; in pair i, `{BASELINE}` uses data-order seed "
              f"{DATA_SEED_OFFSET}+i and {', '.join(f'`{c}`' for c in conds)} sort the same selection by "
              f"`{design['metric']}` "
              f"(stable, ties by story id). Grid: init seeds 0..{design['grid'] - 1} × data-order seeds "
              f"{DATA_SEED_OFFSET}..{DATA_SEED_OFFSET + design['grid'] - 1} of `{BASELINE}` (diagonal = the pairs' "
              "baseline runs) → "
              f"{len(runs)} runs.",
              "- Every run: `modelling/train.py` (trajectory: `val_loss_sub` on the first "
              f"{cfg.get('eval_iters', 0) * cfg.get('batch_size', 0)} validation stories at every checkpoint), "
              "then `eval.py` at the final step for the pairs' runs (the grid's runs are only trained; its "
              f"`val_loss` on {design['eval'].get('val_stories')} stories of the "
              f"fixed iid sample, {design['eval'].get('n_prompts')} prompts × {design['eval'].get('max_new_tokens')} "
              "generated tokens: exploratory)."] + runner.wall_time_lines(exp_dir) + ["",
              "## Checks", "",
              f"- Same multiset of segments in all {len(runs)} runs (batch logs): "
              f"**{'yes' if check['same_multiset'] else 'NO'}** (sha256 `{check['multiset_sha256'][:16]}…`).",
              "- Order applied — Spearman ρ of stream position vs the sort metric, mean over runs: " +
              ", ".join(f"`{c}` {_fmt(np.mean([rhos[r['name']] for r in runs if r['condition'] == c]), 2)}"
                        for c in [BASELINE] + conds) + ".", ""]
    if len(variance):
        v = variance.set_index("outcome")
        lines += ["## Where the seed-to-seed variance comes from", "",
                  f"Crossed {design['grid']}×{design['grid']} grid of the random baseline (two-way random-effects "
                  "ANOVA, components below zero reported as 0):", "",
                  "| outcome | SD init | SD order | SD residual |", "|---|---|---|---|"]
        for outcome in [PRIMARY, f"{TRAJECTORY}_mean_over_checkpoints"]:
            if outcome in v.index:
                lines.append(f"| {outcome} | {_fmt(v.loc[outcome, 'sd_init'])} | {_fmt(v.loc[outcome, 'sd_order'])} | "
                             f"{_fmt(v.loc[outcome, 'sd_residual'])} |")
        lines += ["", f"With {design['grid']} levels each, these SDs are rough (2 degrees of freedom per factor).",
                  "", "![grid](figures/grid.png)", ""]
    lines += ["## Exploratory outcomes", "",
              f"Same paired analysis for every other outcome; q = Benjamini–Hochberg over all {len(exploratory)} "
              "exploratory tests. Exploratory: none is a finding on its own.", "",
              "| comparison | outcome | Δ [95% t-interval] | p | q | g_av |", "|---|---|---|---|---|---|"]
    for _, row in exploratory.iterrows():
        lines.append(f"| {row['comparison']} | {row['outcome']} | {_ci(row['diff'], row['ci_lo'], row['ci_hi'])} | "
                     f"{_fmt(row['p'], 2)} | {_fmt(row['q'], 2)} | {_fmt(row['g_av'], 2)} |")
    classes = saturation.groupby(["condition", "class"]).size().unstack(fill_value=0)
    lines += ["", "## Trajectories", "",
              f"`{TRAJECTORY}` at every checkpoint (left) and the paired difference from the baseline (right); the "
              f"mean over checkpoints is the area between the curves per checkpoint (exploratory row "
              f"`{TRAJECTORY}_mean_over_checkpoints`). Saturation class of each run's curve ({sat_method}):", "",
              "| condition | " + " | ".join(classes.columns) + " |", "|---|" + "---|" * len(classes.columns)]
    for condition, row in classes.iterrows():
        lines.append(f"| {condition} | " + " | ".join(str(int(x)) for x in row) + " |")
    lines += ["", "![trajectories](figures/trajectories.png)", "", "## Model similarity", "",
              "Linear CKA of the final hidden states on the probe set, Procrustes similarity of the token "
              "embeddings (1 = the same up to rotation) and symmetric next-token KL (nats/token; 0 = same "
              "predictions), mean [95% t-interval] over model pairs. *Same init, two random orders* is the "
              "reference for *same init: sorted vs random*: a sorted order leaves a trace beyond a random reorder "
              "when its similarity is lower (KL higher).", "",
              "| pair kind | pairs | CKA hidden | Procrustes embedding | symmetric KL |", "|---|---|---|---|---|"]
    for _, row in sim.iterrows():
        lines.append(f"| {row['kind']} | {row['n_pairs']} | "
                     f"{_ci(row['cka_hidden'], row['cka_hidden_ci_lo'], row['cka_hidden_ci_hi'])} | "
                     f"{_ci(*(row[f'procrustes_embedding{k}'] for k in ('', '_ci_lo', '_ci_hi')))} | "
                     f"{_ci(row['symmetric_kl'], row['symmetric_kl_ci_lo'], row['symmetric_kl_ci_hi'])} |")
    lines += ["", "![similarity](figures/similarity.png)", "", "## Limits", "",
              f"- One small model, one corpus, one selection of {check['n_distinct_stories']} stories, one epoch of "
              f"{runs[0]['steps']} steps: the result bounds order effects at this scale only. A sorted order also "
              "decides which stories come last, while the learning rate decays (recency).",
              "- The sign-flip test assumes the pair differences are symmetric about 0 under no effect (pairs are "
              "exchangeable); the t-interval assumes them roughly normal. MDE is computed from the observed SD, "
              "itself uncertain with few pairs.", "",
              "Reproduce (the corpus: docs/experiments.md): `OMP_NUM_THREADS=1 python "
              f"experiments/durability/experiment_durability.py --name {design['name']} --size {design['size']} "
              f"--dataset {design['dataset']} --vocab_size {design['vocab_size']} --metric {design['metric']} "
              f"--orders {','.join(design['orders'])} --pairs {design['n_pairs']} --grid {design['grid']} "
              f"--n_stories {design['n_stories']} --jobs 2`", ""]
    atomic_write_text(Path(exp_dir) / "report.md", "\n".join(lines))


# ---- entry ----

def _write_csv(path, table):
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)


def analyse(exp_dir, design, record=lambda summary: None, partial=False):
    """All checks, tables, figures, report.md and description.json; returns the summary for experiment.json.
    `record` saves the multiset check before a failed check stops the analysis, so the evidence is kept.
    partial: analyse the finished runs only (the report says which are missing)."""
    exp_dir = Path(exp_dir)
    runs = load_runs(exp_dir, design, partial)
    if not runs:
        raise UserError(f"no finished run under {exp_dir}/runs yet — run the experiment first")
    check = check_same_multiset(runs)
    record({"same_multiset": check["same_multiset"], "multiset": check})
    if not check["same_multiset"]:
        raise UserError(f"runs {', '.join(check['mismatched_runs'])} trained on a different multiset of segments "
                        f"than {check['reference_run']} — the orders are not comparable; check train.py's selection "
                        f"settings and re-run those runs")
    rhos = order_correlations(runs, design)
    present = set.intersection(*(set(r["final"].index[r["final"].notna()]) for r in runs if r["final"] is not None))
    finals = final_values(runs, [c for c in SUMMARY_OUTCOMES if c in present])
    primary = primary_table(runs, finals, design)
    exploratory = exploratory_table(runs, finals, design)
    variance = variance_table(runs, finals, design)
    saturation, sat_method = saturation_table(runs)
    sim, sim_pairs = similarity_table(runs, final_model_outputs(runs))
    per_run = pd.DataFrame([{"run": r["name"], "condition": r["condition"], "role": r["role"],
                             "init_seed": r["init_seed"], "data_seed": r["data_seed"],
                             "multiset_sha256": multiset_hash(r["segments"]),
                             f"rho_{design['metric']}": rhos[r["name"]],
                             **finals[r["name"]]} for r in runs])
    tables = {"primary": primary, "exploratory": exploratory, "variance": variance, "similarity": sim,
              "similarity_pairs": sim_pairs, "saturation": saturation, "runs": per_run}
    for name, table in tables.items():
        _write_csv(exp_dir / f"{name}.csv", table)

    colors = condition_colors(runs)
    figures = exp_dir / "figures"
    plot_trajectories(runs, colors, figures / "trajectories.png")
    plot_pairs(primary, runs, finals, colors, figures / "pairs.png")
    plot_grid(runs, finals, design, figures / "grid.png")
    plot_similarity(sim, figures / "similarity.png")
    write_report(exp_dir, design, runs, check, rhos, primary, exploratory, variance, sim, saturation, sat_method)

    curve_tables = {r["name"]: r["val_log"] for r in runs}
    entries = describe.write_run_curves(exp_dir, runs, [TRAJECTORY, "train_loss"], tables=curve_tables)
    captions = {"primary": "primary outcome per sorted condition: paired effect, CI, p, min p, MDE, g_av",
                "exploratory": "exploratory outcomes with Benjamini–Hochberg q",
                "variance": "init / order / residual SD from the baseline's crossed grid",
                "similarity": "model similarity by kind of pair", "similarity_pairs": "every compared model pair",
                "saturation": "saturation class of each run's val_loss_sub trajectory", "runs": "per-run values"}
    describe.write_description(
        exp_dir, "durability", "Durability v2: the same data in another order", baseline=BASELINE,
        tables=[{"name": n, "path": f"{n}.csv", "caption": captions[n]} for n in tables],
        figures=[{"path": f"figures/{f}.png", "caption": c} for f, c in (
            ("pairs", "primary outcome: pair differences, mean ± CI, ± MDE"),
            ("trajectories", "val_loss_sub per checkpoint and paired difference"),
            ("grid", "baseline init × order grid"), ("similarity", "model similarity by pair kind"))],
        curve_runs=entries, curve_columns=[TRAJECTORY, "train_loss"],
        primary=[{k: row[k] for k in ("comparison", "outcome", "n", "diff", "ci_lo", "ci_hi", "p", "min_p",
                                      "threshold", "mde", "mde_sd", "g_av", "tested", "significant", "reason")}
                 for _, row in primary.iterrows()],
        design={k: design[k] for k in ("size", "dataset", "vocab_size", "metric", "n_pairs", "grid", "alpha",
                                       "primary_outcome")})
    return {"same_multiset": True, "multiset": check, "tested": design["power"]["tested"],
            "primary": json.loads(primary.to_json(orient="records"))}
