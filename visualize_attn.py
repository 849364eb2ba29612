"""Attention maps per checkpoint and per-head attention statistics across training.

    python visualize_attn.py [--out_dir out/demo] [--probe NAME] [--steps 64 512 ...] [--force]

Reads  the attention maps each checkpoint stored for the run's fixed probe set (ckpt['probe_attn'], captured
       in a real forward pass at that step; attn_probes.json holds their tokens) via modelling/checkpoints.py.
Writes out/RUN/visualize/attn_step000512.png   layers x heads grid for one probe (default: the first
                                               validation-story probe), token labels when it is short
       out/RUN/visualize/attn_stats.png         per-head statistics vs step
       out/RUN/tables/attn_stats.csv            step, layer, head, entropy, prev_token, induction

Statistics per head (query positions t >= 1; attention row A[t] sums to 1 over keys 0..t):
  entropy     mean over the story probes' rows of -sum_j A[t,j] ln A[t,j]  (nats; 0 = one key, ln(t+1) = uniform)
  prev_token  mean over the story probes of A[t, t-1]                       (1 = always attends to the previous token)
  induction   on the repeated random-token probe ("induction": BOS + block + block): for each query whose token
              occurred earlier at j, the attention on j+1 (the token that followed it last time), averaged
              (1 = a perfect induction head, ~1/t = uniform)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.io import atomic_path, atomic_write_json, provenance, save_png  # noqa: E402
from common.paths import DEFAULT_RUN, add_root_argument, apply_root, default_run_dir  # noqa: E402

LABEL_MAX = 32      # token labels on the grid when the probe has at most this many positions
GAMMA = 0.5         # colour scale: PowerNorm(gamma) so weak attention stays visible
INDUCTION_NAMES = ("induction",)


def attn_stats(attn):
    """Per-head (entropy, prev_token) of one probe's attention [L, H, T, T] (query t attends keys <= t)."""
    attn = np.asarray(attn, dtype=np.float64)
    rows = attn[:, :, 1:, :]  # t >= 1
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(rows > 0, rows * np.log(rows), 0.0)
    entropy = -plogp.sum(-1).mean(-1)
    t = np.arange(1, attn.shape[2])
    prev = attn[:, :, t, t - 1].mean(-1)
    return entropy, prev


def induction_score(attn, tokens):
    """Per-head mean attention from each query to the position after the query token's earlier occurrences."""
    attn = np.asarray(attn, dtype=np.float64)
    T = attn.shape[-1]
    tokens = list(tokens)[:T]
    scores, n = np.zeros(attn.shape[:2]), 0
    for t in range(1, T):
        targets = [j + 1 for j in range(t) if tokens[j] == tokens[t] and j + 1 <= t]
        if targets:
            scores += attn[:, :, t, targets].sum(-1)
            n += 1
    return scores / n if n else np.full(attn.shape[:2], np.nan)


def checkpoint_stats(probe_attn, probes):
    """DataFrame layer, head, entropy, prev_token, induction for one checkpoint's probe attention."""
    story = [p for p in probes if p.get("story_id") is not None and p["name"] in probe_attn]
    induct = [p for p in probes if p["name"] in INDUCTION_NAMES and p["name"] in probe_attn]
    if not story and not induct:
        raise UserError("the checkpoint holds no attention for the run's probes (attn_probes.json) — re-train with "
                        "instrument=True")
    ent, prev = [], []
    for p in story:
        e, pr = attn_stats(probe_attn[p["name"]].float().numpy())
        ent.append(e)
        prev.append(pr)
    ref = probe_attn[(story or induct)[0]["name"]]
    shape = tuple(ref.shape[:2])
    entropy = np.mean(ent, 0) if ent else np.full(shape, np.nan)
    prev_token = np.mean(prev, 0) if prev else np.full(shape, np.nan)
    induction = (induction_score(probe_attn[induct[0]["name"]].float().numpy(), induct[0]["tokens"])
                 if induct else np.full(shape, np.nan))
    layer, head = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "entropy": entropy.ravel(),
                         "prev_token": prev_token.ravel(), "induction": induction.ravel()})


def token_labels(tokens, tokenizer):
    if tokenizer is None:
        return [str(t) for t in tokens]
    return [tokenizer.id_to_piece(int(t)).replace("\u2581", "_") for t in tokens]


