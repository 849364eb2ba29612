"""Covert-attribute probes: linear probes from each layer's residual stream to what storyworld knows exactly
about a story, at every checkpoint; a probe counts only where it beats the same probe on the step-1 model AND
a bag-of-tokens probe on the very tokens the model saw.

Probe set: the first n stories of the dataset's fixed iid validation sample (ranked draw order), never trained.
Readouts (one residual vector per story, layer and readout; layer 0 = token embeddings, layer i = after block i):
  pronoun  the token just before the first he/she after the hero's first mention (the model must predict that
        pronoun next), the model given BOS + the story up to there. Attribute hero_gender, cross-validated
        grouped by hero name (GroupKFold): the probe must tell the gender of heroes whose names it was never
        fitted on, so the name's tokens (in a bag of tokens, or carried along by an untrained model) are not
        enough; a trained model that tracks who the story is about and which pronoun comes next is.
  end   the story's last token, the model given the story's last max_seq_len tokens (a training-like window).
        Attributes (stratified K-fold): ending (happy|sad), plot (the first plot; classes with < 2 * folds
        stories dropped), offensive (an injected offensive word), fact (an injected fact), and random (a fair
        coin per story: the null, it must never count).
Probe: StandardScaler + LogisticRegression (scikit-learn, C=PROBE_C), out-of-fold predictions over K folds.
Score: balanced accuracy (chance = 1 / classes). acc_shuffled: the same probe on permuted labels (the null).
Baselines on the same folds: acc_step1 (the run's first checkpoint's activations, same readout and layer) and
acc_bot (token counts of the window the model saw). counts = 1 when the probe beats both: the balanced-accuracy
difference, paired per story (each story weighted as in balanced accuracy), minus z * its standard error > 0,
z = the one-sided normal quantile of ALPHA / (attributes x layers) (Bonferroni within a checkpoint: without it
a fair-coin label "counted" in 2 of 50 rows on a 200-step demo-shape run).
Activations are computed once per checkpoint and cached (out/RUN/cache/covert_probes/step_NNNNNN.npz).

Writes out/RUN/tables/covert_probes.csv (one row per step, attribute, layer) and covert_probes.json (provenance,
settings, probe story ids, steps_done, baseline step). docs/FORMATS.md.
"""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.errors import UserError
from common.io import atomic_path, provenance
from measures.step_table import resume_rows, write_rows

N_FOLDS = 5
PROBE_C = 1.0          # inverse L2 strength of the logistic regression (features standardized)
ALPHA = 0.05           # family-wise, per checkpoint: Bonferroni over its attributes x layers, one-sided
SEED = 19              # folds, label shuffle and the random attribute
BATCH = 32
PROBE_TABLE, PROBE_STATE, CACHE_DIR = "covert_probes.csv", "covert_probes.json", "cache/covert_probes"
VERSION = "2"
PRONOUN_RE = re.compile(r"\b(he|she|He|She)\b")
ATTRIBUTES = {"hero_gender": "pronoun", "in_quote": "quote", "ending": "end", "plot": "end", "offensive": "end",
              "fact": "end", "random": "end"}


# ---------------------------------------------------------------------------------------------------------
# the probe set: windows, readout positions and labels from storyworld's records

def pronoun_position(sp, tokens, text, name):
    """Index in tokens (BOS + story) of the token just before the first he/she after the first whole-word mention
    of `name` (the position whose next token is that pronoun), or None when there is none or the story's tokens
    do not split there (then the prefix would not be what the model saw)."""
    m = re.search(r"\b" + re.escape(name) + r"\b", text)
    p = PRONOUN_RE.search(text, m.end()) if m else None
    if p is None:
        return None
    ids = sp.encode(text[:p.start()].rstrip())
    if len(ids) + 1 >= len(tokens) or list(tokens[1:1 + len(ids)]) != list(ids):
        return None
    return len(ids)


