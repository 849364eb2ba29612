"""Evaluate every checkpoint of a run: generations with their metrics against the reference continuations,
validation loss on the fixed validation samples (iid and novel), bias and toxicity probes, and one summary row
per checkpoint joined with the metrics of the stories trained on.

    python eval.py [--out_dir out/demo] [--steps 64 128 ...] [--n_prompts 64] [--prefix_tokens 32]
                   [--temperature 1.0] [--seed 1337] [--max_new_tokens 0] [--val_stories 2000]
                   [--scorer ngram] [--rebuild] [--watch] [--trajectories] [--covert_probes]

Reads  out/RUN (config, checkpoints, batch log; modelling/checkpoints.py), the run's dataset
       (tokenization/dataset.py), its metadata.parquet, vocabulary.txt and reference scorer (metadata/).
Writes out/RUN/eval_prompts.json  the fixed prompt set (val-story prefixes + one BOS-only prompt)
       out/RUN/tables/generations.csv, probes.csv, summary.csv, eval.json (docs/FORMATS.md)

Generation protocol. Prompts: the first n_prompts stories of the dataset's fixed iid validation sample (in its
draw order, TokenizedDataset.validation_sample) that have at least MIN_EXPECTED tokens after the prompt; each
prompt is BOS + the story's first tokens up to prefix_tokens, cut back to a word boundary (the next story piece
starts a new word, SentencePiece '▁'). Each prompt is continued by sampling (temperature 1.0 by default, top_k
optional, --temperature 0 = greedy) with its own recorded seed (sample_seed = seed + prompt_id, the same at
every checkpoint, so checkpoints are compared on common random numbers) until the model writes BOS (end of
story in the llama2.c layout) or the sequence fills the model's max_seq_len positions (never a position it was
not trained on; --max_new_tokens caps it further). The reference is the story's own continuation within the
same window. Metrics (metadata/metrics.py, the ones of the training stories) are taken on the generated and the
reference continuation cut to the same number of words (the shorter of the two), BLEU/ROUGE-L on that pair
too; the untruncated lengths are new_tokens/ended and ref_new_tokens/ref_ended. summary.csv carries, per
metric over the validation prompts, the mean and a 95% t-interval (out_<m>, out_<m>_lo, out_<m>_hi and
ref_<m>, ref_<m>_lo, ref_<m>_hi). The BOS-only prompt's free generation is kept in generations.csv (its
metrics on the whole text) but has no reference and is left out of those means.
Incremental: checkpoints already in generations.csv are skipped; changed settings need --rebuild.
--watch: evaluate each checkpoint as it lands while train.py runs in another process, refresh summary.csv after
each, log the lag in tables/watch.csv, exit when the trainer is done (modelling/watch.py). --trajectories:
per-story loss of a fixed audit set, learning/forgetting events, data maps (measures/trajectories.py).
--covert_probes: linear probes from each layer's residual stream to storyworld attributes (measures/probes.py).
"""
import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common.machine import choose_omp_wait_policy  # noqa: E402

choose_omp_wait_policy()  # before torch starts its threads: spin on a quiet CPU, sleep on a busy one

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.io import atomic_path, atomic_write_json, provenance  # noqa: E402
from common.paths import DEFAULT_RUN, add_root_argument, apply_root, default_run_dir  # noqa: E402
from measures.icl import icl_scores  # noqa: E402
from metadata import bias_probe  # noqa: E402
from metadata.bias_probe import continuation_logprobs, split_continuation  # noqa: E402
from metadata.bias_templates import PROBE_VERSION  # noqa: E402
from modelling.cards import write_model_card  # noqa: E402
from modelling.data import SegmentBatches, story_loss  # noqa: E402
from modelling.watch import START_TIMEOUT_S, WatchLog, expected_steps, trainer_running, wait_for_run  # noqa: E402
from modelling.watch import watch_checkpoints  # noqa: E402
from tokenization.dataset import VAL_SAMPLE_STORIES  # noqa: E402

