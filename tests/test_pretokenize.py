"""train_vocab + pretokenize + the TokenizedDataset reader, on the shared tok_dataset fixture."""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sentencepiece as spm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common.errors import UserError  # noqa: E402
from common.paths import ROOT_ENV  # noqa: E402
from tests.fixtures_data import run_stage  # noqa: E402

PRETOK = "tokenization/pretokenize.py"


@pytest.fixture
def in_workspace(tok_dataset, monkeypatch):
    """The fixture workspace as the project root, so the reader's data/ paths resolve there."""
    monkeypatch.setenv(ROOT_ENV, str(tok_dataset["workspace"]))
    return tok_dataset


def tok_folder(tok_dataset):
    return tok_dataset["workspace"] / "data/storyworld/tok512"


def test_round_trip_and_index_layout(in_workspace):
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset("storyworld", 512)
    n = in_workspace["n_stories"]
    assert len(ds) == n and ds.manifest["n_stories"] == n and ds.manifest["vocab_size"] == 512
    idx = ds.index
    assert idx["story_id"].tolist() == list(range(n))
    assert str(idx["story_id"].dtype) == "int64" and str(idx["shard"].dtype) == "int16"
    assert str(idx["record"].dtype) == "int32" and str(idx["n_tokens"].dtype) == "int32"
    bos = ds.manifest["bos_id"]
    assert bos == 1
    # every story: BOS first, stored tokens decode to the stripped raw text
    token_lists = [ds.tokens(i) for i in range(n)]
    assert all(t.dtype == np.uint16 and t[0] == bos and (t[1:] != bos).all() for t in token_lists)
    decoded = ds.tokenizer.decode([t[1:].tolist() for t in token_lists])
    texts = [ds.text(i) for i in range(n)]
    assert decoded == texts
    # the word-cache encoder gives exactly sentencepiece's own encoding
    assert [t[1:].tolist() for t in token_lists] == ds.tokenizer.encode(texts)
    assert ds.manifest["encoder"].startswith("distinct words")
    # the .bin files are exactly the stories back to back, ids in shard/record order
    for k, s in enumerate(ds.manifest["shards"]):
        rows = idx[idx["shard"] == k]
        assert rows["record"].tolist() == list(range(s["n_stories"]))
        assert rows["story_id"].iloc[0] == s["first_story_id"]
        assert (rows["offset"].to_numpy() == np.concatenate([[0], np.cumsum(rows["n_tokens"])[:-1]])).all()
        raw = np.fromfile(tok_folder(in_workspace) / s["bin"], dtype="<u2")
        assert len(raw) == s["n_tokens"] == rows["n_tokens"].sum() and (raw == bos).sum() == s["n_stories"]
    # split: records the generator marked novel are val_novel, the rest follow the documented text rule with
    # the val_fraction the dataset card asks for (storyworld: 0.1), recorded in the manifest
    frac = ds.manifest["val_fraction"]
    assert frac == 0.1
    novel = [ds.record(i).get("split_hint") == "val_novel" for i in range(n)]
    rule = [not nv and int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big") / 2 ** 64 < frac
            for t, nv in zip(texts, novel)]
    assert (idx["split"] == "val").tolist() == rule and (idx["split"] == "val_novel").tolist() == novel
    assert ds.manifest["n_val"] == sum(rule) and 0.07 < sum(rule) / n < 0.11
    assert ds.manifest["n_val_novel"] == sum(novel) and 0.05 < sum(novel) / n < 0.15
    assert sum(len(ds.story_ids(s)) for s in ("train", "val", "val_novel")) == n
    assert ds.record(5)["story"].strip() == ds.text(5) and "characters" in ds.record(5)
    assert "blake2b" in ds.manifest["split_rule"] and ds.manifest["provenance"]["git_commit"]


