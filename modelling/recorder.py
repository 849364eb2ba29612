"""Everything a training run writes into its folder, behind one object (rank 0 only).

    recorder = RunRecorder(out, run_info, attn_probes, ...)    config.json, attn_probes.json, logs opened
    recorder.step(step, packed, row)                           batch log + train log, every optimizer step
    recorder.checkpoint(step, state, val_row, resume_state)   val log, ckpt/step_*.pt, ckpt/resume.pt, fsyncs
    recorder.close()

Trackers and live evaluation hook in through `recorder.hooks`: objects with optional on_step(step, row) and
on_checkpoint(step, path, val_row) methods, called after the files are written.
"""
import csv
import json
import os
from pathlib import Path

import torch

from common.errors import UserError
from common.ids import RUN_FREE_KEYS
from common.io import atomic_path, atomic_write_json, atomic_write_text
from modelling.attn_probes import ATTN_PROBES_NAME
from modelling.batch_log import BatchLogWriter
from modelling.checkpoints import ckpt_name, list_checkpoints

TRAIN_LOG_FIELDS = ["step", "tokens_seen", "loss", "lr", "grad_norm", "tokens_per_s", "n_segments", "n_rows",
                    "pad_fraction"]
# val_loss_sub: the first n of the dataset's fixed validation sample (eval.py's val_loss uses all of it)
VAL_LOG_FIELDS = ["step", "tokens_seen", "train_loss", "val_loss_sub"]


def save_torch(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CsvLog:
    """Append-only CSV, one flushed line per row; on resume rows after the resume step are dropped."""

    def __init__(self, path, fields, resume_step=None):
        self.path, self.fields = Path(path), fields
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fields)
                w.writeheader()
                w.writerows(kept)
        else:
            atomic_write_text(self.path, ",".join(fields) + "\n")
        self.f = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.f, fields)

    def write(self, row):
        self.writer.writerow(row)
        self.f.flush()

    def sync(self):
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        if not self.f.closed:
            self.sync()
            self.f.close()


def existing_run_check(out, cfg):
    """Refuse to overwrite another run; say when this exact run is already complete. Returns True to skip."""
    cfg_path = out / "config.json"
    if cfg["init_from"] == "resume" or not cfg_path.exists():
        return False
    try:
        old_info = json.loads(cfg_path.read_text())
    except ValueError:
        raise UserError(f"{cfg_path} is corrupt — delete {out} or pick another --out_dir") from None
    old = old_info.get("config", {})
    # keys that change no trained number (common/ids.py RUN_FREE_KEYS; also ones added since, like log_to) do not
    # make a different run
    free = ("init_from",) + RUN_FREE_KEYS
    same = {k: v for k, v in old.items() if k not in free} == {k: v for k, v in cfg.items() if k not in free}
    ckpts = list_checkpoints(out)
    if same and ckpts and ckpts[-1][0] == old_info.get("n_steps"):
        print(f"{out} already holds this run, complete at step {old_info['n_steps']} (skipping; delete the "
              f"folder to retrain)")
        return True
    raise UserError(f"{out} already holds a {'partial' if same else 'different'} run — continue it with "
                    f"--init_from=resume, or pick another --out_dir (or delete {out})")


class RunRecorder:
    def __init__(self, out, run_info, attn_probes, segments_per_step, max_seq_len, resume_step=None,
                 instrument=True, export_format="", step_offset=0):
        """step_offset: a branch's parent step; its batch log holds its own steps 1, 2, … (step_offset + k on
        the shared axis of the train/val logs), recorded in batch_log.json."""
        self.out = Path(out)
        self.run_info = run_info
        self.instrument, self.export_format = instrument, export_format
        self.hooks = []
        atomic_write_json(self.out / "config.json", run_info)
        atomic_write_json(self.out / ATTN_PROBES_NAME, attn_probes)
        (self.out / "ckpt").mkdir(parents=True, exist_ok=True)
        self.train_log = CsvLog(self.out / "train_log.csv", TRAIN_LOG_FIELDS, resume_step)
        self.val_log = CsvLog(self.out / "val_log.csv", VAL_LOG_FIELDS, resume_step)
        cfg = run_info["config"]
        self.batch_log = BatchLogWriter(self.out, segments_per_step, max_seq_len,
                                        resume_step - step_offset if resume_step else 0,
                                        {"dataset": cfg["dataset"], "vocab_size": cfg["vocab_size"],
                                         "step_offset": int(step_offset)}) \
            if instrument else None

    def _call(self, name, *args):
        for hook in self.hooks:
            if hasattr(hook, name):
                getattr(hook, name)(*args)

    def step(self, step, packed, row):
        """One optimizer step: its packed segments (batch log) and its train-log row."""
        if self.batch_log is not None:
            self.batch_log.append(packed)
        self.train_log.write(row)
        self._call("on_step", step, row)

    def checkpoint(self, step, weights, val_row, resume_state):
        """A checkpoint step: the val-log row, and with instrumentation the step checkpoint (weights dict:
        model, model_args, config, step, tokens_seen, losses, probe attention, provenance), resume.pt, and
        every log made durable first so resume.pt never points past what is on disk."""
        self.val_log.write(val_row)
        path = None
        if self.instrument:
            path = self.out / "ckpt" / ckpt_name(step)
            save_torch(weights, path)
            if self.export_format:
                from modelling.export import export_checkpoint  # optional: needs safetensors for hf
                export_checkpoint(path, self.export_format)
            self.batch_log.sync()
            self.train_log.sync()
            self.val_log.sync()
            save_torch(resume_state, self.out / "ckpt" / "resume.pt")
        self._call("on_checkpoint", step, path, val_row)
        return path

    def close(self):
        self.train_log.close()
        self.val_log.close()
        if self.batch_log is not None:
            self.batch_log.close()
        self._call("on_close")
