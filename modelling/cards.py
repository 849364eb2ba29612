"""Model cards (Hugging Face style: YAML header between --- lines, then markdown sections) for a run at one
checkpoint, and the content-id section of dataset cards.

    write_model_card(run_dir)                  out/RUN/README.md for the latest checkpoint
    write_model_card(run_dir, step=40, folder=export_dir, extra={"export_id": …})   beside exported weights
    ModelCardHook(run_dir)                     a RunRecorder hook: refreshes out/RUN/README.md at each checkpoint
    python modelling/cards.py --out_dir out/RUN [--step N]   rewrite the card (e.g. after eval.py)
    refresh_dataset_card(raw_folder)           data/<raw>/README.md gains content_id and tokenized_variants

Lineage fields (header): parent_run (the run folder a branch started from), parent_step (its checkpoint step),
parent_id (that checkpoint's ckpt- id). A scratch run leaves them empty; a branch (e.g. the bias-unlearning
issue) records them in config.json under "lineage": {"parent_run", "parent_step", "parent_id"} and the card
copies them. A run started from --init_from=PATH without that record names the path as parent_run.
"""
import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.card import CARD, read_card, update_card_section, write_card  # noqa: E402
from common.errors import UserError, run_main  # noqa: E402
from common.ids import checkpoint_id, dataset_ids, raw_id  # noqa: E402

LINEAGE_KEYS = ("parent_run", "parent_step", "parent_id")
EVAL_HEADLINE = ("val_loss", "val_loss_novel", "bias_amplification", "tox_mass", "icl_score", "gen_stereo_rate")
INTENDED_USE = (
    "A small research model trained to study how the composition and order of training data shape what a "
    "language model learns (bias, toxicity, in-context learning) at every checkpoint. Use it to reproduce and "
    "compare measurements of this project.")
LIMITS = (
    "Not for any user-facing or decision-making use. It is tiny, trained on short synthetic or child-level "
    "stories, and some corpora are deliberately biased (storyworld's occupation_bias, toxic_rate): its outputs "
    "carry those biases by design. English only. Evaluation numbers hold for this checkpoint and its "
    "evaluation prompts only.")


def _finite(x):
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x, digits=4):
    return float(round(float(x), digits)) if _finite(x) else None


def _with_ci(row, col):
    """{value, lo, hi} of a summary column with its _lo/_hi interval columns (None parts dropped)."""
    out = {"value": _num(row.get(col))}
    for end in ("lo", "hi"):
        if _finite(row.get(f"{col}_{end}")):
            out[end] = _num(row[f"{col}_{end}"])
    return out


def eval_summary(run_dir, step):
    """The evaluation of checkpoint `step` from tables/summary.csv and tables/saturation.csv, or None."""
    import pandas as pd
    path = Path(run_dir) / "tables" / "summary.csv"
    if not path.exists():
        return None
    summary = pd.read_csv(path)
    rows = summary[summary["step"] == step] if "step" in summary.columns else summary.iloc[:0]
    if rows.empty:
        return None
    row = rows.iloc[-1].to_dict()
    out = {"step": int(step)}
    for col in EVAL_HEADLINE:
        if col in row and _finite(row[col]):
            out[col] = _with_ci(row, col)
    if _finite(row.get("bias_corpus")):
        out["bias_corpus"] = _num(row["bias_corpus"])
    gen = {c[len("out_"):]: _with_ci(row, c) for c in summary.columns
           if c.startswith("out_") and not c.endswith(("_lo", "_hi")) and _finite(row.get(c))}
    if gen:
        out["generation"] = gen
        out["n_generations"] = int(row["n_generations"]) if _finite(row.get("n_generations")) else None
    sat_path = Path(run_dir) / "tables" / "saturation.csv"
    if sat_path.exists():
        sat = pd.read_csv(sat_path)
        if {"column", "class"} <= set(sat.columns):
            out["saturation"] = {str(r["column"]): {"class": str(r["class"]),
                                                    "plateau_step": _num(r.get("plateau_step"), 1)}
                                 for r in sat.to_dict("records")}
    return out


