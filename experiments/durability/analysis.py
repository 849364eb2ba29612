"""Analysis of a finished durability experiment: checks, tables, figures and report.md.

Reads only the run folders' shared artifacts (batch log, tables/summary.csv, checkpoints) through the shared
readers, and writes into the experiment folder:
  runs.csv        one row per run: condition, seeds, story-multiset hash, order check, final outcome values
  curves.csv      per condition × outcome × step: mean and 95% CI over seeds (the across-time comparison)
  results.csv     per condition × outcome: end-point mean ± CI, difference vs baseline with bootstrap CI,
                  permutation p (and BH q over all tests), Hedges' g, plateau step mean ± CI
  divergence.csv  per condition: next-token KL and embedding Procrustes similarity to the baseline / within
  figures/        curves.png, input_order.png, endpoint.png, divergence.png
  report.md       question, design, checks, numbers, and what they do and do not show
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
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from common.errors import UserError  # noqa: E402
from common.io import atomic_path, atomic_write_text, provenance, save_png  # noqa: E402
from metadata.table import read_metadata  # noqa: E402
from experiments.durability import stats  # noqa: E402

# output columns of tables/summary.csv compared besides val_loss and out_<sort metric>, when eval wrote them
EXTRA_OUTCOMES = ["out_ppl_ref", "out_bleu", "out_rougeL", "out_prefix_token_acc", "bias_seen", "bias_amplification",
                  "tox_mass"]
FIG_DPI = 90


# ---- loading ----

def load_runs(exp_dir, design):
    """Per planned run: its batch-log segments and its summary table (checks that both exist)."""
    from modelling.batch_log import BatchLog
    runs = []
    for run in design["runs"]:
        run_dir = Path(exp_dir) / "runs" / run["name"]
        summary_path = run_dir / "tables" / "summary.csv"
        if not summary_path.exists():
            raise UserError(f"{summary_path} missing — re-run the experiment command to finish run {run['name']}")
        batch_log = BatchLog(run_dir)
        segments = batch_log.steps(1, len(batch_log))
        runs.append({**run, "dir": run_dir, "segments": segments, "story_ids": segments["story_id"].astype(np.int64),
                     "summary": pd.read_csv(summary_path).sort_values("step").reset_index(drop=True)})
    return runs


def outcome_columns(design, runs):
    """val_loss, the output side of each sort metric, and the extra outcomes eval.py wrote in every run."""
    present = set.intersection(*(set(r["summary"].columns) for r in runs))
    wanted = ["val_loss"] + [f"out_{m}" for m in design["metrics"]] + EXTRA_OUTCOMES
    return [c for c in dict.fromkeys(wanted) if c in present]


# ---- checks ----

def multiset_hash(segments):
    """Order-free fingerprint of the segments a run trained on: sha256 of the sorted (story_id, start,
    n_tokens) triples."""
    triples = np.stack([segments["story_id"], segments["start"], segments["n_tokens"]], axis=1).astype("<i8")
    return hashlib.sha256(triples[np.lexsort(triples.T[::-1])].tobytes()).hexdigest()


def check_same_multiset(runs):
    """Every run must have trained on exactly the same multiset of segments (else the orders are not
    comparable). Returns a record for experiment.json / the report."""
    hashes = {r["name"]: multiset_hash(r["segments"]) for r in runs}
    counts = {r["name"]: int(len(r["segments"])) for r in runs}
    reference = runs[0]["name"]
    mismatched = [name for name, h in hashes.items() if h != hashes[reference]]
    return {"same_multiset": not mismatched, "reference_run": reference, "multiset_sha256": hashes[reference],
            "n_story_ids": counts[reference], "n_distinct_stories": int(len(np.unique(runs[0]["story_ids"]))),
            "mismatched_runs": mismatched, "per_run": {n: {"sha256": hashes[n], "n": counts[n]} for n in hashes}}


def order_correlations(runs, design):
    """Spearman rho between position in the training stream and each sort metric, per run: about +1 for
    ascending, -1 for descending, about 0 for random — shows each condition got the order it asked for."""
    meta = read_metadata(design["dataset"], design["vocab_size"],
                         columns=["story_id"] + design["metrics"]).set_index("story_id")
    rhos = {}
    for r in runs:
        position = np.arange(len(r["story_ids"]))
        for metric in design["metrics"]:
            values = meta[metric].reindex(r["story_ids"]).to_numpy(dtype=np.float64)
            ok = np.isfinite(values)
            rho = sps.spearmanr(position[ok], values[ok]).statistic if ok.sum() > 2 else np.nan
            rhos[(r["name"], metric)] = float(rho)
    return rhos


# ---- across time ----

def curves_table(runs, outcomes, design):
    """Mean ± 95% CI over seeds per condition × outcome × step (runs of one experiment share the schedule)."""
    rows = []
    for condition, group in _by_condition(runs).items():
        for column in outcomes + [f"in_{m}" for m in design["metrics"]]:
            frames = [r["summary"][["step", "tokens_seen", column]].set_index("step")[column]
                      for r in group if column in r["summary"]]
            if not frames:
                continue
            wide = pd.concat(frames, axis=1)
            tokens = group[0]["summary"].set_index("step")["tokens_seen"].reindex(wide.index)
            mean, lo, hi = stats.curve_band(wide.to_numpy().T)
            for i, step in enumerate(wide.index):
                rows.append({"condition": condition, "column": column, "step": int(step),
                             "tokens_seen": tokens.iloc[i], "n_seeds": int(np.isfinite(wide.iloc[i]).sum()),
                             "mean": mean[i], "ci_lo": lo[i], "ci_hi": hi[i]})
    return pd.DataFrame(rows)


def plateau_steps(runs, outcomes):
    """Plateau step of each run's outcome curve (NaN unless measures.saturation classifies it plateaued)."""
    from measures.saturation import METHOD, classify_curve
    plateaus = {}
    for r in runs:
        for column in outcomes:
            s = r["summary"][["step", column]].dropna()
            if len(s) < 3:
                continue
            result = classify_curve(s["step"].to_numpy(), s[column].to_numpy())
            plateaus[(r["name"], column)] = result.plateau_step if result.cls == "plateaued" else np.nan
    return plateaus, f"measures.saturation.classify_curve ({METHOD})"


