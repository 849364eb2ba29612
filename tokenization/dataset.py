"""The one reader of a pretokenized dataset (data/<raw>/tok<V>/), shared by training, metadata, eval, the
experiments and the dashboard.

    ds = TokenizedDataset("storyworld", 512)
    ds.index                 # pandas DataFrame: story_id, shard, record, offset, n_tokens, split
    ds.manifest              # dict from manifest.json
    ds.tokens(17)            # np.ndarray[uint16], BOS included (a memmap slice, O(1))
    ds.tokens_by_shard(ids)  # (story_id, tokens) shard by shard, each shard's pages released after it
    ds.text(17)              # the raw story, stripped
    ds.story_ids("train")    # np.ndarray[int64]; splits 'train', 'val' (iid), 'val_novel' (held-out combinations)
    ds.validation_sample("iid", n=2000)  # sorted story ids of the fixed validation sample (same for every run)
    ds.tokenizer             # sentencepiece.SentencePieceProcessor
    ds.dir                   # Path of the tok<V> folder
    ds.record(17)            # the full raw record (storyworld: the story's ground truth)
    ds.decode(ds.tokens(17)) # text of tokens (a leading BOS dropped)
"""
import json
from functools import cached_property

import numpy as np
import pandas as pd

from common.errors import UserError
from common.paths import raw_dir, tok_dir

RAW_SHARDS_CACHED = 4  # raw JSON shards kept in memory by .text() (a TinyStories shard is ~40 MB)
SPLITS = ("train", "val", "val_novel", "facts")  # facts: a fact set's documents (download/fact_set.py)
VAL_KINDS = {"iid": "val", "novel": "val_novel"}  # validation_sample kind -> split
VAL_SAMPLE_STORIES = 2000  # default size of the fixed validation sample (issue 13: >= 2,000 stories)
# The fixed validation sample: stories of a validation split ranked by a keyed hash of their story id. Story ids
# are fixed per dataset (pretokenize refuses to re-number), so the sample is the same for every run and every
# re-pretokenize, independent of any run seed; a smaller sample is the start of a larger one.
VALIDATION_SAMPLE = {"seed": 20240613, "rule": "ids of the split ranked by splitmix64(story_id XOR seed), first n"}


