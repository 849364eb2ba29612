"""download/storyworld.CorpusStats: the dataset card's statistics streamed one story at a time — equal to a direct
computation on the whole corpus (exact mode, any flush size), the HyperLogLog sentence estimate within its stated
error once the exact set is dropped, and bounded state."""
import math
import re
from collections import Counter

import numpy as np
import pytest

from download import storyworld
from download.storyworld import WORD_RE, CorpusStats, corpus_stats


@pytest.fixture(scope="module")
def texts():
    return [r["story"] for r in storyworld.generate(1500, storyworld.StoryWorldConfig(seed=3))]


def direct_stats(texts):
    """The statistics computed the obvious way, everything in memory."""
    words = [WORD_RE.findall(t.lower()) for t in texts]
    sentences = {s for t in texts for s in re.split(r'(?<=[.!?])\s+|(?<=[.!?]")\s+', t)}
    unigrams = Counter(w for ws in words for w in ws)
    trigrams = Counter(tuple(ws[i:i + 3]) for ws in words for i in range(len(ws) - 2))

    def entropy(counter):
        p = np.array(list(counter.values()), dtype=float) / sum(counter.values())
        return round(float(-(p * np.log2(p)).sum()), 3)

    lengths = np.array([len(ws) for ws in words])
    return {"n_stories": len(texts), "n_words": int(lengths.sum()), "distinct_sentences": len(sentences),
            "vocabulary_size": len(unigrams), "unigram_entropy_bits": entropy(unigrams),
            "trigram_entropy_bits": entropy(trigrams),
            "words_per_story": {"mean": round(float(lengths.mean()), 1), "p10": int(np.percentile(lengths, 10)),
                                "p50": int(np.percentile(lengths, 50)), "p90": int(np.percentile(lengths, 90)),
                                "max": int(lengths.max())}}


@pytest.mark.parametrize("flush", [50, 10_000, 1 << 22])
def test_streamed_equals_direct(texts, monkeypatch, flush):
    monkeypatch.setattr(storyworld, "FLUSH_CODES", flush)  # merge the running counts often or never
    got = corpus_stats(iter(texts))
    assert got.pop("distinct_sentences_method") == "exact"
    assert got == direct_stats(texts)


def test_shuffled_corpus_changes_trigrams_not_unigrams(texts):
    """The null for the trigram entropy: words shuffled within each story keep the unigram statistics and the
    lengths but raise the trigram entropy (template phrases are gone)."""
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(WORD_RE.findall(t.lower()))) + "." for t in texts]
    a, b = corpus_stats(texts), corpus_stats(shuffled)
    assert a["unigram_entropy_bits"] == b["unigram_entropy_bits"] and a["n_words"] == b["n_words"]
    assert b["trigram_entropy_bits"] > a["trigram_entropy_bits"] + 1


def test_hyperloglog_estimate_within_stated_error():
    n_distinct = 60_000
    stats = CorpusStats(exact_sentences=1000)
    for i in range(0, n_distinct, 20):  # 20 distinct sentences per story, each story added twice
        story = " ".join(f"The cat number {j} sat." for j in range(i, i + 20))
        stats.add(story)
        stats.add(story)
    assert stats.sentences is None  # past the cap: only the fixed-size registers remain
    assert stats.registers.nbytes == 1 << storyworld.HLL_BITS
    estimate, method = stats.distinct_sentences()
    assert method.startswith("hyperloglog")
    assert abs(estimate - n_distinct) / n_distinct < 4 * 1.04 / math.sqrt(1 << storyworld.HLL_BITS)


def test_hyperloglog_counts_repeats_once():
    """The null: one sentence repeated many times is one distinct sentence, estimate or not."""
    stats = CorpusStats(exact_sentences=0)
    for _ in range(5000):
        stats.add("The dog ran home. The dog ran home.")
    assert stats.distinct_sentences()[0] == 1