# ---- end point ----

def _by_condition(runs):
    groups = {}
    for r in runs:
        groups.setdefault(r["condition"], []).append(r)
    return groups


def final_values(runs, outcomes):
    return {(r["name"], c): float(r["summary"][c].dropna().iloc[-1]) if r["summary"][c].notna().any() else np.nan
            for r in runs for c in outcomes}


def results_table(runs, outcomes, finals, plateaus, baseline):
    groups = _by_condition(runs)
    rows = []
    for condition, group in groups.items():
        for column in outcomes:
            values = [finals[(r["name"], column)] for r in group]
            base = [finals[(r["name"], column)] for r in groups[baseline]]
            row = {"condition": condition, "order": group[0]["sampler"], "sort_metric": group[0]["sort_by"] or "",
                   "outcome": column, **stats.compare_to_baseline(values, base)}
            if condition == baseline:
                row.update(diff_vs_baseline=0.0, diff_ci_lo=np.nan, diff_ci_hi=np.nan, p_perm=np.nan,
                           hedges_g=np.nan)
            steps = [plateaus.get((r["name"], column), np.nan) for r in group]
            p_mean, p_lo, p_hi = stats.mean_ci(steps)
            row.update(plateau_step_mean=p_mean, plateau_ci_lo=p_lo, plateau_ci_hi=p_hi,
                       n_saturated=int(np.isfinite(steps).sum()))
            rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("p_perm") + 1, "q_fdr", stats.fdr_qvalues(table["p_perm"]))
    return table


# ---- final-model divergence ----

@torch.no_grad()
def final_model_outputs(runs):
    """For each run's last checkpoint: next-token logits on the probe set (val-story probes of the first
    run, fed to every model) and the token embedding matrix."""
    from modelling.checkpoints import list_checkpoints, load_model
    probes = json.loads((runs[0]["dir"] / "attn_probes.json").read_text())
    probe_tokens = [p["tokens"] for p in probes if p.get("story_id") is not None] or [p["tokens"] for p in probes]
    outputs = {}
    for r in tqdm(runs, desc="final models", unit="run", leave=False):
        step, path = list_checkpoints(r["dir"])[-1]
        model, _ = load_model(path)
        model.eval()
        max_len = model.params.max_seq_len
        logits = []
        for tokens in probe_tokens:
            x = torch.tensor(tokens[:max_len], dtype=torch.long)[None]
            logits.append(model(x)[0].float().numpy())  # [T, vocab]: every position's next-token logits
        embedding = model.tok_embeddings.weight.detach().float().numpy()
        outputs[r["name"]] = {"step": step, "logits": np.concatenate(logits), "embedding": embedding}
    return outputs


