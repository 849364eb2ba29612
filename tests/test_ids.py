"""Content ids (common/ids.py): stable across re-computation and copies, new when any input changes."""
import json
import re
import shutil

import torch

from common import ids
from common.card import read_card
from tests.fixtures_data import run_stage

ID = re.compile(r"^(ds|tok|sel|run|ckpt|exp)-[0-9a-f]{12}$")


def test_tokenized_id_stable_and_changes_with_every_input(tok_dataset):
    tok = tok_dataset["dir"]
    manifest = json.loads((tok / "manifest.json").read_text())
    card = read_card(tok.parent)
    tok_id = ids.tokenized_id(tok)
    assert ID.match(tok_id) and tok_id == ids.tokenized_id(tok) == ids.tokenized_id_of(manifest, card)
    ds_id = ids.raw_id(tok.parent)
    assert ID.match(ds_id) and ds_id == ids.dataset_ids(tok)["dataset"] and ds_id.startswith("ds-")

    def changed(**kw):
        return ids.tokenized_id_of({**manifest, **kw}, card)

    shards = [dict(s) for s in manifest["shards"]]
    shards[0]["sha256"] = "0" * 64
    variants = {changed(shards=shards), changed(tokenizer_sha256="1" * 64), changed(split_rule="other"),
                changed(val_fraction=0.2),
                ids.tokenized_id_of(manifest, {**card, "generator_params": {**card["generator_params"], "seed": 1}})}
    assert len(variants) == 5 and tok_id not in variants
    # fields that do not change the data (the card's prose-side statistics, provenance time) leave the id alone
    assert ids.tokenized_id_of({**manifest, "provenance": {"created_utc": "x"}}, {**card, "stats": {}}) == tok_id


def test_raw_id_without_card_hashes_shard_files(tok_dataset, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in sorted(tok_dataset["dir"].parent.glob("data*.json")):
        shutil.copy(p, raw / p.name)
    first = ids.raw_id(raw)
    assert first == ids.raw_id(raw)
    stories = json.loads((raw / "data00.json").read_text())
    stories[0]["story"] += " The end."
    (raw / "data00.json").write_text(json.dumps(stories))
    assert ids.raw_id(raw) != first


def test_run_and_selection_ids_ignore_harmless_keys_only(tiny_run):
    info = json.loads((tiny_run / "config.json").read_text())
    cfg, stored = info["config"], info["ids"]
    commit = info["provenance"]["git_commit"]
    tok = tiny_run.parents[1] / info["dataset_dir"]
    assert ids.run_ids(tok, cfg, info["selection_sha256"], commit) == stored  # recomputed from the folder
    assert all(ID.match(v) for v in stored.values()) and set(stored) == {"dataset", "tokenized", "selection", "run"}
    run = stored["run"]
    tok_id = stored["tokenized"]
    assert ids.run_id_of({**cfg, "out_dir": "elsewhere", "log_interval": 1, "device": "cuda"}, tok_id, commit) == run
    assert ids.run_id_of({**cfg, "init_from": "resume"}, tok_id, commit) == run
    for key, value in [("learning_rate", 0.5), ("seed", 8), ("data_seed", 8), ("dim", 64), ("max_iters", 41)]:
        assert ids.run_id_of({**cfg, key: value}, tok_id, commit) != run, key
    assert ids.run_id_of(cfg, tok_id, commit + "x") != run and ids.run_id_of(cfg, "tok-000000000000", commit) != run
    sel = stored["selection"]
    assert ids.selection_id_of(tok_id, {**cfg, "data_seed": 99, "sampler": "sort_ascending"},
                               info["selection_sha256"]) == sel  # the order is not the selection
    assert ids.selection_id_of(tok_id, {**cfg, "selection_seed": 5}, info["selection_sha256"]) != sel
    assert ids.selection_id_of(tok_id, cfg, "f" * 64) != sel


def test_checkpoint_ids_and_show_chain(tiny_run, tmp_path):
    info = json.loads((tiny_run / "config.json").read_text())
    ck8 = torch.load(tiny_run / "ckpt" / "step_000008.pt", weights_only=False)
    ck40 = torch.load(tiny_run / "ckpt" / "step_000040.pt", weights_only=False)
    assert ck8["ids"] == info["ids"]
    id8 = ids.checkpoint_id(ck8)
    assert id8 == ids.checkpoint_id(ck8) and id8 != ids.checkpoint_id(ck40) and id8.startswith("ckpt-")
    ck8["model"] = {k: v.clone() for k, v in ck8["model"].items()}
    next(iter(ck8["model"].values())).view(-1)[0] += 1e-3
    assert ids.checkpoint_id(ck8) != id8
    # the run folder copied elsewhere keeps its ids; show prints the chain down to the raw dataset
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("batch_log*", "tables", "visualize"))
    ws = tiny_run.parents[1]
    out = run_stage(ws, "common/ids.py", "show", copy / "ckpt" / "step_000040.pt").stdout.splitlines()
    assert [line.split()[0] for line in out] == [ids.checkpoint_id(ck40), info["ids"]["run"],
                                                 info["ids"]["selection"], info["ids"]["tokenized"],
                                                 info["ids"]["dataset"]]
    bad = run_stage(ws, "common/ids.py", "show", tmp_path / "missing", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: not found")
