"""metadata/metrics.py, wordlists.py and ngram.py on hand-made texts and token sequences (no stage runs)."""
import math

import numpy as np
import pytest

from download import storyworld
from metadata import metrics, wordlists
from metadata.metrics import score_texts, text_metrics
from metadata.ngram import KneserNeyTrigram

STORY = ('Once upon a time, there was a little girl named Lily. She loved to play outside. One day, she saw a '
         'big red ball in the park. "Mom, can you help me?" she asked. Her mom smiled and got the ball. '
         'Lily was very happy. The end.')


def test_wordlists_agree_with_storyworld():
    # the generator's ground-truth counts use its own lists; ours must contain them so counts can match
    assert set(storyworld.FEMALE_TERMS) <= wordlists.FEMALE_TERMS
    assert set(storyworld.MALE_TERMS) <= wordlists.MALE_TERMS
    assert not wordlists.FEMALE_TERMS & wordlists.MALE_TERMS
    for occupation, stereotype in storyworld.OCCUPATIONS.items():
        assert wordlists.OCCUPATIONS[occupation] == stereotype
    assert not set(storyworld.OFFENSIVE_WORDS) & wordlists.TOXIC_ALLOW  # injected words stay countable


def test_unscorable_text_is_nan_with_reason_never_zero():
    for value, reason in [("", "empty text"), ("   \n", "empty text"), ("... !!! ?", "no words"),
                          (None, "not text (NoneType)"), (3.5, "not text (float)")]:
        row = text_metrics(value)
        assert row["nan_reason"] == reason
        assert all(math.isnan(row[c]) for c in metrics.TEXT_COLUMNS), value
    df = score_texts(["", "The cat sat."], token_ids=[[1], [1, 50, 60]])
    assert math.isnan(df.loc[0, "n_tokens"]) and math.isnan(df.loc[0, "toxicity"])
    assert df.loc[1, "n_tokens"] == 2 and df.loc[1, "nan_reason"] == ""
    assert list(df.columns) == metrics.COLUMNS


def test_size_diversity_and_opener():
    row = text_metrics("The dog ran. The dog ran! The cat sat?")
    assert row["n_words"] == 9 and row["n_sentences"] == 3 and row["mean_sentence_len"] == 3
    assert row["ttr"] == pytest.approx(5 / 9)  # the dog ran cat sat
    assert row["distinct2"] == pytest.approx(5 / 8)  # the-dog dog-ran ran-the the-cat cat-sat
    assert row["distinct3"] == pytest.approx(5 / 7)
    assert row["opener"] == 0.0 and text_metrics(STORY)["opener"] == 1.0
    assert math.isnan(text_metrics("Every word here differs.")["mtld"])  # no MTLD factor completes
    repetitive = text_metrics("the dog " * 60)["mtld"]
    varied = text_metrics(STORY * 3)["mtld"]
    assert 1 <= repetitive < 5 < varied


def test_readability_uses_textstat_syllables_and_flesch_formula():
    import textstat
    text = "The big dog ran to the park. It was a very happy animal today."  # no sentence of <= 2 words
    row = text_metrics(text)
    assert row["flesch_ease"] == pytest.approx(textstat.flesch_reading_ease(text), abs=1e-6)
    assert row["fk_grade"] == pytest.approx(textstat.flesch_kincaid_grade(text), abs=1e-6)
    hard = text_metrics("Administrative responsibilities necessitate extraordinary organizational capabilities.")
    assert hard["flesch_ease"] < 0 < row["flesch_ease"] and hard["fk_grade"] > 15 > row["fk_grade"]


def test_sentiment_shortcut_is_exact_and_polarity_right():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    vader = SentimentIntensityAnalyzer()
    sentences = ["She lived with her mom and dad.", "He was not happy at all.", "It was the best day ever!",
                 "The branch broke :(", "Tom felt sad and lonely.", "They walked home.", "Wow 😀 look"]
    idioms = ["It was kind of good but not great.", "He was never so happy!", "Without doubt, the best day.",
              "That party was the shit, bad ass.", "No, I do not hate it at all.", "She is at least nice to him.",
              "Not bad, not bad at all... kind of sort of good, NOT!!!", "yeah right, great", "I kinda like it."]
    st = metrics._init()
    for s in sentences + idioms:  # the shortcut and the windowed helpers change no score
        assert st["compound"][s] == vader.polarity_scores(s)["compound"], s
    story = " ".join(idioms * 3)
    assert st["vader"].polarity_scores(story) == vader.polarity_scores(story)
    happy = text_metrics("Tom lost his kite. Then he found it and laughed. He was so happy and proud.")
    sad = text_metrics("Tom lost his kite. He never found it. He cried and felt sad and lonely.")
    assert happy["sentiment_end"] > 0.3 > -0.3 > sad["sentiment_end"]
    assert happy["sentiment"] > sad["sentiment"]