def divergence_tables(runs, outputs, baseline):
    """Pairwise symmetric KL and Procrustes similarity between final models, summarised per condition:
    same_init (run i vs baseline run i: the order differs, the init is shared — descriptive, the paired
    design has no noise floor for it), cross_init (run i vs baseline run j, i != j: init and order differ) and
    within (the condition's own seeds). The baseline's `within` pairs also differ in init and order, so it is
    the noise floor for every condition's `cross_init`: a ratio above 1 is an order effect beyond seed noise."""
    names = [r["name"] for r in runs]
    n = len(names)
    kl = np.zeros((n, n))
    sim = np.ones((n, n))
    pairs = list(itertools.combinations(range(n), 2))
    for i, j in tqdm(pairs, desc="model pairs", unit="pair", leave=False):
        a, b = outputs[names[i]], outputs[names[j]]
        kl[i, j] = kl[j, i] = 0.5 * (stats.kl_divergence(a["logits"], b["logits"]) +
                                     stats.kl_divergence(b["logits"], a["logits"]))
        sim[i, j] = sim[j, i] = stats.procrustes_similarity(a["embedding"], b["embedding"])[0]
    index = {name: k for k, name in enumerate(names)}
    groups = _by_condition(runs)
    base = groups[baseline]
    rows = []
    for condition, group in groups.items():
        row = {"condition": condition}
        for label, matrix in (("kl", kl), ("procrustes", sim)):
            def dist(a, b):
                return matrix[index[a["name"]], index[b["name"]]]
            same_init = [dist(r, b) for r in group for b in base if b["init_seed"] == r["init_seed"] and b is not r]
            within = [dist(a, b) for a, b in itertools.combinations(group, 2)]
            cross_init = within if condition == baseline else \
                [dist(r, b) for r in group for b in base if b["init_seed"] != r["init_seed"]]
            for key, values in (("same_init", same_init), ("cross_init", cross_init), ("within", within)):
                mean, lo, hi = stats.mean_ci(values)
                row.update({f"{label}_{key}": mean, f"{label}_{key}_ci_lo": lo, f"{label}_{key}_ci_hi": hi,
                            f"{label}_{key}_n_pairs": len(values)})
        rows.append(row)
    table = pd.DataFrame(rows)
    floor = table.set_index("condition").loc[baseline, "kl_within"]
    table["kl_cross_init_over_noise"] = table["kl_cross_init"] / floor if floor > 0 else np.nan
    return table, pd.DataFrame(kl, index=names, columns=names), pd.DataFrame(sim, index=names, columns=names)


# ---- figures ----

def condition_styles(runs, baseline):
    """One colour per sort metric (solid ascending, dashed descending); the baseline black."""
    colors = plt.get_cmap("tab10").colors
    metrics = list(dict.fromkeys(r["sort_by"] for r in runs if r["sort_by"]))
    styles = {}
    for r in runs:
        if r["condition"] == baseline:
            styles[r["condition"]] = dict(color="black", linestyle="-")
        else:
            styles[r["condition"]] = dict(color=colors[metrics.index(r["sort_by"]) % 10],
                                          linestyle="-" if r["sampler"] == "sort_ascending" else "--")
    return styles


def _save(fig, path):
    save_png(fig, path, dpi=FIG_DPI)


