"""Content ids: a short, stable id for every artifact, derived from what it holds and what it was made from,
never from its folder name. Copy a run elsewhere and its id stays; change any input and the id changes.

    ds-…    raw dataset        its shard hashes + the generator / ingest parameters of its card
    tok-…   tokenized dataset  ds id + tokenizer hash + split rule + val fraction
    sel-…   selection          tok id + selection rule (budget, filter, seed) + max_seq_len + the selected ids
    run-…   training run       config (less keys that change no number: out_dir, log_interval, …) + tok id + commit
    ckpt-…  checkpoint         run id + step + hash of the weights
    exp-…   export             ckpt id + format + dtype + hashes of the exported files

    python -m common.ids show PATH     PATH: data/<raw>, data/<raw>/tok<V>, out/RUN, a checkpoint .pt, an export
                                       folder or .bin — prints the id and its lineage chain, one link a line

An id is the kind's prefix and the first ID_HEX hex digits of the SHA-256 of the canonical JSON of its parts.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import UserError, run_main  # noqa: E402

ID_HEX = 12  # 48 bits: collisions are negligible for the few thousand artifacts of a project
PREFIXES = ("ds", "tok", "sel", "run", "ckpt", "exp")
# config keys that change where or how verbosely a run writes, or how fast it runs, but no trained number
RUN_FREE_KEYS = ("out_dir", "log_interval", "compile", "device", "export_format", "log_to", "save_optimizer_at")
# what picks a run's stories: the budget, its seed, the segment length, and for the filtering samplers the filter
SELECTION_KEYS = ("n_stories", "selection_seed", "max_seq_len", "filter_column", "threshold", "filter_keep")
FILTER_SAMPLERS = ("filter_by_threshold", "combined")


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def make_id(prefix, parts):
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}-{hashlib.sha256(canonical(parts).encode()).hexdigest()[:ID_HEX]}"


# ----------------------------------------------------------------------------------------------------------------
# the parts of each kind (pure functions of dicts, so callers that hold the manifest / config in memory use them)

def raw_parts(shards, card=None):
    """shards: [{file, sha256}, …]; card: the dataset card header (its generator or ingest parameters count)."""
    card = card or {}
    params = card.get("generator_params") or card.get("ingest_params") or card.get("hf_params") or {}
    return {"shards": sorted([s["file"], s["sha256"]] for s in shards), "source_kind": card.get("source_kind"),
            "params": params}


def raw_id_of(shards, card=None):
    return make_id("ds", raw_parts(shards, card))


def tokenized_id_of(manifest, raw_card=None):
    """The tokenized dataset's id from its manifest.json and the card of the raw folder it was built from."""
    ds_id = raw_id_of(manifest["shards"], raw_card)
    return make_id("tok", {"ds": ds_id, "tokenizer_sha256": manifest.get("tokenizer_sha256"),
                           "split_rule": manifest.get("split_rule"), "val_fraction": manifest.get("val_fraction")})


def selection_id_of(tok_id, config, selection_sha256=None):
    """The stories a run trains on: the tokenized id, the selection rule of its config and (when known) the
    hash of the selected ids themselves (modelling/samplers.py selection_sha256)."""
    keys = SELECTION_KEYS if config.get("sampler") in FILTER_SAMPLERS else SELECTION_KEYS[:3]
    rule = {k: config.get(k) for k in keys}
    return make_id("sel", {"tok": tok_id, "rule": rule, "selection_sha256": selection_sha256})


def run_id_of(config, tok_id, git_commit, parent_id=None):
    """parent_id: a branch's parent checkpoint id (its weights, not just the path it was read from)."""
    cfg = {k: v for k, v in config.items() if k not in RUN_FREE_KEYS}
    if cfg.get("init_from") in ("scratch", "resume"):  # resuming continues the same run
        cfg.pop("init_from")
    parts = {"config": cfg, "tok": tok_id, "commit": git_commit}
    if parent_id:
        parts["parent"] = parent_id
    return make_id("run", parts)


def weights_sha256(state_dict):
    """SHA-256 over the tensors of a state dict (names, dtypes, shapes, bytes) — not the .pt file, which also
    holds timestamps and losses."""
    import torch
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_id_of(run_id, step, weights_hash):
    return make_id("ckpt", {"run": run_id, "step": int(step), "weights_sha256": weights_hash})


def export_id_of(ckpt_id, fmt, dtype, files_sha256):
    return make_id("exp", {"ckpt": ckpt_id, "format": fmt, "dtype": dtype, "files_sha256": files_sha256})


# ----------------------------------------------------------------------------------------------------------------
# ids of artifacts on disk

def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}) — is it an artifact of this project?") from None


def raw_id(folder):
    """ds id of data/<raw>: the shard list of its card, else the hashes of its data*.json files."""
    from common.card import read_card
    from common.io import sha256_file
    folder = Path(folder)
    card = read_card(folder)
    if card and card.get("shards"):
        return raw_id_of(card["shards"], card)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise UserError(f"{folder} holds no dataset card and no .json shards — not a raw dataset folder")
    return raw_id_of([{"file": p.name, "sha256": sha256_file(p)} for p in files], None)


