"""HF export -> import is lossless (identical logits), and --init_from accepts an exported folder."""
import json

import torch
from huggingface_hub import ModelCard

from common.errors import UserError
from modelling.checkpoints import load_model
from modelling.export import export_checkpoint
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CONFIG, train_args


def sp_model(run):
    return run.parents[1] / "data" / "storyworld" / "tok512" / "tokenizer.model"


def test_export_import_round_trip_gives_identical_logits(tiny_run, tmp_path):
    ckpt = tiny_run / "ckpt" / "step_000040.pt"
    folder = export_checkpoint(ckpt, "hf", tmp_path / "hf", tokenizer=sp_model(tiny_run))
    original, _ = load_model(ckpt)
    imported, info = load_model(folder)
    assert info["step"] == 40
    assert imported.layers[0].feed_forward.w1.weight.shape == original.layers[0].feed_forward.w1.weight.shape
    tokens = torch.randint(0, original.params.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(original(tokens), imported(tokens))
    # a bf16 export round-trips up to bf16 rounding of the weights, and is not identical
    half, _ = load_model(export_checkpoint(ckpt, "hf", tmp_path / "bf16", dtype="bf16",
                                        tokenizer=sp_model(tiny_run)))
    with torch.no_grad():
        a, b = original(tokens), half(tokens)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.1)


def test_init_from_an_exported_folder_records_its_parent(tiny_run, tmp_path):
    ws = tiny_run.parents[1]
    folder = export_checkpoint(tiny_run / "ckpt" / "step_000020.pt", "hf", ws / "out" / "hf_parent",
                               tokenizer=sp_model(tiny_run))
    cfg = {**TINY_CONFIG, "out_dir": "out/tiny_from_hf", "max_iters": 2, "init_from": folder}
    run_stage(ws, "modelling/train.py", *train_args(dataset="storyworld", vocab_size=512, **cfg), env=ONE_THREAD)
    data = ModelCard.load(ws / "out" / "tiny_from_hf" / "README.md").data.to_dict()
    export = json.loads((folder / "export.json").read_text())
    assert data["parent_step"] == 20 and data["parent_id"] == export["ids"]["checkpoint"]
    assert data["parent_run"] == str(tiny_run)
    (tmp_path / "notllama").mkdir()
    (tmp_path / "notllama" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "notllama" / "model.safetensors").write_bytes(b"")
    try:
        load_model(tmp_path / "notllama")
        raise AssertionError("a non-Llama folder was accepted")
    except UserError as e:
        assert "only Llama folders" in str(e)