def plot_grid(attn, labels, path, title):
    """Layers x heads grid of one probe's attention maps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    n_layers, n_heads, T, _ = attn.shape
    size = 2.4 if T > LABEL_MAX else 3.2
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(size * n_heads + 0.8, size * n_layers + 0.6),
                             squeeze=False)
    norm = PowerNorm(GAMMA, vmin=0.0, vmax=1.0)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")  # the causal mask (keys after the query) is left blank
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            im = ax.imshow(np.ma.masked_where(future, attn[layer, head]), cmap=cmap, norm=norm,
                           interpolation="nearest")
            if T <= LABEL_MAX and labels is not None:
                ax.set_xticks(range(T))
                ax.set_yticks(range(T))
                ax.set_xticklabels(labels[:T], rotation=90, fontsize=4)
                ax.set_yticklabels(labels[:T], fontsize=4)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}\nquery", fontsize=9)
            if layer == n_layers - 1:
                ax.set_xlabel("key", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label=f"attention (PowerNorm gamma={GAMMA})")
    fig.suptitle(title, fontsize=11)
    save_png(fig, path, dpi=80)


def plot_stats(stats, path, title):
    """Entropy, previous-token and induction score of every head vs step (one colour per layer)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("entropy", "attention entropy (nats)"), ("prev_token", "previous-token score"),
            ("induction", "induction score")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("viridis")
    n_layers = int(stats["layer"].max()) + 1
    for ax, (col, label) in zip(axes, cols):
        for (layer, head), g in stats.groupby(["layer", "head"]):
            color = cmap(layer / max(n_layers - 1, 1))
            ax.plot(g["step"], g[col], color=color, lw=1.0, alpha=0.8, marker="o", ms=2,
                    label=f"layer {layer}" if head == 0 else None)
        last = stats[stats["step"] == stats["step"].max()]
        if last[col].notna().any():  # name the head that ends highest
            best = last.loc[last[col].idxmax()]
            ax.annotate(f"L{int(best['layer'])}H{int(best['head'])}", (best["step"], best[col]), fontsize=8,
                        xytext=(4, 0), textcoords="offset points")
        if stats["step"].min() > 0:
            ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_png(fig, path, dpi=90)


def load_tokenizer(config):
    """The run's tokenizer for token labels, or None (labels fall back to ids) when the dataset is absent."""
    try:
        from tokenization.dataset import TokenizedDataset
        cfg = config.get("config", config)
        return TokenizedDataset(cfg["dataset"], cfg["vocab_size"]).tokenizer
    except (UserError, KeyError, OSError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default=None,
                        help=f"run folder made by modelling/train.py (default: out/{DEFAULT_RUN})")
    parser.add_argument("--probe", default=None, help="probe for the grids (default: first val-story probe)")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="grids only for these steps")
    parser.add_argument("--force", action="store_true", help="redraw grids that already exist")
    add_root_argument(parser)
    args = apply_root(parser.parse_args(argv))

    from modelling.checkpoints import load_checkpoint, load_run
    run_dir = Path(args.out_dir) if args.out_dir else default_run_dir()
    run = load_run(run_dir, require_checkpoints=True)
    if not run.probes:
        raise UserError(f"{run_dir / 'attn_probes.json'} missing or empty — the run was trained without probes")
    names = [p["name"] for p in run.probes]
    story_probes = [p["name"] for p in run.probes if p.get("story_id") is not None]
    probe_name = args.probe or (story_probes[0] if story_probes else names[0])
    if probe_name not in names:
        raise UserError(f"unknown probe '{probe_name}' — probes of this run: {', '.join(names)}")
    probe = run.probes[names.index(probe_name)]
    steps = [s for s, _ in run.checkpoints]
    grid_steps = set(steps if args.steps is None else args.steps)
    if grid_steps - set(steps):
        raise UserError(f"no checkpoint at step(s) {sorted(grid_steps - set(steps))} — have {steps}")

    tokenizer = load_tokenizer(run.config)
    vis = run_dir / "visualize"
    prefix = "attn" if args.probe is None else f"attn_{probe_name}"
    all_stats, drawn, skipped = [], 0, 0
    for step, path in tqdm(run.checkpoints, desc="attention", unit="ckpt"):
        ckpt = load_checkpoint(path)
        probe_attn = ckpt.get("probe_attn") or {}
        if not probe_attn:
            raise UserError(f"{path} holds no probe attention — re-train with instrument=True")
        stats = checkpoint_stats(probe_attn, run.probes)
        stats.insert(0, "step", step)
        all_stats.append(stats)
        png = vis / f"{prefix}_step{step:06d}.png"
        if step in grid_steps and probe_name in probe_attn:
            if png.exists() and not args.force:
                skipped += 1
                continue
            attn = probe_attn[probe_name].float().numpy()
            labels = token_labels(probe["tokens"][:attn.shape[-1]], tokenizer)
            plot_grid(attn, labels, png, f"{run_dir.name} step {step}: attention on probe '{probe_name}' "
                                         f"({attn.shape[-1]} tokens)")
            drawn += 1
    stats = pd.concat(all_stats, ignore_index=True)
    with atomic_path(run_dir / "tables" / "attn_stats.csv", suffix=".csv") as tmp:
        stats.to_csv(tmp, index=False)
    plot_stats(stats, vis / "attn_stats.png", f"{run_dir.name}: per-head attention statistics "
                                              f"(colour = layer; label = highest head at the last step)")
    atomic_write_json(vis / "attn.json", {"provenance": provenance(probe=probe_name), "steps": steps,
                                          "grids_drawn": drawn, "grids_skipped": skipped})
    print(f"{drawn} grid(s) drawn, {skipped} already there (--force redraws); wrote {vis}/attn_stats.png and "
          f"{run_dir / 'tables' / 'attn_stats.csv'} ({len(stats)} rows)")


if __name__ == "__main__":
    run_main(main)
