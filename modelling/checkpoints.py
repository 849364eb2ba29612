"""The one reader of checkpoints and run folders, shared by eval, visualizers, experiments and the app.

    list_checkpoints(run_dir) -> [(step, path)]   ckpt/step_NNNNNN.pt sorted by step
    load_checkpoint(path) -> dict                 model, model_args, config, step, tokens_seen, probe_attn, …
    load_model(path, device) -> (model, ckpt)     also llama2.c's .pt (model + model_args, `_orig_mod.` prefixes)
    load_run(run_dir) -> Run                      config, probes, train_log, val_log, checkpoints, batch_log
                                                  (require_checkpoints=True: none yet is a UserError)
"""
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from common.errors import UserError
from modelling.attn_probes import ATTN_PROBES_NAME
from modelling.batch_log import BatchLog
from modelling.model import ModelArgs, Transformer

CKPT_DIR = "ckpt"
CKPT_RE = re.compile(r"^step_(\d+)\.pt$")
STRIP_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


def ckpt_name(step):
    return f"step_{int(step):06d}.pt"


def list_checkpoints(run_dir):
    """[(step, path)] of a run's checkpoints, sorted by step (resume.pt is not one of them)."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict. A missing or unreadable file raises UserError naming it."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists():  # an exported Hugging Face folder
        from modelling.hf_import import load_hf_folder
        return load_hf_folder(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} — train with modelling/train.py or give an existing .pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]} — the file is corrupt or "
                        f"not a torch checkpoint") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise UserError(f"{path} is not a model checkpoint (needs keys 'model' and 'model_args')")
    return ckpt


def clean_state_dict(state):
    """Strip torch.compile / DDP prefixes so the names are llama2.c's."""
    out = {}
    for k, v in state.items():
        for prefix in STRIP_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_model(path, device="cpu", max_seq_len=None, dropout=None):
    """(Transformer in eval mode on device, checkpoint dict) from any checkpoint of ours or of llama2.c.
    max_seq_len / dropout override the stored args (RoPE is computed for any length)."""
    ckpt = load_checkpoint(path)
    args = ModelArgs.from_dict(ckpt["model_args"])
    if max_seq_len is not None:
        args.max_seq_len = int(max_seq_len)
    if dropout is not None:
        args.dropout = float(dropout)
    model = Transformer(args)
    try:
        model.load_state_dict(clean_state_dict(ckpt["model"]), strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match its model_args ({str(e).splitlines()[0]})") from e
    model.to(device).eval()
    return model, ckpt


def _read_csv(path):
    """A per-step log; a torn last line from a killed writer is dropped."""
    if not path.exists():
        return pd.DataFrame()
    df = pd.read_csv(path, on_bad_lines="skip")
    if "step" in df.columns:
        df = df.dropna(subset=["step"])
        df["step"] = df["step"].astype("int64")
    return df


@dataclass
class Run:
    dir: Path
    config: dict
    probes: list
    train_log: pd.DataFrame
    val_log: pd.DataFrame
    checkpoints: list = field(default_factory=list)  # [(step, path)]
    batch_log: BatchLog = None

    def checkpoint(self, step):
        """Path of the checkpoint at `step` (UserError listing the steps present otherwise)."""
        for s, p in self.checkpoints:
            if s == int(step):
                return p
        raise UserError(f"no checkpoint at step {step} in {self.dir} (have {[s for s, _ in self.checkpoints]})")


def load_run(run_dir, require_checkpoints=False):
    """Everything a run folder holds except the weights (load those per checkpoint with load_model).
    require_checkpoints: a run with no checkpoint yet is a UserError (for stages that read weights)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"not a training run: {cfg_path} missing — train one with modelling/train.py "
                        f"--out_dir={run_dir}")
    try:
        config = json.loads(cfg_path.read_text())
        probes_path = run_dir / ATTN_PROBES_NAME
        probes = json.loads(probes_path.read_text()) if probes_path.exists() else []
    except ValueError as e:
        raise UserError(f"corrupt JSON in {run_dir}: {e} — re-run the training") from e
    checkpoints = list_checkpoints(run_dir)
    if require_checkpoints and not checkpoints:
        raise UserError(f"no checkpoints in {run_dir / 'ckpt'} — train with modelling/train.py --out_dir={run_dir}")
    batch_log = BatchLog(run_dir) if (run_dir / "batch_log.json").exists() else None
    return Run(dir=run_dir, config=config, probes=probes, train_log=_read_csv(run_dir / "train_log.csv"),
               val_log=_read_csv(run_dir / "val_log.csv"), checkpoints=checkpoints, batch_log=batch_log)
