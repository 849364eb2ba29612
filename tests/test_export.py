"""Export to llama2.c (model.bin + tokenizer.bin) and Hugging Face Llama, and import of llama2.c .pt files.

The llama2.c side is checked with a reader written here and a forward pass that follows run.c's arithmetic (its
own RoPE, hard-coded eps, GQA head mapping, one token at a time with a KV cache) — run.c itself cannot be
downloaded here. The HF side is checked with the real transformers library loading the exported folder offline.
Two tokenizers: one trained here with llama2.c's train_vocab settings (SentencePiece collapses runs of spaces) and
the project's own (tiny_run's, built by tokenization/pretokenize.py, which keeps them).
"""
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from common.errors import UserError
from common.paths import ROOT_ENV
from modelling.checkpoints import list_checkpoints, load_model
from modelling.export import (export_checkpoint, hf_state_dict, llama2c_tokenizer_bytes, model_shape,
                              write_llama2c_model)
from modelling.model import ModelArgs, Transformer

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "modelling" / "export.py"
VOCAB = 320
# small GQA model: 4 query heads share 2 key/value heads, so the q/k permutations and run.c's h // kv_mul matter
ARGS = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=32, max_seq_len=48)
WORDS = ("once upon a time there was a little girl named lily she liked to play with her dog max in the park "
         "one day they found a big red ball and were very happy the end Tom said hello").split()


def story_lines(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 18)) + f", {rng.integers(0, 999)} times!" for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory):
    """A SentencePiece BPE model trained here with llama2.c's train_vocab settings (byte fallback, split digits)."""
    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text("\n".join(story_lines(400)) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), model_type="bpe", vocab_size=VOCAB,
        self_test_sample_size=0, input_format="text", character_coverage=1.0, num_threads=1, split_digits=True,
        allow_whitespace_only_pieces=True, byte_fallback=True, unk_surface=r" \342\201\207 ",
        normalization_rule_name="identity", minloglevel=2)
    return d / "tokenizer.model"


def random_model(seed=0, **overrides):
    """A Transformer with random weights everywhere (norm gains too, so a swapped norm cannot go unnoticed)."""
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(**{**ARGS, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_model):
    """A checkpoint laid out as modelling/train.py writes them, in a run folder."""
    run = tmp_path_factory.mktemp("run")
    model = random_model()
    path = run / "ckpt" / "step_000007.pt"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "model_args": model.params.to_dict(), "step": 7, "tokens_seen": 700,
                "config": {}}, path)  # no dataset recorded: every export below names its tokenizer
    return path


def random_tokens(n, length, seed=1):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# llama2.c model.bin: a reader and run.c's forward pass