def _resident_kb(paths):
    """kB of these files' pages resident in this process's mappings (/proc/self/smaps Rss lines)."""
    names, total, counting = {str(p) for p in paths}, 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line: range perms offset dev inode [path]
            counting = len(head) == 6 and head[5] in names
        elif counting and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_tokens_by_shard_reads_every_story_and_releases_each_shard(in_workspace):
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset("storyworld", 512)
    bins = [(ds.dir / s["bin"]).resolve() for s in ds.manifest["shards"]]
    rng = np.random.default_rng(0)
    ids = rng.permutation(len(ds))[:len(ds) // 2]
    # plain reads keep each touched shard's pages mapped: what made compute_metadata's n-gram fit grow with N
    for i in ids:
        int(ds.tokens(i)[-1])
    assert _resident_kb(bins) > 0
    for k in range(len(bins)):
        ds.release_shard(k)
    assert _resident_kb(bins) == 0
    got = {}
    shard = ds.index["shard"].to_numpy()
    order = []
    for story_id, tokens in ds.tokens_by_shard(ids):
        got[story_id] = np.array(tokens)
        if not order or shard[story_id] != order[-1]:  # a shard's first story: no earlier shard stays resident
            assert _resident_kb([b for k, b in enumerate(bins) if k < shard[story_id]]) == 0
        order.append(shard[story_id])
    del tokens  # the last view holds the last shard's old mapping open
    assert _resident_kb(bins) == 0
    assert sorted(got) == sorted(ids.tolist()) and order == sorted(order)  # every id once, shard by shard
    assert all(np.array_equal(got[i], ds.tokens(i)) for i in ids)


def test_validation_sample_fixed_and_novel_split_holds_out_combinations(in_workspace):
    from download.storyworld import StoryWorldConfig, heldout_pair
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset("storyworld", 512)
    fraction = StoryWorldConfig().heldout_pair_fraction  # the fixture corpus uses the generator's defaults
    split = ds.index["split"].to_numpy()
    for i in range(len(ds)):  # recomputed from the ground truth, not from the record's own heldout_pairs
        r = ds.record(i)
        hero = next(c["name"] for c in r["characters"] if c["role"] == "hero")
        held = any(heldout_pair(hero, plot, fraction) for plot in r["plot"].split("+"))
        assert held == (split[i] == "val_novel"), i  # no held-out (hero, plot) combination in train or val
    # the sample: sorted ids of the split, a smaller one is the start of a larger one, seed from the manifest
    for kind, name in (("iid", "val"), ("novel", "val_novel")):
        full = ds.validation_sample(kind, n=None, ranked=True)
        assert sorted(full) == sorted(ds.story_ids(name))
        small = ds.validation_sample(kind, n=50)
        assert np.array_equal(small, np.sort(full[:50])) and len(small) == 50
    assert ds.manifest["validation_sample"]["seed"] == 20240613
    with pytest.raises(UserError, match="iid"):
        ds.validation_sample("test")


def test_card_reports_sentence_overlap_novel_below_iid(in_workspace):
    import yaml
    from metadata.metrics import SENT_RE, WORD_RE
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset("storyworld", 512)
    card = (in_workspace["workspace"] / "data/storyworld/README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    overlap = header["validation"]["sentence_overlap"]
    assert "## Validation splits" in card and header["validation"] == ds.manifest["validation"]
    # recompute: share of each validation split's sentences found verbatim in a train story
    sents = {s: [] for s in ("train", "val", "val_novel")}
    for i, s in enumerate(ds.index["split"]):
        sents[s] += [x.strip() for x in SENT_RE.findall(ds.text(i)) if WORD_RE.search(x)]
    train = set(sents["train"])
    for s in ("val", "val_novel"):
        assert overlap[s] == pytest.approx(np.mean([x in train for x in sents[s]]), abs=1e-4)
    assert overlap["val_novel"] < overlap["val"] - 0.05


def test_sentence_overlap_streamed_equals_the_whole_corpus_count_with_twins(monkeypatch):
    """pretokenize counts train sentences shard by shard (distinct hashes, merged a few at a time here); with
    twins (a train story with a val_novel story's text, moved to val_novel at the end) it must give what
    counting every sentence of the final splits at once gives."""
    from tokenization.pretokenize import SentenceOverlap, story_hash_u64
    monkeypatch.setattr(SentenceOverlap, "MERGE_KEYS", 7)
    rng = np.random.default_rng(0)
    pool = [f"The {a} saw a {b}." for a in ("cat", "dog", "owl", "fox") for b in ("tree", "boat", "cake")]
    stories = [" ".join(rng.choice(pool, size=rng.integers(1, 5))) for _ in range(300)]
    splits = list(rng.choice(["train", "train", "train", "val", "val_novel"], size=len(stories)))
    novel = [i for i, s in enumerate(splits) if s == "val_novel"][:6]
    for k, i in enumerate(novel):  # a sentence of its own; twins: a val and three train stories with its text
        stories[i] += f" Novel {k} went home."
        if k < 4:
            twin = len(stories) - 1 - k
            stories[twin], splits[twin] = stories[i], "val" if k == 0 else "train"
    counter = SentenceOverlap()
    for first in range(0, len(stories), 37):  # shards
        counter.add(stories[first:first + 37], first, splits[first:first + 37])
    hashes = story_hash_u64(stories)
    final = np.array(splits, dtype=object)
    was_train = final == "train"
    final[np.isin(hashes, hashes[final == "val_novel"])] = "val_novel"
    assert (was_train & (final == "val_novel")).sum() >= 3  # ours, and chance repeats of short stories
    got = counter.result(final, was_train, hashes)

    def sentences(names):
        return [x for i in np.flatnonzero(np.isin(final, names)) for x in stories[i].replace(". ", ".|").split("|")]
    train = set(sentences(["train"]))
    for name in ("val", "val_novel"):
        assert got[name] == pytest.approx(np.mean([x in train for x in sentences([name])]), abs=1e-4), name
    assert got["val"] == 1.0 and 0.5 < got["val_novel"] < 1  # the novel sentences reach train by no twin


def test_tokenizer_settings_byte_fallback(in_workspace):
    sp = spm.SentencePieceProcessor(model_file=str(tok_folder(in_workspace) / "tokenizer.model"))
    assert sp.vocab_size() == 512 and sp.bos_id() == 1
    text = "Zoë ate 12345 crêpes 🍓  twice\tand\nsaid «ok»."  # unseen characters, digits, double space
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    pieces = [sp.id_to_piece(i) for i in ids]
    assert any(p.startswith("<0x") for p in pieces)  # byte fallback, no <unk>
    assert sp.unk_id() not in ids
    assert all(sum(c.isdigit() for c in p) <= 1 for p in pieces if not p.startswith("<0x"))  # split digits
    # the training sample lived in a temp folder that is gone, not in the workspace
    ws = in_workspace["workspace"]
    assert not list((tok_folder(in_workspace)).glob(".train_vocab*")) and not list(ws.glob("*.txt"))


def test_rerun_up_to_date_and_ids_stable_in_fresh_build(tok_dataset, tmp_path):
    ws = tok_dataset["workspace"]
    out = tok_folder(tok_dataset)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".bin", ".parquet", ".json")}
    again = run_stage(ws, PRETOK, "pretokenize", "--dataset", "storyworld", "--vocab_size", 512)
    assert "up to date" in again.stdout
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".bin", ".parquet", ".json")}
    assert "up to date" in run_stage(ws, PRETOK, "train_vocab", "--dataset", "storyworld", "--vocab_size", 512).stdout

    # a fresh workspace with the same raw shards, using the fixture's tokenizer as an external one (vocab 0)
    shutil.copytree(ws / "data/storyworld", tmp_path / "data/storyworld", ignore=shutil.ignore_patterns("tok*"))
    run_stage(tmp_path, PRETOK, "pretokenize", "--dataset", "storyworld", "--vocab_size", 0,
              "--tokenizer", out / "tokenizer.model")
    fresh = tmp_path / "data/storyworld/tok0"
    pd.testing.assert_frame_equal(pd.read_parquet(fresh / "index.parquet"), pd.read_parquet(out / "index.parquet"))
    for s in json.loads((out / "manifest.json").read_text())["shards"]:
        assert (fresh / s["bin"]).read_bytes() == (out / s["bin"]).read_bytes()
    assert (fresh / "tokenizer.model").read_bytes() == (out / "tokenizer.model").read_bytes()
    # the fixed validation samples are the same after a re-pretokenize (independent of any run seed)
    from tokenization.dataset import TokenizedDataset
    samples = []
    for where, vocab in ((ws, 512), (tmp_path, 0)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(ROOT_ENV, str(where))
            d = TokenizedDataset("storyworld", vocab)
            samples.append([d.validation_sample(kind, n=500, ranked=True) for kind in ("iid", "novel")])
    for a, b in zip(*samples):
        assert len(a) > 200 and np.array_equal(a, b)

    # a changed raw shard is detected, named, and nothing already written changes
    manifest_before = (fresh / "manifest.json").read_bytes()
    shard = tmp_path / "data/storyworld/data01.json"
    records = json.loads(shard.read_text())
    records[3]["story"] += " The end."
    shard.write_text(json.dumps(records))
    proc = run_stage(tmp_path, PRETOK, "pretokenize", "--dataset", "storyworld", "--vocab_size", 0,
                     "--tokenizer", out / "tokenizer.model", check=False)
    assert proc.returncode == 2 and "data01.json" in proc.stderr and "changed" in proc.stderr
    assert (fresh / "manifest.json").read_bytes() == manifest_before


def test_bad_inputs(tmp_path, tok_dataset, monkeypatch):
    def fails(*args, needle):
        proc = run_stage(tmp_path, PRETOK, *map(str, args), check=False)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]  # one error line after any progress bars
        assert last.startswith("error:") and needle in last, proc.stderr
        return proc

    fails("train_vocab", "--dataset", "nothing", "--vocab_size", 300, needle="download_datasets.py")
    (tmp_path / "data/tiny").mkdir(parents=True)
    (tmp_path / "data/tiny/data00.json").write_text(json.dumps([{"story": "A cat sat."}] * 20))
    (tmp_path / "data/tiny/data01.json").write_text('[{"story": "truncated')
    fails("train_vocab", "--dataset", "tiny", "--vocab_size", 70000, needle="65535")
    fails("pretokenize", "--dataset", "tiny", "--vocab_size", 300, needle="train_vocab")
    fails("pretokenize", "--dataset", "tiny", "--vocab_size", 0, needle="--tokenizer")
    fails("pretokenize", "--dataset", "tiny", "--vocab_size", 0, "--tokenizer",
          tok_folder(tok_dataset) / "tokenizer.model", needle="data01.json")
    assert not (tmp_path / "data/tiny/tok0").exists()  # a failed first pretokenize leaves no folder behind

    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    from tokenization.dataset import TokenizedDataset
    with pytest.raises(UserError, match="pretokenize"):
        TokenizedDataset("tiny", 300)