def quote_position(sp, tokens, max_seq_len, rng):
    """(index, inside) of a position drawn with rng among the first max_seq_len tokens: a fair coin picks inside
    (after an opening '"' not yet closed) or outside (after a closed quote, so the window holds quotes either
    way and only their parity tells), then a position of that kind; (None, None) when there is none."""
    count = np.cumsum([sp.id_to_piece(int(t)).count('"') for t in tokens[:max_seq_len]])
    inside = count % 2 == 1
    kinds = {1: np.flatnonzero(inside), 0: np.flatnonzero(~inside & (count >= 2))}
    want = int(rng.integers(2))
    if len(kinds[want]) == 0:
        return None, None
    return int(rng.choice(kinds[want])), want


def probe_set(ds, n, max_seq_len):
    """(labels DataFrame per story: story_id, hero_name, and one column per attribute (None: unknown),
    windows {readout: [token arrays]}) for the first n stories of the fixed iid validation sample."""
    ids = [int(s) for s in ds.validation_sample("iid", n=n, ranked=True)[:n]]
    sp = ds.tokenizer
    rows, windows = [], {"pronoun": [], "end": [], "quote": []}
    for sid in ids:
        r = ds.record(sid)
        if "characters" not in r:
            raise UserError(f"--covert_probes needs storyworld's ground truth; {ds.dir} stories have none — "
                            f"run without --covert_probes")
        tokens = np.asarray(ds.tokens(sid), dtype=np.int64)
        hero = next((c for c in r["characters"] if c.get("role") == "hero"), {})
        pos = pronoun_position(sp, tokens, ds.text(sid), hero.get("name", "")) if hero else None
        pos = pos if pos is not None and pos < max_seq_len else None
        qpos, in_quote = quote_position(sp, tokens, max_seq_len, np.random.default_rng([SEED, sid, 1]))
        plots = r.get("plot")
        plot = plots if isinstance(plots, str) else (plots or [None])[0]
        rows.append({"story_id": sid, "hero_name": hero.get("name"),
                     "hero_gender": hero.get("gender") if pos is not None else None,
                     "ending": r.get("ending"), "plot": plot,
                     "offensive": int(bool(r.get("offensive_words"))), "fact": int(bool(r.get("facts"))),
                     "in_quote": in_quote, "random": int(np.random.default_rng([SEED, sid]).integers(2))})
        windows["quote"].append(tokens[:qpos + 1] if qpos is not None else tokens[:2])
        windows["pronoun"].append(tokens[:pos + 1] if pos is not None else tokens[:2])
        windows["end"].append(tokens[-max_seq_len:])
    return pd.DataFrame(rows), windows


# ---------------------------------------------------------------------------------------------------------
# activations

@torch.no_grad()
def residuals(model, windows, batch=BATCH):
    """float32 [n windows, n_layers + 1, dim]: the residual stream at each window's last token (layer 0 = the
    token embedding, layer i = the output of block i). Windows are right-padded; attention is causal, so the
    pads never reach the readout."""
    captured = []
    hooks = [model.tok_embeddings.register_forward_hook(lambda m, i, o: captured.append(o))]
    hooks += [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
              for layer in model.layers]
    out = []
    try:
        for first in range(0, len(windows), batch):
            part = windows[first:first + batch]
            lengths = np.array([len(w) for w in part])
            x = np.zeros((len(part), lengths.max()), dtype=np.int64)
            for i, w in enumerate(part):
                x[i, :len(w)] = w
            captured.clear()
            model(torch.from_numpy(x))
            h = torch.stack([c.float() for c in captured], 1)  # [B, L + 1, T, dim]
            out.append(h[torch.arange(len(part)), :, torch.from_numpy(lengths - 1)].numpy())
    finally:
        for hk in hooks:
            hk.remove()
    return np.concatenate(out)


