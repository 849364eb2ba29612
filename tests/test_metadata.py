"""compute_metadata (the real stage) and the metrics' validation against storyworld's ground truth."""
import json

import numpy as np
import pandas as pd
import pytest

from common.paths import ROOT_ENV
from metadata import metrics
from tests.fixtures_data import run_stage

GT_STORIES = 3000  # second corpus with other knobs: metrics must follow them, not a default


def records(workspace, dataset="storyworld"):
    files = sorted((workspace / "data" / dataset).glob("data*.json"))
    return [r for f in files for r in json.loads(f.read_text())]


@pytest.fixture(scope="module")
def meta(meta_dataset):
    df = pd.read_parquet(meta_dataset["dir"] / "metadata.parquet")
    return meta_dataset, df, records(meta_dataset["workspace"])


@pytest.fixture(scope="module")
def knob_corpus(tmp_path_factory):
    """A storyworld corpus with a weak anti-stereotype knob and more offensive words, scored in-process."""
    ws = tmp_path_factory.mktemp("knobs")
    run_stage(ws, "download/download_datasets.py", "storyworld", "--n_stories", GT_STORIES, "--seed", 3,
              "--occupation_bias", 0.3, "--toxic_rate", 0.1, "--happy_fraction", 0.5)
    recs = records(ws)
    return recs, metrics.score_texts([r["story"] for r in recs], workers=2)


def test_table_layout_and_docs(meta):
    info, df, recs = meta
    index = pd.read_parquet(info["dir"] / "index.parquet")
    assert list(df.columns) == ["story_id", "split", "shard"] + metrics.COLUMNS
    assert np.array_equal(df["story_id"], np.arange(info["n_stories"]))
    assert (df["split"].to_numpy() == index["split"].to_numpy()).all()
    assert (df["n_tokens"] == index["n_tokens"] - 1).all()  # BOS not counted
    assert (df["nan_reason"] == "").all()
    assert df.drop(columns=["gender_balance"]).notna().all().all()  # NaN only where no gendered word occurs
    assert (df["ppl_ref"] > 1).all() and (df["ppl_ref"] < info["vocab_size"]).all()
    meta_json = json.loads((info["dir"] / "metadata.json").read_text())
    assert meta_json["metric_version"] == metrics.METRIC_VERSION and meta_json["scorer"]["spec"] == "ngram"
    assert set(meta_json["columns"]) == set(df.columns) and meta_json["provenance"]["git_commit"]
    ngram = json.loads((info["dir"] / "ngram.json").read_text())
    assert ngram["n_train_stories"] == int((df["split"] == "train").sum())  # fitted on train only


def test_batch_metrics_summary(meta):
    info, df, _ = meta
    table = pd.read_csv(info["workspace"] / "out" / "tables" / "batch_metrics.csv")
    shards = json.loads((info["dir"] / "manifest.json").read_text())["shards"]
    assert set(table["scope"]) == {s["file"] for s in shards} | {"train", "val", "val_novel", "all"}
    assert set(table["metric"]) == {m.name for m in metrics.METRICS}
    row = table[(table["scope"] == "all") & (table["metric"] == "n_words")].iloc[0]
    assert row["count"] == info["n_stories"]
    assert row["mean"] == pytest.approx(df["n_words"].mean(), rel=1e-5)
    assert row["p50"] == pytest.approx(df["n_words"].median(), rel=1e-5)
    first = table[(table["scope"] == shards[0]["file"]) & (table["metric"] == "ppl_ref")].iloc[0]
    assert first["count"] == shards[0]["n_stories"]
    assert first["mean"] == pytest.approx(df.loc[df["shard"] == 0, "ppl_ref"].mean(), rel=1e-5)
    sidecar = json.loads((info["workspace"] / "out" / "tables" / "batch_metrics.json").read_text())
    assert sidecar["provenance"]["dataset"] == info["dataset"]


def test_rerun_is_idempotent_and_force_rebuilds(meta):
    info, df, _ = meta
    path = info["dir"] / "metadata.parquet"
    before = path.stat().st_mtime_ns
    proc = run_stage(info["workspace"], "metadata/batch_metadata.py", "compute_metadata", "--dataset",
                     info["dataset"], "--vocab_size", info["vocab_size"])
    assert "up to date" in proc.stdout and path.stat().st_mtime_ns == before