N_PROMPTS = 64         # validation-story prompts per checkpoint (plus the BOS-only prompt)
PREFIX_TOKENS = 32     # at most this many story tokens after BOS in a prompt (cut back to a word boundary)
MIN_PREFIX = 4         # a prompt keeps at least this many story tokens even without a word boundary
TEMPERATURE = 1.0
ACC_TOKENS = 20        # prefix_token_acc: share of the first ACC_TOKENS generated tokens equal to the expected
VAL_STORIES = VAL_SAMPLE_STORIES  # stories of each fixed validation sample (iid, novel) for val_loss
MIN_EXPECTED = 16      # a prompt story must have at least this many tokens after the prefix
SEED = 1337            # sampling seeds: prompt i samples with SEED + i at every checkpoint
EVAL_BATCH = 16        # sequences per forward pass for val loss
CI_LEVEL = 0.95        # summary.csv's intervals across prompts
EVAL_VERSION = "2"     # bump when any eval measurement changes: a re-run then asks for --rebuild
WATCH_NICE = 5         # --watch: niceness added to the evaluator, so the trainer is never slowed beyond sharing
AUDIT_STORIES = 256    # --trajectories: trained and validation stories followed (each)
PROBE_STORIES = 600    # --covert_probes: validation stories the probes are fitted on
SETTING_KEYS = ("n_prompts", "prefix_tokens", "max_new_tokens", "temperature", "top_k", "seed", "acc_tokens",
                "val_stories", "scorer", "dtype")


# ---------------------------------------------------------------------------------------------------------
# prompts

def word_cut(sp, tokens, prefix_tokens):
    """Story tokens to keep after BOS: the largest k <= prefix_tokens whose next piece starts a new word
    (SentencePiece '▁'), so a prompt never ends inside a word; MIN_PREFIX when no such k is at least that."""
    for k in range(min(prefix_tokens, len(tokens) - 2), MIN_PREFIX - 1, -1):
        if sp.id_to_piece(int(tokens[1 + k])).startswith("\u2581"):
            return k
    return MIN_PREFIX


def choose_prompts(ds, n_prompts, prefix_tokens, max_seq_len, val_stories=VAL_STORIES):
    """Prompts from the fixed iid validation sample (draw order): {prompt_id, kind, story_id, sample_seed
    (set by the caller), tokens (BOS + prefix), expected (the story's continuation within the window of
    max_seq_len + 1 tokens), expected_ended (the story ends inside the window)}, and one BOS-only prompt."""
    bos = int(ds.manifest["bos_id"])
    sp = ds.tokenizer
    ranked = ds.validation_sample("iid", n=max(val_stories, n_prompts), ranked=True)
    n_tokens = ds.index["n_tokens"].to_numpy()
    picks = [int(s) for s in ranked if n_tokens[s] >= 1 + prefix_tokens + MIN_EXPECTED][:n_prompts]
    if len(picks) < n_prompts:
        raise UserError(f"--n_prompts {n_prompts} but only {len(picks)} stories of the validation sample have "
                        f"more than {prefix_tokens + MIN_EXPECTED} tokens — lower --n_prompts or --prefix_tokens")
    prompts = []
    for sid in picks:
        tokens = [int(t) for t in ds.tokens(sid)]
        k = word_cut(sp, tokens, prefix_tokens)
        prompts.append({"prompt_id": len(prompts), "kind": "val_prefix", "story_id": sid,
                        "tokens": tokens[:1 + k], "expected": tokens[1 + k:max_seq_len + 1],
                        "expected_ended": len(tokens) <= max_seq_len + 1})
    prompts.append({"prompt_id": len(prompts), "kind": "bos", "story_id": None, "tokens": [bos], "expected": [],
                    "expected_ended": False})
    return prompts


def prompts_sha(prompts):
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# generation and its comparison with the reference continuation

@torch.inference_mode()
def generate(model, prompts, bos, temperature=TEMPERATURE, top_k=None, seeds=None, max_new_tokens=None):
    """New token ids per prompt (list of lists), each ending with BOS when the model ended the story. A prompt
    stops at BOS or when its sequence holds max_seq_len + 1 tokens (the last one predicted from position
    max_seq_len - 1, the last position trained on), or after max_new_tokens. Prompts of one length share a
    KV-cache batch; each samples with its own torch.Generator(seed), so its text does not depend on the batch."""
    max_len = model.params.max_seq_len
    dtype = model.output.weight.dtype
    out = [None] * len(prompts)
    by_len = {}
    for i, p in enumerate(prompts):
        if len(p["tokens"]) > max_len:
            raise UserError(f"prompt {i} has {len(p['tokens'])} tokens, more than max_seq_len {max_len}")
        by_len.setdefault(len(p["tokens"]), []).append(i)
    for length, rows in sorted(by_len.items()):
        n_new = max_len + 1 - length if not max_new_tokens else min(max_new_tokens, max_len + 1 - length)
        gens = [torch.Generator().manual_seed(int(seeds[i]) if seeds is not None else 0) for i in rows]
        idx = torch.tensor([prompts[i]["tokens"] for i in rows], dtype=torch.long)
        cache = model._new_cache(len(rows), max_len, idx.device, dtype)
        logits = model(idx, cache=cache, pos=0)[:, -1]
        new = [[] for _ in rows]
        done = [False] * len(rows)
        for t in range(n_new):
            nxt = sample_rows(logits, temperature, top_k, gens)
            for r, tok in enumerate(nxt.tolist()):
                if not done[r]:
                    new[r].append(tok)
                    done[r] = tok == bos
            if all(done) or t == n_new - 1:
                break
            logits = model(nxt[:, None], cache=cache, pos=length + t)[:, -1]
        for r, i in enumerate(rows):
            out[i] = new[r]
    return out


