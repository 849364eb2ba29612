"""eval.py --trajectories on a copy of the tiny run: the audit set is what the run trained, the per-story losses
agree with the shared story_loss, an untrained model has learned nothing (the null), events follow Toneva et
al.'s definition, and the events table is joined with storyworld's ground truth and the metadata.
The same eval pass also runs --covert_probes, and the probe nulls are checked here on its tables (a fixture
imported into tests/test_probes.py would run eval a second time)."""
import json

import numpy as np
import pandas as pd
import pytest

from measures.probes import CACHE_DIR
from measures.trajectories import LEARNED_ACC, story_events
from tests.fixtures_run import copied_run

TRAJ_ARGS = ("--n_prompts", 1, "--max_new_tokens", 8, "--val_stories", 8, "--steps", 1, 20, 40,
             "--trajectories", "--audit_stories", 24, "--covert_probes", "--probe_stories", 200)


@pytest.fixture(scope="module")
def traj_run(tiny_run, meta_dataset):
    return copied_run(tiny_run, "tiny_traj", [("eval.py", TRAJ_ARGS)])


def test_audit_set_was_trained_and_losses_match_story_loss(traj_run):
    from common.paths import set_root
    from modelling.checkpoints import load_model, load_run
    from modelling.data import SegmentBatches, story_loss
    from tokenization.dataset import TokenizedDataset
    run_dir = traj_run["dir"]
    set_root(traj_run["ws"])  # the session's corpus (conftest resets the root after the test)
    traj = pd.read_csv(run_dir / "tables" / "trajectories.csv")
    events = pd.read_csv(run_dir / "tables" / "story_events.csv")
    assert sorted(traj["step"].unique()) == [1, 20, 40]
    assert (events.groupby("set").size() == 24).all()
    run = load_run(run_dir)
    trained = set(run.batch_log.steps(1, len(run.batch_log))["story_id"].tolist())
    train = events[events["set"] == "train"]
    assert set(train["story_id"]) <= trained  # every train audit story was trained by the run …
    assert (train["first_trained_step"].between(1, 40)).all() and (train["epochs_trained"] > 0).all()
    val = events[events["set"] == "val"]
    assert not set(val["story_id"]) & trained and (val["epochs_trained"] == 0).all()  # … and no val one
    # token-weighted mean of the per-story losses = the shared story_loss over the same stories
    ds = TokenizedDataset("storyworld", 512)
    model, _ = load_model(run.checkpoint(40))
    last = traj[(traj["step"] == 40) & (traj["set"] == "val")]
    want = story_loss(model, SegmentBatches(ds, 128, 1), last["story_id"].to_numpy())
    assert np.average(last["loss"], weights=last["n_tokens"]) == pytest.approx(want, rel=1e-5)


def test_untrained_model_learns_nothing_and_training_lowers_the_loss(traj_run):
    traj = pd.read_csv(traj_run["dir"] / "tables" / "trajectories.csv")
    first, last = traj[traj["step"] == 1], traj[traj["step"] == 40]
    # step 1: near-uniform predictions over 512 pieces, so no story is anywhere near the learned bar
    assert first["loss"].between(np.log(512) - 0.3, np.log(512) + 0.3).all()
    assert (first["token_acc"] < LEARNED_ACC).all() and first["p_mean"].max() < 0.01
    assert (last.set_index(["set", "story_id"])["loss"] < first.set_index(["set", "story_id"])["loss"]).all()


def test_events_follow_toneva_and_join_ground_truth(traj_run):
    events = pd.read_csv(traj_run["dir"] / "tables" / "story_events.csv")
    assert events["hero_gender"].isin(["female", "male"]).all() and events["ending"].isin(["happy", "sad"]).all()
    assert {"meta_ppl_ref", "meta_n_tokens"} <= set(events.columns)
    assert (events["meta_n_tokens"] == events["n_tokens"] - 1).all()  # the metadata counts story tokens, no BOS
    by = pd.read_csv(traj_run["dir"] / "tables" / "story_events_by.csv")
    assert set(by["attribute"]) >= {"set", "hero_gender", "ending", "plot"}
    assert (by.groupby("attribute")["n"].sum() == 48).all()
    # the definition, on a made-up trajectory: learned (acc >= bar) at 2, forgotten at 3, learned again at 4
    acc = [0.1, 0.6, 0.4, 0.7, 0.8]
    traj = pd.DataFrame({"step": [1, 2, 4, 8, 16], "set": "train", "story_id": 7, "n_tokens": 10,
                         "loss": [5, 2, 3, 1.5, 1.2], "token_acc": acc, "p_mean": [0.0, 0.5, 0.3, 0.6, 0.7]})
    row = story_events(traj).iloc[0]
    assert (row["learning_events"], row["forgetting_events"], row["learned_step"]) == (2, 1, 2)
    assert row["unforgettable"] == 0 and row["learned_final"] == 1 and row["correctness"] == 0.6
    assert row["confidence"] == pytest.approx(0.42) and row["variability"] == pytest.approx(np.std(traj["p_mean"]))
    never = story_events(traj.assign(token_acc=0.0)).iloc[0]
    assert never["learning_events"] == 0 and np.isnan(never["learned_step"]) and never["unforgettable"] == 0


def test_probe_nulls_random_label_shuffled_labels_and_step1_against_itself(traj_run):
    table = pd.read_csv(traj_run["dir"] / "tables" / "covert_probes.csv")
    assert sorted(table["step"].unique()) == [1, 20, 40]
    assert {"hero_gender", "in_quote", "ending", "plot", "random"} <= set(table["attribute"])
    assert (table["layer"].groupby([table["step"], table["attribute"]]).nunique() == 3).all()  # embeddings + 2
    assert table.loc[table["attribute"] == "random", "counts"].sum() == 0
    # 200 stories: the shuffled-label probe stays near chance (|acc - chance| < 4 standard errors of a coin)
    assert ((table["acc_shuffled"] - table["chance"]).abs() < 4 * np.sqrt(0.25 / table["n"])).all()
    step1 = table[table["step"] == 1]
    assert (step1["gain_step1"] == 0).all() and (step1["counts"] == 0).all() and (step1["baseline_step"] == 1).all()
    assert (step1["acc"] == step1["acc_step1"]).all() and (table["z"] > 2.5).all()  # Bonferroni over 18 rows
    state = json.loads((traj_run["dir"] / "tables" / "covert_probes.json").read_text())
    assert state["steps_done"] == [1, 20, 40] and state["attributes"]["hero_gender"] == "pronoun"
    for step in (1, 20, 40):  # activations computed once per checkpoint, kept for later passes
        with np.load(traj_run["dir"] / CACHE_DIR / f"step_{step:06d}.npz") as f:
            assert f["pronoun"].shape[1:] == (3, 32) and f["story_ids"].tolist() == state["story_ids"]
