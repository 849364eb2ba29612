"""Stage 2: train a SentencePiece vocabulary and turn raw story shards into token shards with story ids.

    python tokenization/pretokenize.py train_vocab [--dataset storyworld] [--vocab_size 512] [--max_stories 50000]
    python tokenization/pretokenize.py pretokenize [--dataset storyworld] [--vocab_size 512] [--tokenizer PATH (N=0)]
    python tokenization/pretokenize.py pretokenize --dataset neutral --vocab_size 2048 --tokenizer_from biased

Writes data/<raw>/tok<N>/: tokenizer.model/.vocab, per raw shard a flat little-endian uint16 .bin with BOS
before every story (llama2.c layout), index.parquet (story_id, shard, record, offset, n_tokens, split) and
manifest.json (written last: a folder without it is incomplete). Story ids are 0..N-1 over sorted shard names
and record order; the raw shards' SHA-256 are recorded and every later run checks them, so a changed shard is
an error rather than a silent re-numbering.

Splits: `val_novel` for records whose generator marked them (`split_hint: "val_novel"`, storyworld's held-out
entity combinations; a story with the same text as one goes there too), `facts` for a fact set's documents
(`split_hint: "facts"`, download/fact_set.py; no sampler selects them), else `val` by the text hash rule
(SPLIT_RULE), else `train`. --val_fraction defaults to the dataset card's `val_fraction` (storyworld: 0.1) or
0.02. The sentence overlap of each validation split with train (share of its sentences, as metadata.metrics
splits them, that occur verbatim in a train story) goes into the manifest and the card's "Validation splits"
section.

Shared tokenizer: `--tokenizer_from OTHER` encodes this dataset with data/<OTHER>/tok<N>/tokenizer.model (copied
in; the manifest records {"dataset": OTHER, "tokenizer_sha256"} as `tokenizer_from`), so corpora that differ only
in a generator knob share one vocab and a model can move between them (modelling/train.py --init_from refuses
a checkpoint whose tokenizer differs from the dataset's).
"""
import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sentencepiece as spm  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.card import read_card, update_card_section  # noqa: E402
from modelling.cards import refresh_dataset_card  # noqa: E402
from common.errors import UserError, run_main  # noqa: E402
from common.io import (atomic_path, atomic_write_json, atomic_write_text, provenance, removed_if_failed,  # noqa: E402
                       sha256_file)
from common.paths import DEFAULT_DATASET, DEFAULT_VOCAB, add_root_argument, apply_root, raw_dir, tok_dir  # noqa: E402
from tokenization.dataset import VALIDATION_SAMPLE  # noqa: E402

MAX_VOCAB = 65535          # token ids are stored as uint16
VAL_FRACTION = 0.02        # share of stories in the validation split, unless the dataset card names another
ENCODE_BATCH = 2048        # stories per SentencePiece encode call (one progress-bar step)
WORD_CACHE_MAX = 1_000_000  # distinct words kept by StoryEncoder before it starts a fresh cache (memory bound)
SPLIT_RULE = ("val if int.from_bytes(blake2b(story.strip().encode('utf-8'), digest_size=8).digest(), 'big') "
              "/ 2**64 < val_fraction, else train (text-based: identical stories share a split); records with "
              "split_hint 'val_novel', and stories with the same text, are val_novel")
# llama2.c's train_vocab settings, plus remove_extra_whitespaces=False (as in Llama 2's tokenizer) so that
# decoding a story's tokens gives back its exact text
SPM_SETTINGS = dict(model_type="bpe", input_format="text", character_coverage=1.0,
                    split_digits=True, allow_whitespace_only_pieces=True, byte_fallback=True,
                    unk_surface=r" \342\201\207 ", normalization_rule_name="identity",
                    remove_extra_whitespaces=False, input_sentence_size=200_000, shuffle_input_sentence=True,
                    max_sentence_length=16384)


def check_vocab_size(n, allow_zero=False):
    if n > MAX_VOCAB:
        raise UserError(f"--vocab_size {n} is above {MAX_VOCAB}: token ids are stored as uint16 — "
                        f"use a smaller vocab")
    if n < 0 or (n == 0 and not allow_zero):
        raise UserError(f"--vocab_size {n} is invalid — give a positive size (0 only with pretokenize --tokenizer)")