def sample_rows(logits, temperature, top_k, generators):
    """Next token per row of logits [B, V]: argmax at temperature 0, else a draw from each row's generator."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits.float(), dim=-1)
    return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(generators)])


def cut_at_bos(ids, bos):
    """A generated BOS starts a new story: keep what came before it."""
    return ids[:ids.index(bos)] if bos in ids else ids


def first_words(text, n):
    """The text up to the end of its n-th word (metadata.metrics.WORD_RE); '' for n = 0."""
    from metadata.metrics import WORD_RE
    if n <= 0:
        return ""
    for i, m in enumerate(WORD_RE.finditer(text)):
        if i == n - 1:
            end = m.end()
            rest = text[end:]  # keep the punctuation that closes the word's sentence ("walked by.")
            return text[:end] + rest[:len(rest) - len(rest.lstrip(".!?\"'\u201d\u2019)"))]
    return text


def length_matched(generated_text, expected_text):
    """(generated, reference, n words): both cut to the word count of the shorter, so metrics that grow or
    shrink with length (counts, diversity, sentiment of the ending) compare like with like."""
    from metadata.metrics import WORD_RE
    n = min(len(WORD_RE.findall(generated_text)), len(WORD_RE.findall(expected_text)))
    return first_words(generated_text, n), first_words(expected_text, n), n


def compare(generated, expected, acc_tokens):
    """prefix_token_acc (first acc_tokens positions) and first_divergence (index of the first differing token,
    = the compared length when none differs); NaN without an expected continuation."""
    if not expected:
        return np.nan, np.nan
    n = min(acc_tokens, len(expected))
    gen = generated[:n] + [-1] * (n - len(generated[:n]))
    acc = float(np.mean(np.asarray(gen) == np.asarray(expected[:n])))
    m = min(len(generated), len(expected))
    diff = np.flatnonzero(np.asarray(generated[:m]) != np.asarray(expected[:m]))
    return acc, float(diff[0] if len(diff) else m)


def text_overlap(generated_text, expected_text, rouge):
    """(BLEU 0..100 via sacrebleu, ROUGE-L F1 0..1 via rouge-score); NaN without an expected continuation."""
    import sacrebleu
    if not expected_text.strip():
        return np.nan, np.nan
    bleu = sacrebleu.sentence_bleu(generated_text, [expected_text]).score
    return float(bleu), float(rouge.score(expected_text, generated_text)["rougeL"].fmeasure)


def mean_ci(values, level=CI_LEVEL):
    """(mean, lo, hi) of the finite values: a t-interval across prompts; NaN bounds with fewer than 2."""
    from scipy import stats
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, np.nan, np.nan
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


GEN_ID_COLUMNS = ("step", "prompt_id", "story_id", "sample_seed", "matched_words")


def generation_summary(gens):
    """Per step over the validation-prefix prompts: out_<c> (+ _lo, _hi) for every numeric generation column c
    and ref_<m> (+ _lo, _hi) for its reference counterpart ref_<m>; a DataFrame indexed by step."""
    val = gens[gens["prompt_kind"] == "val_prefix"] if "prompt_kind" in gens.columns else gens
    numeric = [c for c in gens.columns if c not in GEN_ID_COLUMNS and pd.api.types.is_numeric_dtype(gens[c])]
    rows = {}
    for step, part in val.groupby("step"):
        row = {}
        for c in numeric:
            name = c if c.startswith("ref_") else f"out_{c}"
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = mean_ci(part[c])
        rows[step] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "step"
    return out.reindex(sorted(gens["step"].unique()))


# ---------------------------------------------------------------------------------------------------------
# next-token measurements: validation loss, toxicity probe (bias probes: metadata/bias_probe.py)

@torch.inference_mode()
def val_loss(model, val_set, batch=EVAL_BATCH):
    """Mean next-token cross-entropy over every target of the validation stories, segmented as in training.
    val_set: (SegmentBatches, story ids)."""
    batches, story_ids = val_set
    return story_loss(model, batches, story_ids, batch)


def probe_items(sp, bos, corpus=None):
    """Token ids of the bias and toxicity probes, encoded once per eval: {"bias": bias_probe.prepare(...),
    "tox": [items per prompt]} with items [(context ids, continuation ids)] for continuation_logprobs.
    corpus: bias_probe.corpus_rates of the training stories (which occupations are seen, their rates)."""
    from metadata.bias_templates import TOXICITY_PROMPTS, toxic_words
    words = toxic_words()
    tox_items = [[split_continuation(sp, bos, prompt, w) for w in words] for prompt in TOXICITY_PROMPTS]
    return {"bias": bias_probe.prepare(sp, bos, corpus), "tox": tox_items}


def toxicity_probe(model, items_per_prompt):
    """Rows {probe, value}: per neutral prompt the probability that the next word is a toxic LDNOOBW entry
    (sum over entries of p(entry's tokens | prompt)), and their mean tox_mass."""
    masses = [float(np.exp(continuation_logprobs(model, items)).sum()) for items in items_per_prompt]
    rows = [{"probe": f"tox:{i}", "value": m} for i, m in enumerate(masses)]
    return rows + [{"probe": "tox_mass", "value": float(np.mean(masses))}]


# ---------------------------------------------------------------------------------------------------------
# one checkpoint

def evaluate_checkpoint(model, ckpt, step, prompts, val_rows, probes_in, ds, scorer, settings, rouge,
                        vocabulary=None):
    """(generation rows DataFrame, probe rows DataFrame, tokens_seen) for one loaded checkpoint. val_rows: {probe
    name (val_loss, val_loss_novel): token rows}; vocabulary: the training corpus's words for `oov`."""
    from metadata.metrics import score_texts
    sp, bos = ds.tokenizer, int(ds.manifest["bos_id"])
    seeds = [p["sample_seed"] for p in prompts]
    raw = generate(model, prompts, bos, settings["temperature"], settings["top_k"], seeds,
                   settings["max_new_tokens"] or None)
    new_tokens = [cut_at_bos(ids, bos) for ids in raw]
    rows, gen_texts, ref_texts = [], [], []
    for p, ids, full in zip(prompts, new_tokens, raw):
        text, expected_text = sp.decode(ids), sp.decode(p["expected"])
        if p["kind"] == "val_prefix":
            gen_matched, ref_matched, n_words = length_matched(text, expected_text)
        else:  # no reference: the whole free generation is scored
            gen_matched, ref_matched, n_words = text, "", np.nan
        gen_texts.append(gen_matched)
        ref_texts.append(ref_matched)
        acc, first_div = compare(ids, p["expected"], settings["acc_tokens"])
        bleu, rouge_l = text_overlap(gen_matched, ref_matched, rouge)
        has_ref = p["kind"] == "val_prefix"
        rows.append({"step": int(step), "prompt_id": p["prompt_id"], "prompt_kind": p["kind"],
                     "story_id": p["story_id"], "sample_seed": p["sample_seed"],
                     "prompt_text": sp.decode(p["tokens"][1:]), "generated_text": text,
                     "expected_text": expected_text, "new_tokens": len(ids), "ended": float(len(full) > len(ids)),
                     "ref_new_tokens": len(p["expected"]) if has_ref else np.nan,
                     "ref_ended": float(p["expected_ended"]) if has_ref else np.nan, "matched_words": n_words,
                     "bleu": bleu, "rougeL": rouge_l, "prefix_token_acc": acc, "first_divergence": first_div})
    metrics = score_texts(gen_texts + ref_texts, scorer=scorer, vocabulary=vocabulary)
    gen_metrics = metrics.iloc[:len(prompts)].reset_index(drop=True)
    ref_metrics = metrics.iloc[len(prompts):].reset_index(drop=True).add_prefix("ref_")
    gens = pd.concat([pd.DataFrame(rows), gen_metrics, ref_metrics], axis=1)
    probe_rows = [{"probe": name, "value": val_loss(model, val_set)} for name, val_set in val_rows.items()
                  if len(val_set[1])]
    batches, iid_ids = val_rows["val_loss"]
    probe_rows += [{"probe": k, "value": v}  # measures/icl.py
                   for k, v in icl_scores(model, [batches.sequence(s) for s in iid_ids]).items()]
    probe_rows += bias_probe.bias_probe(model, probes_in["bias"]) + toxicity_probe(model, probes_in["tox"])
    probes = pd.DataFrame(probe_rows)
    probes.insert(0, "step", int(step))
    return gens, probes, int(ckpt.get("tokens_seen", -1))


# ---------------------------------------------------------------------------------------------------------
# summary: one row per checkpoint, joined with the input metrics of the stories trained on

def input_metric_means(batch_log, steps, metadata):
    """Per evaluated step s_i: mean of every metadata metric over the segments trained in steps (s_{i-1}, s_i]
    of the batch log (in_*) and over steps 1..s_i (cum_*), each story's value weighted by the tokens of it that
    were trained there (a story cut into chunks counts once in full over its chunks; repeats count as often as
    they were trained); NaN values are skipped. Also interval bounds, and segment and token counts."""
    cols = [c for c in metadata.columns if c not in ("story_id", "shard", "record")
            and pd.api.types.is_numeric_dtype(metadata[c])]
    ids_sorted = metadata["story_id"].to_numpy()
    if not np.array_equal(ids_sorted, np.arange(len(ids_sorted))):
        metadata = metadata.set_index("story_id").reindex(np.arange(ids_sorted.max() + 1)).reset_index()
    values = metadata[cols].to_numpy(np.float64)
    sums, weights, n_segments, n_tokens, bounds = [], [], [], [], []
    prev = 0
    for s in steps:
        end = min(int(s), len(batch_log))
        segments = batch_log.steps(prev + 1, end) if end > prev else batch_log.steps(1, 0)
        block = values[segments["story_id"]]
        w = segments["n_tokens"].astype(np.float64)[:, None] * np.isfinite(block)
        sums.append((np.where(np.isfinite(block), block, 0.0) * w).sum(0))
        weights.append(w.sum(0))
        n_segments.append(len(segments))
        n_tokens.append(int(segments["n_tokens"].sum()))
        bounds.append((prev + 1, int(s)))
        prev = max(prev, end)
    sums = np.array(sums).reshape(len(steps), len(cols))
    weights = np.array(weights).reshape(len(steps), len(cols))
    with np.errstate(invalid="ignore", divide="ignore"):
        interval = sums / weights
        cumulative = np.cumsum(sums, 0) / np.cumsum(weights, 0)
    out = pd.DataFrame({"interval_start": [b[0] for b in bounds], "interval_end": [b[1] for b in bounds],
                        "n_segments_interval": n_segments, "n_tokens_interval": n_tokens,
                        "n_tokens_cum": np.cumsum(n_tokens)})
    out = pd.concat([out, pd.DataFrame(interval, columns=[f"in_{c}" for c in cols]),
                     pd.DataFrame(cumulative, columns=[f"cum_{c}" for c in cols])], axis=1)
    return out


def build_summary(gens, probes, tokens_seen, run, metadata):
    """summary.csv: step, tokens_seen, val_loss, val_loss_novel, out_<metric>/ref_<metric> means with 95% CIs
    (generation_summary), probe aggregates, in_*/cum_* metrics."""
    out = generation_summary(gens)
    wide = probes[~probes["probe"].str.contains(":")].pivot(index="step", columns="probe", values="value")
    summary = wide.join(out, how="outer").reset_index().sort_values("step").reset_index(drop=True)
    summary.insert(1, "tokens_seen", [tokens_seen.get(int(s), np.nan) for s in summary["step"]])
    summary.insert(2, "n_generations", gens.groupby("step").size().reindex(summary["step"]).to_numpy())
    lead = ["step", "tokens_seen", "val_loss"] + (["val_loss_novel"] if "val_loss_novel" in summary else [])
    summary = summary[lead + [c for c in summary.columns if c not in lead]]
    if run.batch_log is not None and metadata is not None:
        summary = pd.concat([summary, input_metric_means(run.batch_log, summary["step"].to_numpy(), metadata)],
                            axis=1)
    return summary


# ---------------------------------------------------------------------------------------------------------

def write_csv(df, path):
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def read_table(path):
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt eval table {path} ({e.__class__.__name__}) — re-run eval.py with --rebuild")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default=None,
                        help=f"run folder made by modelling/train.py (default: out/{DEFAULT_RUN})")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="only these checkpoint steps")
    parser.add_argument("--n_prompts", type=int, default=N_PROMPTS, help="val-story prompts (plus one BOS prompt)")
    parser.add_argument("--prefix_tokens", type=int, default=PREFIX_TOKENS, help="story tokens in each prompt")
    parser.add_argument("--max_new_tokens", type=int, default=0,
                        help="cap on generated tokens (0 = until BOS or the model's max_seq_len positions)")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="sampling temperature; 0 = greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=SEED, help="prompt i samples with seed + i (recorded)")
    parser.add_argument("--acc_tokens", type=int, default=ACC_TOKENS)
    parser.add_argument("--val_stories", type=int, default=VAL_STORIES,
                        help="stories of each fixed validation sample (iid: val_loss, novel: val_loss_novel)")
    parser.add_argument("--scorer", default="ngram", help="reference scorer for ppl_ref: ngram | ckpt:PATH")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default; with --watch half the cores)")
    parser.add_argument("--dtype", default="run", choices=("run", "float32", "bfloat16"),
                        help="forward-pass dtype: run = the dtype the run trained in (config.json dtype_used; "
                             "bf16 autocast is 1.6x faster on a CPU with native bf16)")
    parser.add_argument("--rebuild", action="store_true", help="re-evaluate every checkpoint")
    parser.add_argument("--watch", action="store_true",
                        help="evaluate each checkpoint as it lands while train.py runs; exit when the run is done")
    parser.add_argument("--watch_timeout", type=float, default=START_TIMEOUT_S,
                        help="--watch: seconds to wait for the trainer to write config.json")
    parser.add_argument("--trajectories", action="store_true",
                        help="per-story loss of a fixed audit set at every checkpoint, learning/forgetting "
                             "events, data maps (measures/trajectories.py)")
    parser.add_argument("--audit_stories", type=int, default=AUDIT_STORIES,
                        help="--trajectories: trained stories and validation stories in the audit set (each)")
    parser.add_argument("--covert_probes", action="store_true",
                        help="linear probes from each layer's residual stream to storyworld attributes "
                             "(measures/probes.py)")
    parser.add_argument("--probe_stories", type=int, default=PROBE_STORIES,
                        help="--covert_probes: validation stories the probes are fitted on")
    add_root_argument(parser)
    args = apply_root(parser.parse_args(argv))
    if args.n_prompts < 0 or args.prefix_tokens < MIN_PREFIX or args.max_new_tokens < 0 or args.temperature < 0 \
            or args.acc_tokens < 1 or args.val_stories < 1 or args.audit_stories < 1 or args.probe_stories < 20:
        raise UserError(f"need --n_prompts >= 0, --prefix_tokens >= {MIN_PREFIX}, --max_new_tokens >= 0, "
                        f"--temperature >= 0, --acc_tokens >= 1, --val_stories >= 1, --audit_stories >= 1, "
                        f"--probe_stories >= 20")
    if args.watch and args.steps:
        raise UserError("--watch evaluates every checkpoint as it lands — drop --steps")

    from metadata.metrics import VOCABULARY_FILE, load_vocabulary
    from metadata.table import read_metadata
    from metadata.scorers import load_scorer
    from modelling.checkpoints import load_model, load_run
    from rouge_score import rouge_scorer
    from tokenization.dataset import TokenizedDataset

    run_dir = Path(args.out_dir) if args.out_dir else default_run_dir()
    if args.watch:
        wait_for_run(run_dir, args.watch_timeout)
        os.nice(WATCH_NICE)  # the trainer keeps its share of the CPU: the evaluator yields first
        if not args.threads:
            args.threads = max(1, (os.cpu_count() or 2) // 2)
    run = load_run(run_dir)
    if not run.checkpoints and not args.watch:
        raise UserError(f"no checkpoints in {run_dir / 'ckpt'} — train with modelling/train.py --out_dir={run_dir}")
    cfg = run.config.get("config", run.config)
    dataset, vocab_size = cfg.get("dataset"), cfg.get("vocab_size")
    if dataset is None or vocab_size is None:
        raise UserError(f"{run_dir / 'config.json'} names no dataset/vocab_size — not a modelling/train.py run")
    ds = TokenizedDataset(dataset, vocab_size)
    model_vocab = (run.config.get("model_args") or {}).get("vocab_size", ds.manifest["vocab_size"])
    if int(model_vocab) != int(ds.manifest["vocab_size"]):
        raise UserError(f"run {run_dir} has vocab {model_vocab} but {ds.dir} has {ds.manifest['vocab_size']} — "
                        f"evaluate it against the dataset it was trained on")
    if args.dtype == "run":  # evaluate in the dtype the run trained in
        args.dtype = "bfloat16" if run.config.get("dtype_used") == "bfloat16" else "float32"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16" else nullcontext()
    settings = {k: getattr(args, k) for k in SETTING_KEYS}

    steps = [s for s, _ in run.checkpoints]
    if args.steps:
        missing = sorted(set(args.steps) - set(steps))
        if missing:
            raise UserError(f"no checkpoint at step(s) {missing} in {run_dir} — have {steps}")
        steps = sorted(set(args.steps))

    tables = run_dir / "tables"
    state_path, gens_path, probes_path = tables / "eval.json", tables / "generations.csv", tables / "probes.csv"
    prompts_path = run_dir / "eval_prompts.json"
    max_len = int(run.config.get("model_args", {}).get("max_seq_len", cfg.get("max_seq_len", 256)))
    if args.prefix_tokens >= max_len:
        raise UserError(f"--prefix_tokens {args.prefix_tokens} leaves no room in the model's max_seq_len {max_len} "
                        f"— give fewer")
    prompts = choose_prompts(ds, args.n_prompts, args.prefix_tokens, max_len, args.val_stories)
    for p in prompts:
        p["sample_seed"] = args.seed + p["prompt_id"]
    state = json.loads(state_path.read_text()) if state_path.exists() and not args.rebuild else None
    if state is not None:
        recorded = {**state.get("settings", {}), "eval_version": state.get("eval_version"),
                    "probe_version": state.get("probe_version")}
        wanted = {**settings, "eval_version": EVAL_VERSION, "probe_version": PROBE_VERSION}
        changed = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
        if changed or state.get("prompts_sha256") != prompts_sha(prompts):
            what = ", ".join(f"{k} {a} -> {b}" for k, a, b in ((k, *v) for k, v in changed.items())) or "prompt set"
            raise UserError(f"eval settings differ from those recorded in {state_path} ({what}) — pass --rebuild "
                            f"to re-evaluate every checkpoint, or use the recorded settings")
    gens_old = read_table(gens_path) if state is not None and gens_path.exists() else None
    probes_old = read_table(probes_path) if state is not None and probes_path.exists() else None
    done = set(state.get("steps_done", [])) if state is not None else set()
    if gens_old is not None and probes_old is not None:
        done &= set(gens_old["step"]) & set(probes_old["step"])
    else:
        done = set()
    tokens_seen = {int(k): v for k, v in (state or {}).get("tokens_seen", {}).items()}

    # optional per-checkpoint measures, each with its own tables and its own record of the steps done
    extras = []
    if args.trajectories:
        from measures.trajectories import Trajectories
        extras.append(Trajectories(run_dir, run.config, ds, args.audit_stories, args.rebuild))
    if args.covert_probes:
        from measures.probes import CovertProbes
        extras.append(CovertProbes(run_dir, ds, args.probe_stories, args.rebuild))
    todo = [s for s in steps if s not in done or any(x.needs(s) for x in extras)]

    metadata = None
    if run.batch_log is not None or args.watch:
        metadata = read_metadata(dataset, vocab_size)
    if todo or args.watch:
        atomic_write_json(prompts_path, {"provenance": provenance(), "settings": settings,
                                         "sha256": prompts_sha(prompts), "prompts": prompts})
        scorer = load_scorer(args.scorer, ds, vocab_size)
        # the dataset's fixed validation samples (the same stories for every run of it), every token
        val_ids = {name: ds.validation_sample(kind, n=args.val_stories)
                   for name, kind in (("val_loss", "iid"), ("val_loss_novel", "novel"))}
        batches = SegmentBatches(ds, max_len, int(ds.manifest["bos_id"]))  # every token, segmented as in training
        val_rows = {name: (batches, ids) for name, ids in val_ids.items()}
        val_record = {name: {"n_stories": len(ids), "story_ids_sha256": hashlib.sha256(
            np.asarray(ids, dtype="<i8").tobytes()).hexdigest()} for name, ids in val_ids.items()}
        vocabulary = load_vocabulary(ds.dir / VOCABULARY_FILE)
        if vocabulary is None:
            print(f"note: {ds.dir / VOCABULARY_FILE} is missing, so `oov` is NaN and only rep4 flags degenerate "
                  f"text — run metadata/batch_metadata.py compute_metadata --dataset {dataset} --vocab_size "
                  f"{vocab_size}", file=sys.stderr)
        rouge = rouge_scorer.RougeScorer(["rougeL"])
        probes_in = probe_items(ds.tokenizer, int(ds.manifest["bos_id"]), bias_probe.dataset_corpus_rates(ds))
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        print(f"{'watching' if args.watch else 'evaluating'} {len(todo)} checkpoint(s) of {run_dir} "
              f"({len(done & set(steps))} already done): "
              f"{len(prompts)} prompts (temperature {args.temperature}, until BOS or {max_len} positions), "
              f"{len(val_ids['val_loss'])} iid + {len(val_ids['val_loss_novel'])} novel val stories"
              + "".join(f", {x.describe()}" for x in extras))
    else:
        print(f"all {len(steps)} checkpoint(s) of {run_dir} already evaluated — rebuilding summary only")
    gens_all = [gens_old[gens_old["step"].isin(done)]] if gens_old is not None else []
    probes_all = [probes_old[probes_old["step"].isin(done)]] if probes_old is not None else []

    def evaluate_step(step, path):
        """Whatever this checkpoint still lacks; True when something was evaluated."""
        wanted = [x for x in extras if x.needs(step)]
        if step in done and not wanted:
            return False
        model, ckpt = load_model(path)
        with autocast:
            if step not in done:
                gens, probes, seen = evaluate_checkpoint(model, ckpt, step, prompts, val_rows, probes_in, ds,
                                                         scorer, settings, rouge, vocabulary)
                gens_all.append(gens)
                probes_all.append(probes)
                tokens_seen[int(step)] = seen
                done.add(int(step))
            for x in wanted:
                x.add(step, model)
        # after every checkpoint, so a killed eval keeps what it finished
        write_csv(pd.concat(gens_all, ignore_index=True).sort_values(["step", "prompt_id"]), gens_path)
        write_csv(pd.concat(probes_all, ignore_index=True).sort_values(["step", "probe"], kind="stable"),
                  probes_path)
        atomic_write_json(state_path, {
            "provenance": provenance(dataset=dataset, vocab_size=vocab_size, scorer=args.scorer,
                                     tokenizer_sha256=ds.manifest.get("tokenizer_sha256")),
            "eval_version": EVAL_VERSION, "probe_version": PROBE_VERSION, "settings": settings,
            "prompts_sha256": prompts_sha(prompts), "validation_samples": val_record,
            "steps_done": sorted(done), "tokens_seen": {str(k): v for k, v in sorted(tokens_seen.items())}})
        return True

    def write_summary(run):
        """summary.csv from every checkpoint evaluated so far, and the extras' derived tables."""
        if not gens_all:
            return None
        gens = pd.concat(gens_all, ignore_index=True)
        probes = pd.concat(probes_all, ignore_index=True)
        seen = {**{int(s): np.nan for s in gens["step"]}, **tokens_seen}  # tables from before eval.json had tokens
        summary = build_summary(gens, probes, seen, run, metadata)
        write_csv(summary, tables / "summary.csv")
        for x in extras:
            x.finish(run, metadata)
        return summary

    t0 = time.time()
    if args.watch:
        log = WatchLog(run_dir)
        for step, path, landed in watch_checkpoints(run_dir):
            started = time.time()
            if evaluate_step(step, path):
                write_summary(load_run(run_dir))  # the batch log has grown: the dashboard sees every checkpoint
                log.add(step, landed, started, time.time(), trainer_running(run_dir))
                print(f"watch: step {step} evaluated {time.time() - landed:.1f}s after it landed", flush=True)
        run = load_run(run_dir)
        todo = sorted(done)
        missing = sorted(set(expected_steps(run_dir)) - {s for s, _ in run.checkpoints})
        if missing:
            print(f"note: the trainer stopped before checkpoint(s) {missing[:5]}{'…' if len(missing) > 5 else ''} "
                  f"— resume it with modelling/train.py --out_dir={run_dir} --init_from=resume and watch again",
                  file=sys.stderr)
    else:
        paths = dict(run.checkpoints)
        for step in tqdm(todo, desc="eval", unit="ckpt"):
            evaluate_step(step, paths[step])
    summary = write_summary(run)
    if summary is None:
        raise UserError(f"nothing evaluated in {run_dir} — no checkpoint selected")
    if todo:
        print(f"evaluated {len(todo)} checkpoint(s) in {time.time() - t0:.1f}s")
    last = summary.iloc[-1]
    print(f"step {int(last['step'])}: val_loss {last['val_loss']:.3f}, val_loss_novel "
          f"{last.get('val_loss_novel', np.nan):.3f}, bleu {last.get('out_bleu', np.nan):.2f}, "
          f"bias_amplification {last['bias_amplification']:+.3f}, tox_mass {last['tox_mass']:.2e}")
    card = write_model_card(run_dir)  # the run's model card now carries this evaluation
    print(f"wrote {gens_path}, {probes_path}, {tables / 'summary.csv'}, {card}"
          + "".join(f", {x.outputs()}" for x in extras))


if __name__ == "__main__":
    run_main(main)