def _splitmix64(x):
    """splitmix64 finaliser on uint64 arrays (a fixed, well-mixed hash of the story id)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class TokenizedDataset:
    def __init__(self, dataset, vocab_size):
        self.dataset, self.vocab_size = dataset, int(vocab_size)
        self.dir = tok_dir(dataset, vocab_size)
        manifest_path = self.dir / "manifest.json"
        if not manifest_path.exists():
            raise UserError(f"tokenized dataset not found: {manifest_path} — run: python tokenization/pretokenize.py "
                            f"pretokenize --dataset {dataset} --vocab_size {vocab_size}")
        try:
            self.manifest = json.loads(manifest_path.read_text())
            shards = self.manifest["shards"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{manifest_path} is corrupt — delete {self.dir} and re-run pretokenize")
        index_path = self.dir / "index.parquet"
        if not index_path.exists():
            raise UserError(f"{index_path} is missing — re-run pretokenize --dataset {dataset} "
                            f"--vocab_size {vocab_size}")
        self.index = pd.read_parquet(index_path)
        if len(self.index) != self.manifest["n_stories"]:
            raise UserError(f"{index_path} has {len(self.index)} rows but the manifest says "
                            f"{self.manifest['n_stories']} — re-run pretokenize")
        self._bins = []
        for s in shards:
            path = self.dir / s["bin"]
            if not path.exists() or path.stat().st_size != 2 * s["n_tokens"]:
                raise UserError(f"token shard {path} is missing or has the wrong size — re-run pretokenize")
            self._bins.append(self._map(path, s["n_tokens"]))
        # columns as arrays for O(1) lookups by story id (the index is sorted by story_id, ids are 0..N-1)
        self._shard = self.index["shard"].to_numpy()
        self._record = self.index["record"].to_numpy()
        self._offset = self.index["offset"].to_numpy()
        self._n_tokens = self.index["n_tokens"].to_numpy()
        self._raw = {}

    @staticmethod
    def _map(path, n_tokens):
        return np.memmap(path, dtype="<u2", mode="r") if n_tokens else np.zeros(0, "<u2")

    def __len__(self):
        return len(self.index)

    def _check(self, story_id):
        story_id = int(story_id)
        if not 0 <= story_id < len(self.index):
            raise IndexError(f"story id {story_id} outside 0..{len(self.index) - 1}")
        return story_id

    def tokens(self, story_id):
        """The story's tokens as stored: BOS first, uint16."""
        i = self._check(story_id)
        start = self._offset[i]
        return self._bins[self._shard[i]][start:start + self._n_tokens[i]]

    def tokens_by_shard(self, story_ids):
        """(story_id, tokens) for every id, read shard by shard (ids of one shard in the given order); each shard's
        token map is released once its stories are read, so memory stays at one shard however many stories a
        caller reads (a whole-corpus sample otherwise keeps every shard's read pages in RSS: ~0.6 GB per 1M
        stories). The tokens are memmap views: one kept past its shard keeps that shard's old map (and its pages)
        alive, so a caller that keeps them copies them."""
        ids = np.asarray(story_ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.index)):
            raise IndexError(f"story ids outside 0..{len(self.index) - 1}")
        ids = ids[np.argsort(self._shard[ids], kind="stable")]
        current = None
        for i in ids:
            k = self._shard[i]
            if k != current:
                if current is not None:
                    self.release_shard(current)
                current = k
            start = self._offset[i]
            yield int(i), self._bins[k][start:start + self._n_tokens[i]]
        if current is not None:
            self.release_shard(current)

    def n_tokens(self, story_ids):
        """Tokens per story (BOS included) as int64, for an array of story ids."""
        ids = np.asarray(story_ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.index)):
            raise IndexError(f"story ids outside 0..{len(self.index) - 1}")
        return self._n_tokens[ids].astype(np.int64)

    def text(self, story_id):
        """The raw story text (stripped), read from the raw shard the story id was assigned from."""
        i = self._check(story_id)
        k = int(self._shard[i])
        if k not in self._raw:
            if len(self._raw) >= RAW_SHARDS_CACHED:
                self._raw.pop(next(iter(self._raw)))
            path = raw_dir(self.dataset) / self.manifest["shards"][k]["file"]
            try:
                self._raw[k] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"raw shard {path} is missing or corrupt ({e}) — restore it or re-run the download")
        return self._raw[k][self._record[i]]["story"].strip()

    def release_shard(self, shard):
        """Drop raw shard `shard` (its position in manifest.json shards) from the text cache and map its token
        file afresh; a caller that reads shard by shard calls this when done with one, to keep memory at one
        shard. (A memmap's pages stay in the process's RSS once read; a fresh mapping starts with none.)"""
        k = int(shard)
        self._raw.pop(k, None)
        info = self.manifest["shards"][k]
        self._bins[k] = self._map(self.dir / info["bin"], info["n_tokens"])

    def record(self, story_id):
        """The story's full raw record (story plus any attributes, e.g. storyworld's ground truth)."""
        self.text(story_id)  # loads the shard
        i = self._check(story_id)
        return self._raw[int(self._shard[i])][self._record[i]]

    def story_ids(self, split=None):
        """Story ids of a split ('train', 'val' or 'val_novel'), or all ids when split is None."""
        if split is None:
            return self.index["story_id"].to_numpy(dtype=np.int64)
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}' — use one of {', '.join(SPLITS)}")
        return self.index.loc[self.index["split"] == split, "story_id"].to_numpy(dtype=np.int64)

    def validation_sample(self, kind="iid", n=VAL_SAMPLE_STORIES, ranked=False):
        """The fixed validation sample of this dataset: min(n, split size) story ids of split 'val' (kind
        'iid') or 'val_novel' (kind 'novel'; empty when the dataset has no novel split), chosen by
        VALIDATION_SAMPLE's rule with the seed recorded in the manifest. Sorted ids, or in draw order with
        ranked=True (then the first k ids are the sample of size k). n=None: the whole split."""
        if kind not in VAL_KINDS:
            raise UserError(f"unknown validation kind '{kind}' — use 'iid' or 'novel'")
        ids = self.story_ids(VAL_KINDS[kind])
        seed = int(self.manifest.get("validation_sample", VALIDATION_SAMPLE)["seed"])
        keys = _splitmix64(ids.astype(np.uint64) ^ np.uint64(seed))
        picked = ids[np.argsort(keys, kind="stable")][:len(ids) if n is None else int(n)]
        return picked if ranked else np.sort(picked)

    @cached_property
    def tokenizer(self):
        import sentencepiece as spm
        path = self.dir / "tokenizer.model"
        if not path.exists():
            raise UserError(f"{path} is missing — re-run train_vocab / pretokenize for this vocab")
        return spm.SentencePieceProcessor(model_file=str(path))

    def decode(self, tokens):
        """Text of a token sequence (a leading BOS is dropped)."""
        ids = np.asarray(tokens).tolist()
        if ids and ids[0] == self.manifest["bos_id"]:
            ids = ids[1:]
        return self.tokenizer.decode(ids)