def tokenized_id(tok_folder):
    """tok id of data/<raw>/tok<V> (its manifest.json and the card of the raw folder above it)."""
    from common.card import read_card
    tok_folder = Path(tok_folder)
    manifest = _read_json(tok_folder / "manifest.json")
    return tokenized_id_of(manifest, read_card(tok_folder.parent))


def dataset_ids(tok_folder):
    """{'dataset': ds id, 'tokenized': tok id} of a tokenized folder."""
    from common.card import read_card
    tok_folder = Path(tok_folder)
    manifest = _read_json(tok_folder / "manifest.json")
    card = read_card(tok_folder.parent)
    return {"dataset": raw_id_of(manifest["shards"], card), "tokenized": tokenized_id_of(manifest, card)}


def run_ids(tok_folder, config, selection_sha256, git_commit, parent_id=None):
    """Every id a run records in config.json: dataset, tokenized, selection, run."""
    ids = dataset_ids(tok_folder)
    ids["selection"] = selection_id_of(ids["tokenized"], config, selection_sha256)
    ids["run"] = run_id_of(config, ids["tokenized"], git_commit, parent_id)
    return ids


def checkpoint_id(ckpt):
    """ckpt id of a loaded checkpoint dict (its ids.run, step and weights)."""
    run = (ckpt.get("ids") or {}).get("run")
    if run is None:  # a checkpoint from before ids (or llama2.c's): the run id from what the checkpoint holds
        run = run_id_of(ckpt.get("config") or {}, None, (ckpt.get("provenance") or {}).get("git_commit"))
    return checkpoint_id_of(run, ckpt.get("step") or ckpt.get("iter_num") or 0, weights_sha256(ckpt["model"]))


# ----------------------------------------------------------------------------------------------------------------
# show

def _resolve_data_dir(path_str, near):
    """A path recorded in an artifact (relative to the root it was made under), found from the artifact."""
    p = Path(path_str)
    if p.is_absolute():
        return p
    for base in [Path.cwd(), *Path(near).resolve().parents]:
        if (base / p).exists():
            return base / p
    return None


def lineage(path):
    """[(kind, id, where, note)] from the artifact at path down to its raw dataset."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"not found: {path} — give a data/<raw> folder, a tok folder, a run folder, a checkpoint "
                        f".pt or an export")
    if path.is_dir() and (path / "manifest.json").exists() and (path / "index.parquet").exists():
        ids = dataset_ids(path)
        return [("tokenized", ids["tokenized"], str(path), ""), ("dataset", ids["dataset"], str(path.parent), "")]
    export_manifest = path / "export.json" if path.is_dir() else path.with_suffix(".json")
    if export_manifest.exists() and path.suffix != ".pt":
        info = _read_json(export_manifest)
        if "checkpoint" in info and "format" in info:
            ckpt_path = _resolve_data_dir(info["checkpoint"], path)
            chain = lineage(ckpt_path) if ckpt_path is not None else []
            ckpt_id = info.get("ids", {}).get("checkpoint") or (chain[0][1] if chain else None)
            exp = export_id_of(ckpt_id, info["format"], info.get("dtype"), info.get("files_sha256"))
            return [("export", exp, str(path), f"{info['format']} {info.get('dtype')}")] + chain
    if path.is_dir() and (path / "config.json").exists():
        info = _read_json(path / "config.json")
        ids = info.get("ids") or {}
        if not ids:
            raise UserError(f"{path}/config.json records no ids (a run from before content ids) — retrain, or "
                            f"show its dataset folder instead")
        chain = [("run", ids["run"], str(path), f"commit {info.get('provenance', {}).get('git_commit')}"),
                 ("selection", ids.get("selection"), "", f"{info.get('n_selected')} stories, selection_sha256 "
                                                          f"{str(info.get('selection_sha256'))[:12]}")]
        tok = _resolve_data_dir(info.get("dataset_dir", ""), path)
        note = ""
        if tok is not None and (tok / "manifest.json").exists():
            now = dataset_ids(tok)
            if now["tokenized"] != ids.get("tokenized"):
                note = f"changed since the run: the folder is now {now['tokenized']}"
        chain += [("tokenized", ids.get("tokenized"), str(tok or info.get("dataset_dir")), note),
                  ("dataset", ids.get("dataset"), str(tok.parent) if tok else "", "")]
        return chain
    if path.is_file() and path.suffix == ".pt":
        import torch
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if "model" not in ckpt:
            raise UserError(f"{path} holds no model weights — not a checkpoint")
        link = [("checkpoint", checkpoint_id(ckpt), str(path), f"step {ckpt.get('step')}")]
        run_dir = path.parent.parent if path.parent.name == "ckpt" else None
        return link + (lineage(run_dir) if run_dir and (run_dir / "config.json").exists() else [])
    if path.is_dir() and any(path.glob("*.json")):
        return [("dataset", raw_id(path), str(path), "")]
    raise UserError(f"{path} is not a dataset, run, checkpoint or export folder of this project")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print an artifact's id and its lineage chain")
    show.add_argument("path")
    args = ap.parse_args(argv)
    for depth, (kind, ident, where, note) in enumerate(lineage(args.path)):
        print(f"{'  ' * depth}{ident}  {kind:<10} {where}" + (f"  ({note})" if note else ""))


if __name__ == "__main__":
    run_main(main)