def spm_failure(vocab_size, n_stories, message):
    """SentencePiece's training error as one line that says which way to move the vocab size."""
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        return (f"--vocab_size {vocab_size} is too small for this corpus: its characters plus the 256 byte "
                f"pieces need at least {too_small.group(1)} — try a larger vocab (>= {too_small.group(1)})")
    too_large = re.search(r"too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_large:
        return (f"--vocab_size {vocab_size} is too large for {n_stories} stories: SentencePiece can find at most "
                f"{too_large.group(1)} pieces — try a smaller vocab (<= {too_large.group(1)}) or more stories")
    return f"SentencePiece training failed for --vocab_size {vocab_size} ({message}) — try another vocab size"


def raw_shards(dataset):
    """Sorted raw shard paths of a dataset; a clear error naming the download stage when there are none."""
    folder = raw_dir(dataset)
    shards = sorted(folder.glob("*.json"))
    if not shards:
        raise UserError(f"no raw shards (*.json) in {folder} — run: python download/download_datasets.py "
                        f"{'tinystories' if dataset == 'tinystories' else 'storyworld --name ' + dataset}")
    return shards


def load_stories(path, hints=False):
    """The stripped story texts of one raw shard, in record order; with hints=True also each record's
    split_hint (None when absent)."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"raw shard {path} is corrupt ({e}) — re-run the download stage")
    if not isinstance(records, list):
        raise UserError(f"raw shard {path} is not a JSON list of records — re-run the download stage")
    stories = []
    for n, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("story"), str):
            raise UserError(f"raw shard {path} record {n} has no string 'story' field — re-run the download stage")
        stories.append(r["story"].strip())
    return (stories, [r.get("split_hint") for r in records]) if hints else stories


def story_hash(story):
    return hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest()


def story_hash_u64(stories):
    """The stories' hashes as uint64 (8 bytes a story: the twin check at 5M stories holds 40 MB)."""
    return np.fromiter((int.from_bytes(story_hash(s), "big") for s in stories), dtype=np.uint64, count=len(stories))


def is_val(hash_u64, val_fraction):
    """The iid validation rule on a story's hash (story_hash_u64)."""
    return int(hash_u64) / 2 ** 64 < val_fraction


def split_of(hash_u64, hint, val_fraction):
    if hint in ("val_novel", "facts"):  # facts: a fact set's documents, trained only by injection (issue 18)
        return hint
    return "val" if is_val(hash_u64, val_fraction) else "train"


def sentence_keys(stories):
    """(per-sentence hash, per-sentence story position) for the stories' sentences (metadata.metrics.SENT_RE
    spans that hold a word, stripped): the raw material of the sentence-overlap figures."""
    from metadata.metrics import SENT_RE, WORD_RE
    keys, owner = [], []
    for i, story in enumerate(stories):
        for sent in SENT_RE.findall(story):
            if WORD_RE.search(sent):
                keys.append(hash(sent.strip()))
                owner.append(i)
    return np.asarray(keys, dtype=np.int64), np.asarray(owner, dtype=np.int64)


class SentenceOverlap:
    """Share of the val and val_novel sentences that occur verbatim in a train story, counted shard by shard.

    Train sentences are kept as distinct hashes with their counts (merged MERGE_KEYS at a time), the other
    splits' sentences with their story; a train story later found to be a twin of a val_novel story (same text,
    so the same sentences) is taken out of the counts and its sentences join val_novel."""
    MERGE_KEYS = 2_000_000

    def __init__(self):
        self.keys, self.counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.pending = []
        self.other_keys, self.other_owner = [], []

    def _merge(self, extra_keys):
        keys = np.concatenate([self.keys, extra_keys])
        counts = np.concatenate([self.counts, np.ones(len(extra_keys), np.int64)])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts, minlength=len(self.keys)).astype(np.int64)

    def add(self, stories, first_id, splits):
        """One shard's stories, their ids first_id.. and their splits (before twins are resolved)."""
        keys, owner = sentence_keys(stories)
        is_train = np.asarray(splits, dtype=object)[owner] == "train"
        self.pending.append(keys[is_train])
        self.other_keys.append(keys[~is_train])
        self.other_owner.append(owner[~is_train] + first_id)
        if sum(map(len, self.pending)) >= self.MERGE_KEYS:
            self._merge(np.concatenate(self.pending))
            self.pending = []

    def result(self, splits, was_train, hashes):
        """{split: overlap} from the final splits (index order), whether each story was train while counted, and
        the stories' hashes (story_hash_u64)."""
        if self.pending:
            self._merge(np.concatenate(self.pending))
            self.pending = []
        keys = np.concatenate(self.other_keys) if self.other_keys else np.zeros(0, np.int64)
        owner = np.concatenate(self.other_owner) if self.other_owner else np.zeros(0, np.int64)
        splits = np.asarray(splits, dtype=object)
        twins = np.flatnonzero(was_train & (splits != "train"))  # counted as train, now val_novel
        if len(twins):
            twin_keys, twin_owner = self._twin_sentences(twins, keys, owner, hashes)
            at = np.searchsorted(self.keys, twin_keys)
            np.subtract.at(self.counts, at, 1)
            keys, owner = np.concatenate([keys, twin_keys]), np.concatenate([owner, twin_owner])
        train = self.keys[self.counts > 0]
        out = {}
        for name in ("val", "val_novel"):
            mine = keys[splits[owner] == name]
            out[name] = round(float(np.isin(mine, train).mean()), 4) if len(mine) else None
        return out

    @staticmethod
    def _twin_sentences(twins, keys, owner, hashes):
        """The sentences of each twin story: those of a non-train story with the same text (same hash). owner is
        ascending (shards in order, stories in order within one), so a story's sentences are one slice."""
        candidates = np.unique(owner)
        candidates = candidates[np.isin(hashes[candidates], hashes[twins])]  # the stories twins copy
        source = dict(zip(hashes[candidates[::-1]].tolist(), candidates[::-1].tolist()))  # first story per hash
        twin_keys, twin_owner = [], []
        for t in twins:
            sid = source[int(hashes[t])]
            mine = keys[np.searchsorted(owner, sid, "left"):np.searchsorted(owner, sid, "right")]
            twin_keys.append(mine)
            twin_owner.append(np.full(len(mine), t, np.int64))
        return np.concatenate(twin_keys), np.concatenate(twin_owner)


