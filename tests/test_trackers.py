"""train.py --log_to: TensorBoard events read back with TensorBoard's own reader; W&B offline through its
public Run object and offline run folder; a missing package is one error line."""
import sys

import pandas as pd
import pytest

from common.errors import UserError
from modelling.trackers import WandbTracker, make_tracker
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CONFIG, train_args


def test_tensorboard_events_hold_the_logged_values(tok_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ws = tok_dataset["workspace"]
    cfg = {**TINY_CONFIG, "out_dir": "out/tiny_tb", "max_iters": 12, "eval_interval": 10, "log_to": "tensorboard"}
    run_stage(ws, "modelling/train.py", *train_args(dataset="storyworld", vocab_size=512, **cfg), env=ONE_THREAD)
    run = ws / "out" / "tiny_tb"
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    train_log, val_log = pd.read_csv(run / "train_log.csv"), pd.read_csv(run / "val_log.csv")
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(train_log["step"])
    assert [e.value for e in loss] == pytest.approx(list(train_log["loss"]), rel=1e-6)
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx(list(train_log["lr"]), rel=1e-6)
    assert [e.value for e in acc.Scalars("train/grad_norm")] == pytest.approx(list(train_log["grad_norm"]),
                                                                              rel=1e-6)
    val = acc.Scalars("val/val_loss_sub")
    assert [e.step for e in val] == list(val_log["step"]) == [1, 2, 4, 8, 10, 12]
    assert [e.value for e in val] == pytest.approx(list(val_log["val_loss_sub"]), rel=1e-6)


def test_wandb_offline_run_exposes_logged_values(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    info = {"config": {"dim": 32}, "ids": {"run": "run-0123456789ab", "tokenized": "tok-0123456789ab"}}
    tracker = make_tracker("wandb", tmp_path, info)
    rows = pd.read_csv(tiny_run / "train_log.csv").head(6)
    for r in rows.to_dict("records"):
        tracker.on_step(int(r["step"]), r)
        if r["step"] == 5:
            tracker.on_checkpoint(5, None, {"val_loss_sub": "4.5", "train_loss": "4.4"})
    run = tracker.run  # a step's values are committed when the next step starts
    assert run.offline and run.config["ids"]["run"] == "run-0123456789ab"
    assert run.summary["train/loss"] == pytest.approx(rows["loss"].iloc[4])
    assert run.summary["train/lr"] == pytest.approx(rows["lr"].iloc[4])
    assert run.summary["val/val_loss_sub"] == pytest.approx(4.5) and "run-0123456789ab" in run.tags
    tracker.on_close()
    folders = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and list(folders[0].glob("run-*.wandb"))  # what `wandb sync` uploads


def test_missing_tracker_package_is_one_error_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(UserError, match=r"--log_to=wandb needs the wandb package — pip install wandb=="):
        WandbTracker(tmp_path, {})
    with pytest.raises(UserError, match="use none, tensorboard or wandb"):
        make_tracker("mlflow", tmp_path, {})
    assert make_tracker("none", tmp_path, {}) is None
