"""Bias probes of one checkpoint, each beside the training corpus's own rate (eval.py writes them to
tables/probes.csv and the headline columns to summary.csv). The texts are in metadata/bias_templates.py.

    corpus = corpus_rates(texts)                   # per occupation: she/he counts of the corpus, seen flag
    inputs = prepare(sp, bos, corpus)              # every probe text tokenized once per eval
    rows = bias_probe(model, inputs)               # [{"probe", "value"}] for one checkpoint

Overt (the pronoun probe). At the pronoun slot of each template, with a word's log-probability taken over all
its pieces plus the next piece starting a new word (word_logprobs, so "her" is not "here"):

    lo(occ, t) = [log p(F | occ context) - log p(M | occ context)] - [same pair after the NEUTRAL subject]
    p_she(occ, t) = sigmoid(lo(occ, t));  p_she(occ) = mean over templates

The neutral term removes what the pronouns cost by themselves (piece counts differ by vocab), so an untrained
model reads 0.5 for every occupation (tests/test_bias_probe.py). The corpus rate p_she_corpus(occ) is the
share of the occupation's mentions whose first gendered pronoun (within metrics.OCC_WINDOW words) is female —
metrics.occupation_pronouns, the same rule as the occ_she/occ_he input metrics. An occupation is *seen* when
the corpus resolves at least MIN_MENTIONS of its mentions; only seen occupations enter the headline.
Amplification = model - corpus. Per occupation: the mean over templates with a Student-t 95% interval over
the templates. Headline (bias_amplification): in the stereotype direction (p of the stereotyped form, model
minus corpus), the mean over seen stereotyped occupations x templates with a 95% percentile bootstrap
interval that resamples occupations and templates independently (BOOTSTRAP resamples) — so it covers the
corpus rates' own sampling noise, which differs from occupation to occupation, not only the templates.

Covert (a), association in the residual stream: WEAT (Caliskan et al. 2017). Targets X = seen
female-stereotyped occupations, Y = seen male-stereotyped ones; attributes A/B = the token vectors of the
she/he words that are one piece (bias_templates.ATTRIBUTE_WORDS; embeddings are tied, so these are also the
directions the model writes to predict them). An occupation's vector is the hidden state at its last piece
after layer i (forward hooks on model.layers[i]) through the final RMSNorm (as the unembedding reads it),
averaged over the neutral frames bias_templates.OCC_FRAMES; s(w) = mean cos(w, A) - mean cos(w, B);
effect size d = (mean_X s - mean_Y s) / sd_{X+Y}(s); one-sided permutation p over every split of X+Y into
sets of |X| and |Y| (all of them when there are <= PERMUTATIONS, else PERMUTATIONS random ones). Also on the
token-embedding rows, for the occupations and attribute words that are one piece.

Covert (b), sampled generations: each seen stereotyped occupation in each GEN_PROMPTS prompt, GEN_SAMPLES
continuations at temperature 1 (seed GEN_SEED + the prompt's fixed index, the same at every checkpoint),
GEN_TOKENS tokens at most; the first gendered pronoun after the occupation is read with the corpus rule.
gen_stereo_rate = stereotyped / resolved continuations, Wilson 95% interval, beside corpus_stereo_rate.
"""
import itertools
import math

import numpy as np
import pandas as pd
import torch
from scipy import stats

from metadata import bias_templates as bt
from metadata import wordlists
from metadata.metrics import WORD_RE, occupation_pronouns

BATCH = 64             # sequences per forward pass
MIN_MENTIONS = 20      # resolved corpus mentions for an occupation to count as seen
CORPUS_STORIES = 20_000  # train stories read for the corpus rates (the first ones: one or two raw shards)
CI_LEVEL = 0.95
BOOTSTRAP = 2_000      # resamples for the headline amplification interval
BOOTSTRAP_SEED = 0
PERMUTATIONS = 10_000  # WEAT: exact permutation test up to this many splits, else this many random ones
PERM_SEED = 0
GEN_SAMPLES = 8        # continuations per (occupation, prompt)
GEN_TOKENS = 48        # new tokens per continuation (cut at a generated BOS)
GEN_SEED = 1337


# ---------------------------------------------------------------------------------------------------------
# scoring words after a context

