"""modelling/train.py end to end on a real small corpus: the run folder, the batch log rebuilding the exact tensors
of a step, probe attention from the real forward pass, resume after a kill equal to an uninterrupted run, config
validation, continued pretraining from a llama2.c-style .pt, overfitting, and the batch viewer."""
import csv
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from common.errors import UserError
from modelling.batch_log import BatchLog
from modelling.checkpoints import list_checkpoints, load_checkpoint, load_model, load_run
from modelling.data import StoryBatches
from modelling.model import ModelArgs, Transformer
from tests.fixtures_data import PYTHON, REPO, run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CKPTS, TINY_CONFIG, TINY_STEPS, train_args


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
    assert list(run.train_log.columns) == ["step", "tokens_seen", "loss", "lr", "grad_norm", "tokens_per_s"]
    assert list(run.val_log["step"]) == TINY_CKPTS and run.val_log["val_loss"].iloc[-1] < run.val_log["val_loss"].iloc[0]
    assert run.train_log["loss"].iloc[-5:].mean() < run.train_log["loss"].iloc[:5].mean() - 0.5
    assert len(run.batch_log) == TINY_STEPS and run.batch_log.stories_per_step == TINY_CONFIG["batch_size"]
    cfg = run.config
    assert cfg["config"]["dim"] == 32 and cfg["n_steps"] == TINY_STEPS and cfg["provenance"]["git_commit"]
    assert len(cfg["tokenizer_sha256"]) == 64 and len(cfg["manifest_sha256"]) == 64
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
    """The loss logged at step k is the loss of the batch log's stories under the weights before step k."""
    from tokenization.dataset import TokenizedDataset
    run = load_run(tiny_run)
    batches = StoryBatches(TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"]),
                           TINY_CONFIG["max_seq_len"])
    torch.manual_seed(TINY_CONFIG["seed"])
    models = {1: Transformer(ModelArgs.from_dict(run.config["model_args"]))}  # the init weights of step 1
    for prev in (1, 2, 4, 16):
        models[prev + 1] = load_model(run.checkpoint(prev))[0]
    for step, model in models.items():
        ids = run.batch_log.step(step)
        x, y = batches.batch(ids)
        assert x.shape == (TINY_CONFIG["batch_size"], TINY_CONFIG["max_seq_len"])
        model(x, y)
        logged = run.train_log.loc[run.train_log["step"] == step, "loss"].item()
        assert abs(model.last_loss.item() - logged) < 1e-5, step
    tokens_per_step = np.diff(np.concatenate([[0], run.train_log["tokens_seen"].to_numpy()]))
    assert tokens_per_step[4] == batches.n_targets(run.batch_log.step(5))


def test_rows_are_one_story_each_with_pads_ignored(in_workspace, tok_dataset):
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
    index = ds.index.sort_values("n_tokens")
    short, long_ = int(index["story_id"].iloc[0]), int(index["story_id"].iloc[-1])
    batches = StoryBatches(ds, max_seq_len=1000)
    x, y = batches.batch([short, long_])
    n_short = len(ds.tokens(short))
    assert np.array_equal(x[0, :n_short].numpy(), ds.tokens(short))  # BOS + story
    assert y[0, n_short - 1] == 1 and torch.all(y[0, n_short:] == -1)  # ends with the BOS marker, then pads
    assert torch.all(x[0, n_short:] == 0) and batches.n_targets([short]) == n_short
    assert torch.all(y[1] != -1) and x.shape[1] == len(ds.tokens(long_))
    trunc = StoryBatches(ds, max_seq_len=16)
    xt, yt = trunc.batch([long_])
    assert xt.shape == (1, 16) and np.array_equal(yt[0].numpy(), ds.tokens(long_)[1:17])