def test_bad_input_one_line_exit_2(tmp_path, meta):
    proc = run_stage(tmp_path, "metadata/batch_metadata.py", "compute_metadata", "--dataset", "storyworld",
                     "--vocab_size", 512, check=False)
    assert proc.returncode == 2 and "pretokenize" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    info = meta[0]
    proc = run_stage(info["workspace"], "metadata/batch_metadata.py", "compute_metadata", "--dataset",
                     info["dataset"], "--vocab_size", info["vocab_size"], "--scorer", "bigram", check=False)
    assert proc.returncode == 2 and "unknown scorer 'bigram'" in proc.stderr
    assert (info["dir"] / "metadata.parquet").exists()  # nothing lost


def test_summary_keeps_other_datasets_and_force_on_a_corrupt_shard_ends_with_the_error(meta, tmp_path):
    """batch_metrics.csv is one file for every dataset: a stage replaces only its dataset+vocab rows. A
    --force rebuild that meets a corrupt raw shard ends with the error line (not a redrawn progress bar) and
    loses nothing."""
    import shutil
    info = meta[0]
    shutil.copytree(info["workspace"] / "data" / "storyworld", tmp_path / "data" / "storyworld")
    summary = tmp_path / "out" / "tables" / "batch_metrics.csv"
    summary.parent.mkdir(parents=True)
    theirs = pd.read_csv(info["workspace"] / "out" / "tables" / "batch_metrics.csv")
    other = theirs.assign(dataset="tinystories", vocab_size=0)  # rows another dataset's run left
    other.to_csv(summary, index=False)
    cmd = ("metadata/batch_metadata.py", "compute_metadata", "--root", tmp_path)
    run_stage(tmp_path, *cmd)  # metadata up to date, its rows missing from the summary: they are added
    table = pd.read_csv(summary)
    assert len(table) == len(other) + len(theirs)
    pd.testing.assert_frame_equal(table[table["dataset"] == "tinystories"].reset_index(drop=True), other)
    mine = table[table["dataset"] == "storyworld"].reset_index(drop=True)
    assert np.allclose(mine["mean"], theirs["mean"], equal_nan=True, rtol=1e-5)

    (tmp_path / "data" / "storyworld" / "data02.json").write_text('[{"story": "cut off')
    before = {p: p.read_bytes() for p in [summary, tmp_path / "data/storyworld/tok512/metadata.parquet"]}
    proc = run_stage(tmp_path, *cmd, "--force", "--workers", 1, check=False)
    screen = proc.stderr.replace("\r", "\n").strip().splitlines()  # what a terminal shows, bars redrawn by \r
    assert proc.returncode == 2 and screen[-1].startswith("error: raw shard") and "data02.json" in screen[-1]
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing lost


# ---- validation against the generator's ground truth ----------------------------------------------------

def test_gender_term_counts_match_generator(meta, knob_corpus):
    _, df, recs = meta
    assert (df["female_terms"].to_numpy() == [r["female_terms"] for r in recs]).all()
    assert (df["male_terms"].to_numpy() == [r["male_terms"] for r in recs]).all()
    recs, kdf = knob_corpus
    assert (kdf["female_terms"].to_numpy() == [r["female_terms"] for r in recs]).all()


def stereo_rate(df):
    return df["occ_stereo"].sum() / (df["occ_stereo"].sum() + df["occ_anti"].sum())


def test_occupation_association_tracks_knob(meta, knob_corpus):
    _, df, recs = meta
    card = (meta[0]["workspace"] / "data" / "storyworld" / "README.md").read_text()
    assert "occupation_bias: 0.8" in card  # the fixture corpus uses the default knob
    assert abs(stereo_rate(df) - 0.8) <= 0.05
    recs, kdf = knob_corpus
    assert abs(stereo_rate(kdf) - 0.3) <= 0.05
    # per story, the measured she/he references follow the generator's helper genders
    true_she = np.array([sum(o["gender"] == "female" for o in r["occupations"]) for r in recs])
    true_he = np.array([sum(o["gender"] == "male" for o in r["occupations"]) for r in recs])
    has_occupation = (true_she + true_he) > 0
    has_ref = ((kdf["occ_she"] + kdf["occ_he"]) > 0).to_numpy()
    assert has_ref[has_occupation].mean() > 0.95 and not has_ref[~has_occupation].any()
    measured = np.sign(kdf["occ_she"] - kdf["occ_he"]).to_numpy()
    assert (measured == np.sign(true_she - true_he))[has_occupation].mean() > 0.9


def test_vader_separates_happy_and_sad_endings(knob_corpus):
    from sklearn.metrics import roc_auc_score
    recs, df = knob_corpus
    happy = np.array([r["ending"] == "happy" for r in recs])
    assert 0.4 < happy.mean() < 0.6
    assert roc_auc_score(happy, df["sentiment_end"]) >= 0.9
    assert roc_auc_score(happy, df["sentiment"]) >= 0.75  # whole-story mean: the ending is a small part