def plot_curves(curves, columns, styles, results, path, title):
    n = len(columns)
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        ax.set_title(column, fontsize=10)
        if not curves.loc[curves.column == column, "mean"].notna().any():  # e.g. readability of degenerate text
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
            continue
        for condition, style in styles.items():
            c = curves[(curves.condition == condition) & (curves.column == column)]
            if c.empty:
                continue
            ax.plot(c.step, c["mean"], label=condition, lw=1.4, **style)
            ax.fill_between(c.step, c.ci_lo, c.ci_hi, color=style["color"], alpha=0.12, lw=0)
            if results is not None:
                hit = results[(results.condition == condition) & (results.outcome == column)]
                if len(hit) and np.isfinite(hit.plateau_step_mean.iloc[0]):
                    ax.axvline(hit.plateau_step_mean.iloc[0], color=style["color"], ls=":", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # plain numbers: no mathtext to lay out
        ax.set_xlabel("step")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_endpoint(results, outcomes, styles, baseline, path):
    fig, axes = plt.subplots(1, len(outcomes), figsize=(3.4 * len(outcomes), 0.45 * len(styles) + 1.6),
                             squeeze=False)
    conditions = [c for c in styles if c != baseline]
    for ax, column in zip(axes.flat, outcomes):
        for y, condition in enumerate(conditions):
            hit = results[(results.condition == condition) & (results.outcome == column)].iloc[0]
            lo, hi = hit.diff_ci_lo, hit.diff_ci_hi
            err = [[hit.diff_vs_baseline - lo], [hi - hit.diff_vs_baseline]] if np.isfinite(lo) else None
            ax.errorbar(hit.diff_vs_baseline, y, xerr=err, fmt="o", color=styles[condition]["color"], capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(conditions)))
        ax.set_yticklabels(conditions if ax is axes.flat[0] else [], fontsize=8)
        ax.set_title(f"Δ {column}", fontsize=9)
        ax.invert_yaxis()
    fig.suptitle(f"final value − {baseline} baseline (mean, 95% bootstrap CI over seeds)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_saturation_compare(runs, design, path):
    """The saturation figure (measures.sat_figure.plot_curves: raw-unit output and input curves, classes
    marked) for the first init seed of every condition -> path."""
    from measures.sat_figure import plot_curves as sat_plot_curves
    seed = design["init_seeds"][0]
    first = {r["condition"]: r["summary"] for r in runs if r["init_seed"] == seed}
    return sat_plot_curves(first, path, "step", design["metrics"],
                           title=f"saturation curves, init seed {seed}, all orders")


def plot_divergence(kl, sim, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    for ax, matrix, title, cmap in ((axes[0], kl, "symmetric KL on probe set (nats/token)", "viridis"),
                                    (axes[1], sim, "embedding Procrustes similarity", "viridis_r")):
        im = ax.imshow(matrix.to_numpy(), cmap=cmap)
        ax.set_xticks(range(len(matrix)))
        ax.set_yticks(range(len(matrix)))
        ax.set_xticklabels(matrix.columns, rotation=90, fontsize=6)
        ax.set_yticklabels(matrix.index, fontsize=6)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


# ---- report ----

def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.0f}"


def _ci(mean, lo, hi, digits=3):
    return f"{_fmt(mean, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def write_report(exp_dir, design, runs, check, rhos, results, divergence, plateau_note, outcomes):
    baseline = design["baseline"]
    n_seeds = len(design["init_seeds"])
    min_p = stats.min_permutation_pvalue(n_seeds, n_seeds)
    cfg = json.loads((runs[0]["dir"] / "config.json").read_text())["config"]
    steps = int(runs[0]["summary"]["step"].max())
    lines = [f"# Durability experiment `{design['name']}`", "",
             "**Question.** Does the same training data in a different order give a different end model? "
             "Every run below trained on exactly the same multiset of stories; only the order (and the seeds) "
             "differ.", "",
             "## Design", "",
             f"- Data: `{design['dataset']}`, vocab {design['vocab_size']}, one fixed selection of "
             f"{check['n_distinct_stories']} train stories × {design['epochs']} epoch(s) = {check['n_story_ids']} "
             f"segments (every token of every story trained once per epoch), {steps} optimizer steps per run.",
             f"- Model: dim {cfg.get('dim')}, {cfg.get('n_layers')} layers, {cfg.get('n_heads')} heads, "
             f"max_seq_len {cfg.get('max_seq_len')}, batch {cfg.get('batch_size')}, lr {cfg.get('learning_rate')} "
             f"(preset `{design['preset']}`).",
             f"- Conditions: `{baseline}` (baseline: random order, data-order seeds {design['data_seeds']}), and "
             f"ascending / descending by {', '.join(f'`{m}`' for m in design['metrics'])}; each with weight-init "
             f"seeds {design['init_seeds']} (run i of every condition shares init seed i) → {len(runs)} runs.",
             f"- Every run: `modelling/train.py` then `eval.py` (greedy generations of "
             f"{design['eval'].get('max_new_tokens')} tokens for {design['eval'].get('n_prompts')} prompts at "
             f"every checkpoint)." + compute_line(exp_dir), "",
             "## Checks", "",
             f"- Same multiset of segments in all {len(runs)} runs (from the batch logs): "
             f"**{'yes' if check['same_multiset'] else 'NO — ' + ', '.join(check['mismatched_runs'])}** "
             f"(sha256 of sorted segments `{check['multiset_sha256'][:16]}…`, {check['n_story_ids']} segments).",
             "- Order actually applied — Spearman ρ between position in the stream and the sort metric "
             "(mean over seeds):", "",
             "| condition | " + " | ".join(design["metrics"]) + " |",
             "|---|" + "---|" * len(design["metrics"])]
    for condition, group in _by_condition(runs).items():
        cells = [_fmt(np.mean([rhos[(r["name"], m)] for r in group]), 2) for m in design["metrics"]]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    lines += ["", "## End point (final checkpoint)", "",
              f"Mean over {n_seeds} seeds [95% t-interval]; Δ = condition − baseline with a 95% percentile "
              f"bootstrap interval (seeds resampled within each group); p = exact two-sided permutation test of "
              f"the means (smallest possible p with {n_seeds} vs {n_seeds} seeds: {min_p:.2g}); q = "
              f"Benjamini–Hochberg over all {int(results.p_perm.notna().sum())} tests; g = Hedges' g.", ""]
    for column in outcomes:
        lines += [f"**{column}**", "", "| condition | final | Δ vs baseline | p | q | g | plateau step |",
                  "|---|---|---|---|---|---|---|"]
        for _, row in results[results.outcome == column].iterrows():
            delta = "–" if row.condition == baseline else _ci(row.diff_vs_baseline, row.diff_ci_lo, row.diff_ci_hi)
            plateau = (f"not plateaued (0/{row.n_seeds})" if row.n_saturated == 0 else
                       _ci(row.plateau_step_mean, row.plateau_ci_lo, row.plateau_ci_hi)
                       + f" ({row.n_saturated}/{row.n_seeds} plateaued)")
            lines.append(f"| {row.condition} | {_ci(row['mean'], row.ci_lo, row.ci_hi)} | {delta} | "
                         f"{_fmt(row.p_perm, 2)} | {_fmt(row.q_fdr, 2)} | {_fmt(row.hedges_g, 2)} | {plateau} |")
        lines.append("")
    lines += ["## Final-model divergence", "",
              "Symmetric KL between next-token distributions on the probe set (nats/token; 0 = same "
              "predictions) and Procrustes similarity of the token embeddings after orthogonal alignment "
              "(1 = same up to rotation); mean over model pairs. *same init*: run i vs baseline run i (only the "
              "order differs); *cross init*: run i vs baseline run j ≠ i (init and order differ); *within*: the "
              "condition's own seeds. The baseline's *within* (init and order differ) is the noise floor for "
              "*cross init*; the ratio is KL cross init / that floor.", "",
              "| condition | KL same init | KL cross init | KL within | ratio to noise | sim same init | "
              "sim cross init | sim within |", "|---|---|---|---|---|---|---|---|"]
    for _, row in divergence.iterrows():
        lines.append(f"| {row.condition} | {_fmt(row.kl_same_init)} | {_fmt(row.kl_cross_init)} | "
                     f"{_fmt(row.kl_within)} | {_fmt(row.kl_cross_init_over_noise, 3)} | "
                     f"{_fmt(row.procrustes_same_init)} | {_fmt(row.procrustes_cross_init)} | "
                     f"{_fmt(row.procrustes_within)} |")
    lines += ["", "## What this shows", ""] + findings(design, results, divergence, outcomes, min_p) + [
        "", "## Figures", "",
        "- `figures/curves.png` — outcome curves per condition, mean ± 95% CI over seeds; dotted lines: mean "
        "plateau step.",
        "- `figures/input_order.png` — the input side: mean sort metric of the stories trained on in each "
        "checkpoint interval (the curriculum each condition saw).",
        "- `figures/endpoint.png` — final difference from the baseline with bootstrap CIs.",
        "- `figures/divergence.png` — pairwise KL and embedding similarity between all final models, grouped "
        "by init seed (blocks on the diagonal = runs that share their init).",
        "- `figures/sat_compare.png` — the saturation figure (measures/sat_figure.py: raw units, classes "
        "marked) of the first "
        "init seed's run of every condition, overlaid.", "",
        "![curves](figures/curves.png)", "", "![input order](figures/input_order.png)", "",
        "![end point](figures/endpoint.png)", "", "![divergence](figures/divergence.png)", "",
        "![saturation curves](figures/sat_compare.png)", "",
        f"Plateau steps: {plateau_note}.", "",
        "Reproduce: `" + provenance()["command"].replace("experiment_durability.py",
                                                          "python experiments/durability/experiment_durability.py", 1)
        + "`", ""]
    atomic_write_text(Path(exp_dir) / "report.md", "\n".join(lines))


def compute_line(exp_dir):
    """' Wall time per run: …' from experiment.json's status (empty when unknown)."""
    try:
        status = json.loads((Path(exp_dir) / "experiment.json").read_text())["status"].values()
    except (OSError, ValueError, KeyError):
        return ""
    train = [s["train_s"] for s in status if "train_s" in s]
    evals = [s["eval_s"] for s in status if "eval_s" in s]
    if not train or not evals:
        return ""
    return (f" Wall time per run (this machine, shared): train {np.mean(train):.0f} s, eval {np.mean(evals):.0f} s "
            f"(mean over {len(train)} runs).")


def findings(design, results, divergence, outcomes, min_p):
    """Plain-language reading of the numbers, including their limits."""
    baseline = design["baseline"]
    out = []
    effects = results[(results.condition != baseline) & results.diff_ci_lo.notna()]
    clear = effects[(effects.diff_ci_lo > 0) | (effects.diff_ci_hi < 0)]
    n_fdr = int((effects.q_fdr < 0.05).sum())
    out.append(f"- {len(clear)} of {len(effects)} condition × outcome differences have a 95% bootstrap interval "
               f"that excludes 0; {n_fdr} survive{'s' if n_fdr == 1 else ''} the Benjamini–Hochberg correction "
               f"(q < 0.05)" + (":" if len(clear) else "."))
    for _, row in clear.iterrows():
        out.append(f"  - `{row.condition}` {row.outcome}: Δ = {_ci(row.diff_vs_baseline, row.diff_ci_lo, row.diff_ci_hi)}"
                   f" (g = {_fmt(row.hedges_g, 2)}, p = {_fmt(row.p_perm, 2)}, q = {_fmt(row.q_fdr, 2)})")
    if "val_loss" in outcomes:
        vl = results[results.outcome == "val_loss"].set_index("condition")["mean"]
        worst = vl.drop(baseline).idxmax() if len(vl) > 1 else None
        if worst:
            out.append(f"- Final validation loss: baseline {_fmt(vl[baseline])}; worst order `{worst}` "
                       f"{_fmt(vl[worst])} ({_fmt(100 * (vl[worst] / vl[baseline] - 1), 2)}% relative).")
    base_div = divergence.set_index("condition").loc[baseline]
    sorted_div = divergence[divergence.condition != baseline]
    if len(sorted_div) and np.isfinite(sorted_div.kl_cross_init_over_noise).any():
        ratio = sorted_div.kl_cross_init_over_noise
        share = float((sorted_div.kl_same_init / sorted_div.kl_cross_init).mean())
        inside = int(((sorted_div.kl_cross_init >= base_div.kl_within_ci_lo) &
                      (sorted_div.kl_cross_init <= base_div.kl_within_ci_hi)).sum())
        out.append(f"- Final models of the sorted orders differ from baseline models of another init seed by "
                   f"{_fmt(ratio.min(), 3)}–{_fmt(ratio.max(), 3)}× the KL between baseline seeds "
                   f"({_fmt(base_div.kl_within)} nats/token, 95% CI [{_fmt(base_div.kl_within_ci_lo)}, "
                   f"{_fmt(base_div.kl_within_ci_hi)}]); above 1 means the order left a trace beyond seed noise — "
                   f"{inside} of {len(sorted_div)} sorted conditions lie inside that interval. With the init shared, a sorted run's KL to the baseline is "
                   f"{_fmt(sorted_div.kl_same_init.min())}–{_fmt(sorted_div.kl_same_init.max())} nats/token, "
                   f"{_fmt(share, 2)}× its cross-init KL: sharing the weight init removes about "
                   f"{_fmt(100 * (1 - share), 2)}% of the divergence, the rest is what a different order (of the "
                   f"same stories) leaves. (The paired design has no same-init, other-random-order pair, so there "
                   f"is no noise floor for this part: descriptive.)")
    out += [f"- Limits: {len(design['init_seeds'])} seeds per condition, so intervals are wide and no permutation "
            f"p can fall below {min_p:.2g}; the bootstrap over so few seeds under-covers. Many outcomes × "
            f"conditions are tested (see q). One small model, one corpus, one selection size and one epoch — "
            f"the result says nothing about other scales or about longer training after the curriculum ends.",
            "- Sorting by a metric also changes which stories fall in the last steps (a recency effect at the "
            "end of a short run with decaying LR); the curves show whether differences appear early and wash "
            "out (durable = still present at the end)."]
    return out


# ---- entry ----

def analyse(exp_dir, design, record=lambda summary: None):
    """All checks, tables, figures and the report; returns the summary for experiment.json. `record` saves
    the multiset check before a failed check stops the analysis, so the evidence is kept."""
    exp_dir = Path(exp_dir)
    baseline = design["baseline"]
    runs = load_runs(exp_dir, design)
    check = check_same_multiset(runs)
    summary = {"same_multiset": check["same_multiset"], "multiset": check}
    record(summary)
    if not check["same_multiset"]:
        raise UserError(f"runs {', '.join(check['mismatched_runs'])} trained on a different multiset of story ids "
                        f"than {check['reference_run']} — the orders are not comparable; check train.py's "
                        f"selection settings (n_stories, epochs) and re-run those runs")
    rhos = order_correlations(runs, design)
    outcomes = outcome_columns(design, runs)
    finals = final_values(runs, outcomes)
    plateaus, plateau_note = plateau_steps(runs, outcomes)
    results = results_table(runs, outcomes, finals, plateaus, baseline)
    curves = curves_table(runs, outcomes, design)
    outputs = final_model_outputs(runs)
    divergence, kl, sim = divergence_tables(runs, outputs, baseline)

    per_run = pd.DataFrame([{"run": r["name"], "condition": r["condition"], "init_seed": r["init_seed"],
                             "data_seed": r["data_seed"], "final_step": outputs[r["name"]]["step"],
                             "n_story_ids": len(r["story_ids"]), "multiset_sha256": multiset_hash(r["segments"]),
                             **{f"rho_{m}": rhos[(r["name"], m)] for m in design["metrics"]},
                             **{f"final_{c}": finals[(r["name"], c)] for c in outcomes}} for r in runs])
    for name, table in (("runs.csv", per_run), ("results.csv", results), ("curves.csv", curves),
                        ("divergence.csv", divergence)):
        with atomic_path(exp_dir / name, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)

    styles = condition_styles(runs, baseline)
    figures = exp_dir / "figures"
    plot_curves(curves, outcomes, styles, results, figures / "curves.png",
                "outcomes per checkpoint (mean ± 95% CI over seeds)")
    inputs = [f"in_{m}" for m in design["metrics"] if (curves.column == f"in_{m}").any()]
    if inputs:
        plot_curves(curves, inputs, styles, None, figures / "input_order.png",
                    "input: mean sort metric of the stories in each checkpoint interval")
    plot_endpoint(results, outcomes, styles, baseline, figures / "endpoint.png")
    plot_saturation_compare(runs, design, figures / "sat_compare.png")
    by_seed = [r["name"] for r in sorted(runs, key=lambda r: design["init_seeds"].index(r["init_seed"]))]
    plot_divergence(kl.loc[by_seed, by_seed], sim.loc[by_seed, by_seed], figures / "divergence.png")
    write_report(exp_dir, design, runs, check, rhos, results, divergence, plateau_note, outcomes)
    summary.update(outcomes=outcomes, plateau_method=plateau_note,
                   n_clear_effects=int(((results.diff_ci_lo > 0) | (results.diff_ci_hi < 0)).sum()))
    return summary
