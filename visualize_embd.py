"""Token embeddings of every checkpoint in ONE shared 2-D PCA basis, so movement across training is visible.

    python visualize_embd.py [--out_dir out/demo] [--basis final|all] [--n_frequent 20] [--words she,he,...]

Reads  tok_embeddings.weight of every checkpoint (modelling/checkpoints.py) and the run's tokenizer/shards.
Writes out/RUN/tables/embd_pca.csv        step, token_id, piece, pc1, pc2, group
       out/RUN/tables/embd_basis.json     the basis: fitted_on, mean, components, explained variance
       out/RUN/visualize/embd_step000512.png   every token projected (same axes for all steps), groups coloured
       out/RUN/visualize/embd_trajectories.png chosen tokens' paths across steps

Basis (default --basis final): scikit-learn PCA fitted on the LAST checkpoint's embedding matrix; every
checkpoint is centred with that fit's mean and projected onto its two components. The trained model's
structure defines the axes, and earlier checkpoints show how tokens moved into it. --basis all fits on all
checkpoints' matrices stacked (weights the early, random-looking embeddings as much as the trained ones).
Re-running after new checkpoints refits (the basis file records which checkpoints it saw).

Groups: female / male (GENDER_CORE: pronouns and common nouns of metadata/wordlists' gender terms), occupation (wordlists occupations, by last word),
frequent (the n_frequent most frequent whole-word pieces in the dataset's token shards). A word that is one
vocabulary piece ("\u2581nurse") is that token; a word split into several pieces is drawn as the mean of its
pieces' embeddings (a negative token_id, -1, -2, … per word; piece = the word).
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

N_FREQUENT = 20
TRAJECTORY_WORDS = ("she", "he", "her", "his", "girl", "boy", "mom", "dad", "nurse", "doctor", "teacher",
                    "firefighter")
GROUP_COLORS = {"female": "tab:red", "male": "tab:blue", "occupation": "tab:green", "frequent": "tab:orange",
                "other": "lightgrey"}
GROUP_ORDER = ("female", "male", "occupation", "frequent")  # a token in several groups gets the first
# gendered words drawn (pronouns and the common nouns of wordlists; plurals and rarer nouns would only clutter)
GENDER_CORE = ("she", "her", "he", "his", "him", "girl", "boy", "woman", "man", "mom", "dad", "mother", "father",
               "sister", "brother", "queen", "king", "princess", "prince", "grandma", "grandpa")


def embeddings(path):
    """The token embedding matrix [vocab, dim] of one checkpoint as float64."""
    from modelling.checkpoints import clean_state_dict, load_checkpoint
    state = clean_state_dict(load_checkpoint(path)["model"])
    if "tok_embeddings.weight" not in state:
        raise UserError(f"{path} has no tok_embeddings.weight — not a Llama checkpoint of this project")
    return state["tok_embeddings.weight"].float().numpy().astype(np.float64)


def fit_basis(matrices, basis):
    """sklearn PCA(2) fitted on the final matrix (basis='final') or all stacked ('all')."""
    from sklearn.decomposition import PCA
    data = matrices[-1] if basis == "final" else np.vstack(matrices)
    return PCA(n_components=2, svd_solver="full").fit(data)


def project(matrix, pca):
    """Coordinates of every row of `matrix` in the shared basis: (matrix - pca.mean_) @ components.T."""
    return (matrix - pca.mean_) @ pca.components_.T


def word_groups(tokenizer, frequent_ids):
    """{word or piece: (token ids, group)} for the highlighted tokens."""
    from metadata import wordlists
    groups = {}
    female = [w for w in GENDER_CORE if w in wordlists.FEMALE_TERMS]
    male = [w for w in GENDER_CORE if w in wordlists.MALE_TERMS]
    for group, words in (("female", female), ("male", male),
                         ("occupation", sorted({o.split()[-1] for o in wordlists.OCCUPATIONS}))):
        for w in words:
            if w not in groups:
                groups[w] = (tokenizer.encode(w), group)
    for t in frequent_ids:
        piece = tokenizer.id_to_piece(int(t))
        word = piece.lstrip("\u2581")
        if word not in groups:
            groups[word] = ([int(t)], "frequent")
    return groups


def frequent_word_ids(ds, n):
    """The n most frequent pieces that are whole lowercase words ('\u2581the') over the dataset's token shards."""
    counts = np.zeros(ds.tokenizer.get_piece_size(), dtype=np.int64)
    for shard in ds.manifest["shards"]:
        tokens = np.memmap(ds.dir / shard["bin"], dtype="<u2", mode="r") if shard["n_tokens"] else []
        counts += np.bincount(np.asarray(tokens, dtype=np.int64), minlength=len(counts))[:len(counts)]
    ids = []
    for t in np.argsort(-counts, kind="stable"):
        piece = ds.tokenizer.id_to_piece(int(t))
        if piece.startswith("\u2581") and piece[1:].isalpha() and len(piece) > 2 and counts[t] > 0:
            ids.append(int(t))
        if len(ids) == n:
            break
    return ids