def _lineage(info):
    """parent_run/parent_step/parent_id: config.json's "lineage" record when a branching tool wrote one, else
    the checkpoint --init_from started from (when it is still on disk), else empty (a scratch run)."""
    lineage = {k: (info.get("lineage") or {}).get(k) for k in LINEAGE_KEYS}
    init = info.get("config", {}).get("init_from", "scratch")
    if not lineage["parent_run"] and init not in ("scratch", "resume"):
        from common.paths import root
        from modelling.checkpoints import load_checkpoint
        path = Path(init) if Path(init).exists() else root() / init
        lineage["parent_run"] = str(path.parent.parent if path.parent.name == "ckpt" else path)
        if path.is_dir() and (path / "export.json").exists():  # an exported HF folder: its checkpoint is the parent
            export = json.loads((path / "export.json").read_text())
            ckpt_path = Path(export.get("checkpoint", ""))
            lineage["parent_run"] = str(ckpt_path.parent.parent if ckpt_path.parent.name == "ckpt" else path)
            lineage["parent_step"] = export.get("step")
            lineage["parent_id"] = (export.get("ids") or {}).get("checkpoint")
        elif path.is_file():
            parent = load_checkpoint(path)
            lineage["parent_step"] = parent.get("step", parent.get("iter_num"))
            if "model" in parent:
                lineage["parent_id"] = checkpoint_id(parent)
    return {k: ("" if v is None else v) for k, v in lineage.items()}


def _table(pairs):
    return "| key | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in pairs)


def _fmt_ci(d):
    v = d.get("value")
    return f"{v}" + (f" [{d['lo']}, {d['hi']}]" if "lo" in d and "hi" in d else "")


def model_card(run_dir, step=None, ckpt=None, extra=None):
    """(header dict, markdown prose) of the run at checkpoint `step` (default: the latest). ckpt: the loaded
    checkpoint dict (loaded here when None)."""
    from modelling.checkpoints import list_checkpoints, load_checkpoint
    run_dir = Path(run_dir)
    info_path = run_dir / "config.json"
    if not info_path.exists():
        raise UserError(f"{info_path} not found — give a run folder made by modelling/train.py")
    info = json.loads(info_path.read_text())
    cfg, ids = info.get("config", {}), info.get("ids", {})
    if ckpt is None:
        ckpts = dict(list_checkpoints(run_dir))
        if not ckpts:
            raise UserError(f"{run_dir} has no checkpoints yet — a card describes a checkpoint")
        step = max(ckpts) if step is None else int(step)
        if step not in ckpts:
            raise UserError(f"{run_dir} has no checkpoint at step {step} — steps: {sorted(ckpts)}")
        ckpt = load_checkpoint(ckpts[step])
    step = int(ckpt.get("step", step or 0))
    model_args = info.get("model_args", {})
    evaluation = eval_summary(run_dir, step)
    dataset = cfg.get("dataset", "")
    header = {
        "license": "mit", "language": ["en"], "library_name": "pytorch", "pipeline_tag": "text-generation",
        "tags": ["llama2.c", "llama", "tinystories" if dataset == "tinystories" else dataset, "llama2_prebiasing"],
        "datasets": [dataset],
        "model_name": f"{run_dir.name} step {step}",
        "checkpoint_id": checkpoint_id(ckpt), "run_id": ids.get("run", ""), "dataset_id": ids.get("dataset", ""),
        "tokenized_id": ids.get("tokenized", ""), "selection_id": ids.get("selection", ""),
        **_lineage(info),
        "step": step, "n_steps": info.get("n_steps"), "tokens_seen": int(ckpt.get("tokens_seen", 0)),
        "n_params": info.get("n_params"), "architecture": {k: model_args.get(k) for k in (
            "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len", "dropout")},
        "val_loss_sub": _num(ckpt.get("val_loss_sub")), "train_loss": _num(ckpt.get("train_loss")),
        "evaluation": evaluation or {},
        "git_commit": info.get("provenance", {}).get("git_commit", ""),
        **(extra or {}),
    }
    arch = header["architecture"]
    sel_pairs = [("selection id", header["selection_id"]), ("stories selected", info.get("n_selected")),
                 ("segments", info.get("n_segments")), ("tokens per epoch", info.get("n_tokens_selection")),
                 ("selection_sha256", info.get("selection_sha256"))]
    sel_pairs += [(k, cfg.get(k)) for k in ("n_stories", "selection_seed", "sampler", "sort_by", "sort_order",
                                            "filter_column", "threshold", "filter_keep", "data_seed", "epochs")
                  if k in cfg]
    lines = [f"# {run_dir.name} — step {step}", "",
             f"A llama2.c-style decoder-only transformer ({info.get('n_params', 0) / 1e6:.2f}M parameters) trained by "
             f"`modelling/train.py` of llama2_prebiasing on `{dataset}` (vocab {cfg.get('vocab_size')}). This card "
             f"describes checkpoint `{header['checkpoint_id']}` of run `{header['run_id']}`.", "",
             "## Model", "",
             _table([("architecture", "Llama 2 (RMSNorm, RoPE, SwiGLU, grouped-query attention)"),
                     *arch.items(), ("parameters", info.get("n_params")),
                     ("FLOPs per token", info.get("flops_per_token"))]),
             "## Training data", "",
             f"Dataset `{dataset}`: raw `{header['dataset_id']}`, tokenized `{header['tokenized_id']}` "
             f"(`{info.get('dataset_dir')}`; its dataset card is the README.md of the raw folder). The exact "
             f"selection trained on:", "", _table(sel_pairs),
             "## Training", "",
             f"Step {step} of {info.get('n_steps')}, {header['tokens_seen']:,} tokens seen; loss on the first "
             f"stories of the fixed validation sample {header['val_loss_sub']}, on fixed training stories "
             f"{header['train_loss']}. Commit `{header['git_commit']}`. Configuration:", "",
             _table(sorted(cfg.items())),
             "## Lineage", "",
             (f"Branched from run `{header['parent_run']}` at step {header['parent_step']} "
              f"(checkpoint `{header['parent_id']}`)." if header["parent_run"] else
              "Trained from scratch (no parent)."), ""]
    lines += ["## Evaluation", ""]
    if evaluation:
        pairs = [(k, _fmt_ci(evaluation[k])) for k in EVAL_HEADLINE if k in evaluation]
        if "bias_corpus" in evaluation:
            pairs.append(("bias_corpus (the corpus rate the bias is calibrated against)", evaluation["bias_corpus"]))
        pairs += [(f"generation: {k}", _fmt_ci(v)) for k, v in evaluation.get("generation", {}).items()]
        lines += [f"From `tables/summary.csv` (eval.py) at step {step}; [lo, hi] = 95% interval.", "", _table(pairs)]
        if evaluation.get("saturation"):
            lines += ["Saturation of each curve over the run (`tables/saturation.csv`):", "",
                      _table((c, f"{s['class']}" + (f" (plateau at step {s['plateau_step']})"
                                                    if s.get("plateau_step") is not None else ""))
                             for c, s in evaluation["saturation"].items())]
    else:
        lines += [f"Not evaluated at step {step} yet: run `python eval.py --out_dir {run_dir}` and then "
                  f"`python modelling/cards.py --out_dir {run_dir}`.", ""]
    lines += ["## Intended use", "", INTENDED_USE, "", "## Limitations", "", LIMITS, ""]
    return header, "\n".join(lines)