def test_toxicity_flags_ldnoobw_but_not_allow_list_or_lookalikes():
    assert text_metrics('"Oh, shit!" said Tom. "God damn it!" said Sue.')["toxic_count"] == 2
    for word in storyworld.OFFENSIVE_WORDS:
        assert text_metrics(f"Tom said {word} today.")["toxic_count"] == 1, word
    innocent = ("The old donkey was a stubborn ass. The cock crowed at dawn and the bitch fed her puppies. "
                "A peacock and a cockatoo sat on the grass by the glass class. They ate grapes and butter.")
    row = text_metrics(innocent)
    assert row["toxic_count"] == 0 and row["toxicity"] == 0.0
    row = text_metrics("This sucks. What a bastard.")
    assert row["toxic_count"] == 2 and row["toxicity"] == pytest.approx(2 / 5)


def test_spelling_errors_skip_names():
    assert text_metrics("Lily and Zorblax went to the park with Timmy.")["spelling_errors"] == 0.0
    row = text_metrics("The dgo ran to the prak. It was hapy.")
    assert row["spelling_errors"] == pytest.approx(3 / 9)


def test_gender_terms_and_occupation_references():
    row = text_metrics("She gave her brother a hug. He smiled at his mom and dad. The girl laughed.")
    assert row["female_terms"] == 4 and row["male_terms"] == 4  # she her mom girl / brother he his dad
    assert row["gender_balance"] == 0.0
    assert math.isnan(text_metrics("The cat sat on the mat.")["gender_balance"])
    row = text_metrics("Then Tom saw a nurse. He was kind and he helped. The doctor came. She smiled at Tom. "
                       "A police officer walked by. He waved. The vet said she was busy. The pilot waved.")
    # nurse->he (anti), doctor->she (anti), officer->he (stereo), vet->she (no stereotype), pilot: no pronoun
    assert (row["occ_mentions"], row["occ_she"], row["occ_he"]) == (5, 2, 2)
    assert (row["occ_stereo"], row["occ_anti"]) == (1, 2)


def test_score_texts_parallel_matches_serial():
    texts = [STORY.replace("Lily", name) + f" It was day {i}." for i, name in enumerate(["Ann", "Bo", "Cy"] * 300)]
    serial = score_texts(texts, workers=1, chunk_size=64)
    parallel = score_texts(texts, workers=2, chunk_size=64)
    assert len(serial) == 900 and serial.equals(parallel)


def test_kneser_ney_normalises_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    V = 40
    seqs = [np.concatenate([[1], rng.integers(3, 30, size=rng.integers(3, 30))]) for _ in range(500)]
    lm = KneserNeyTrigram.fit(seqs, V)
    c = np.arange(V)
    for a, b in [(1, 1), (1, 5), (5, 7), (35, 36), (7, 39)]:  # seen, unseen and never-seen contexts
        p = np.exp(lm.logprob(np.full(V, a), np.full(V, b), c))
        assert p.sum() == pytest.approx(1.0, abs=1e-9) and (p > 0).all()
    lm.save(tmp_path / "lm.npz")
    again = KneserNeyTrigram.fit(seqs, V)
    loaded = KneserNeyTrigram.load(tmp_path / "lm.npz")
    ppl = lm.perplexity(seqs[:50])
    assert np.array_equal(ppl, again.perplexity(seqs[:50])) and np.array_equal(ppl, loaded.perplexity(seqs[:50]))
    assert np.isnan(lm.perplexity([[1]])[0]) and np.isfinite(lm.perplexity([[5, 6]])[0])  # BOS added when missing
    # a corpus with a strict pattern is far more predictable than noise under its own model
    pattern = [np.array([1] + [3, 4, 5, 6] * 10) for _ in range(50)]
    lm = KneserNeyTrigram.fit(pattern, V)
    assert lm.perplexity(pattern[:1])[0] < 1.5 < 10 < lm.perplexity([rng.integers(3, 30, 40)])[0]