def test_vocab_size_errors_say_which_way_and_leave_no_folder(tmp_path):
    """SentencePiece's two size failures, in process: too small for the corpus' characters (+ 256 byte pieces)
    asks for a larger vocab, too large for the corpus asks for a smaller one; neither leaves tok<V>/."""
    from tokenization import pretokenize
    (tmp_path / "data/few").mkdir(parents=True)
    stories = [f"A cat number {i} sat on the mat and then it ran to see a dog." for i in range(40)]
    (tmp_path / "data/few/data00.json").write_text(json.dumps([{"story": s} for s in stories]))
    with pytest.raises(UserError, match=r"--vocab_size 100 is too small .* try a larger vocab \(>= \d+\)"):
        pretokenize.main(["train_vocab", "--root", str(tmp_path), "--dataset", "few", "--vocab_size", "100"])
    with pytest.raises(UserError, match=r"--vocab_size 3000 is too large for 40 stories.* try a smaller vocab"):
        pretokenize.main(["train_vocab", "--root", str(tmp_path), "--dataset", "few", "--vocab_size", "3000"])
    assert sorted(p.name for p in (tmp_path / "data/few").iterdir()) == ["data00.json"]


def test_story_encoder_matches_sentencepiece_on_odd_text(in_workspace):
    from tokenization.pretokenize import StoryEncoder
    sp = spm.SentencePieceProcessor(model_file=str(tok_folder(in_workspace) / "tokenizer.model"))
    stories = ["Tom ran.  Then he sat.", "Lily  saw\na cat.\n\nThe end.", "", "x", "A b c", "Zoë's 42 crêpes 🍓.",
               "Mia said, \"Hi!\"\tBen waved.", "one  two", "three four"] * 3
    encoder = StoryEncoder(sp, threads=2, verify_stories=4)
    flat, lengths = encoder.encode(stories)
    expected = [[sp.bos_id()] + ids for ids in sp.encode(stories)]
    assert encoder.use_words and lengths.tolist() == [len(e) for e in expected]
    assert flat.tolist() == [t for e in expected for t in e]
