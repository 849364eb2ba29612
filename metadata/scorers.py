"""Reference perplexity scorers: the `ppl_ref` column for training stories (compute_metadata) and for
generated text (eval.py), so both are scored by the same model.

    scorer = load_scorer("ngram", "storyworld", 512)        # or "ckpt:out/RUN/ckpt/step_000512.pt"
    scorer.spec                                             # what to record next to the numbers
    scorer.perplexity([token_ids, ...]) -> np.ndarray       # per sequence; a leading BOS is context only
    scorer.encode(["text", ...]) -> [np.ndarray, ...]       # BOS + tokens with the dataset's tokenizer

`ngram` (default) is the interpolated Kneser-Ney token trigram of metadata/ngram.py, fitted once on (a capped
sample of) the train split and saved as data/<raw>/tok<V>/ngram.npz + ngram.json; later calls reuse it while
the tokenized dataset is unchanged. `ckpt:PATH` scores with any checkpoint of modelling/train.py (batched
forward, bf16 autocast on CPU, CUDA when present).
"""
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.errors import UserError
from common.ids import tokenized_id
from common.io import atomic_path, atomic_write_json, provenance

NGRAM_MAX_TOKENS = 20_000_000  # fit on at most this many train tokens (the fit counts 2M at a time)
NGRAM_SAMPLE_SEED = 0  # which train stories make the capped sample (a seeded permutation)
SCORE_BATCH_TOKENS = 2_000_000  # n-gram: tokens scored per vectorised call
CKPT_BATCH = 64  # checkpoint scorer: sequences per forward pass


def _dataset_fingerprint(ds):
    """What the n-gram depends on: tokenizer, token shards and split — all in the tokenized dataset's id."""
    return {"tokenized_id": tokenized_id(ds.dir)}


class _Scorer:
    spec = ""

    def __init__(self, ds):
        self.ds = ds
        self.bos_id = int(ds.manifest.get("bos_id", 1))

    def encode(self, texts):
        ids = self.ds.tokenizer.encode([t if isinstance(t, str) else "" for t in texts])
        return [np.asarray([self.bos_id] + x, dtype=np.int64) for x in ids]


class NgramScorer(_Scorer):
    def __init__(self, ds, lm, info):
        super().__init__(ds)
        self.lm, self.info = lm, info
        self.spec = "ngram"

    def perplexity(self, sequences):
        sequences = list(sequences)
        out, start = [], 0
        while start < len(sequences):  # batches of ~SCORE_BATCH_TOKENS keep memory flat on big corpora
            end, tokens = start, 0
            while end < len(sequences) and (end == start or tokens < SCORE_BATCH_TOKENS):
                tokens += len(sequences[end])
                end += 1
            out.append(self.lm.perplexity(sequences[start:end]))
            start = end
        return np.concatenate(out) if out else np.zeros(0)


class CheckpointScorer(_Scorer):
    def __init__(self, ds, path, device=None):
        import torch

        from modelling.checkpoints import load_model
        super().__init__(ds)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, ckpt = load_model(path, device=self.device)
        self.spec = f"ckpt:{path}"
        self.step = ckpt.get("step")
        self.max_len = int(self.model.params.max_seq_len) + 1  # the first max_seq_len+1 tokens, as in training
        vocab = self.ds.tokenizer.get_piece_size()
        if self.model.params.vocab_size < vocab:
            raise UserError(f"checkpoint {path} has vocab {self.model.params.vocab_size} but the dataset's tokenizer "
                            f"has {vocab} pieces — score with a checkpoint trained on this tokenized dataset")

    def perplexity(self, sequences):
        import torch
        import torch.nn.functional as F
        seqs = []
        for s in sequences:
            s = np.asarray(s, dtype=np.int64)
            if len(s) == 0 or s[0] != self.bos_id:
                s = np.concatenate([[self.bos_id], s])
            seqs.append(s[:self.max_len])
        out = np.full(len(seqs), np.nan)
        order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths share a batch: less padding
        cuda = self.device.startswith("cuda")
        for i in tqdm(range(0, len(order), CKPT_BATCH), desc="ckpt ppl", unit="batch",
                      disable=len(order) < 50 * CKPT_BATCH):
            batch = [seqs[j] for j in order[i:i + CKPT_BATCH]]
            width = max(len(s) for s in batch)
            if width < 2:
                continue
            x = torch.zeros(len(batch), width - 1, dtype=torch.long)
            y = torch.full((len(batch), width - 1), -1, dtype=torch.long)
            for r, s in enumerate(batch):
                x[r, :len(s) - 1] = torch.from_numpy(s[:-1])
                y[r, :len(s) - 1] = torch.from_numpy(s[1:])
            x, y = x.to(self.device), y.to(self.device)
            with torch.no_grad(), torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16):
                logits = self.model(x)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction="none")
            n = (y >= 0).sum(1)
            mean = (nll.sum(1) / n.clamp(min=1)).cpu().numpy()
            for r, j in enumerate(order[i:i + CKPT_BATCH]):
                out[j] = math.exp(mean[r]) if n[r] > 0 else math.nan
        return out


