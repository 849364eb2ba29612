"""Shared tokenizers (pretokenize --tokenizer_from) and branching (train.py --init_from=out/RUN/ckpt/step_N.pt):
lineage, the shared step axis, the parent's weights really loaded, exact resume, a changed parent refused."""
import json

import pandas as pd
import pytest
import torch

from common.errors import UserError
from common.ids import checkpoint_id
from modelling.checkpoints import list_checkpoints, load_checkpoint, load_model, load_run
from modelling.data import SegmentBatches
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CONFIG, kill_training_at, train_args

PRETOK = "tokenization/pretokenize.py"
COUNTER = "sw_counter"  # a second storyworld corpus (other seed, counter-biased) on the fixture's tokenizer
OWN = "sw_own"          # the same kind of corpus with a tokenizer of its own (same vocab size, other pieces)
BRANCH_STEP = 20
BRANCH = {**TINY_CONFIG, "dataset": COUNTER, "vocab_size": 512, "init_from": "out/tiny/ckpt/step_000020.pt",
          "max_iters": 24, "data_seed": 3}


def corpus(ws, name, seed, bias, *extra):
    run_stage(ws, "download/download_datasets.py", "storyworld", "--name", name, "--n_stories", 800,
              "--seed", seed, "--occupation_bias", bias, *extra)


@pytest.fixture(scope="module")
def counter_dataset(tok_dataset):
    """sw_counter: 800 new stories (seed 11, occupation_bias 0.1), encoded with storyworld's tok512."""
    ws = tok_dataset["workspace"]
    if not (ws / "data" / COUNTER / "tok512" / "manifest.json").exists():
        corpus(ws, COUNTER, 11, 0.1)
        run_stage(ws, PRETOK, "pretokenize", "--dataset", COUNTER, "--vocab_size", 512, "--tokenizer_from",
                  "storyworld")
    return ws / "data" / COUNTER / "tok512"


@pytest.fixture(scope="module")
def branch_run(tiny_run, counter_dataset):
    """The tiny run branched at step 20 onto sw_counter for 24 steps (uninterrupted)."""
    ws = tiny_run.parents[1]
    run_stage(ws, "modelling/train.py", *train_args(**{**BRANCH, "out_dir": "out/branch"}), env=ONE_THREAD)
    return ws / "out/branch"