def test_resume_after_kill_equals_uninterrupted(tiny_run, tok_dataset):
    ws = tok_dataset["workspace"]
    args = train_args(**{**TINY_CONFIG, "dataset": tok_dataset["dataset"], "vocab_size": tok_dataset["vocab_size"],
                         "out_dir": "out/killed"})
    proc = subprocess.Popen([PYTHON, str(REPO / "modelling/train.py"), *args], cwd=ws, env={**os.environ, **ONE_THREAD},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = ws / "out/killed/ckpt/step_000010.pt"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ws / "out/killed/ckpt/resume.pt")["step"]
    # killed right after step 10's checkpoint: resume.pt is at 8 or 10 (it is written after the checkpoint)
    assert 8 <= killed_at < TINY_STEPS, "the run finished before it could be killed"
    run_stage(ws, "modelling/train.py", "--init_from=resume", "--out_dir=out/killed", env=ONE_THREAD)
    resumed, whole = ws / "out/killed", tiny_run
    assert json.loads((resumed / "config.json").read_text())["resumed_from_step"] == killed_at
    assert (resumed / "batch_log.bin").read_bytes() == (whole / "batch_log.bin").read_bytes()
    a, b = read_rows(resumed / "train_log.csv"), read_rows(whole / "train_log.csv")
    assert [r["step"] for r in a] == [str(s) for s in range(1, TINY_STEPS + 1)]
    assert [(r["loss"], r["grad_norm"], r["lr"], r["tokens_seen"]) for r in a] == \
           [(r["loss"], r["grad_norm"], r["lr"], r["tokens_seen"]) for r in b]  # bit for bit (fp32 CPU)
    assert read_rows(resumed / "val_log.csv") == read_rows(whole / "val_log.csv")
    final_a = load_checkpoint(resumed / "ckpt/step_000040.pt")["model"]
    final_b = load_checkpoint(whole / "ckpt/step_000040.pt")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_b)
    assert [s for s, _ in list_checkpoints(resumed)] == TINY_CKPTS


def test_config_validation_fails_before_any_work(in_workspace, tok_dataset):
    from modelling import train
    for argv, message in ((["--bogus=1"], "unknown config key 'bogus'; valid keys: out_dir, eval_interval"),
                          (["--batch_size=abc"], "--batch_size=abc: expected int"),
                          (["--learning_rate=fast"], "expected float"),
                          (["--decay_lr=maybe"], "expected True or False"),
                          (["--sampler=shuffle"], "use one of 'random'"),
                          (["--preset=7B"], "unknown; use one of 260K, 15M, 42M, 110M"),
                          (["--dim=100", "--n_heads=3"], "divisible by --n_heads"),
                          (["--dtype=float16"], "needs CUDA"),
                          (["batch_size=3"], "use --key=value")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
            train.main(argv + ["--out_dir=out/never"])
    data_args = [f"--dataset={tok_dataset['dataset']}", f"--vocab_size={tok_dataset['vocab_size']}",
                 "--out_dir=out/never"]
    with pytest.raises(UserError, match="nothing to resume"):
        train.main(data_args + ["--init_from=resume"])
    with pytest.raises(UserError, match="tokenized dataset not found"):
        train.main(["--vocab_size=123", "--out_dir=out/never"])
    assert not (in_workspace / "out/never").exists()
    cfg, _ = train.parse_config(["--preset=15M", "--max_seq_len=64"])
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
    with pytest.raises(UserError, match="already holds a different run .* --init_from=resume"):
        train.main(same + ["--learning_rate=0.1"])
    with pytest.raises(UserError, match="cannot change learning_rate when resuming"):
        train.main(same + ["--learning_rate=0.1", "--init_from=resume"])
    assert (tiny_run / "train_log.csv").read_bytes() == before


def test_continued_pretraining_from_a_llama2c_checkpoint_overfits_a_tiny_batch(tiny_run, tok_dataset):
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
        init_from="llama2c_ckpt.pt", n_stories=8, batch_size=8, epochs=60, max_seq_len=64, learning_rate=1e-2,
        warmup_iters=5, min_lr=1e-3, eval_interval=1000, eval_iters=1, dtype="float32", weight_decay=0.0),
        env=ONE_THREAD)
    run = load_run(ws / "out/overfit")
    assert run.config["config"]["dim"] == 32 and run.config["n_steps"] == 60
    loss = run.train_log["loss"].to_numpy()
    assert loss[0] == pytest.approx(loss[0]) and loss[-3:].mean() < 0.4 * loss[0]
    assert np.unique(run.batch_log.steps(1, 60)).size == 8


def test_batch_viewer_shows_ids_metrics_and_text(tiny_run, meta_dataset, tok_dataset, in_workspace):
    from tokenization.dataset import TokenizedDataset
    proc = run_stage(in_workspace, "modelling/batch_viewer.py", "--out_dir", "out/tiny", "--step", 3,
                     "--columns", "n_words,n_tokens", "--chars", 40)
    ids = BatchLog(tiny_run).step(3)
    assert "step 3/40: 8 stories" in proc.stdout and "n_words" in proc.stdout
    assert f"story {ids[0]}" in proc.stdout and f"story {ids[-1]}" in proc.stdout
    text = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"]).text(int(ids[0]))
    assert text[:30] in proc.stdout
    from modelling.batch_viewer import step_table
    with pytest.raises(UserError, match=r"step 41 not in the batch log .* \(steps 1\.\.40\)"):
        step_table(load_run(tiny_run), 41)
    with pytest.raises(UserError, match="unknown metadata column"):
        step_table(load_run(tiny_run), 2, ["nope"])