def read_llama2c_model(path):
    """Parse a legacy model.bin into (header dict, {name: np.ndarray}) and check every byte is accounted for."""
    raw = Path(path).read_bytes()
    keys = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
    header = dict(zip(keys, struct.unpack("<7i", raw[:28])))
    shared = header["vocab_size"] > 0
    V, D, F, L = abs(header["vocab_size"]), header["dim"], header["hidden_dim"], header["n_layers"]
    hs = D // header["n_heads"]
    kv_dim = header["n_kv_heads"] * hs
    layout = [("tok_embeddings", (V, D)), ("rms_att", (L, D)), ("wq", (L, D, D)), ("wk", (L, kv_dim, D)),
              ("wv", (L, kv_dim, D)), ("wo", (L, D, D)), ("rms_ffn", (L, D)), ("w1", (L, F, D)),
              ("w2", (L, D, F)), ("w3", (L, F, D)), ("rms_final", (D,)),
              ("freq_cis_real", (header["max_seq_len"], hs // 2)), ("freq_cis_imag", (header["max_seq_len"], hs // 2))]
    if not shared:
        layout.append(("wcls", (V, D)))
    tensors, offset = {}, 28
    for name, shape in layout:
        n = int(np.prod(shape))
        tensors[name] = np.frombuffer(raw, dtype="<f4", count=n, offset=offset).reshape(shape)
        offset += 4 * n
    assert offset == len(raw), f"model.bin has {len(raw) - offset} unexplained bytes"
    tensors["wcls"] = tensors.get("wcls", tensors["tok_embeddings"])
    return header, tensors


def runc_logits(header, w, tokens):
    """Logits at every position computed the way run.c's forward() does, in float32, from model.bin alone."""
    D, H, KV = header["dim"], header["n_heads"], header["n_kv_heads"]
    hs, kv_mul = D // H, H // KV
    kv_dim = KV * hs
    n = len(tokens)
    key_cache = np.zeros((header["n_layers"], n, kv_dim), np.float32)
    value_cache = np.zeros_like(key_cache)

    def rmsnorm(x, weight):  # run.c: eps 1e-5 hard-coded
        return weight * (x / np.sqrt(np.mean(x * x) + np.float32(1e-5)))

    def rope(vec, pos):  # run.c: pairs (i, i+1), freq from i % head_size, theta 10000 hard-coded
        i = np.arange(0, len(vec), 2)
        angle = pos * (1.0 / np.power(np.float32(10000.0), (i % hs) / np.float32(hs)))
        cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
        v0, v1 = vec[0::2].copy(), vec[1::2].copy()
        vec[0::2], vec[1::2] = v0 * cos - v1 * sin, v0 * sin + v1 * cos

    out = []
    for pos, token in enumerate(tokens):
        x = w["tok_embeddings"][token].copy()
        for layer in range(header["n_layers"]):
            xb = rmsnorm(x, w["rms_att"][layer])
            q, k, v = w["wq"][layer] @ xb, w["wk"][layer] @ xb, w["wv"][layer] @ xb
            rope(q, pos), rope(k, pos)
            key_cache[layer, pos], value_cache[layer, pos] = k, v
            att_out = np.zeros(D, np.float32)
            for h in range(H):
                kv = slice((h // kv_mul) * hs, (h // kv_mul + 1) * hs)
                scores = key_cache[layer, :pos + 1, kv] @ q[h * hs:(h + 1) * hs] / np.float32(math.sqrt(hs))
                p = np.exp(scores - scores.max())
                att_out[h * hs:(h + 1) * hs] = (p / p.sum()) @ value_cache[layer, :pos + 1, kv]
            x = x + w["wo"][layer] @ att_out
            xb = rmsnorm(x, w["rms_ffn"][layer])
            h1, h3 = w["w1"][layer] @ xb, w["w3"][layer] @ xb
            x = x + w["w2"][layer] @ (h1 / (1.0 + np.exp(-h1)) * h3)
        out.append(w["wcls"] @ rmsnorm(x, w["rms_final"]))
    return np.stack(out)


def read_llama2c_tokenizer(path, vocab_size):
    """Parse tokenizer.bin as run.c's build_tokenizer does: (max_token_length, [bytes], [score])."""
    raw = Path(path).read_bytes()
    (max_len,), offset = struct.unpack_from("<i", raw, 0), 4
    pieces, scores = [], []
    for _ in range(vocab_size):
        score, n = struct.unpack_from("<fi", raw, offset)
        pieces.append(raw[offset + 8:offset + 8 + n])
        scores.append(score)
        offset += 8 + n
    assert offset == len(raw)
    return max_len, pieces, scores


def runc_decode(pieces, tokens):
    """run.c's decode(): strip the space after BOS, turn <0xXX> pieces into raw bytes."""
    out, prev = b"", tokens[0]
    for tok in tokens[1:]:
        piece = pieces[tok]
        if prev == 1 and piece.startswith(b" "):
            piece = piece[1:]
        if piece.startswith(b"<0x") and piece.endswith(b">") and len(piece) == 6:
            piece = bytes([int(piece[3:5], 16)])
        out, prev = out + piece, tok
    return out.decode("utf-8", errors="replace")


def test_llama2c_model_bin_reads_back_and_runs_like_runc(ckpt, tokenizer_model, tmp_path):
    out = export_checkpoint(ckpt, "llama2c", tmp_path / "model.bin", tokenizer=tokenizer_model)
    model, _ = load_model(ckpt)
    args = model.params
    header, w = read_llama2c_model(out)
    hidden_dim = model.layers[0].feed_forward.w1.weight.shape[0]
    assert header == {"dim": args.dim, "hidden_dim": hidden_dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
                      "n_kv_heads": args.n_kv_heads, "vocab_size": VOCAB, "max_seq_len": args.max_seq_len}
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(w["tok_embeddings"], state["tok_embeddings.weight"])
    np.testing.assert_array_equal(w["rms_final"], state["norm.weight"])
    for i in range(args.n_layers):
        for ours, theirs in [("attention_norm", "rms_att"), ("attention.wq", "wq"), ("attention.wk", "wk"),
                             ("attention.wv", "wv"), ("attention.wo", "wo"), ("ffn_norm", "rms_ffn"),
                             ("feed_forward.w1", "w1"), ("feed_forward.w2", "w2"), ("feed_forward.w3", "w3")]:
            np.testing.assert_array_equal(w[theirs][i], state[f"layers.{i}.{ours}.weight"], err_msg=f"{theirs}[{i}]")
    # RoPE tables: the model's own buffers and the textbook formula
    hs = args.dim // args.n_heads
    angles = np.outer(np.arange(args.max_seq_len), 1.0 / 10000.0 ** (np.arange(0, hs, 2) / hs))
    np.testing.assert_allclose(w["freq_cis_real"], np.cos(angles), atol=1e-5)
    np.testing.assert_allclose(w["freq_cis_imag"], np.sin(angles), atol=1e-5)
    np.testing.assert_array_equal(w["freq_cis_real"], model.freqs_cos.numpy())
    # run.c's arithmetic on the file alone reproduces our logits
    tokens = random_tokens(1, 24)
    with torch.no_grad():
        ours = model(tokens)[0].numpy()
    np.testing.assert_allclose(runc_logits(header, w, tokens[0].tolist()), ours, atol=1e-4, rtol=0)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["step"] == 7 and manifest["format"] == "llama2c" and "git_commit" in manifest
    assert set(manifest["files"]) == {"model.bin", "tokenizer.bin"}


def test_llama2c_untied_classifier_negative_vocab(tmp_path):
    model = random_model(seed=3)
    state = dict(model.state_dict())
    state["output.weight"] = torch.randn_like(state["output.weight"])  # as a llama2.c model with its own classifier
    shape = model_shape(model, state)
    write_llama2c_model(state, shape, model.freqs_cos, model.freqs_sin, tmp_path / "untied.bin")
    header, w = read_llama2c_model(tmp_path / "untied.bin")
    assert header["vocab_size"] == -VOCAB
    np.testing.assert_array_equal(w["wcls"], state["output.weight"].numpy())
    assert "lm_head.weight" in hf_state_dict(state, shape, "fp32")


def test_llama2c_tokenizer_bin_round_trips_every_piece(ckpt, tokenizer_model, tmp_path):
    export_checkpoint(ckpt, "llama2c", tmp_path / "model.bin", tokenizer=tokenizer_model)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    max_len, pieces, scores = read_llama2c_tokenizer(tmp_path / "tokenizer.bin", VOCAB)
    assert max_len == max(len(p) for p in pieces)
    for i in range(VOCAB):
        expected = {sp.bos_id(): "\n<s>\n", sp.eos_id(): "\n</s>\n"}.get(i, sp.id_to_piece(i).replace("\u2581", " "))
        assert pieces[i].decode("utf-8") == expected, i
        assert scores[i] == pytest.approx(sp.get_score(i), abs=1e-6)
    for text in story_lines(5, seed=9) + ["Ümlaut ☃ and 42."]:
        assert runc_decode(pieces, [sp.bos_id()] + sp.encode(text)) == sp.decode(sp.encode(text))
    # a model with a padded embedding table: run.c reads vocab_size entries, the extra ones empty
    padded = tmp_path / "padded.bin"
    padded.write_bytes(llama2c_tokenizer_bytes(sp, VOCAB + 8))
    _, padded_pieces, _ = read_llama2c_tokenizer(padded, VOCAB + 8)
    assert padded_pieces[:VOCAB] == pieces and padded_pieces[VOCAB:] == [b""] * 8


def test_llama2c_rejects_half_precision(ckpt, tokenizer_model, tmp_path):
    with pytest.raises(UserError, match="fp32 only"):
        export_checkpoint(ckpt, "llama2c", tmp_path / "model.bin", dtype="bf16", tokenizer=tokenizer_model)
    assert not (tmp_path / "model.bin").exists()


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face

@pytest.fixture(scope="module")
def hf_export(ckpt, tokenizer_model, tmp_path_factory):
    """The CLI, run as a user would; the fp32 folder it writes."""
    out = tmp_path_factory.mktemp("hf") / "step_000007"
    result = subprocess.run([sys.executable, str(EXPORT), "--ckpt", str(ckpt), "--format", "hf", "--out", str(out),
                             "--tokenizer", str(tokenizer_model)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_hf_export_loads_with_same_logits_and_greedy_tokens(ckpt, hf_export):
    from transformers import LlamaForCausalLM
    hf, info = LlamaForCausalLM.from_pretrained(hf_export, output_loading_info=True, local_files_only=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.tie_word_embeddings and hf.config.rope_parameters["rope_theta"] == 10000.0
    assert hf.config.num_key_value_heads == 2 and hf.config.rms_norm_eps == 1e-5
    model, _ = load_model(ckpt)
    tokens = random_tokens(3, 40)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-4, rtol=0)
    prompt = tokens[:1, :6]
    ours = model.generate(prompt, 30, temperature=0.0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    assert theirs.tolist() == ours.tolist()


def test_hf_tokenizer_matches_sentencepiece(hf_export, tokenizer_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(hf_export, local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    texts = story_lines(50, seed=5) + ["  Double  spaces,\ttabs\n  and new lines.  ", "Über café ☃ 2024", ""]
    for text in texts:
        ids = tok.encode(text)
        assert ids == [sp.bos_id()] + sp.encode(text), text
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(sp.encode(text))
    manifest = json.loads((hf_export / "export.json").read_text())
    assert manifest["checks"]["tokenizer_matches_sentencepiece"] is True


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_hf_dtype_is_honoured(ckpt, tokenizer_model, tmp_path, dtype, torch_dtype):
    from safetensors import safe_open
    from transformers import LlamaForCausalLM
    out = export_checkpoint(ckpt, "hf", tmp_path / dtype, dtype=dtype, tokenizer=tokenizer_model)
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch_dtype}
    assert json.loads((out / "config.json").read_text())["dtype"] == str(torch_dtype).removeprefix("torch.")
    hf = LlamaForCausalLM.from_pretrained(out, dtype="auto", local_files_only=True)
    assert hf.model.embed_tokens.weight.dtype == torch_dtype
    model, _ = load_model(ckpt)
    tokens = random_tokens(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits.float(), model(tokens), atol=0.1, rtol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# import of llama2.c's own training checkpoints, CLI behaviour

def test_llama2c_pt_imports_with_same_logits(tmp_path, tokenizer_model):
    """A .pt as llama2.c's train.py saves it (torch.compile prefixes, no hidden_dim/norm_eps, optimizer state)."""
    reference = random_model(seed=5)
    llama2c_args = {k: ARGS[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                                         "max_seq_len")} | {"dropout": 0.0}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in reference.state_dict().items()},
                "optimizer": torch.optim.AdamW(reference.parameters()).state_dict(), "model_args": llama2c_args,
                "iter_num": 2000, "best_val_loss": torch.tensor(1.23),
                "config": {"vocab_source": "custom", "vocab_size": VOCAB, "out_dir": "out"}}, path)
    model, ckpt = load_model(path)
    tokens = random_tokens(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens), atol=0, rtol=0)
    # the tokenizer is not recorded in llama2.c's config: export says how to give it, then works with it
    with pytest.raises(UserError, match="--tokenizer"):
        export_checkpoint(path, "llama2c", tmp_path / "out")
    out = export_checkpoint(path, "llama2c", tmp_path / "out", tokenizer=tokenizer_model)
    assert out == tmp_path / "out" / "model.bin"
    header, w = read_llama2c_model(out)
    np.testing.assert_allclose(runc_logits(header, w, tokens[0].tolist()), reference(tokens)[0].detach().numpy(),
                               atol=1e-4, rtol=0)


def test_rerun_skips_and_bad_input_exits_2(ckpt, tokenizer_model, hf_export, tmp_path):
    before = (hf_export / "model.safetensors").stat().st_mtime_ns
    # same checkpoint: up to date, nothing rewritten
    assert export_checkpoint(ckpt, "hf", hf_export, tokenizer=tokenizer_model) == hf_export
    assert (hf_export / "model.safetensors").stat().st_mtime_ns == before
    corrupt = tmp_path / "step_000001.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, str(EXPORT), "--ckpt", str(corrupt), "--format", "hf",
                             "--out", str(hf_export), "--force"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error:") and len(result.stderr.splitlines()) == 1
    assert (hf_export / "model.safetensors").stat().st_mtime_ns == before  # the good export is untouched
    with pytest.raises(UserError, match="not found"):
        export_checkpoint(tmp_path / "missing.pt", "hf", tmp_path / "x")


# ---------------------------------------------------------------------------------------------------------------
# a real run: the tiny_run fixture (modelling/train.py on the storyworld corpus), exported by the CLI as a user would

@pytest.fixture(scope="module")
def tiny_exports(tiny_run):
    from tests.fixtures_data import run_stage
    workspace = tiny_run.parents[1]
    step, path = list_checkpoints(tiny_run)[-1]
    for fmt in ("llama2c", "hf"):  # default output folders: out/tiny/export/<format>/
        run_stage(workspace, "modelling/export.py", "--ckpt", path.relative_to(workspace), "--format", fmt)
    return workspace, step, path


def test_real_run_exports_reproduce_training_tokens_and_logits(tiny_exports, monkeypatch):
    from transformers import AutoTokenizer, LlamaForCausalLM
    from tokenization.dataset import TokenizedDataset
    workspace, step, ckpt_path = tiny_exports
    monkeypatch.setenv(ROOT_ENV, str(workspace))  # the run's tokenizer and data live under workspace/data
    model, ckpt = load_model(ckpt_path)
    ds = TokenizedDataset(ckpt["config"]["dataset"], ckpt["config"]["vocab_size"])
    story_ids = ds.story_ids("val")[:100]
    export_dir = ckpt_path.parents[1] / "export"
    # llama2.c: run.c's arithmetic on a validation story; run.c's decode of the stored tokens
    header, w = read_llama2c_model(export_dir / "llama2c" / f"step_{step:06d}.bin")
    story = torch.tensor(ds.tokens(story_ids[0])[:model.params.max_seq_len].astype(np.int64))[None]
    with torch.no_grad():
        ours = model(story)
    np.testing.assert_allclose(runc_logits(header, w, story[0].tolist()), ours[0].numpy(), atol=1e-4, rtol=0)
    _, pieces, _ = read_llama2c_tokenizer(export_dir / "llama2c" / "tokenizer.bin", header["vocab_size"])
    for sid in story_ids[:20]:
        tokens = ds.tokens(sid).tolist()
        assert runc_decode(pieces, tokens) == ds.tokenizer.decode(tokens[1:])
    # HF: the tokenizer reproduces the training token streams exactly, the model the logits
    hf_dir = export_dir / "hf" / f"step_{step:06d}"
    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    for sid in story_ids:
        assert tok.encode(ds.text(sid)) == ds.tokens(sid).tolist(), sid
    hf = LlamaForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(hf(story).logits, ours, atol=1e-4, rtol=0)


def test_continue_pretraining_from_llama2c_pt_exporting_every_checkpoint(tok_dataset, tmp_path):
    """llama2.c's stories*.pt route at toy scale: train.py --init_from=PATH.pt --export_format=llama2c."""
    from tests.fixtures_data import run_stage
    from tests.fixtures_run import ONE_THREAD
    workspace, vocab = tok_dataset["workspace"], tok_dataset["vocab_size"]
    reference = Transformer(ModelArgs(dim=48, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=vocab,
                                      multiple_of=16, max_seq_len=64))
    pt = tmp_path / "stories_toy.pt"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in reference.state_dict().items()},
                "model_args": dict(dim=48, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=vocab, multiple_of=16,
                                   max_seq_len=64, dropout=0.0), "iter_num": 0}, pt)
    run_stage(workspace, "modelling/train.py", f"--init_from={pt}", f"--dataset={tok_dataset['dataset']}",
              f"--vocab_size={vocab}", "--out_dir=out/from_llama2c", "--max_iters=2", "--batch_size=4",
              "--max_seq_len=64", "--learning_rate=1e-5", "--eval_iters=1", "--n_probe_stories=1",
              "--probe_len=16", "--dtype=float32", "--export_format=llama2c", env=ONE_THREAD)
    run = workspace / "out" / "from_llama2c"
    checkpoints = list_checkpoints(run)
    assert [s for s, _ in checkpoints] == [1, 2]
    for step, path in checkpoints:
        header, w = read_llama2c_model(run / "export" / "llama2c" / f"step_{step:06d}.bin")
        assert (header["dim"], header["n_layers"], header["vocab_size"]) == (48, 2, vocab)
        np.testing.assert_array_equal(w["wq"][1], load_model(path)[0].layers[1].attention.wq.weight.detach().numpy())
    assert (run / "export" / "llama2c" / "tokenizer.bin").exists()
    # training started from the llama2.c weights: one AdamW step at lr 1e-5 moves each weight by ~1e-5
    trained = load_model(checkpoints[0][1])[0].state_dict()
    for name, value in reference.state_dict().items():
        assert (trained[name] - value).abs().max() < 1e-4, name