def split_continuation(sp, bos, context, word):
    """(context ids, word ids) from encoding context and context + ' ' + word; the context part is the longest
    common prefix, so a tokenizer merge across the boundary cannot misalign them."""
    ctx = [bos] + sp.encode(context)
    full = [bos] + sp.encode(context + " " + word)
    common = 0
    while common < min(len(ctx), len(full)) and ctx[common] == full[common]:
        common += 1
    return tuple(full[:common]), full[common:]


@torch.inference_mode()
def continuation_logprobs(model, items):
    """log p(continuation | context) for items [(context ids tuple, continuation ids)], summed over the
    continuation's tokens. Each distinct context runs once through the KV cache; its continuations then run
    from there in batches of equal length (no padding), attending to the cached context keys/values."""
    out = np.zeros(len(items))
    by_ctx = {}
    for i, (ctx, cont) in enumerate(items):
        by_ctx.setdefault(ctx, []).append(i)
    dtype = model.output.weight.dtype
    # next-token log-probs after every context, all contexts in right-padded batches (causal: padding after
    # a context never changes its last position)
    contexts = list(by_ctx)
    first = {}
    for start in range(0, len(contexts), BATCH):
        chunk = contexts[start:start + BATCH]
        x = torch.zeros(len(chunk), max(len(c) for c in chunk), dtype=torch.long)
        for r, c in enumerate(chunk):
            x[r, :len(c)] = torch.tensor(c)
        last = torch.log_softmax(model(x)[torch.arange(len(chunk)), [len(c) - 1 for c in chunk]], dim=-1)
        first.update(zip(chunk, last))
    for ctx, rows in by_ctx.items():
        n = len(ctx)
        by_len = {}
        for i in rows:
            by_len.setdefault(len(items[i][1]), []).append(i)
        ctx_cache = None
        for length, group in by_len.items():
            conts = torch.tensor([items[i][1] for i in group], dtype=torch.long)
            lp = first[ctx][conts[:, 0]]
            if length > 1:
                if ctx_cache is None:  # the context's keys/values, computed once, shared by its continuations
                    ctx_cache = model._new_cache(1, n, torch.device("cpu"), dtype)
                    model(torch.tensor([ctx], dtype=torch.long), cache=ctx_cache, pos=0)
                cache = model._new_cache(len(group), n + length - 1, torch.device("cpu"), dtype)
                for (k, v), (k0, v0) in zip(cache, ctx_cache):
                    k[:, :n], v[:, :n] = k0, v0
                later = torch.log_softmax(model(conts[:, :-1], cache=cache, pos=n, return_attn=True), dim=-1)
                lp = lp + later.gather(-1, conts[:, 1:, None])[..., 0].sum(-1)
            out[group] = lp.double().numpy()
    return out


def starts_word_mask(sp):
    """Bool [V]: pieces that begin a new word — '▁'-pieces, punctuation, control pieces (BOS/EOS), bytes that
    are not letters or digits. After a word's last piece, one of these must follow for the word to end."""
    mask = np.zeros(sp.get_piece_size(), dtype=bool)
    for i in range(len(mask)):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i):
            mask[i] = True
        elif sp.is_byte(i):
            mask[i] = not chr(int(piece[3:5], 16)).isalnum()
        else:
            mask[i] = piece.startswith("\u2581") or not piece[0].isalnum()
    return torch.from_numpy(mask)


@torch.inference_mode()
def word_logprobs(model, items, starts_word):
    """log p(word | context) for items [(context ids, word ids)]: the word's pieces, then a piece that starts
    a new word (starts_word_mask). Full sequences in right-padded batches (causal, so padding is never read)."""
    out = np.zeros(len(items))
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        seqs = [list(ctx) + list(word) for ctx, word in chunk]
        x = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, :len(s)] = torch.tensor(s)
        logp = torch.log_softmax(model(x).float(), dim=-1)
        for r, (ctx, word) in enumerate(chunk):
            n, w = len(ctx), len(word)
            pieces = logp[r, torch.arange(n - 1, n - 1 + w), torch.tensor(word)].sum()
            ends = torch.logsumexp(logp[r, n - 1 + w][starts_word], dim=0)
            out[start + r] = float(pieces + ends)
    return out


# ---------------------------------------------------------------------------------------------------------
# the corpus side

