"""Branching: a run that continues from a checkpoint of another run (any step, any dataset with the same
tokenizer), recording where it came from.

    parent = open_parent(path, ds)      the checkpoint, checked against the dataset's tokenizer
    parent.lineage                      the record config.json keeps under "lineage" (docs/FORMATS.md)
    check_parent_unchanged(lineage, where)  refuse a branch whose parent checkpoint no longer holds those weights

A branch of a checkpoint of this project (a dict with step and tokens_seen) continues the parent's step counter
and tokens_seen, so parent and branches share one x axis; its own LR schedule, data order and checkpoint
schedule count from the branch point. Other checkpoints (llama2.c's .pt, an exported HF folder) start a new
run at step 0 as before (continued pretraining without a parent run).
"""
import json
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.ids import checkpoint_id
from common.io import sha256_file
from modelling.checkpoints import load_checkpoint

OPTIMIZER_CHOICES = ("fresh", "parent")


@dataclass
class Parent:
    path: Path
    ckpt: dict
    lineage: dict  # empty for a checkpoint that is not a step of a run of this project

    @property
    def step(self):
        return int(self.lineage.get("parent_step") or 0)

    @property
    def tokens_seen(self):
        return int(self.lineage.get("parent_tokens_seen") or 0)


def run_dir_of(path):
    """The run folder of out/RUN/ckpt/step_N.pt (None for a .pt elsewhere)."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "ckpt" and (path.parent.parent / "config.json").exists() \
        else None


def parent_tokenizer(ckpt, path):
    """(sha256 of the tokenizer a checkpoint was trained with, dataset name) or (None, None) when unknown."""
    if ckpt.get("tokenizer_sha256"):
        return ckpt["tokenizer_sha256"], (ckpt.get("config") or {}).get("dataset")
    run = run_dir_of(path)
    if run is None:
        return None, None
    info = json.loads((run / "config.json").read_text())
    if info.get("tokenizer_sha256"):
        return info["tokenizer_sha256"], info["config"].get("dataset")
    model = Path(info.get("dataset_dir", "")) / "tokenizer.model"
    return (sha256_file(model), info["config"].get("dataset")) if model.exists() else (None, None)


def check_tokenizer(ckpt, path, ds, model_vocab):
    """A checkpoint and a dataset must share the vocab: same size, and the same tokenizer where it is known."""
    vocab = int(ckpt["model_args"].get("vocab_size") or 0)
    if vocab and vocab != model_vocab:
        raise UserError(f"--init_from={path} has vocab {vocab} but dataset {ds.dataset} tok{ds.vocab_size} has "
                        f"{model_vocab} — use the matching --vocab_size (or pretokenize {ds.dataset} with "
                        f"--tokenizer_from the parent's dataset)")
    sha, source = parent_tokenizer(ckpt, path)
    mine = ds.manifest.get("tokenizer_sha256")
    if sha and mine and sha != mine:
        raise UserError(f"--init_from={path} was trained with another tokenizer ({source} tok{vocab}) than "
                        f"dataset {ds.dataset} tok{ds.vocab_size} — re-run pretokenize --dataset {ds.dataset} "
                        f"--vocab_size {ds.vocab_size} --tokenizer_from {source}")


def open_parent(path, ds, model_vocab):
    """The checkpoint to branch from, its tokenizer checked against ds, and its lineage record."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    check_tokenizer(ckpt, path, ds, model_vocab)
    lineage = {}
    if "tokens_seen" in ckpt and ckpt.get("step") is not None:  # a step (or resume) checkpoint of this project
        ids = ckpt.get("ids") or {}
        run = run_dir_of(path)
        lineage = {"parent_run": str(run) if run is not None else str(path), "parent_step": int(ckpt["step"]),
                   "parent_id": checkpoint_id(ckpt), "parent_checkpoint": str(path),
                   "parent_run_id": ids.get("run"), "parent_tokenized": ids.get("tokenized"),
                   "parent_dataset": (ckpt.get("config") or {}).get("dataset"),
                   "parent_tokens_seen": int(ckpt["tokens_seen"]),
                   "parent_lineage": ckpt.get("lineage") or None}  # a branch of a branch keeps the chain
    return Parent(path, ckpt, lineage)


def check_parent_unchanged(lineage, where):
    """A branch (being resumed or re-run in `where`) whose parent checkpoint now holds other weights is
    refused: its first steps would no longer be the parent's continuation. A parent deleted since is allowed
    (the branch's own checkpoints hold everything it needs)."""
    if not lineage or not lineage.get("parent_checkpoint"):
        return
    path = Path(lineage["parent_checkpoint"])
    if not path.exists():
        return
    now = checkpoint_id(load_checkpoint(path))
    if now != lineage["parent_id"]:
        raise UserError(f"{where} branched from {path} as {lineage['parent_id']} but that checkpoint is now {now} "
                        f"(the parent run changed) — branch again into a new --out_dir")


def recorded_lineage(run_dir):
    """The lineage record of an existing run folder's config.json ({} when none)."""
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text()).get("lineage") or {} if path.exists() else {}
    except ValueError:
        return {}  # a corrupt config.json is reported by existing_run_check


def parent_optimizer_state(parent, choice):
    """The parent's AdamW state for --branch_optimizer=parent (refused when the checkpoint has none)."""
    if choice == "fresh":
        return None
    if "optimizer" not in parent.ckpt:
        raise UserError(f"--branch_optimizer=parent but {parent.path} holds no optimizer state — branch from "
                        f"ckpt/resume.pt, train the parent with --save_optimizer_at=STEPS, or use "
                        f"--branch_optimizer=fresh")
    return parent.ckpt["optimizer"]


def parse_steps(text):
    """--save_optimizer_at=256,1024 -> {256, 1024}; UserError naming the key otherwise."""
    try:
        steps = {int(s) for s in str(text).replace(" ", "").split(",") if s}
    except ValueError:
        raise UserError(f"--save_optimizer_at={text}: give comma-separated step numbers, e.g. 256,1024") from None
    if any(s < 1 for s in steps):
        raise UserError(f"--save_optimizer_at={text}: steps start at 1")
    return steps
