"""Experiment trackers for train.py --log_to=tensorboard|wandb: RunRecorder hooks that mirror the run's logs.

    on_step        train/loss, train/lr, train/grad_norm, train/tokens_per_s (every optimizer step)
    on_checkpoint  val/val_loss_sub, val/train_loss, and eval/<metric> from tables/summary.csv at that step when
                   eval.py has scored it (a resumed or re-evaluated run)
    on_close       flush and close

TensorBoard writes event files under out_dir/tensorboard/ (`tensorboard --logdir out/RUN/tensorboard`). W&B runs
offline (no network; the run folder is out_dir/wandb/offline-run-*/, upload later with `wandb sync`). Neither
package is needed by any other stage: a missing one is one `error:` line naming the pip install.
"""
import math
import os
from pathlib import Path

from common.errors import UserError

TRACKER_PINS = {"tensorboard": "tensorboard==2.21.0", "wandb": "wandb==0.30.0"}
STEP_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s")
EVAL_KEYS = ("val_loss", "val_loss_novel", "bias_amplification", "tox_mass", "icl_score", "gen_stereo_rate")


def _float(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def checkpoint_metrics(out, step, val_row):
    """{tag: value} logged at a checkpoint: the val-log row, plus the eval summary row of this step if any."""
    metrics = {f"val/{k}": _float(val_row.get(k)) for k in ("val_loss_sub", "train_loss")}
    summary = Path(out) / "tables" / "summary.csv"
    if summary.exists():
        import pandas as pd
        df = pd.read_csv(summary)
        rows = df[df["step"] == step] if "step" in df.columns else df.iloc[:0]
        if not rows.empty:
            row = rows.iloc[-1]
            cols = [c for c in EVAL_KEYS if c in df.columns]
            cols += [c for c in df.columns if c.startswith("out_") and not c.endswith(("_lo", "_hi"))]
            metrics.update({f"eval/{c}": _float(row[c]) for c in cols})
    return {k: v for k, v in metrics.items() if v is not None}


class TensorBoardTracker:
    def __init__(self, out, run_info):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(f"--log_to=tensorboard needs the tensorboard package — pip install "
                            f"{TRACKER_PINS['tensorboard']} (or --log_to=none)") from None
        self.out = Path(out)
        self.writer = SummaryWriter(log_dir=str(self.out / "tensorboard"))
        ids = run_info.get("ids", {})
        self.writer.add_text("run/ids", "  \n".join(f"{k}: {v}" for k, v in ids.items()), 0)

    def on_step(self, step, row):
        for k in STEP_KEYS:
            v = _float(row.get(k))
            if v is not None:
                self.writer.add_scalar(f"train/{k}", v, step)

    def on_checkpoint(self, step, path, val_row):
        for tag, v in checkpoint_metrics(self.out, step, val_row).items():
            self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def on_close(self):
        self.writer.close()


class WandbTracker:
    def __init__(self, out, run_info):
        try:
            import wandb
        except ImportError:
            raise UserError(f"--log_to=wandb needs the wandb package — pip install {TRACKER_PINS['wandb']} "
                            f"(or --log_to=none)") from None
        self.out = Path(out)
        os.environ.setdefault("WANDB_MODE", "offline")  # never reach the network from a training run
        os.environ.setdefault("WANDB_SILENT", "true")
        ids = run_info.get("ids", {})
        self.run = wandb.init(project="llama2_prebiasing", name=self.out.name, dir=str(self.out),
                              mode=os.environ["WANDB_MODE"], config={**run_info.get("config", {}), "ids": ids},
                              tags=[ids[k] for k in ("run", "tokenized") if k in ids], reinit="create_new")

    def on_step(self, step, row):
        self.run.log({f"train/{k}": v for k in STEP_KEYS if (v := _float(row.get(k))) is not None}, step=step)

    def on_checkpoint(self, step, path, val_row):
        self.run.log(checkpoint_metrics(self.out, step, val_row), step=step)

    def on_close(self):
        self.run.finish()


def make_tracker(log_to, out, run_info):
    """The tracker hook for --log_to (None for 'none')."""
    trackers = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    if log_to in ("none", "", None):
        return None
    if log_to not in trackers:
        raise UserError(f"--log_to={log_to}: use none, tensorboard or wandb")
    return trackers[log_to](out, run_info)