# ---------------------------------------------------------------------------------------------------------
# train_vocab

def cmd_train_vocab(args):
    check_vocab_size(args.vocab_size)
    shards = raw_shards(args.dataset)
    out = tok_dir(args.dataset, args.vocab_size)
    model = out / "tokenizer.model"
    settings = {**SPM_SETTINGS, "vocab_size": args.vocab_size, "max_stories": args.max_stories}
    record_path = out / "tokenizer_train.json"
    shard_hashes = {p.name: sha256_file(p) for p in shards}
    if model.exists() and record_path.exists():
        old = json.loads(record_path.read_text())
        if old.get("settings") == settings and old.get("shards") == shard_hashes:
            print(f"{model}: up to date (same shards and settings) — nothing to do")
            return

    # a capped sample of stories, taken from the first shards in order (llama2.c trains on the first shards)
    stories = []
    for p in tqdm(shards, desc="read shards", unit="shard"):
        stories += load_stories(p)
        if len(stories) >= args.max_stories:
            break
    stories = stories[:args.max_stories]
    with removed_if_failed(out):  # a failed first training leaves no empty tok<V>/ behind
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".train_vocab.", dir=out))
        try:
            text_file = tmp / "sample.txt"
            text_file.write_text("\n".join(stories) + "\n", encoding="utf-8")
            print(f"training a {args.vocab_size}-piece BPE vocab on {len(stories)} stories "
                  f"({text_file.stat().st_size / 1e6:.1f} MB)")
            spm.SentencePieceTrainer.train(input=str(text_file), model_prefix=str(tmp / "tokenizer"),
                                           vocab_size=args.vocab_size, num_threads=os.cpu_count(),
                                           minloglevel=2, **{k: v for k, v in SPM_SETTINGS.items()})
            os.replace(tmp / "tokenizer.vocab", out / "tokenizer.vocab")
            os.replace(tmp / "tokenizer.model", model)
        except RuntimeError as e:
            raise UserError(spm_failure(args.vocab_size, len(stories), str(e))) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(record_path, {"provenance": provenance(), "dataset": args.dataset, "settings": settings,
                                    "n_stories": len(stories), "shards": shard_hashes,
                                    "tokenizer_sha256": sha256_file(model)})
    print(f"wrote {model} and {out / 'tokenizer.vocab'}")


# ---------------------------------------------------------------------------------------------------------
# pretokenize