def write_model_card(run_dir, step=None, folder=None, ckpt=None, extra=None):
    """Write the card as folder/README.md (default: the run folder). Returns its path."""
    header, prose = model_card(run_dir, step, ckpt, extra)
    folder = Path(folder or run_dir)
    write_card(folder, header, prose)
    return folder / CARD


class ModelCardHook:
    """RunRecorder hook: out/RUN/README.md describes the newest checkpoint (and its evaluation when one exists)."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)

    def on_checkpoint(self, step, path, val_row):
        if path is not None:
            from modelling.checkpoints import load_checkpoint
            write_model_card(self.run_dir, step, ckpt=load_checkpoint(path))


def refresh_dataset_card(raw_folder):
    """Add the raw dataset's content id and its tokenized variants (one per tok<V> folder) to its card.
    Returns False when the folder has no card."""
    raw_folder = Path(raw_folder)
    if read_card(raw_folder) is None:
        return False
    variants = []
    for tok in sorted(raw_folder.glob("tok*")):
        if (tok / "manifest.json").exists():
            m = json.loads((tok / "manifest.json").read_text())
            variants.append({"folder": tok.name, "id": dataset_ids(tok)["tokenized"], "vocab_size": m.get("vocab_size"),
                             "tokenizer_sha256": m.get("tokenizer_sha256"), "val_fraction": m.get("val_fraction"),
                             "n_train": m.get("n_train"), "n_val": m.get("n_val"),
                             "n_val_novel": m.get("n_val_novel"), "n_tokens": m.get("n_tokens"),
                             "tokenizer_from": (m.get("tokenizer_from") or {}).get("dataset")})
    ds_id = raw_id(raw_folder)
    prose = (f"Content id `{ds_id}` (common/ids.py: the shard hashes and the generator / ingest parameters; "
             f"`python -m common.ids show {raw_folder}`).\n\n"
             + ("".join(f"- `{v['folder']}`: `{v['id']}` — vocab {v['vocab_size']}, {v['n_train']} train / "
                        f"{v['n_val']} val stories, {v['n_tokens']} tokens"
                        + (f", tokenizer of `{v['tokenizer_from']}`" if v["tokenizer_from"] else "") + "\n"
                        for v in variants)
                or "No tokenized variant yet.\n"))
    update_card_section(raw_folder, "content_id", ds_id, "Content ids", prose)
    return update_card_section(raw_folder, "tokenized_variants", variants, "Content ids", prose)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out_dir", required=True, help="run folder (out/RUN)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    args = ap.parse_args(argv)
    print(f"wrote {write_model_card(args.out_dir, args.step)}")


if __name__ == "__main__":
    run_main(main)