def test_injected_offensive_words_found_lookalikes_not(meta, knob_corpus):
    for recs, df in [(meta[2], meta[1]), knob_corpus]:
        injected = np.array([len(r["offensive_words"]) for r in recs])
        assert (df["toxic_count"].to_numpy() == injected).all()
        lookalike = np.array([bool(r["lookalike_words"]) for r in recs])
        assert lookalike.sum() > 100 and (df["toxic_count"][lookalike & (injected == 0)] == 0).all()
    recs, df = knob_corpus
    assert abs((df["toxic_count"] > 0).mean() - 0.1) < 0.03


def test_ngram_prefers_real_stories_to_shuffled(meta, monkeypatch):
    from metadata.scorers import load_scorer
    info, df, _ = meta
    monkeypatch.setenv(ROOT_ENV, str(info["workspace"]))
    scorer = load_scorer("ngram", info["dataset"], info["vocab_size"])
    val = df.loc[df["split"] == "val", "story_id"].to_numpy()
    texts = [scorer.ds.text(i) for i in val]
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(t.split())) for t in texts]
    real_ppl = scorer.perplexity(scorer.encode(texts))
    shuffled_ppl = scorer.perplexity(scorer.encode(shuffled))
    assert np.allclose(real_ppl, df.set_index("story_id").loc[val, "ppl_ref"])  # same as the table
    assert (real_ppl < shuffled_ppl).mean() > 0.95 and np.median(shuffled_ppl) > 2 * np.median(real_ppl)
    train_ppl = df.loc[df["split"] == "train", "ppl_ref"].median()
    assert np.median(real_ppl) < 1.5 * train_ppl  # held-out stories are not much harder than the fitted ones


def test_checkpoint_scorer(meta, tiny_run, monkeypatch):
    from metadata.batch_metadata import fingerprint
    from metadata.scorers import load_scorer
    from modelling.checkpoints import list_checkpoints
    info, df, _ = meta
    monkeypatch.setenv(ROOT_ENV, str(info["workspace"]))
    step, ckpt = list_checkpoints(tiny_run)[-1]
    scorer = load_scorer(f"ckpt:{ckpt}", info["dataset"], info["vocab_size"])
    val = df.loc[df["split"] == "val", "story_id"].to_numpy()[:64]
    texts = [scorer.ds.text(i) for i in val]
    vocabulary = metrics.load_vocabulary(info["dir"] / metrics.VOCABULARY_FILE)  # the one `oov` used there
    out = metrics.score_texts(texts, [scorer.ds.tokens(i) for i in val], scorer, vocabulary=vocabulary)
    ppl = out["ppl_ref"].to_numpy()
    assert np.isfinite(ppl).all() and (ppl > 1).all() and np.median(ppl) < info["vocab_size"]  # beats uniform
    rng = np.random.default_rng(0)
    shuffled = scorer.perplexity(scorer.encode([" ".join(rng.permutation(t.split())) for t in texts]))
    assert np.median(shuffled) > np.median(ppl)  # even a 40-step model has learnt some word order
    text_cols = metrics.TEXT_COLUMNS + ["n_tokens"]
    assert out[text_cols].equals(df.set_index("story_id").loc[val, text_cols].reset_index(drop=True))
    fp = fingerprint(scorer.ds, scorer.spec)
    assert fp["scorer"] == f"ckpt:{ckpt}" and len(fp["scorer_sha256"]) == 64  # a new checkpoint rebuilds
    proc = run_stage(info["workspace"], "metadata/batch_metadata.py", "compute_metadata", "--dataset",
                     info["dataset"], "--vocab_size", info["vocab_size"], "--scorer", "ckpt:out/none.pt", check=False)
    assert proc.returncode == 2 and "out/none.pt" in proc.stderr


def test_vocabulary_is_the_train_splits_words(meta):
    info, df, recs = meta
    meta_json = json.loads((info["dir"] / "metadata.json").read_text())
    train = df.loc[df["split"] == "train", "story_id"].to_numpy()
    _, want = metrics.corpus_vocabulary(recs[i]["story"] for i in train)
    assert metrics.load_vocabulary(info["dir"] / metrics.VOCABULARY_FILE) == want
    assert meta_json["vocabulary"]["words"] == len(want)
    # its own training stories are all in-vocabulary and none is degenerate (the null of both measures)
    assert (df.loc[df["split"] == "train", "oov"] == 0).all() and (df["degenerate"] == 0).all()
    assert df["rep4"].between(0, 0.3).all()
