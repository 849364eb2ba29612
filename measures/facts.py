"""Fact measures (issue 18): what a checkpoint knows of each fact of a fact set (download/fact_set.py).

Per fact and question kind — forward (entity -> town, the canonical forward phrasing's prefix), reverse (town ->
entity, the canonical reverse phrasing's prefix), paraphrase_forward / paraphrase_reverse (the held-out
phrasings, never trained; averaged over them):
    logp       log-probability (nats) of the answer's tokens after BOS + the question
    p_choice   the answer's share among n_candidates answers of the same kind (the true one and n_candidates-1
               answers of other facts of its group — facts shown alike — drawn per fact with a fixed seed): softmax over candidates of
               logp(candidate | question) - logp(candidate | BOS), the candidate's log-probability gain from the
               question (pointwise mutual information), so that a short or frequent answer gets no head start;
               chance = 1/n_candidates, and an untrained model gives it (tests)
    exact      1 when greedy decoding after the question yields exactly the answer's tokens. Computed teacher-
               forced: greedy continues with the answer iff the argmax at every answer position is the answer's
               token, so one forward pass gives it (tests check it against Transformer.generate).
Derived over checkpoints: acquisition_steps (first checkpoint at which a fact passes a threshold, counted from its
first exposure), retention (excess over the never-injected facts after the last exposure) with
fit_decay (power law a*d^-b vs exponential a*exp(-d/tau), compared by residual sum of squares: both have two
parameters), reverse_forward_ratio, and mean_ci (t interval over facts).

    queries = build_queries(facts, n_candidates=8)
    table = score_facts(model, tokenizer, bos_id, queries)     # one row per (fact_id, kind)
"""
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from scipy import optimize, special, stats

KINDS = ("forward", "reverse", "paraphrase_forward", "paraphrase_reverse")
ANSWER_OF = {"forward": "town", "paraphrase_forward": "town", "reverse": "entity", "paraphrase_reverse": "entity"}
N_CANDIDATES = 8
BATCH = 256  # sequences per forward pass


def build_queries(facts, n_candidates=N_CANDIDATES, seed=0, groups=None):
    """One row per (fact, kind, question, candidate): fact_id, kind, q, prompt, candidate, is_true. The
    distractors of fact i are n_candidates-1 other facts of its group, drawn with (seed, i), the same for every
    kind. groups: {fact_id: group} — give the facts shown alike (same condition) one group, so that the
    candidates are equally familiar to the model and only the fact's own association can favour the answer
    (training a fact also raises its answer for every other question: mixed groups would mistake familiarity
    for knowledge). Every group needs n_candidates facts; None: one group."""
    group_of = [(groups or {}).get(f["id"], 0) for f in facts]
    sizes = pd.Series(group_of).value_counts()
    if sizes.min() < n_candidates:
        raise ValueError(f"a group of {sizes.min()} facts cannot give {n_candidates} candidates per question")
    rows = []
    for i, fact in enumerate(facts):
        others = [j for j in range(len(facts)) if j != i and group_of[j] == group_of[i]]
        pick = np.random.default_rng([seed, i]).permutation(others)[:n_candidates - 1]
        for kind in KINDS:
            for q, question in enumerate(fact["questions"][kind]):
                for j in [i, *pick.tolist()]:
                    rows.append({"fact_id": fact["id"], "kind": kind, "q": q, "prompt": question["prompt"],
                                 "candidate": facts[j][ANSWER_OF[kind]], "is_true": j == i})
    return pd.DataFrame(rows)


@torch.no_grad()
def sequence_scores(model, sequences, n_answer, device="cpu", ctx=nullcontext(), batch=BATCH):
    """(summed log-prob of each sequence's last n_answer tokens, whether the argmax matched at all of them)."""
    lengths = np.array([len(s) for s in sequences])
    logp, exact = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=bool)
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    for first in range(0, len(order), batch):
        take = order[first:first + batch]
        width = int(lengths[take].max())
        tokens = np.zeros((len(take), width), dtype=np.int64)
        for r, k in enumerate(take):
            tokens[r, :lengths[k]] = sequences[k]
        x = torch.from_numpy(tokens[:, :-1]).to(device)
        with ctx:
            logits = model(x).float()  # right padding: causal attention keeps it out of the real positions
        logprobs = torch.log_softmax(logits, dim=-1).cpu().numpy()
        argmax = logits.argmax(-1).cpu().numpy()
        for r, k in enumerate(take):
            n, m = int(n_answer[k]), int(lengths[k])
            pos = np.arange(m - 1 - n, m - 1)  # positions predicting the answer tokens
            target = tokens[r, pos + 1]
            logp[k] = logprobs[r, pos, target].sum()
            exact[k] = bool((argmax[r, pos] == target).all())
    return logp, exact


def encode(tokenizer, bos_id, prompts, answers):
    """BOS + prompt + answer token lists and the answer lengths. SentencePiece splits at spaces, so prompt
    tokens followed by answer tokens are the tokens of 'prompt answer' (a test checks it)."""
    cache = {}

    def enc(text):
        if text not in cache:
            cache[text] = tokenizer.encode(text)
        return cache[text]
    seqs = [[int(bos_id)] + enc(p) + enc(a) for p, a in zip(prompts, answers)]
    return seqs, np.array([len(enc(a)) for a in answers])