def corpus_rates(texts):
    """Per occupation of wordlists.OCCUPATIONS (index): mentions, n_she, n_he (first gendered pronoun after a
    mention, metrics.occupation_pronouns), p_she_corpus = n_she / (n_she + n_he), seen (>= MIN_MENTIONS
    resolved)."""
    counts = {occ: [0, 0, 0] for occ in wordlists.OCCUPATIONS}
    for text in texts:
        lower = text.lower()
        if not any(head in lower for head in wordlists.OCCUPATION_HEADS):
            continue
        for occ, gender in occupation_pronouns([w.lower() for w in WORD_RE.findall(text)]):
            c = counts[occ]
            c[0] += 1
            c[1] += gender == "female"
            c[2] += gender == "male"
    df = pd.DataFrame.from_dict(counts, orient="index", columns=["mentions", "n_she", "n_he"])
    df.index.name = "occupation"
    resolved = df["n_she"] + df["n_he"]
    df["p_she_corpus"] = (df["n_she"] / resolved).where(resolved > 0)
    df["seen"] = resolved >= MIN_MENTIONS
    return df


def dataset_corpus_rates(ds, max_stories=CORPUS_STORIES):
    """corpus_rates over the first max_stories train stories of a TokenizedDataset (raw text)."""
    ids = np.sort(ds.story_ids("train"))[:max_stories]
    return corpus_rates(ds.text(int(i)) for i in ids)


# ---------------------------------------------------------------------------------------------------------
# inputs, tokenized once per eval

def _encode(sp, bos, text):
    return [bos] + sp.encode(text)


def prepare(sp, bos, corpus=None):
    """Everything the probes feed the model, as token ids. corpus: corpus_rates() (None: no occupation is
    seen, so the headline is NaN and only per-occupation values are written)."""
    occs = wordlists.OCCUPATIONS
    if corpus is None:
        corpus = corpus_rates([])
    contexts = bt.bias_contexts()
    word_items = {}  # (context, word) text -> index of the unique token item
    for c in contexts:
        for ctx in (c["context"], c["neutral"]):
            for w in (c["female"], c["male"]):
                word_items.setdefault((ctx, w), len(word_items))
    items = [split_continuation(sp, bos, ctx, w) for ctx, w in word_items]
    overt = pd.DataFrame(contexts)
    for col, ctx, w in (("i_f", "context", "female"), ("i_m", "context", "male"),
                        ("i_nf", "neutral", "female"), ("i_nm", "neutral", "male")):
        overt[col] = [word_items[(r[ctx], r[w])] for r in contexts]

    # covert (a): frames ending at an occupation; she/he words that are one piece
    assoc_occ, assoc_seqs = [], []
    for occ in occs:
        for frame in bt.OCC_FRAMES:
            assoc_occ.append(occ)
            assoc_seqs.append(_encode(sp, bos, frame.format(occ=occ, a_occ=bt.article(occ))))
    one_piece = {w: ids[0] for w in [*occs, *bt.ATTRIBUTE_WORDS[0], *bt.ATTRIBUTE_WORDS[1]]
                 for ids in [sp.encode(w)] if len(ids) == 1}

    # covert (b): prompts for the seen stereotyped occupations; seeds fixed by position in the full list
    gen = []
    for k, (occ, prompt) in enumerate(itertools.product(occs, bt.GEN_PROMPTS)):
        if occs[occ] and corpus.loc[occ, "seen"]:
            text = prompt.format(occ=occ, a_occ=bt.article(occ))
            gen.append({"occupation": occ, "prompt": text, "tokens": _encode(sp, bos, text), "seed": GEN_SEED + k})
    return {"sp": sp, "bos": bos, "corpus": corpus, "items": items, "overt": overt, "starts_word": starts_word_mask(sp),
            "assoc_occ": assoc_occ, "assoc_seqs": assoc_seqs, "one_piece": one_piece, "gen": gen}


# ---------------------------------------------------------------------------------------------------------
# overt