def bag_of_tokens(windows, vocab_size):
    """Token counts per window [n, vocab]: what a probe can read from token identities alone."""
    return np.stack([np.bincount(w, minlength=vocab_size) for w in windows]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# cross-validated probes

def folds(labels, groups=None, n_folds=N_FOLDS):
    """Fold index per story: GroupKFold over groups when given, else StratifiedKFold (shuffled, SEED)."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold
    fold = np.zeros(len(labels), dtype=np.int64)
    split = GroupKFold(n_folds).split(labels, labels, groups) if groups is not None else \
        StratifiedKFold(n_folds, shuffle=True, random_state=SEED).split(labels, labels)
    for k, (_, test) in enumerate(split):
        fold[test] = k
    return fold


def oof_predict(features, labels, fold):
    """Out-of-fold predictions of the probe (standardized features, L2 logistic regression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    pred = np.empty(len(labels), dtype=labels.dtype)
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        if len(np.unique(labels[train])) < 2:
            pred[test] = labels[train][0]
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000))
        probe.fit(features[train], labels[train])
        pred[test] = probe.predict(features[test])
    return pred


def balanced_weights(labels):
    """Per-story weight w with mean(w * correct) = balanced accuracy."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return len(labels) / (len(classes) * counts[inverse])


def paired_gain(correct, base_correct, weights):
    """(balanced-accuracy difference, its standard error) of two out-of-fold predictions on the same stories."""
    d = weights * (correct.astype(float) - base_correct.astype(float))
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def usable(labels, n_folds=N_FOLDS):
    """Attribute labels worth probing: >= 2 classes, each with at least 2 * n_folds stories (rarer classes of a
    multi-class attribute are dropped). Returns a boolean mask of the stories kept, or None."""
    known = pd.notna(labels)
    values, counts = np.unique(labels[known].astype(str), return_counts=True)
    keep = set(values[counts >= 2 * n_folds])
    if len(keep) < 2:
        return None
    return known & np.isin(labels.astype(str), list(keep))


def probe_row(features, labels, fold, shuffled, step1_correct, bot_correct, z):
    """One probe against its baselines on the same folds: balanced accuracies (probe, shuffled labels, step-1
    model, bag of tokens), the paired gains over both baselines with their standard errors, and counts = 1 when
    both gains exceed z standard errors."""
    w = balanced_weights(labels)
    correct = oof_predict(features, labels, fold) == labels
    shuffled_correct = oof_predict(features, shuffled, fold) == shuffled
    d1, se1 = paired_gain(correct, step1_correct, w)
    db, seb = paired_gain(correct, bot_correct, w)
    return {"n": len(labels), "n_classes": len(np.unique(labels)), "chance": 1 / len(np.unique(labels)),
            "acc": float(np.mean(w * correct)),
            "acc_shuffled": float(np.mean(balanced_weights(shuffled) * shuffled_correct)),
            "acc_step1": float(np.mean(w * step1_correct)), "acc_bot": float(np.mean(w * bot_correct)),
            "gain_step1": d1, "se_step1": se1, "gain_bot": db, "se_bot": seb,
            "z": z, "counts": int(d1 - z * se1 > 0 and db - z * seb > 0)}


# ---------------------------------------------------------------------------------------------------------
# the per-checkpoint measure eval.py --covert_probes drives

class CovertProbes:
    """needs(step) / add(step, model) per checkpoint, finish(run, metadata) (nothing derived)."""

    def __init__(self, run_dir, ds, n_stories, rebuild=False):
        from modelling.checkpoints import list_checkpoints
        self.run_dir = Path(run_dir)
        self.tables, self.cache = self.run_dir / "tables", self.run_dir / CACHE_DIR
        config = json.loads((self.run_dir / "config.json").read_text())
        max_len = int(config.get("model_args", {}).get("max_seq_len", config["config"]["max_seq_len"]))
        self.labels, self.windows = probe_set(ds, n_stories, max_len)
        self.vocab = int(ds.manifest["vocab_size"])
        ids = self.labels["story_id"].to_numpy()
        self.settings = {"version": VERSION, "n_stories": int(n_stories), "n_folds": N_FOLDS, "C": PROBE_C,
                         "alpha": ALPHA, "seed": SEED,
                         "story_ids_sha256": hashlib.sha256(np.asarray(ids, "<i8").tobytes()).hexdigest()}
        ckpts = list_checkpoints(self.run_dir)
        steps = [s for s, _ in ckpts]
        # the step-1 baseline: the run's first checkpoint (train.py always writes step 1)
        self.base_step = 1 if 1 in steps or not steps else steps[0]
        self.rows, self.done = resume_rows(self.tables / PROBE_TABLE, self.tables / PROBE_STATE, self.settings,
                                           "probe", "--probe_stories", rebuild)
        self.tasks = self._tasks()
        self._base = None

    def describe(self):
        return f"covert probes on {len(self.labels)} validation stories ({', '.join(self.tasks)})"

    def outputs(self):
        return f"{self.tables / PROBE_TABLE}"

    def needs(self, step):
        return int(step) not in self.done

    def _tasks(self):
        """{attribute: (readout, story mask, labels, folds)} for the attributes this probe set can test."""
        tasks = {}
        for attr, readout in ATTRIBUTES.items():
            labels = self.labels[attr].to_numpy(dtype=object)
            mask = usable(labels)
            if mask is None:
                continue
            y = labels[mask].astype(str)
            groups = self.labels["hero_name"].to_numpy()[mask] if attr == "hero_gender" else None
            if groups is not None and len(np.unique(groups)) < N_FOLDS:
                continue
            tasks[attr] = (readout, mask, y, folds(y, groups))
        return tasks

    def activations(self, step, model=None):
        """{readout: [n, layers + 1, dim]} of one checkpoint, cached on disk once computed."""
        path = self.cache / f"step_{int(step):06d}.npz"
        if path.exists():
            with np.load(path) as f:
                if f["story_ids"].tolist() == self.labels["story_id"].tolist():
                    return {k: f[k] for k in self.windows}
        if model is None:
            from modelling.checkpoints import list_checkpoints, load_model
            path = dict(list_checkpoints(self.run_dir)).get(int(step))
            if path is None:
                raise UserError(f"--covert_probes: no checkpoint at step {step} in {self.run_dir} for the step-1 "
                                f"baseline — keep the run's first checkpoint")
            model, _ = load_model(path)
        acts = {k: residuals(model, w) for k, w in self.windows.items()}
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, story_ids=self.labels["story_id"].to_numpy(), **acts)
        return acts

    def baselines(self):
        """{attribute: (bag-of-tokens correct, {layer: step-1 correct})} on each task's folds, computed once."""
        if self._base is None:
            acts = self.activations(self.base_step)
            self._base = {}
            for attr, (readout, mask, y, fold) in self.tasks.items():
                bot = bag_of_tokens([w for w, m in zip(self.windows[readout], mask) if m], self.vocab)
                step1 = {layer: oof_predict(acts[readout][mask, layer], y, fold) == y
                         for layer in range(acts[readout].shape[1])}
                self._base[attr] = (oof_predict(bot, y, fold) == y, step1)
        return self._base

    def probe_rows(self, step, acts):
        from scipy.stats import norm
        rng = np.random.default_rng(SEED)
        base = self.baselines()
        n_layers = next(iter(acts.values())).shape[1]
        z = float(norm.ppf(1 - ALPHA / (len(self.tasks) * n_layers)))
        rows = []
        for attr, (readout, mask, y, fold) in self.tasks.items():
            shuffled = rng.permutation(y)
            bot_correct, step1 = base[attr]
            for layer in range(acts[readout].shape[1]):
                rows.append({"step": int(step), "attribute": attr, "readout": readout, "layer": layer,
                             **probe_row(acts[readout][mask, layer], y, fold, shuffled, step1[layer], bot_correct, z),
                             "baseline_step": self.base_step})
        return pd.DataFrame(rows)

    def add(self, step, model):
        acts = self.activations(step, model)
        new = self.probe_rows(step, acts)
        self.rows = pd.concat([self.rows[self.rows["step"] != int(step)] if len(self.rows) else self.rows, new],
                              ignore_index=True).sort_values(["step", "attribute", "layer"])
        self.done.add(int(step))
        write_rows(self.tables / PROBE_TABLE, self.tables / PROBE_STATE, self.rows, {
            "provenance": provenance(), "settings": self.settings, "baseline_step": self.base_step,
            "attributes": {a: t[0] for a, t in self.tasks.items()}, "steps_done": sorted(self.done),
            "story_ids": self.labels["story_id"].tolist()})

    def finish(self, run, metadata=None):
        pass