def score_queries(model, tokenizer, bos_id, queries, device="cpu", ctx=nullcontext()):
    """The queries table with logp and exact per candidate row."""
    seqs, n_answer = encode(tokenizer, bos_id, queries["prompt"].tolist(), queries["candidate"].tolist())
    logp, exact = sequence_scores(model, seqs, n_answer, device, ctx)
    return queries.assign(logp=logp, exact=exact, n_answer_tokens=n_answer)


def score_facts(model, tokenizer, bos_id, queries, device="cpu", ctx=nullcontext()):
    """One row per (fact_id, kind): logp, p_choice, exact (means over the kind's questions)."""
    scored = score_queries(model, tokenizer, bos_id, queries, device, ctx)
    answers = sorted(set(scored["candidate"]))  # each candidate's log-probability after BOS alone
    prior = dict(zip(answers, score_queries(model, tokenizer, bos_id, pd.DataFrame(
        {"prompt": [""] * len(answers), "candidate": answers}), device, ctx)["logp"]))
    # p_choice: softmax of candidate log-probs within each question (build_queries keeps a question's
    # candidates together, the true one first, the same number for every question)
    n_cand = len(scored) // int(scored["is_true"].sum())
    assert scored["is_true"].to_numpy()[::n_cand].all(), "queries are not in build_queries' layout"
    logp = (scored["logp"] - scored["candidate"].map(prior)).to_numpy().reshape(-1, n_cand)
    scored = scored.assign(p_choice=np.exp(logp - special.logsumexp(logp, axis=1, keepdims=True)).ravel())
    true = scored[scored["is_true"]]
    per_q = true[["fact_id", "kind", "q", "logp", "p_choice", "exact", "n_answer_tokens"]]
    out = per_q.groupby(["fact_id", "kind"], sort=False).mean(numeric_only=True).reset_index()
    return out.drop(columns="q").assign(exact=lambda d: d["exact"].astype(float))


# ---------------------------------------------------------------------------------------------------------
# derived over checkpoints

def mean_ci(values, level=0.95):
    """(mean, low, high, n) of the finite values: Student t interval (NaN bounds below 2 values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan, 0
    m = float(v.mean())
    if len(v) < 2:
        return m, np.nan, np.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half, len(v)


def acquisition_steps(curve, first_exposure, threshold):
    """Steps from a fact's first exposure to the first checkpoint at or after it whose value reaches threshold
    (NaN: never). curve: DataFrame step, value (one fact), sorted by step."""
    after = curve[(curve["step"] >= first_exposure) & (curve["value"] >= threshold)]
    return float(after["step"].iloc[0] - first_exposure) if len(after) else np.nan


def retention(curve, null_curve, last_exposure):
    """Retained fraction after the last exposure: (value - null) / (value - null at the first checkpoint at or
    after the last exposure), at the later checkpoints. Returns DataFrame delta (steps since the last exposure,
    > 0), retained. curve / null_curve: step, value (null: the never-injected facts' mean at that step)."""
    both = curve.merge(null_curve, on="step", suffixes=("", "_null")).sort_values("step")
    excess = both["value"] - both["value_null"]
    at = both["step"] >= last_exposure
    if not at.any():
        return pd.DataFrame({"delta": [], "retained": []})
    start = excess[at].iloc[0]
    start_step = both.loc[at, "step"].iloc[0]
    later = both["step"] > start_step
    return pd.DataFrame({"delta": (both.loc[later, "step"] - last_exposure).to_numpy(dtype=float),
                         "retained": (excess[later] / start).to_numpy() if start > 0 else np.nan})


def _power(d, a, b):
    return a * np.power(d, -b)


def _exponential(d, a, tau):
    return a * np.exp(-d / tau)


def fit_decay(delta, retained):
    """Fits of retained(delta) by a power law a*delta^-b and an exponential a*exp(-delta/tau) (least squares,
    both two parameters, so the smaller residual sum of squares is also the smaller AIC). Returns a dict:
    power {a, b, rss}, exponential {a, tau, rss}, better ('power' | 'exponential' | None), n."""
    d, y = np.asarray(delta, dtype=float), np.asarray(retained, dtype=float)
    keep = np.isfinite(d) & np.isfinite(y) & (d > 0)
    d, y = d[keep], y[keep]
    out = {"n": int(len(d)), "power": None, "exponential": None, "better": None}
    if len(d) < 3:
        return out
    for name, f, p0 in (("power", _power, (max(y[0], 1e-3), 0.5)),
                        ("exponential", _exponential, (max(y[0], 1e-3), float(np.median(d))))):
        try:
            params, _ = optimize.curve_fit(f, d, y, p0=p0, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        rss = float(((f(d, *params) - y) ** 2).sum())
        keys = ("a", "b") if name == "power" else ("a", "tau")
        out[name] = {**dict(zip(keys, map(float, params))), "rss": rss}
    fits = [(out[k]["rss"], k) for k in ("power", "exponential") if out[k]]
    out["better"] = min(fits)[1] if fits else None
    return out


def reverse_forward_ratio(forward_excess, reverse_excess):
    """Mean reverse excess over mean forward excess (excess over chance / the never-injected facts): 1 = the
    reverse is known as well as the forward, 0 = not at all (the reversal curse). NaN when forward <= 0."""
    f, r = float(np.nanmean(forward_excess)), float(np.nanmean(reverse_excess))
    return r / f if f > 0 else np.nan