def copy_tokenizer(src, out):
    """Copy tokenizer.model in (atomically) and write its .vocab listing."""
    model = out / "tokenizer.model"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(model) as tmp:
        shutil.copyfile(src, tmp)
    sp = load_sp(model)
    atomic_write_text(out / "tokenizer.vocab", "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n"
                                                       for i in range(sp.vocab_size())))


def tokenizer_from_source(args):
    """The tokenizer.model --tokenizer_from names (checked before any work)."""
    if args.tokenizer:
        raise UserError("give either --tokenizer or --tokenizer_from, not both")
    if args.tokenizer_from == args.dataset:
        raise UserError(f"--tokenizer_from {args.tokenizer_from} is this dataset — drop the flag to use its own "
                        f"tokenizer")
    src = tok_dir(args.tokenizer_from, args.vocab_size) / "tokenizer.model"
    if not src.exists():
        raise UserError(f"tokenizer not found: {src} — run: python tokenization/pretokenize.py train_vocab "
                        f"--dataset {args.tokenizer_from} --vocab_size {args.vocab_size}")
    return src


def shared_tokenizer(args, out, manifest):
    """--tokenizer_from OTHER: OTHER's tok<N>/tokenizer.model, copied into this folder. A folder that already
    holds a tokenizer of its own (trained here, or shared from another dataset) is never overwritten."""
    src = tokenizer_from_source(args)
    model = out / "tokenizer.model"
    if model.exists() and sha256_file(model) != sha256_file(src):
        source = ((manifest or {}).get("tokenizer_from") or {}).get("dataset")
        if source != args.tokenizer_from:
            raise UserError(f"{model} is another tokenizer (its own{' from ' + source if source else ''}) — delete "
                            f"{out} to re-encode {args.dataset} with {args.tokenizer_from}'s")
    if not model.exists() or sha256_file(model) != sha256_file(src):
        copy_tokenizer(src, out)
    return model


def install_tokenizer(args, out, manifest=None):
    """Path of the tokenizer for this vocab folder; for vocab 0, copy the given Llama 2 tokenizer in; with
    --tokenizer_from, the other dataset's."""
    model = out / "tokenizer.model"
    if getattr(args, "tokenizer_from", None):
        return shared_tokenizer(args, out, manifest)
    if args.vocab_size == 0:
        if not args.tokenizer:
            raise UserError("--vocab_size 0 needs --tokenizer PATH to an existing (Llama 2) tokenizer.model")
        src = Path(args.tokenizer)
        if not src.exists():
            raise UserError(f"tokenizer not found: {src} — give the path to a SentencePiece tokenizer.model")
        if not model.exists() or sha256_file(model) != sha256_file(src):
            copy_tokenizer(src, out)
    elif args.tokenizer:
        raise UserError("--tokenizer is only for --vocab_size 0; for a trained vocab run train_vocab first")
    elif not model.exists():
        raise UserError(f"tokenizer not found: {model} — run: python tokenization/pretokenize.py train_vocab "
                        f"--dataset {args.dataset} --vocab_size {args.vocab_size}")
    return model


def load_sp(model):
    try:
        return spm.SentencePieceProcessor(model_file=str(model))
    except (OSError, RuntimeError) as e:
        raise UserError(f"{model} is not a valid SentencePiece model ({e}) — re-run train_vocab or give another")


def check_story_ids(manifest, shard_hashes, manifest_path):
    """Story ids were assigned from these shards once; any change would silently re-number them."""
    old = {s["file"]: s["sha256"] for s in manifest["shards"]}
    if old == shard_hashes:
        return
    changed = sorted(set(old) ^ set(shard_hashes)) + sorted(f for f in old if f in shard_hashes
                                                           and old[f] != shard_hashes[f])
    raise UserError(f"raw shard(s) {', '.join(changed)} changed since story ids were assigned "
                    f"({manifest_path}) — restore the original shards, or delete {manifest_path.parent} to "
                    f"re-number (runs made on the old ids will no longer match)")


def outputs_complete(out, manifest):
    try:
        return (out / "index.parquet").exists() and all(
            (out / s["bin"]).stat().st_size == 2 * s["n_tokens"] for s in manifest["shards"])
    except (OSError, KeyError):
        return False


def _starts(lengths):
    """Start offsets of consecutive segments with these lengths."""
    out = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out