def test_tokenizer_from_shares_the_vocab_and_records_it(tok_dataset, counter_dataset):
    ws = tok_dataset["workspace"]
    manifest = json.loads((counter_dataset / "manifest.json").read_text())
    parent = json.loads((tok_dataset["dir"] / "manifest.json").read_text())
    assert manifest["tokenizer_sha256"] == parent["tokenizer_sha256"]
    assert manifest["tokenizer_from"] == {"dataset": "storyworld", "tokenizer_sha256": parent["tokenizer_sha256"]}
    assert (counter_dataset / "tokenizer.model").read_bytes() == (tok_dataset["dir"] / "tokenizer.model").read_bytes()
    card = (ws / "data" / COUNTER / "README.md").read_text()
    assert "tokenizer of `storyworld`" in card
    # re-running is a no-op; a missing source, or a folder with a tokenizer of its own, is one error line
    again = run_stage(ws, PRETOK, "pretokenize", "--dataset", COUNTER, "--vocab_size", 512, "--tokenizer_from",
                      "storyworld")
    assert "up to date" in again.stdout
    for args, message in ((("--tokenizer_from", "nowhere"), "tokenizer not found"),
                          (("--tokenizer_from", COUNTER), "is this dataset"),
                          (("--tokenizer_from", "storyworld", "--tokenizer", "x.model"), "not both")):
        proc = run_stage(ws, PRETOK, "pretokenize", "--dataset", COUNTER, "--vocab_size", 512, *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:")
    assert json.loads((counter_dataset / "manifest.json").read_text()) == manifest  # nothing lost


def test_a_checkpoint_on_another_tokenizer_is_refused(tiny_run, tok_dataset):
    ws = tok_dataset["workspace"]
    if not (ws / "data" / OWN / "tok512" / "manifest.json").exists():
        corpus(ws, OWN, 12, 0.5)
        run_stage(ws, PRETOK, "train_vocab", "--dataset", OWN, "--vocab_size", 512)
        run_stage(ws, PRETOK, "pretokenize", "--dataset", OWN, "--vocab_size", 512)
    proc = run_stage(ws, "modelling/train.py", *train_args(**{**BRANCH, "dataset": OWN, "out_dir": "out/own"}),
                     check=False, env=ONE_THREAD)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "another tokenizer" in proc.stderr and "--tokenizer_from storyworld" in proc.stderr
    assert not (ws / "out/own").exists()
    # sharing it the other way is refused too: sw_own's folder already holds its own tokenizer
    proc = run_stage(ws, PRETOK, "pretokenize", "--dataset", OWN, "--vocab_size", 512, "--tokenizer_from",
                     "storyworld", check=False)
    assert proc.returncode == 2 and "is another tokenizer" in proc.stderr


def test_branch_continues_the_parent_step_axis_with_its_lineage(tiny_run, branch_run, counter_dataset, monkeypatch):
    ws = tiny_run.parents[1]
    run, parent = load_run(branch_run), load_checkpoint(tiny_run / "ckpt/step_000020.pt")
    lineage = run.config["lineage"]
    assert lineage["parent_step"] == BRANCH_STEP and lineage["parent_id"] == checkpoint_id(parent)
    assert lineage["parent_run"] == "out/tiny" and lineage["parent_run_id"] == parent["ids"]["run"]
    assert lineage["parent_tokens_seen"] == parent["tokens_seen"] and lineage["parent_dataset"] == "storyworld"
    assert run.config["ids"]["run"] != parent["ids"]["run"] and run.config["ids"]["tokenized"] != \
        parent["ids"]["tokenized"]
    # one x axis: steps 21..44, tokens_seen on from the parent's; checkpoints log-spaced from the branch point
    assert run.train_log["step"].tolist() == list(range(BRANCH_STEP + 1, BRANCH_STEP + 25))
    first = run.train_log.iloc[0]
    assert first["tokens_seen"] == parent["tokens_seen"] + run.batch_log.step(1)["n_tokens"].sum()
    assert [s for s, _ in run.checkpoints] == [BRANCH_STEP + s for s in (1, 2, 4, 8, 10, 16, 20, 24)]
    assert run.config["n_steps"] == BRANCH_STEP + 24 and run.batch_log.meta["step_offset"] == BRANCH_STEP
    # its own warmup: the first step's lr is learning_rate / warmup_iters, not the parent's step-21 lr
    assert first["lr"] == pytest.approx(TINY_CONFIG["learning_rate"] / TINY_CONFIG["warmup_iters"])
    # the weights were really loaded: the first step's loss is the parent checkpoint's loss on that batch
    monkeypatch.chdir(ws)
    from tokenization.dataset import TokenizedDataset
    batches = SegmentBatches(TokenizedDataset(COUNTER, 512), TINY_CONFIG["max_seq_len"])
    model = load_model(tiny_run / "ckpt/step_000020.pt")[0]
    x, y, positions, segment_ids = batches.batch(run.batch_log.step(1))
    with torch.no_grad():
        model(x, y, positions=positions, segment_ids=segment_ids)
    assert float(first["loss"]) == pytest.approx(model.last_loss.item(), abs=1e-5)
    # only the branch's stories were trained, and the card names the parent
    assert set(run.batch_log.steps(1, 24)["story_id"]) <= set(TokenizedDataset(COUNTER, 512).story_ids("train"))
    card = (branch_run / "README.md").read_text()
    assert f"parent_step: {BRANCH_STEP}" in card and lineage["parent_id"] in card


@pytest.mark.slow
def test_branch_resume_after_kill_is_exact_and_a_changed_parent_is_refused(tiny_run, branch_run):
    ws = tiny_run.parents[1]
    args = train_args(**{**BRANCH, "out_dir": "out/branch_killed"})
    killed_at = kill_training_at(ws, args, ws / "out/branch_killed/ckpt/step_000030.pt", timeout=120)
    assert BRANCH_STEP < killed_at < BRANCH_STEP + 24, "the branch finished before it could be killed"
    run_stage(ws, "modelling/train.py", "--init_from=resume", "--out_dir=out/branch_killed", env=ONE_THREAD)
    resumed, whole = load_run(ws / "out/branch_killed"), load_run(branch_run)
    cols = ["step", "tokens_seen", "loss", "lr", "grad_norm"]
    assert resumed.train_log[cols].astype(str).equals(whole.train_log[cols].astype(str))  # bit for bit
    assert (resumed.dir / "batch_log.bin").read_bytes() == (whole.dir / "batch_log.bin").read_bytes()
    assert resumed.config["lineage"] == whole.config["lineage"]
    assert resumed.config["ids"]["run"] == whole.config["ids"]["run"]
    last = f"ckpt/step_{BRANCH_STEP + 24:06d}.pt"
    a, b = load_checkpoint(resumed.dir / last)["model"], load_checkpoint(whole.dir / last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)

    # the parent checkpoint changes under a finished branch: re-running or resuming it is refused
    parent_path = tiny_run / "ckpt/step_000020.pt"
    original = parent_path.read_bytes()
    try:
        ckpt = load_checkpoint(parent_path)
        ckpt["model"] = {k: v + 1e-3 for k, v in ckpt["model"].items()}
        torch.save(ckpt, parent_path)
        for extra in ([], ["--init_from=resume"]):
            proc = run_stage(ws, "modelling/train.py", *(args if not extra else ["--out_dir=out/branch_killed"]),
                             *extra, check=False, env=ONE_THREAD)
            assert proc.returncode == 2 and "the parent run changed" in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
    finally:
        parent_path.write_bytes(original)
    assert [s for s, _ in list_checkpoints(resumed.dir)][-1] == BRANCH_STEP + 24


def test_branch_optimizer_parent_needs_saved_state(tiny_run, counter_dataset):
    """--branch_optimizer=parent takes the AdamW moments where the checkpoint has them (resume.pt here) and is
    refused with one line where it has none; --save_optimizer_at puts them into chosen step checkpoints."""
    ws = tiny_run.parents[1]
    base = {**BRANCH, "max_iters": 2, "branch_optimizer": "parent"}
    proc = run_stage(ws, "modelling/train.py", *train_args(**{**base, "out_dir": "out/branch_opt_missing"}), check=False,
                     env=ONE_THREAD)
    assert proc.returncode == 2 and "holds no optimizer state" in proc.stderr
    assert "optimizer" not in load_checkpoint(tiny_run / "ckpt/step_000020.pt")
    run_stage(ws, "modelling/train.py", *train_args(**{**base, "init_from": "out/tiny/ckpt/resume.pt",
                                                       "save_optimizer_at": "41", "out_dir": "out/branch_opt"}),
              env=ONE_THREAD)
    parent_opt = load_checkpoint(tiny_run / "ckpt/resume.pt")["optimizer"]
    saved = load_checkpoint(ws / "out/branch_opt/ckpt/step_000041.pt")
    assert "optimizer" in saved and "optimizer" not in load_checkpoint(ws / "out/branch_opt/ckpt/step_000042.pt")
    # AdamW's step count went on from the parent's 40: the moments were loaded, not fresh
    assert int(saved["optimizer"]["state"][0]["step"]) == int(parent_opt["state"][0]["step"]) + 1 == 41
    with pytest.raises(UserError, match="save_optimizer_at=a,b: give comma-separated"):
        from modelling.branch import parse_steps
        parse_steps("a,b")


def test_runs_page_names_a_branch_parent(tiny_run, branch_run, monkeypatch):
    from common.paths import ROOT_ENV
    from dash_llama.data import Store
    from dash_llama.pages import runs
    monkeypatch.setenv(ROOT_ENV, str(tiny_run.parents[1]))
    table = runs.runs_table(Store(tiny_run.parent)).set_index("run")
    assert table.loc["branch", "parent"] == f"tiny @ {BRANCH_STEP}" and table.loc["branch", "step"] == BRANCH_STEP + 24
    assert pd.isna(table.loc["tiny", "parent"])
