"""In-context learning per checkpoint (measures/icl.py) and its null: an untrained model's loss does not depend
on the context, so both measures are ~0. On the tiny trained run (40 steps, it has learned token statistics)
the same late tokens are predicted a little better with their whole story than with 31 tokens of it; the raw
late-minus-early score mixes that with position effects (storyworld's formulaic opening), so only the
content-controlled gain is asserted."""
import numpy as np
import pytest
import torch

from measures.icl import icl_scores, windows
from modelling.checkpoints import load_model
from modelling.model import ModelArgs, Transformer
from tokenization.dataset import TokenizedDataset

N_STORIES = 48


@pytest.fixture(scope="module")
def val_rows(tok_dataset):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tok_dataset["workspace"])  # data/ resolves relative to the working directory
        ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
        ids = np.sort(ds.story_ids("val"))[:N_STORIES]
        return [np.asarray(ds.tokens(int(s))) for s in ids]


def test_windows_are_the_documented_positions():
    early, late = windows(128)
    assert early[0] == 8 and early[-1] == 32 and late[0] == 97 and late[-1] == 128
    assert windows(40) is None  # the last quarter would overlap 8..32


def test_untrained_model_is_null_trained_run_uses_context(tiny_run, val_rows):
    torch.set_num_threads(1)
    trained, ckpt = load_model(tiny_run / "ckpt" / "step_000040.pt")
    torch.manual_seed(0)
    untrained = Transformer(ModelArgs.from_dict(ckpt["model_args"])).eval()
    null, learnt = icl_scores(untrained, val_rows), icl_scores(trained, val_rows)
    assert null["icl_stories"] == learnt["icl_stories"] >= 32  # storyworld stories fill the 128-position window
    assert abs(null["icl_score"]) < 0.03 and abs(null["icl_context_gain"]) < 0.003, null
    assert np.isfinite(learnt["icl_score"]) and learnt["icl_score"] != null["icl_score"]
    assert learnt["icl_context_gain"] < -0.005, learnt


def test_short_rows_are_left_out(tiny_run, val_rows):
    trained, _ = load_model(tiny_run / "ckpt" / "step_000040.pt")
    res = icl_scores(trained, [r[:100] for r in val_rows])
    assert np.isnan(res["icl_score"]) and np.isnan(res["icl_context_gain"]) and res["icl_stories"] == 0
