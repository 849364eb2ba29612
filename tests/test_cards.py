"""Model and dataset cards (modelling/cards.py): written by the real stages, parsed by huggingface_hub's card
parser, carrying ids, lineage and (when eval ran) the evaluation of their checkpoint."""
import json

import pandas as pd
import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard

from common import ids
from common.card import read_card
from modelling.cards import write_model_card
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CONFIG, TINY_STEPS, train_args


def test_run_card_describes_the_last_checkpoint(tiny_run):
    card = ModelCard.load(tiny_run / "README.md")  # huggingface_hub's own parser
    data = card.data.to_dict()
    info = json.loads((tiny_run / "config.json").read_text())
    ck = torch.load(tiny_run / "ckpt" / f"step_{TINY_STEPS:06d}.pt", weights_only=False)
    assert data["step"] == TINY_STEPS and data["checkpoint_id"] == ids.checkpoint_id(ck)
    assert (data["run_id"], data["tokenized_id"], data["selection_id"]) == (
        info["ids"]["run"], info["ids"]["tokenized"], info["ids"]["selection"])
    assert data["tokens_seen"] == int(pd.read_csv(tiny_run / "train_log.csv")["tokens_seen"].iloc[-1])
    assert data["architecture"]["dim"] == TINY_CONFIG["dim"] and data["n_params"] == info["n_params"]
    assert (data["parent_run"], data["parent_step"], data["parent_id"]) == ("", "", "")  # scratch: no parent
    assert data["license"] == "mit" and data["evaluation"] == {}
    for section in ("## Model", "## Training data", "## Lineage", "## Evaluation", "## Intended use",
                    "## Limitations"):
        assert section in card.text
    assert info["selection_sha256"] in card.text and "Not evaluated at step" in card.text


def test_card_carries_the_evaluation_of_its_checkpoint(evaluated_run, tmp_path):
    run = evaluated_run["dir"]
    summary = pd.read_csv(run / "tables" / "summary.csv")
    row = summary[summary["step"] == 40].iloc[0]
    path = write_model_card(run, step=40, folder=tmp_path)
    ev = ModelCard.load(path).data.to_dict()["evaluation"]
    assert ev["val_loss"]["value"] == pytest.approx(row["val_loss"], abs=1e-4)
    gen = [c for c in summary.columns if c.startswith("out_") and not c.endswith(("_lo", "_hi"))
           and pd.notna(row[c])]
    assert gen and set(ev["generation"]) == {c[4:] for c in gen}
    c = gen[0]
    if pd.notna(row[f"{c}_lo"]):
        assert ev["generation"][c[4:]]["lo"] == pytest.approx(row[f"{c}_lo"], abs=1e-4)
    saturation = pd.read_csv(run / "tables" / "saturation.csv")
    assert {k: v["class"] for k, v in ev["saturation"].items()} == dict(zip(saturation["column"],
                                                                          saturation["class"]))
    # a checkpoint eval.py did not score has no evaluation
    assert ModelCard.load(write_model_card(run, step=8, folder=tmp_path)).data.to_dict()["evaluation"] == {}


def test_branch_card_names_its_parent_and_export_carries_the_card(tiny_run, tmp_path):
    ws = tiny_run.parents[1]
    parent = tiny_run / "ckpt" / "step_000020.pt"
    cfg = {**TINY_CONFIG, "out_dir": "out/tiny_branch", "max_iters": 2, "init_from": parent,
           "export_format": "hf"}
    run_stage(ws, "modelling/train.py", *train_args(dataset="storyworld", vocab_size=512, **cfg), env=ONE_THREAD)
    branch = ws / "out" / "tiny_branch"
    data = ModelCard.load(branch / "README.md").data.to_dict()
    parent_ckpt = torch.load(parent, weights_only=False)
    assert data["parent_run"] == str(tiny_run) and data["parent_step"] == 20
    assert data["parent_id"] == ids.checkpoint_id(parent_ckpt) and data["run_id"] != json.loads(
        (tiny_run / "config.json").read_text())["ids"]["run"]
    export = branch / "export" / "hf" / "step_000022"  # a branch continues its parent's step axis
    manifest = json.loads((export / "export.json").read_text())
    exported = ModelCard.load(export / "README.md").data.to_dict()
    assert exported["export_id"] == manifest["ids"]["export"] and exported["step"] == 22
    assert exported["checkpoint_id"] == manifest["ids"]["checkpoint"] and "README.md" not in manifest["files"]
    chain = run_stage(ws, "common/ids.py", "show", export).stdout.split()
    assert chain[0] == manifest["ids"]["export"] and manifest["ids"]["checkpoint"] in chain


def test_dataset_card_has_content_id_and_tokenized_variants(tok_dataset):
    raw = tok_dataset["dir"].parent
    card = DatasetCard.load(raw / "README.md")
    header = read_card(raw)
    assert card.data.to_dict()["content_id"] == header["content_id"] == ids.raw_id(raw)
    assert [v["id"] for v in header["tokenized_variants"]] == [ids.tokenized_id(tok_dataset["dir"])]
    assert "## Content ids" in card.text and "## Validation splits" in card.text