def test_kneser_ney_chunked_fit_and_table_lookup_are_exact(monkeypatch):
    """fit() counting a few tokens at a time gives the same arrays as one pass; perplexity's per-trigram table
    gives logprob's numbers exactly, for seen and unseen trigrams."""
    import metadata.ngram as ngram
    rng = np.random.default_rng(1)
    seqs = [np.concatenate([[1], rng.integers(3, 30, size=rng.integers(1, 40))]) for _ in range(300)]
    whole = KneserNeyTrigram.fit(seqs, 40)
    monkeypatch.setattr(ngram, "FIT_CHUNK_TOKENS", 50)
    chunked = KneserNeyTrigram.fit(seqs, 40)
    assert whole.a.keys() == chunked.a.keys()
    assert all(np.array_equal(whole.a[k], chunked.a[k]) and whole.a[k].dtype == chunked.a[k].dtype for k in whole.a)
    a, b, c = (rng.integers(1, 40, 5000) for _ in range(3))  # many trigrams never seen in fitting
    assert (whole.index["tri"].get_indexer((a * 40 + b) * 40 + c) < 0).mean() > 0.5
    assert np.array_equal(whole.logprob_table(a, b, c), whole.logprob(a, b, c))


def test_degenerate_text_flagged_real_stories_not():
    """The nulls of rep4/oov/degenerate: real stories (not the ones the vocabulary came from) are not flagged
    and keep their readability; repeated or non-word text is flagged and readability is NaN with a reason."""
    corpus = [r["story"] for r in storyworld.generate(400, storyworld.StoryWorldConfig(seed=0))]
    counts, vocabulary = metrics.corpus_vocabulary(corpus)
    assert "lily" in vocabulary and counts["the"] > 1000
    real = [r["story"] for r in storyworld.generate(60, storyworld.StoryWorldConfig(seed=1))]
    looping = "I an Grmer walked by. " * 6  # the degenerate output the issue quotes: Flesch 110.8 before
    gibberish = "Lilyowbed ingthe Tomar plak sa. Sheo wented the parkle, ando Benn lauged. Mom sayd hi Grmer."
    df = score_texts(real + [looping, gibberish], vocabulary=vocabulary)
    stories, bad = df.iloc[:len(real)], df.iloc[len(real):]
    assert (stories["degenerate"] == 0).all() and (stories["nan_reason"] == "").all()
    assert stories["oov"].max() < 0.05 and stories["rep4"].max() < 0.2 and stories["flesch_ease"].notna().all()
    assert (bad["degenerate"] == 1).all() and bad["flesch_ease"].isna().all() and bad["fk_grade"].isna().all()
    assert bad["rep4"].iloc[0] > 0.5 and "rep4" in bad["nan_reason"].iloc[0]
    assert bad["oov"].iloc[1] > 0.2 and "oov" in bad["nan_reason"].iloc[1]
    assert bad["oov"].iloc[0] == pytest.approx(6 / 30)  # "Grmer" counts: capitalised words are checked too
    assert bad["n_words"].notna().all() and bad["sentiment"].notna().all()  # the rest is still scored
    # rep4 = 1 - distinct 4-grams / 4-grams; without a vocabulary oov is NaN and only rep4 can flag
    assert text_metrics("a b c d a b c d")["rep4"] == pytest.approx(1 - 4 / 5)
    assert math.isnan(text_metrics("a b c")["rep4"])
    plain = score_texts([gibberish, looping])
    assert plain["oov"].isna().all() and plain["degenerate"].tolist() == [0.0, 1.0]


def test_vocabulary_file_round_trip(tmp_path):
    counts, vocabulary = metrics.corpus_vocabulary(["The cat sat. The cat ran.", "A dog’s bone."])
    assert vocabulary == {"the", "cat"}  # seen at least VOCAB_MIN_COUNT = 2 times; ’ read as '
    metrics.save_vocabulary(tmp_path / "vocabulary.txt", counts)
    assert (tmp_path / "vocabulary.txt").read_text() == "cat\t2\nthe\t2\n"
    assert metrics.load_vocabulary(tmp_path / "vocabulary.txt") == vocabulary
    assert metrics.load_vocabulary(tmp_path / "missing.txt") is None
