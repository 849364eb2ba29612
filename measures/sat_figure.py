"""The saturation figure: a few panels per metric family, raw units, output and input of the same metric on one
axis, 95% CI bands where summary.csv has <column>_lo/_hi, log-step x axis, each curve's class from
measures.saturation marked (plateau: dotted line at the knee; improving / flat / too noisy: in the legend)."""
import numpy as np
import pandas as pd

from common.errors import UserError
from measures.saturation import classify_curve, curve_columns, ramp_curve

# panel rows by family; the default panels are the first metrics of each family present in summary.csv
FAMILIES = {
    "loss": ["val_loss", "ppl_ref", "prefix_token_acc", "first_divergence", "bleu"],
    "in-context learning": ["icl_context_gain", "icl_score", "induction_max"],
    "text quality": ["flesch_ease", "mtld", "spelling_errors", "mean_sentence_len", "rep_2", "distinct2", "ttr",
                     "fk_grade", "n_tokens", "n_words", "rougeL"],
    "sentiment / toxicity": ["sentiment", "sentiment_end", "toxicity", "tox_mass", "toxic_count"],
    "bias / gender": ["bias_seen", "bias_amplification", "gen_stereo_rate", "gender_balance", "occ_stereo", "occ_anti", "female_terms",
                      "male_terms"],
}
PER_FAMILY = 4
CLASS_STYLE = {"plateaued": "plateau", "improving": "improving", "flat": "flat", "too_noisy": "too noisy"}
KIND_COLOR = {"out": "tab:blue", "in": "tab:orange", "cum": "tab:red"}


def family_of(metric):
    metric = metric.removeprefix("out_")
    for family, names in FAMILIES.items():
        if metric in names or (metric.startswith(("bias", "occ_")) and family == "bias / gender"):
            return family
    return "other"


def default_panels(summary):
    """[(family, panel)] with at most PER_FAMILY panels per family, in FAMILIES order."""
    panels = curve_columns(summary)
    by_name = {p[0].removeprefix("out_"): p for p in panels}  # output-only columns keep their out_ title
    chosen = []
    for family, names in FAMILIES.items():
        chosen += [(family, by_name[n]) for n in names if n in by_name][:PER_FAMILY]
    return chosen


def _band(summary, col):
    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo in summary and hi in summary:
        return pd.to_numeric(summary[lo], errors="coerce").to_numpy(float), \
            pd.to_numeric(summary[hi], errors="coerce").to_numpy(float)
    return None


def plot_curves(runs, path, x="step", metrics=None, title=None):
    """Panels by family (rows) of raw-unit curves vs x ('step' or 'tokens_seen', log axis): output (solid, CI
    band), input interval (thin) and cumulative (dashed) on the same axis; classes from classify_curve.
    runs: {label: summary DataFrame}; several runs are overlaid one colour each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common.io import save_png

    first = next(iter(runs.values()))
    if metrics:
        panels = [(family_of(p[0]), p) for p in curve_columns(first, metrics)]
    else:
        panels = default_panels(first)
    if not panels:
        raise UserError("no metric columns to plot in summary.csv — re-run eval.py")
    families = list(dict.fromkeys(f for f, _ in panels))
    ncols = max(sum(1 for f, _ in panels if f == fam) for fam in families)
    fig, axes = plt.subplots(len(families), ncols, figsize=(4.3 * ncols, 3.3 * len(families)), squeeze=False)
    multi = len(runs) > 1
    run_colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    used = {fam: 0 for fam in families}
    for family, (name, out_col, in_col, cum_col) in panels:
        row = families.index(family)
        ax = axes[row, used[family]]
        used[family] += 1
        for r, (label, summary) in enumerate(runs.items()):
            if x not in summary:
                raise UserError(f"summary of {label} has no {x} column — re-run eval.py")
            xs = summary[x].to_numpy(float)
            pos = xs > 0  # log axis
            steps = summary["step"].to_numpy(float)
            counts = summary["n_tokens_interval"].to_numpy(float) if "n_tokens_interval" in summary else None
            for kind, col, style, width in (("in", in_col, "-", 0.9), ("cum", cum_col, "--", 1.0),
                                            ("out", out_col, "-", 1.8)):
                if col is None or col not in summary:
                    continue
                y = pd.to_numeric(summary[col], errors="coerce").to_numpy(float)
                color = run_colors[r % len(run_colors)] if multi else KIND_COLOR[kind]
                side = {"out": "output" if in_col else name, "in": "input/interval", "cum": "input/cumulative"}[kind]
                text = (f"{label} " if multi else "") + side
                if kind != "cum":  # running means are drawn, not classified
                    res = classify_curve(steps, y, counts if kind == "in" else None)
                    text += f": {CLASS_STYLE[res.cls]}"
                    if res.fit and kind == "out":  # the fitted ramp the class was read from, faint
                        seen = pos & np.isfinite(y)
                        ax.plot(xs[seen], ramp_curve(res.fit, steps[seen]), color="grey", lw=0.8, ls="-.", alpha=0.6)
                    if res.cls in ("improving", "too_noisy") and pos.any():  # marked at the last checkpoint
                        last = np.flatnonzero(pos & np.isfinite(y))
                        if len(last):
                            ax.plot(xs[last[-1]], y[last[-1]], ls="none", color=color, ms=8,
                                    marker=">" if res.cls == "improving" else "x")
                    if res.cls == "plateaued":
                        at = res.plateau_step if x == "step" else np.interp(
                            np.log10(res.plateau_step), np.log10(steps[steps > 0]), xs[steps > 0])
                        text += f" @ {res.plateau_step:.0f}"
                        ax.axvline(at, color=color, ls=":", lw=1.3)
                        ax.plot([at], [np.interp(np.log10(at), np.log10(xs[pos]), y[pos])], marker="v",
                                color=color, ms=8, ls="none")
                band = _band(summary, col)
                if band is not None:
                    ax.fill_between(xs[pos], band[0][pos], band[1][pos], color=color, alpha=0.18, lw=0)
                ax.plot(xs[pos], y[pos], style, color=color, lw=width, marker="o" if kind == "out" else None,
                        ms=2.5, alpha=0.65 if kind == "in" else 0.95, label=text)
        ax.set_xscale("log")
        ax.set_title(f"{family}: {name}", fontsize=9)
        ax.set_xlabel("tokens seen" if x == "tokens_seen" else "step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
        ax.grid(alpha=0.3)
    for row, fam in enumerate(families):
        for col in range(used[fam], ncols):
            axes[row, col].axis("off")
    fig.suptitle(title or "saturation: raw units, log step; output (solid, 95% CI band), input per interval "
                          "(thin), cumulative (dashed); plateau: dotted line + triangle, improving: >, too noisy: x; "
                          "grey = fitted ramp",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    save_png(fig, path, dpi=90)
    return path