class StoryEncoder:
    """BOS + SentencePiece ids for batches of stories.

    SentencePiece BPE splits text at spaces before merging (split_by_whitespace), so a story's ids are the
    concatenation of its space-separated words' ids (each word with SentencePiece's leading "▁"). Story
    corpora repeat their words constantly, so each distinct word is encoded once — batched and multi-threaded
    with sp.encode(list, num_threads=…) — and kept in a flat cache; a batch is then one dictionary lookup per
    word plus a numpy gather. The shortcut is checked against plain sp.encode on the first stories and dropped
    if they differ (a tokenizer with other whitespace settings); stories with runs of spaces always take the
    plain path."""

    def __init__(self, sp, threads, verify_stories=256):
        self.sp, self.threads, self.bos = sp, threads, sp.bos_id()
        self.use_words, self.verify_stories = None, verify_stories
        self._reset()

    def _reset(self):
        self.code = {}                                    # word -> row of the cache; row 0 is BOS
        self.ids = np.array([self.bos], dtype=np.uint16)  # all cached words' ids back to back
        self.start = np.zeros(1, dtype=np.int64)
        self.n_ids = np.ones(1, dtype=np.int64)

    def _cache(self, words):
        encoded = self.sp.encode(words, num_threads=self.threads)
        n_ids = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self.code.update(zip(words, range(len(self.n_ids), len(self.n_ids) + len(words))))
        self.start = np.concatenate([self.start, len(self.ids) + _starts(n_ids)])
        self.n_ids = np.concatenate([self.n_ids, n_ids])
        self.ids = np.concatenate([self.ids, np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.uint16,
                                                         count=int(n_ids.sum()))])

    def _by_words(self, stories):
        n_words = np.fromiter((s.count(" ") + 1 for s in stories), dtype=np.int64, count=len(stories))
        words = " ".join(stories).split(" ")
        if len(self.code) > WORD_CACHE_MAX:
            self._reset()
        new = set(words).difference(self.code)
        if new:
            self._cache(sorted(new))
        bos_at = _starts(n_words + 1)  # each story is BOS followed by its words
        codes = np.zeros(len(words) + len(stories), dtype=np.int64)
        is_word = np.ones(len(codes), dtype=bool)
        is_word[bos_at] = False
        codes[is_word] = np.fromiter(map(self.code.__getitem__, words), dtype=np.int64, count=len(words))
        n_ids = self.n_ids[codes]
        out_start = _starts(n_ids)
        gather = np.repeat(self.start[codes] - out_start, n_ids) + np.arange(int(n_ids.sum()))
        return self.ids[gather], np.add.reduceat(n_ids, bos_at)

    def _plain(self, stories):
        seqs = self.sp.encode(stories, num_threads=self.threads)
        lengths = np.fromiter((len(ids) + 1 for ids in seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain((self.bos,), ids) for ids in seqs),
                           dtype=np.uint16, count=int(lengths.sum()))
        return flat, lengths

    def _shortcut_is_exact(self, sample):
        sample = [s for s in sample if "  " not in s]
        if not sample:
            return False
        (a, a_len), (b, b_len) = self._by_words(sample), self._plain(sample)
        return np.array_equal(a_len, b_len) and np.array_equal(a, b)

    def encode(self, stories):
        """(flat uint16 tokens with BOS before every story, per-story lengths including BOS)"""
        if not stories:
            return np.zeros(0, np.uint16), np.zeros(0, np.int64)
        if self.use_words is None:
            self.use_words = self._shortcut_is_exact(stories[:self.verify_stories])
        if not self.use_words:
            return self._plain(stories)
        parts = []
        for spaced, group in itertools.groupby(stories, key=lambda s: "  " in s):
            parts.append((self._plain if spaced else self._by_words)(list(group)))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @property
    def method(self):
        return ("distinct words encoded once with sentencepiece (verified equal to sp.encode on the first "
                f"{self.verify_stories} stories)" if self.use_words else "sentencepiece encode(list, num_threads)")


def encode_shard(encoder, stories, bar):
    """BOS + tokens for every story of a shard → (flat uint16 tokens, per-story lengths)."""
    pieces, lengths = [], []
    for start in range(0, len(stories), ENCODE_BATCH):
        flat, n = encoder.encode(stories[start:start + ENCODE_BATCH])
        pieces.append(flat)
        lengths.append(n)
        bar.update(len(n))
    if not pieces:
        return np.zeros(0, np.uint16), np.zeros(0, np.int64)
    return np.concatenate(pieces), np.concatenate(lengths)