def plot_step(df_step, limits, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 7))
    other = df_step[df_step["group"] == "other"]
    ax.scatter(other["pc1"], other["pc2"], s=5, c=GROUP_COLORS["other"], label="other tokens")
    for group in GROUP_ORDER:
        g = df_step[df_step["group"] == group]
        ax.scatter(g["pc1"], g["pc2"], s=22, c=GROUP_COLORS[group], label=f"{group} ({len(g)})", edgecolors="k",
                   linewidths=0.3)
        for _, r in g.iterrows():
            ax.annotate(r["piece"], (r["pc1"], r["pc2"]), fontsize=6, color=GROUP_COLORS[group],
                        xytext=(2, 2), textcoords="offset points")
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
    ax.set_xlabel("PC1 (shared basis)")
    ax.set_ylabel("PC2 (shared basis)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=80)


def plot_trajectories(table, words, limits, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 7))
    for word in words:
        t = table[table["piece"] == word].sort_values("step")
        if t.empty:
            continue
        color = GROUP_COLORS.get(t["group"].iloc[0], "k")
        ax.plot(t["pc1"], t["pc2"], "-", color=color, lw=1, alpha=0.7)
        ax.scatter(t["pc1"], t["pc2"], s=np.linspace(4, 30, len(t)), color=color, alpha=0.8)
        ax.scatter(t["pc1"].iloc[:1], t["pc2"].iloc[:1], marker="x", color=color, s=30)
        ax.annotate(word, (t["pc1"].iloc[-1], t["pc2"].iloc[-1]), fontsize=8, color=color, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
    ax.set_xlabel("PC1 (shared basis)")
    ax.set_ylabel("PC2 (shared basis)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default=None,
                        help=f"run folder made by modelling/train.py (default: out/{DEFAULT_RUN})")
    parser.add_argument("--basis", choices=("final", "all"), default="final",
                        help="fit the shared PCA on the last checkpoint (default) or on all stacked")
    parser.add_argument("--n_frequent", type=int, default=N_FREQUENT, help="most frequent word pieces to label")
    parser.add_argument("--words", default=",".join(TRAJECTORY_WORDS), help="comma-separated trajectory words")
    add_root_argument(parser)
    args = apply_root(parser.parse_args(argv))

    from modelling.checkpoints import load_run
    from tokenization.dataset import TokenizedDataset
    run_dir = Path(args.out_dir) if args.out_dir else default_run_dir()
    run = load_run(run_dir, require_checkpoints=True)
    cfg = run.config.get("config", run.config)
    ds = TokenizedDataset(cfg["dataset"], cfg["vocab_size"])
    sp = ds.tokenizer

    steps = [s for s, _ in run.checkpoints]
    matrices = [embeddings(p) for _, p in tqdm(run.checkpoints, desc="load embeddings", unit="ckpt")]
    if matrices[-1].shape[0] != sp.get_piece_size():
        raise UserError(f"run {run_dir} has {matrices[-1].shape[0]} token embeddings but the tokenizer of {ds.dir} "
                        f"has {sp.get_piece_size()} pieces — wrong dataset/vocab in config.json")
    pca = fit_basis(matrices, args.basis)
    groups = word_groups(sp, frequent_word_ids(ds, args.n_frequent))

    vocab = sp.get_piece_size()
    token_group = np.array(["other"] * vocab, dtype=object)
    extra = []  # multi-piece words: drawn as the mean of their pieces
    for word, (ids, group) in groups.items():
        if len(ids) == 1:
            if token_group[ids[0]] == "other" or GROUP_ORDER.index(group) < GROUP_ORDER.index(token_group[ids[0]]):
                token_group[ids[0]] = group
        elif ids:
            extra.append((word, ids, group))
    pieces = [sp.id_to_piece(i) for i in range(vocab)]
    frames = []
    for step, matrix in zip(steps, matrices):
        xy = project(matrix, pca)
        frames.append(pd.DataFrame({"step": step, "token_id": np.arange(vocab), "piece": pieces,
                                    "pc1": xy[:, 0], "pc2": xy[:, 1], "group": token_group}))
        if extra:
            exy = np.array([project(matrix[ids].mean(0, keepdims=True), pca)[0] for _, ids, _ in extra])
            frames.append(pd.DataFrame({"step": step, "token_id": -np.arange(1, len(extra) + 1),
                                        "piece": [w for w, _, _ in extra],
                                        "pc1": exy[:, 0], "pc2": exy[:, 1], "group": [g for _, _, g in extra]}))
    table = pd.concat(frames, ignore_index=True)
    with atomic_path(run_dir / "tables" / "embd_pca.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_json(run_dir / "tables" / "embd_basis.json", {
        "provenance": provenance(), "basis": args.basis, "fitted_on_steps": steps if args.basis == "all" else
        [steps[-1]], "mean": pca.mean_.tolist(), "components": pca.components_.tolist(),
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(), "steps": steps})

    pad = 0.05
    lo, hi = table[["pc1", "pc2"]].min().to_numpy(), table[["pc1", "pc2"]].max().to_numpy()
    span = np.maximum(hi - lo, 1e-9)
    limits = [(lo[0] - pad * span[0], hi[0] + pad * span[0]), (lo[1] - pad * span[1], hi[1] + pad * span[1])]
    vis = run_dir / "visualize"
    evr = pca.explained_variance_ratio_
    for step in tqdm(steps, desc="embedding plots", unit="ckpt"):
        shown = table[table["step"] == step]
        labelled = shown[shown["group"] != "other"].copy()
        labelled["piece"] = labelled["piece"].str.lstrip("\u2581")
        plot_step(pd.concat([shown[shown["group"] == "other"], labelled]), limits,
                  vis / f"embd_step{step:06d}.png",
                  f"{run_dir.name} step {step}: token embeddings, PCA basis fit on "
                  f"{'step ' + str(steps[-1]) if args.basis == 'final' else 'all steps'} "
                  f"(PC1 {evr[0]:.0%}, PC2 {evr[1]:.0%} of its variance)")
    words = [w.strip() for w in args.words.split(",") if w.strip()]
    traj = table.copy()
    traj["piece"] = traj["piece"].str.lstrip("\u2581")
    traj = traj[(traj["group"] != "other") & traj["piece"].isin(words)].drop_duplicates(["step", "piece"])
    plot_trajectories(traj, words, limits, vis / "embd_trajectories.png",
                      f"{run_dir.name}: trajectories over steps {steps[0]}..{steps[-1]} (x = first, big dot = last)")
    print(f"{len(steps)} checkpoint(s) projected on one PCA basis ({args.basis}); wrote {run_dir}/tables/embd_pca.csv "
          f"({len(table)} rows) and {len(steps) + 1} PNGs in {vis}")


if __name__ == "__main__":
    run_main(main)
