"""modelling/train.py end to end on a real small corpus: the run folder, the batch log rebuilding the exact tensors
of a step, probe attention from the real forward pass, resume after a kill equal to an uninterrupted run, config
validation, continued pretraining from a llama2.c-style .pt, overfitting, and the batch viewer."""
import csv
import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
import torch

from common.errors import UserError
from modelling.batch_log import BatchLog
from modelling.checkpoints import list_checkpoints, load_checkpoint, load_model, load_run
from modelling.data import SegmentBatches
from modelling.model import ModelArgs, Transformer
from modelling.config import parse_config
from tests.fixtures_data import PYTHON, REPO, run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CKPTS, TINY_CONFIG, TINY_STEPS, kill_training_at, train_args


@pytest.fixture
def in_workspace(tok_dataset, monkeypatch):
    """Run in-process code (shared readers, train.main) from the workspace, as the stages do."""
    monkeypatch.chdir(tok_dataset["workspace"])
    return tok_dataset["workspace"]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_is_complete(tiny_run):
    run = load_run(tiny_run)
    assert [s for s, _ in run.checkpoints] == TINY_CKPTS
    assert list(run.train_log["step"]) == list(range(1, TINY_STEPS + 1))
    assert list(run.train_log.columns) == ["step", "tokens_seen", "loss", "lr", "grad_norm", "tokens_per_s",
                                           "n_segments", "n_rows", "pad_fraction"]
    assert list(run.val_log["step"]) == TINY_CKPTS and run.val_log["val_loss_sub"].iloc[-1] < run.val_log["val_loss_sub"].iloc[0]
    assert run.train_log["loss"].iloc[-5:].mean() < run.train_log["loss"].iloc[:5].mean() - 0.5
    assert len(run.batch_log) == TINY_STEPS and run.batch_log.meta["segments_per_step"] == TINY_CONFIG["batch_size"]
    assert np.all(run.batch_log.segments_per_step() == TINY_CONFIG["batch_size"])
    assert np.all(run.train_log["n_rows"] <= TINY_CONFIG["batch_size"]) and run.train_log["pad_fraction"].max() < 0.5
    cfg = run.config
    assert cfg["config"]["dim"] == 32 and cfg["n_steps"] == TINY_STEPS and cfg["provenance"]["git_commit"]
    assert cfg["ids"]["run"].startswith("run-") and cfg["ids"]["tokenized"].startswith("tok-")
    assert [p["name"] for p in run.probes][-1] == "induction" and len(run.probes) == 3
    ckpt = load_checkpoint(run.checkpoint(8))
    assert ckpt["step"] == 8 and ckpt["tokens_seen"] == run.train_log["tokens_seen"].iloc[7]
    assert set(ckpt["probe_attn"]) == {p["name"] for p in run.probes}
    induction = next(p for p in run.probes if p["name"] == "induction")
    t = len(induction["tokens"]) - 1
    assert ckpt["probe_attn"]["induction"].shape == (2, 4, t, t)
    assert ckpt["probe_attn"]["induction"].dtype == torch.float16
    resume = load_checkpoint(tiny_run / "ckpt" / "resume.pt")
    assert resume["step"] == TINY_STEPS and "optimizer" in resume


def test_probe_attention_is_that_steps_real_forward_pass(tiny_run):
    run = load_run(tiny_run)
    for step in (1, 16, TINY_STEPS):
        model, ckpt = load_model(run.checkpoint(step))
        for probe in run.probes:
            stored = ckpt["probe_attn"][probe["name"]].float()
            assert torch.allclose(stored.sum(-1), torch.ones(stored.shape[:-1]), atol=5e-3)
            tokens = torch.tensor(probe["tokens"])[None]
            model(tokens[:, :-1], tokens[:, 1:], return_attn=True)
            recomputed = torch.stack([a[0] for a in model.last_attn])
            assert torch.allclose(stored, recomputed, atol=1e-3)
            assert abs(ckpt["probe_loss"][probe["name"]] - model.last_loss.item()) < 1e-5
    # weights differ between checkpoints, and so do the maps
    a = load_checkpoint(run.checkpoint(1))["probe_attn"]["induction"].float()
    b = load_checkpoint(run.checkpoint(TINY_STEPS))["probe_attn"]["induction"].float()
    assert (a - b).abs().max() > 1e-3