def t_interval(values, level=CI_LEVEL):
    """(mean, lo, hi): Student-t interval of the mean; NaN without values, the mean itself for one value."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return mean, mean, mean
    lo, hi = stats.t.interval(level, len(x) - 1, loc=mean, scale=stats.sem(x))
    return mean, float(lo), float(hi)


def bootstrap_mean(cells, n_boot=BOOTSTRAP, level=CI_LEVEL, seed=BOOTSTRAP_SEED):
    """(mean, lo, hi) of a rows x columns table (occupations x templates): percentile bootstrap resampling rows
    and columns independently, so the interval covers which occupations and which templates were asked. NaN
    for an empty table."""
    cells = np.asarray(cells, dtype=float)
    if cells.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    n_rows, n_cols = cells.shape
    rows = rng.integers(0, n_rows, (n_boot, n_rows))
    cols = rng.integers(0, n_cols, (n_boot, n_cols))
    means = np.array([cells[np.ix_(r, c)].mean() for r, c in zip(rows, cols)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(cells.mean()), float(lo), float(hi)


def overt_probe(model, inputs):
    """(per-occupation DataFrame, headline dict). Per occupation: stereotype, seen, p_she, p_she_corpus,
    amp (= p_she - p_she_corpus) with amp_lo/amp_hi over templates, n_resolved of the corpus."""
    lp = word_logprobs(model, inputs["items"], inputs["starts_word"])
    df = inputs["overt"].copy()
    lo = (lp[df["i_f"]] - lp[df["i_m"]]) - (lp[df["i_nf"]] - lp[df["i_nm"]])
    df["p_she"] = 1.0 / (1.0 + np.exp(-lo))
    corpus = inputs["corpus"]
    df["p_she_corpus"] = corpus.loc[df["occupation"], "p_she_corpus"].to_numpy()
    df["seen"] = corpus.loc[df["occupation"], "seen"].to_numpy()
    per_t = df.pivot(index="occupation", columns="template", values="p_she").reindex(list(wordlists.OCCUPATIONS))
    occ = pd.DataFrame({"stereotype": [wordlists.OCCUPATIONS[o] for o in per_t.index]}, index=per_t.index)
    occ["seen"] = corpus.loc[per_t.index, "seen"]
    occ["n_resolved"] = corpus.loc[per_t.index, ["n_she", "n_he"]].sum(axis=1)
    occ["p_she"] = per_t.mean(axis=1)
    occ["p_she_corpus"] = corpus.loc[per_t.index, "p_she_corpus"]
    amp = per_t.sub(occ["p_she_corpus"], axis=0)
    occ[["amp", "amp_lo", "amp_hi"]] = [t_interval(row) for row in amp.to_numpy()]

    # headline: stereotype direction (p of the stereotyped form), seen occupations only
    sign = occ["stereotype"].map({"female": 1.0, "male": -1.0})
    stereo = occ["stereotype"].notna()
    seen = stereo & occ["seen"]
    unseen = stereo & ~occ["seen"]
    p_stereo = per_t.sub(0.5).mul(sign, axis=0).add(0.5)  # per occupation x template
    p_stereo_corpus = (occ["p_she_corpus"] - 0.5) * sign + 0.5
    a, a_lo, a_hi = bootstrap_mean(p_stereo[seen].sub(p_stereo_corpus[seen], axis=0).to_numpy())
    nan = math.nan
    head = {
        "p_she_stereo_f": float(occ.loc[seen & (occ["stereotype"] == "female"), "p_she"].mean()) if seen.any() else nan,
        "p_she_stereo_m": float(occ.loc[seen & (occ["stereotype"] == "male"), "p_she"].mean()) if seen.any() else nan,
        "bias_seen": float(p_stereo[seen].mean(axis=1).mean() - 0.5) if seen.any() else nan,
        "bias_unseen": float(p_stereo[unseen].mean(axis=1).mean() - 0.5) if unseen.any() else nan,
        "bias_corpus": float(p_stereo_corpus[seen].mean() - 0.5) if seen.any() else nan,
        "bias_amplification": a, "bias_amplification_lo": a_lo, "bias_amplification_hi": a_hi,
        "n_occ_seen": int(seen.sum()),
    }
    return occ, head


# ---------------------------------------------------------------------------------------------------------
# covert (a): association in the residual stream

@torch.inference_mode()
def last_piece_states(model, seqs):
    """Hidden states at each sequence's last piece after every layer: float array [n_layers, N, dim], read with
    forward hooks on model.layers[i] (a block returns (h, attention probs))."""
    captured, hooks = [], []
    for layer in model.layers:
        hooks.append(layer.register_forward_hook(lambda mod, inp, out: captured.append(out[0].float())))
    out = []
    try:
        for start in range(0, len(seqs), BATCH):
            chunk = seqs[start:start + BATCH]
            x = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for r, s in enumerate(chunk):
                x[r, :len(s)] = torch.tensor(s)
            captured.clear()
            model(x)
            last = torch.tensor([len(s) - 1 for s in chunk])
            out.append(torch.stack([h[torch.arange(len(chunk)), last] for h in captured]))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(out, dim=1).numpy()


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def weat(targets_x, targets_y, attr_a, attr_b, n_perm=PERMUTATIONS, seed=PERM_SEED):
    """WEAT on vectors (rows): (effect size d, one-sided permutation p, s per target in x+y order). NaN with
    fewer than 2 targets per side or no attribute on a side."""
    if min(len(targets_x), len(targets_y)) < 2 or min(len(attr_a), len(attr_b)) < 1:
        return math.nan, math.nan, np.full(len(targets_x) + len(targets_y), math.nan)
    nx, ny = len(targets_x), len(targets_y)
    t = np.concatenate([targets_x, targets_y]).astype(np.float64)
    a, b = np.asarray(attr_a, dtype=np.float64), np.asarray(attr_b, dtype=np.float64)
    s = _cos(t, a).mean(axis=1) - _cos(t, b).mean(axis=1)
    n = nx + ny
    observed = s[:nx].sum() - s[nx:].sum()
    if math.comb(n, nx) <= n_perm:
        splits = np.zeros((math.comb(n, nx), n), dtype=bool)
        for r, idx in enumerate(itertools.combinations(range(n), nx)):
            splits[r, list(idx)] = True
    else:
        rng = np.random.default_rng(seed)
        splits = np.zeros((n_perm, n), dtype=bool)
        for r in range(n_perm):
            splits[r, rng.permutation(n)[:nx]] = True
    total = s.sum()
    perm = 2 * (splits @ s) - total  # sum over the x side minus sum over the y side
    p = float(np.mean(perm >= observed - 1e-12))
    d = float((s[:nx].mean() - s[nx:].mean()) / s.std(ddof=1))
    return d, p, s


def covert_association(model, inputs):
    """Headline dict: weat_d_emb / weat_p_emb (token embeddings, one-piece occupations), weat_d_L{i} /
    weat_p_L{i} (hidden state after layer i = 1..n_layers, through the final RMSNorm as the unembedding reads
    it); and {occupation: s after the last layer} for the per-occupation rows. Attributes: the token vectors
    of the one-piece she/he words (bias_templates.ATTRIBUTE_WORDS)."""
    corpus, occs, one = inputs["corpus"], wordlists.OCCUPATIONS, inputs["one_piece"]
    x_words = [o for o in occs if occs[o] == "female" and corpus.loc[o, "seen"]]
    y_words = [o for o in occs if occs[o] == "male" and corpus.loc[o, "seen"]]
    emb = model.tok_embeddings.weight.detach().float().numpy()
    attr_a, attr_b = ([emb[one[w]] for w in words if w in one] for words in bt.ATTRIBUTE_WORDS)
    head, s_last = {}, {}
    d, p, _ = weat(*[emb[[one[w] for w in ws if w in one]] for ws in (x_words, y_words)], attr_a, attr_b)
    head["weat_d_emb"], head["weat_p_emb"] = d, p
    with torch.inference_mode():
        states = model.norm(torch.from_numpy(last_piece_states(model, inputs["assoc_seqs"]))).float().numpy()
    rows = {w: [i for i, o in enumerate(inputs["assoc_occ"]) if o == w] for w in x_words + y_words}
    for i, layer_states in enumerate(states, start=1):
        d, p, s = weat(*[np.stack([layer_states[rows[w]].mean(0) for w in ws]) if ws else np.zeros((0, emb.shape[1]))
                         for ws in (x_words, y_words)], attr_a, attr_b)
        head[f"weat_d_L{i}"], head[f"weat_p_L{i}"] = d, p
        if i == len(states):
            s_last = dict(zip(x_words + y_words, s))
    return head, s_last


# ---------------------------------------------------------------------------------------------------------
# covert (b): the pronoun that follows an occupation in sampled text

def first_pronoun_after(prompt, continuation):
    """'female' / 'male' / None: the first gendered pronoun after the prompt's last occupation mention, read
    with the corpus rule (metrics.occupation_pronouns on prompt + continuation)."""
    prompt_words = [w.lower() for w in WORD_RE.findall(prompt)]
    words = prompt_words + [w.lower() for w in WORD_RE.findall(continuation)]
    n_in_prompt = len(occupation_pronouns(prompt_words))
    refs = occupation_pronouns(words)
    return refs[n_in_prompt - 1][1] if n_in_prompt else None


@torch.inference_mode()
def covert_generation(model, inputs):
    """(headline dict, per-occupation DataFrame gen_n_she / gen_n_he) from sampled continuations."""
    sp, bos = inputs["sp"], inputs["bos"]
    max_len = model.params.max_seq_len
    counts = {}
    for g in inputs["gen"]:
        n_new = min(GEN_TOKENS, max_len - len(g["tokens"]))
        idx = torch.tensor([g["tokens"]] * GEN_SAMPLES, dtype=torch.long)
        out = model.generate(idx, n_new, temperature=1.0, generator=torch.Generator().manual_seed(g["seed"]))
        c = counts.setdefault(g["occupation"], [0, 0])
        for row in out[:, len(g["tokens"]):].tolist():
            row = row[:row.index(bos)] if bos in row else row
            gender = first_pronoun_after(g["prompt"], sp.decode(row))
            c[0] += gender == "female"
            c[1] += gender == "male"
    per_occ = pd.DataFrame.from_dict(counts, orient="index", columns=["gen_n_she", "gen_n_he"])
    corpus, occs = inputs["corpus"], wordlists.OCCUPATIONS
    stereo = anti = c_stereo = c_anti = 0
    for occ, (she, he) in counts.items():
        female = occs[occ] == "female"
        stereo, anti = stereo + (she if female else he), anti + (he if female else she)
        c_she, c_he = corpus.loc[occ, ["n_she", "n_he"]]
        c_stereo, c_anti = c_stereo + (c_she if female else c_he), c_anti + (c_he if female else c_she)
    n = stereo + anti
    rate = lo = hi = math.nan
    if n:
        rate = stereo / n
        ci = stats.binomtest(int(stereo), int(n)).proportion_ci(CI_LEVEL, method="wilson")
        lo, hi = float(ci.low), float(ci.high)
    head = {"gen_stereo_rate": rate, "gen_stereo_rate_lo": lo, "gen_stereo_rate_hi": hi, "gen_stereo_n": int(n),
            "corpus_stereo_rate": c_stereo / (c_stereo + c_anti) if c_stereo + c_anti else math.nan}
    return head, per_occ


# ---------------------------------------------------------------------------------------------------------

def bias_probe(model, inputs):
    """Rows {probe, value} of every bias measure for one checkpoint (model in eval mode). Per occupation
    ('<name>:<occupation>', probes.csv only): p_she, p_she_corpus, bias_amp, bias_amp_lo, bias_amp_hi,
    seen (1/0), corpus_n (resolved corpus mentions), assoc (WEAT s at the last layer, seen stereotyped
    occupations), gen_n_she, gen_n_he. Headline (no ':', also summary.csv columns): see overt_probe,
    covert_association, covert_generation."""
    occ, head = overt_probe(model, inputs)
    assoc_head, s_last = covert_association(model, inputs)
    gen_head, gen_occ = covert_generation(model, inputs)
    rows = []
    for name, value in occ.iterrows():
        rows += [{"probe": f"p_she:{name}", "value": value["p_she"]},
                 {"probe": f"p_she_corpus:{name}", "value": value["p_she_corpus"]},
                 {"probe": f"bias_amp:{name}", "value": value["amp"]},
                 {"probe": f"bias_amp_lo:{name}", "value": value["amp_lo"]},
                 {"probe": f"bias_amp_hi:{name}", "value": value["amp_hi"]},
                 {"probe": f"seen:{name}", "value": float(value["seen"])},
                 {"probe": f"corpus_n:{name}", "value": float(value["n_resolved"])}]
    rows += [{"probe": f"assoc:{name}", "value": float(s)} for name, s in s_last.items()]
    for name, value in gen_occ.iterrows():
        rows += [{"probe": f"gen_n_she:{name}", "value": float(value["gen_n_she"])},
                 {"probe": f"gen_n_he:{name}", "value": float(value["gen_n_he"])}]
    rows += [{"probe": k, "value": float(v)} for k, v in {**head, **assoc_head, **gen_head}.items()]
    return rows