def cmd_pretokenize(args):
    check_vocab_size(args.vocab_size, allow_zero=True)
    if args.tokenizer_from:
        tokenizer_from_source(args)
    card = read_card(raw_dir(args.dataset)) or {}
    if args.val_fraction is None:
        args.val_fraction = float(card.get("val_fraction", VAL_FRACTION))
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val_fraction {args.val_fraction} must be in [0, 1)")
    shards = raw_shards(args.dataset)
    out = tok_dir(args.dataset, args.vocab_size)
    shard_hashes = {p.name: sha256_file(p) for p in tqdm(shards, desc="hash shards", unit="shard")}
    manifest_path = out / "manifest.json"
    manifest = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            manifest["shards"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{manifest_path} is corrupt — delete {out} and re-run pretokenize")
        check_story_ids(manifest, shard_hashes, manifest_path)

    with removed_if_failed(out):  # a failed first pretokenize leaves no tok<V>/ behind
        _pretokenize(args, out, shards, shard_hashes, manifest, manifest_path, card)


def _pretokenize(args, out, shards, shard_hashes, manifest, manifest_path, card):
    model = install_tokenizer(args, out, manifest)
    sp = load_sp(model)
    if args.vocab_size and sp.vocab_size() != args.vocab_size:
        raise UserError(f"{model} has {sp.vocab_size()} pieces, not --vocab_size {args.vocab_size} — "
                        f"re-run train_vocab")
    if sp.vocab_size() > MAX_VOCAB:
        raise UserError(f"{model} has {sp.vocab_size()} pieces, above {MAX_VOCAB} (uint16 storage) — "
                        f"use a smaller vocab")
    tok_sha = sha256_file(model)
    tokenizer_from = {"dataset": args.tokenizer_from, "tokenizer_sha256": tok_sha} if args.tokenizer_from else None
    if manifest and manifest.get("tokenizer_sha256") == tok_sha and manifest.get("val_fraction") == args.val_fraction \
            and "validation" in manifest and outputs_complete(out, manifest) \
            and manifest.get("tokenizer_from") == tokenizer_from:
        card = read_card(raw_dir(args.dataset)) or {}
        if card.get("validation") != manifest["validation"] or card.get("content_id") is None:
            write_card_validation(args.dataset, manifest["validation"])
        print(f"{out}: up to date ({manifest['n_stories']} stories, {manifest['n_tokens']} tokens) — nothing to do")
        return

    total = 0
    index_parts, shard_rows, first_id = [], [], 0
    story_hashes, overlap_counter = [], SentenceOverlap()
    encoder = StoryEncoder(sp, args.threads or os.cpu_count())
    with tqdm(total=None, desc="encode stories", unit="story") as bar:
        for k, path in enumerate(shards):
            stories, hints = load_stories(path, hints=True)
            bar.total = (bar.total or 0) + len(stories)  # grows shard by shard; raw shards are read lazily
            tokens, lengths = encode_shard(encoder, stories, bar)
            bin_name = path.stem + ".bin"
            with atomic_path(out / bin_name) as tmp:
                tokens.astype("<u2").tofile(tmp)
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            hashes = story_hash_u64(stories)  # each story hashed once: its split and the twin check
            splits = [split_of(h, hint, args.val_fraction) for h, hint in zip(hashes, hints)]
            index_parts.append(pd.DataFrame({
                "story_id": np.arange(first_id, first_id + len(stories), dtype=np.int64),
                "shard": np.full(len(stories), k, dtype=np.int16),
                "record": np.arange(len(stories), dtype=np.int32),
                "offset": offsets,
                "n_tokens": lengths.astype(np.int32),
                "split": splits,
            }))
            story_hashes.append(hashes)
            overlap_counter.add(stories, first_id, splits)
            shard_rows.append({"file": path.name, "sha256": shard_hashes[path.name], "n_stories": len(stories),
                               "first_story_id": first_id, "bin": bin_name, "n_tokens": int(len(tokens))})
            first_id += len(stories)
            total += len(tokens)
    index = pd.concat(index_parts, ignore_index=True)
    was_train = (index["split"] == "train").to_numpy()
    # a story with the text of a novel one is novel too: no held-out combination reaches train by a twin
    hashes = np.concatenate(story_hashes) if story_hashes else np.zeros(0, np.uint64)
    novel = hashes[(index["split"] == "val_novel").to_numpy()]
    if len(novel):
        index.loc[np.isin(hashes, novel), "split"] = "val_novel"
    overlap = overlap_counter.result(index["split"].to_numpy(), was_train, hashes)
    with atomic_path(out / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)
    for stale in set(p.name for p in out.glob("*.bin")) - {s["bin"] for s in shard_rows}:
        (out / stale).unlink()
    n_val = int((index["split"] == "val").sum())
    n_novel = int((index["split"] == "val_novel").sum())
    n_facts = int((index["split"] == "facts").sum())
    validation = {"val_fraction": args.val_fraction, "n_train": len(index) - n_val - n_novel - n_facts,
                  "n_val": n_val, "n_val_novel": n_novel, "sentence_overlap": overlap}
    atomic_write_json(manifest_path, {
        "provenance": provenance(), "dataset": args.dataset, "raw_dir": str(raw_dir(args.dataset)),
        "vocab_size": sp.vocab_size(), "tokenizer": model.name, "tokenizer_sha256": tok_sha,
        "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "pad_id": sp.pad_id(), "dtype": "uint16 little-endian",
        "shards": shard_rows, "n_stories": len(index), "n_train": validation["n_train"], "n_val": n_val,
        "n_val_novel": n_novel, "n_tokens": int(total), "split_rule": SPLIT_RULE, "val_fraction": args.val_fraction,
        "n_fact_documents": n_facts,
        "validation": validation, "validation_sample": VALIDATION_SAMPLE, "encoder": encoder.method,
        "tokenizer_from": tokenizer_from,
    })
    write_card_validation(args.dataset, validation)
    print(f"wrote {len(shards)} token shards, {len(index)} stories ({validation['n_train']} train, {n_val} val, "
          f"{n_novel} val_novel), {total} tokens to {out}; sentence overlap with train: val {overlap['val']}, "
          f"val_novel {overlap['val_novel']}")


def write_card_validation(dataset, validation):
    """The card's "Validation splits" section (the split does not depend on the vocab, only on val_fraction)."""
    ov = validation["sentence_overlap"]
    prose = (f"pretokenize (val_fraction {validation['val_fraction']}): {validation['n_train']} train, "
             f"{validation['n_val']} val (iid, text-hash rule), {validation['n_val_novel']} val_novel (held-out "
             f"entity combinations; 0 when the source marks none).\n"
             f"Sentence overlap with train (share of validation sentences that occur verbatim in a train story): "
             f"val {ov['val']}, val_novel {ov['val_novel']}. A high overlap means validation loss largely "
             f"measures recall of template sentences.\n"
             f"Fixed validation samples: tokenization/dataset.py validation_sample(kind), seed "
             f"{VALIDATION_SAMPLE['seed']}, the same for every run.\n")
    update_card_section(raw_dir(dataset), "validation", validation, "Validation splits", prose)
    refresh_dataset_card(raw_dir(dataset))  # its content id and this tokenized variant


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train_vocab", help="train a SentencePiece BPE vocab on a sample of the dataset")
    t.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    t.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB, help=f"pieces (default {DEFAULT_VOCAB})")
    t.add_argument("--max_stories", type=int, default=50_000, help="cap on the stories used for training")
    p = sub.add_parser("pretokenize", help="encode every story into token shards + index + manifest")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    p.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB,
                   help=f"pieces of a train_vocab tokenizer, 0 = --tokenizer (default {DEFAULT_VOCAB})")
    p.add_argument("--tokenizer", default=None, help="existing tokenizer.model, with --vocab_size 0")
    p.add_argument("--tokenizer_from", default=None, metavar="DATASET",
                   help="encode with DATASET's tok<vocab_size>/tokenizer.model (a vocab shared across corpora)")
    p.add_argument("--val_fraction", type=float, default=None,
                   help=f"iid validation share (default: the dataset card's val_fraction, else {VAL_FRACTION})")
    p.add_argument("--threads", type=int, default=0, help="encoding threads (0 = all cores)")
    for parser in (t, p):
        add_root_argument(parser)
    args = apply_root(ap.parse_args(argv))
    {"train_vocab": cmd_train_vocab, "pretokenize": cmd_pretokenize}[args.cmd](args)


if __name__ == "__main__":
    run_main(main)