def test_batch_log_rebuilds_the_exact_tensors_of_a_step(tiny_run, in_workspace, tok_dataset):
    """The loss logged at step k is the loss of the batch log's packed segments under the weights before step k."""
    from tokenization.dataset import TokenizedDataset
    run = load_run(tiny_run)
    batches = SegmentBatches(TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"]),
                             TINY_CONFIG["max_seq_len"])
    torch.manual_seed(TINY_CONFIG["seed"])
    models = {1: Transformer(ModelArgs.from_dict(run.config["model_args"]))}  # the init weights of step 1
    for prev in (1, 2, 4, 16):
        models[prev + 1] = load_model(run.checkpoint(prev))[0]
    packed_rows = 0
    for step, model in models.items():
        packed = run.batch_log.step(step)
        x, y, positions, segment_ids = batches.batch(packed)
        assert x.shape[0] == len(np.unique(packed["row"])) and x.shape[1] <= TINY_CONFIG["max_seq_len"]
        packed_rows += segment_ids is not None
        model(x, y, positions=positions, segment_ids=segment_ids)
        logged = run.train_log.loc[run.train_log["step"] == step, "loss"].item()
        assert abs(model.last_loss.item() - logged) < 1e-5, step
        # --compile's layout: every row max_seq_len wide, the segment mask always given — the same loss
        fixed = batches.batch(packed, fixed_width=True)
        assert fixed[0].shape == (x.shape[0], TINY_CONFIG["max_seq_len"]) and fixed[3] is not None
        model(*fixed[:2], positions=fixed[2], segment_ids=fixed[3])
        assert abs(model.last_loss.item() - logged) < 1e-5, step
    assert packed_rows > 0  # some of these steps packed several segments into one row
    tokens_per_step = np.diff(np.concatenate([[0], run.train_log["tokens_seen"].to_numpy()]))
    assert tokens_per_step[4] == run.batch_log.step(5)["n_tokens"].sum()


def test_a_story_row_ends_with_the_bos_marker_and_pads_are_ignored(in_workspace, tok_dataset):
    from modelling.data import pack_rows
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
    index = ds.index.sort_values("n_tokens")
    short, long_ = int(index["story_id"].iloc[0]), int(index["story_id"].iloc[-1])
    batches = SegmentBatches(ds, max_seq_len=1000)
    segments = batches.segments([short, long_])
    x, y, positions, segment_ids = batches.batch(pack_rows(segments, 1000, min_rows=2))
    assert positions is None and segment_ids is None  # one segment per row: plain causal attention
    n_short = len(ds.tokens(short))
    row = int(np.flatnonzero(x[:, 0] == 1)[np.argmin([(y[r] >= 0).sum() for r in range(2)])])
    assert np.array_equal(x[row, :n_short].numpy(), ds.tokens(short))  # BOS + story
    assert y[row, n_short - 1] == 1 and torch.all(y[row, n_short:] == -1)  # ends with the BOS marker, then pads
    assert torch.all(x[row, n_short:] == 0)
    chunked = SegmentBatches(ds, max_seq_len=16).segments([long_])
    assert chunked["n_tokens"].sum() == len(ds.tokens(long_)) and chunked["n_tokens"].max() == 16


def test_resume_after_kill_equals_uninterrupted(tiny_run, tok_dataset):
    ws = tok_dataset["workspace"]
    args = train_args(**{**TINY_CONFIG, "dataset": tok_dataset["dataset"], "vocab_size": tok_dataset["vocab_size"],
                         "out_dir": "out/killed"})
    killed_at = kill_training_at(ws, args, ws / "out/killed/ckpt/step_000010.pt", timeout=120)
    # killed right after step 10's checkpoint: resume.pt is at 8 or 10 (it is written after the checkpoint)
    assert 8 <= killed_at < TINY_STEPS, "the run finished before it could be killed"
    run_stage(ws, "modelling/train.py", "--init_from=resume", "--out_dir=out/killed", env=ONE_THREAD)
    resumed, whole = ws / "out/killed", tiny_run
    assert json.loads((resumed / "config.json").read_text())["resumed_from_step"] == killed_at
    assert (resumed / "batch_log.bin").read_bytes() == (whole / "batch_log.bin").read_bytes()
    assert (resumed / "batch_log_steps.bin").read_bytes() == (whole / "batch_log_steps.bin").read_bytes()
    a, b = read_rows(resumed / "train_log.csv"), read_rows(whole / "train_log.csv")
    assert [r["step"] for r in a] == [str(s) for s in range(1, TINY_STEPS + 1)]
    assert [(r["loss"], r["grad_norm"], r["lr"], r["tokens_seen"]) for r in a] == \
           [(r["loss"], r["grad_norm"], r["lr"], r["tokens_seen"]) for r in b]  # bit for bit (fp32 CPU)
    assert read_rows(resumed / "val_log.csv") == read_rows(whole / "val_log.csv")
    final_a = load_checkpoint(resumed / "ckpt/step_000040.pt")["model"]
    final_b = load_checkpoint(whole / "ckpt/step_000040.pt")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_b)
    assert [s for s, _ in list_checkpoints(resumed)] == TINY_CKPTS