def _train_sample(ds, max_tokens, seed=NGRAM_SAMPLE_SEED):
    """Train story ids whose tokens make the n-gram's fitting set: all of them, or a seeded random subset of
    about max_tokens tokens (sorted, so the shards are read in order)."""
    train = ds.story_ids("train")
    n_tokens = ds.index["n_tokens"].to_numpy()[train]
    if n_tokens.sum() <= max_tokens:
        return train
    order = np.random.default_rng(seed).permutation(len(train))
    keep = order[:int(np.searchsorted(np.cumsum(n_tokens[order]), max_tokens)) + 1]
    return np.sort(train[keep])


def fit_ngram(ds, max_tokens=NGRAM_MAX_TOKENS):
    """Fit the KN trigram on the train split of TokenizedDataset ds and save ngram.npz + ngram.json."""
    from metadata.ngram import KneserNeyTrigram
    ids = _train_sample(ds, max_tokens)
    if len(ids) == 0:
        raise UserError(f"{ds.dir}: the train split is empty — re-run pretokenize with more stories")
    # a generator: fit() takes FIT_CHUNK_TOKENS at a time, so no per-story object outlives its chunk; read shard
    # by shard, releasing each shard's pages (the sample touches every shard: 0.6 GB of RSS per 1M stories)
    sequences = (tokens for _, tokens in tqdm(ds.tokens_by_shard(ids), total=len(ids), unit="story",
                                              desc="n-gram: read train stories", disable=len(ids) < 20_000,
                                              mininterval=1.0))
    vocab = ds.tokenizer.get_piece_size()
    lm = KneserNeyTrigram.fit(sequences, vocab, int(ds.manifest.get("bos_id", 1)))
    npz = ds.dir / "ngram.npz"
    with atomic_path(npz, suffix=".npz") as tmp:
        lm.save(tmp)
    info = provenance(model="interpolated Kneser-Ney token trigram (metadata/ngram.py)",
                      vocab_size=vocab, bos_id=lm.bos_id, n_train_stories=int(len(ids)),
                      n_fit_targets=int(lm.a["n_targets"]), n_trigrams=lm.n_trigrams,
                      discounts=[float(d) for d in lm.a["discounts"]], max_tokens=max_tokens,
                      sample_seed=NGRAM_SAMPLE_SEED, dataset=_dataset_fingerprint(ds))
    atomic_write_json(ds.dir / "ngram.json", info)
    print(f"fitted n-gram on {len(ids):,} train stories ({int(lm.a['n_targets']):,} tokens, "
          f"{lm.n_trigrams:,} trigrams) -> {npz}")
    return lm, info


def load_ngram(ds):
    """The saved n-gram of ds when it matches the dataset, else a freshly fitted (and saved) one."""
    from metadata.ngram import KneserNeyTrigram
    npz, meta = ds.dir / "ngram.npz", ds.dir / "ngram.json"
    if npz.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("dataset") == json.loads(json.dumps(_dataset_fingerprint(ds))):
                return KneserNeyTrigram.load(npz), info
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable or stale: fit again below
    return fit_ngram(ds)


def load_scorer(spec, dataset, vocab_size, device=None):
    """A scorer for spec 'ngram' or 'ckpt:PATH' over the tokenized dataset (dataset, vocab_size)."""
    from tokenization.dataset import TokenizedDataset
    ds = dataset if not isinstance(dataset, str) else TokenizedDataset(dataset, vocab_size)
    spec = (spec or "ngram").strip()
    if spec == "ngram":
        lm, info = load_ngram(ds)
        return NgramScorer(ds, lm, info)
    if spec.startswith("ckpt:"):
        path = Path(spec[len("ckpt:"):])
        return CheckpointScorer(ds, path, device)
    raise UserError(f"unknown scorer '{spec}' — use 'ngram' or 'ckpt:PATH' (a checkpoint from modelling/train.py)")