def test_a_second_writer_on_the_same_run_folder_is_refused(tiny_run, tok_dataset):
    """Two train.py on one out_dir with different seeds: the second is refused with one line naming the first's
    pid, and the first finishes untouched."""
    ws = tok_dataset["workspace"]
    args = train_args(**{**TINY_CONFIG, "dataset": tok_dataset["dataset"], "vocab_size": tok_dataset["vocab_size"],
                         "out_dir": "out/contended", "max_iters": 30})
    first = subprocess.Popen([PYTHON, str(REPO / "modelling/train.py"), *args], cwd=ws,
                             env={**os.environ, **ONE_THREAD}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (ws / "out/contended/train_log.csv").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = run_stage(ws, "modelling/train.py", *args, "--seed=8", check=False, env=ONE_THREAD)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"in use by pid {first.pid}" in second.stderr or "already holds a different run" in second.stderr
    assert json.loads((ws / "out/contended/config.json").read_text())["config"]["seed"] == TINY_CONFIG["seed"]
    assert len(read_rows(ws / "out/contended/train_log.csv")) == 30


def test_config_validation_fails_before_any_work(in_workspace, tok_dataset):
    from modelling import train
    (in_workspace / "a_file").write_text("not a folder")
    for argv, message in ((["--bogus=1"], "unknown config key 'bogus'; valid keys: out_dir, eval_interval"),
                          (["--batch_size=abc"], "--batch_size=abc: expected int"),
                          (["--learning_rate=fast"], "expected float"),
                          (["--decay_lr=maybe"], "expected True or False"),
                          (["--sampler=shuffle"], "use one of 'random'"),
                          (["--preset=7B"], "unknown; use one of 260K, 15M, 42M, 110M"),
                          (["--dim=100", "--n_heads=3"], "divisible by --n_heads"),
                          (["--dtype=float16"], "needs CUDA"),
                          (["batch_size=3"], "use --key=value"),
                          (["--learning_rate=-1"], "--learning_rate=-1.0: must be in (0.0, 10.0]"),
                          (["--batch_size=0"], "--batch_size=0: must be in [1, ∞)"),
                          (["--dropout=1.5"], "--dropout=1.5: must be in"),
                          (["--out_dir=a_file"], "is an existing file")):
        with pytest.raises(UserError, match=re.escape(message)):
            train.main(["--out_dir=out/never"] + argv)
    data_args = [f"--dataset={tok_dataset['dataset']}", f"--vocab_size={tok_dataset['vocab_size']}",
                 "--out_dir=out/never"]
    with pytest.raises(UserError, match="nothing to resume"):
        train.main(data_args + ["--init_from=resume"])
    with pytest.raises(UserError, match="tokenized dataset not found"):
        train.main(["--vocab_size=123", "--out_dir=out/never"])
    assert not (in_workspace / "out/never").exists()
    cfg, _ = parse_config(train.DEFAULTS, ["--preset=15M", "--max_seq_len=64"])
    assert (cfg["dim"], cfg["n_layers"], cfg["n_heads"], cfg["max_seq_len"]) == (288, 6, 6, 64)


def test_cli_errors_exit_2_and_existing_runs_are_kept(tiny_run, meta_dataset, tok_dataset, in_workspace, capsys):
    from modelling import train
    ws = tok_dataset["workspace"]
    data = [f"--dataset={tok_dataset['dataset']}", f"--vocab_size={tok_dataset['vocab_size']}"]
    proc = run_stage(ws, "modelling/train.py", *data, "--sampler=sort_ascending", "--sort_by=nope",
                     "--out_dir=out/never2", check=False, env=ONE_THREAD)
    assert proc.returncode == 2 and "available:" in proc.stderr and "n_words" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (ws / "out/never2").exists()
    before = (tiny_run / "train_log.csv").read_bytes()
    same = train_args(**{**TINY_CONFIG, "dataset": tok_dataset["dataset"], "vocab_size": tok_dataset["vocab_size"]})
    train.main(same)
    assert "already holds this run" in capsys.readouterr().out
    train.main(same + ["--log_interval=3", "--log_to=tensorboard"])  # keys outside the run id: the same run
    assert "already holds this run" in capsys.readouterr().out
    with pytest.raises(UserError, match="already holds a different run .* --init_from=resume"):
        train.main(same + ["--learning_rate=0.1"])
    with pytest.raises(UserError, match="cannot change learning_rate when resuming"):
        train.main(same + ["--learning_rate=0.1", "--init_from=resume"])
    assert (tiny_run / "train_log.csv").read_bytes() == before


def test_continued_pretraining_from_a_llama2c_checkpoint_overfits_a_tiny_batch(tiny_run, tok_dataset, monkeypatch):
    """init_from a llama2.c-style .pt (compiled-model prefixes, no hidden_dim) and train on 8 stories for 30 epochs:
    the loss drops far below its start."""
    ws = tok_dataset["workspace"]
    ckpt = load_checkpoint(tiny_run / "ckpt/step_000040.pt")
    llama2c = {"model": {"_orig_mod." + k: v for k, v in ckpt["model"].items()},
               "model_args": {k: v for k, v in ckpt["model_args"].items() if k not in ("hidden_dim", "norm_eps")},
               "iter_num": 40, "config": {}}
    torch.save(llama2c, ws / "llama2c_ckpt.pt")
    run_stage(ws, "modelling/train.py", *train_args(
        dataset=tok_dataset["dataset"], vocab_size=tok_dataset["vocab_size"], out_dir="out/overfit",
        init_from="llama2c_ckpt.pt", n_stories=4, batch_size=4, epochs=60, max_seq_len=256, learning_rate=1e-2,
        warmup_iters=5, min_lr=1e-3, eval_interval=1000, eval_iters=1, dtype="float32", weight_decay=0.0),
        env=ONE_THREAD)
    run = load_run(ws / "out/overfit")
    assert run.config["config"]["dim"] == 32 and run.config["n_steps"] == 60 * run.config["steps_per_epoch"]
    loss = run.train_log["loss"].to_numpy()
    # the first step's loss is the step-40 weights' loss on the first batch (the weights were really loaded)
    from tokenization.dataset import TokenizedDataset
    monkeypatch.chdir(ws)
    batches = SegmentBatches(TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"]), 256)
    model = load_model(tiny_run / "ckpt/step_000040.pt", max_seq_len=256)[0]
    x, y, positions, segment_ids = batches.batch(run.batch_log.step(1))
    model(x, y, positions=positions, segment_ids=segment_ids)
    assert loss[0] == pytest.approx(model.last_loss.item(), abs=1e-5) and loss[-3:].mean() < 0.4 * loss[0]
    assert np.unique(run.batch_log.steps(1, len(run.batch_log))["story_id"]).size == 4


def test_batch_viewer_shows_ids_metrics_and_text(tiny_run, meta_dataset, tok_dataset, in_workspace):
    from tokenization.dataset import TokenizedDataset
    proc = run_stage(in_workspace, "modelling/batch_viewer.py", "--out_dir", "out/tiny", "--step", 3,
                     "--columns", "n_words", "--chars", 40)
    segments = BatchLog(tiny_run).step(3)
    assert "step 3/40: 8 segments in" in proc.stdout and "n_words" in proc.stdout
    ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
    for sid, start, n, _ in segments.tolist():
        whole = start == 0 and n == ds.n_tokens([sid])[0]
        label = f"story {sid}" if whole else f"story {sid}, tokens {start}–{start + n - 1}"
        assert f"{label}\n" in proc.stdout
    first = segments[segments["start"] == 0][0]
    assert ds.text(int(first["story_id"]))[:30] in proc.stdout
    from modelling.batch_table import step_table
    with pytest.raises(UserError, match=r"step 41 not in the batch log .* \(steps 1\.\.40\)"):
        step_table(load_run(tiny_run), 41)
    with pytest.raises(UserError, match="unknown metadata column"):
        step_table(load_run(tiny_run), 2, ["nope"])
