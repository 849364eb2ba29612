"""Parity with the real llama2.c (../shared/reference/llama2.c, read at test time, never copied):

1. generation: a checkpoint exported with modelling/export.py --format llama2c runs in llama2.c's own run.c (built
   here with gcc -O3) and prints the same greedy text as our KV-cache generation (Transformer.generate, what
   eval.py uses), from BOS alone and from a prompt that run.c tokenizes itself;
2. training: llama2.c's model.py and its configure_optimizers, fed the exact batches our modelling/train.py took
   (read back from the run's batch log), follow the same fp32 loss trajectory for 20 steps from the same initial
   weights (same seed), and end at the same weights as train.py's last checkpoint;
3. llama2.c's own batches (its Task iterator over our stories in its .bin layout) through its training loop give
   our model and its model the same 20 losses. (train.py itself cannot take llama2.c's batches: it reads
   one story per row from the pretokenized dataset; 2. covers it.)
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sentencepiece as spm
import torch

from modelling.batch_log import BatchLog
from modelling.checkpoints import list_checkpoints, load_checkpoint, load_model
from modelling.data import SegmentBatches
from modelling.model import ModelArgs, Transformer
from tests.fixtures_data import REPO, run_stage
from tests.fixtures_run import ONE_THREAD, train_args
from tokenization.dataset import TokenizedDataset

LLAMA2C = REPO.parent / "shared" / "reference" / "llama2.c"
if not LLAMA2C.exists():  # a worktree sits beside main; the reference lives in the workspace's shared/
    LLAMA2C = Path("/work/shared/reference/llama2.c")
RUNC_STEPS = 100  # run.c positions (prompt included); the tiny run's max_seq_len is 128
PARITY_STEPS = 20
PARITY_CONFIG = dict(out_dir="out/parity", max_iters=PARITY_STEPS, eval_interval=PARITY_STEPS, eval_iters=1,
                     batch_size=8, max_seq_len=64, dim=48, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16,
                     learning_rate=3e-3, decay_lr=False, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
                     dtype="float32", compile=False, n_probe_stories=1, probe_len=32, data_seed=3, seed=11,
                     pack=False)  # one segment per row: llama2.c's model has no segment mask
LOSS_RTOL = 1e-5
RANDOM_SHAPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=16,
                    max_seq_len=128)


def need_reference():
    if not (LLAMA2C / "run.c").exists():
        pytest.skip(f"llama2.c reference not found at {LLAMA2C} (needed for the parity tests)")


def import_llama2c_model():
    """llama2.c's model.py as a module of its own name (ours is modelling.model)."""
    need_reference()
    spec = importlib.util.spec_from_file_location("llama2c_model", LLAMA2C / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama2c_model"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_c(tmp_path_factory):
    """llama2.c's run.c built with gcc -O3 (skipped where no C compiler exists)."""
    need_reference()
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc/cc) on PATH: cannot build llama2.c's run.c for the generation parity test")
    binary = tmp_path_factory.mktemp("runc") / "run"
    subprocess.run([cc, "-O3", "-o", str(binary), str(LLAMA2C / "run.c"), "-lm"], check=True, capture_output=True)
    return binary


def runc_text(sp, tokens):
    """What run.c prints for a token sequence (its decode + safe_printf): each token after the first as its piece,
    the leading space dropped right after BOS, <0xXX> pieces as their byte, unprintable single bytes skipped."""
    out = b""
    for prev, tok in zip(tokens[:-1], tokens[1:]):
        piece = sp.id_to_piece(int(tok)).replace("\u2581", " ").encode()
        if prev == 1 and piece.startswith(b" "):
            piece = piece[1:]
        if sp.is_byte(int(tok)):
            piece = bytes([int(sp.id_to_piece(int(tok))[3:5], 16)])
        if len(piece) == 1 and not (0x20 <= piece[0] < 0x7F or piece in b" \t\n\r\v\f"):
            continue
        out += piece
    return out.decode("utf-8", errors="replace")


def our_greedy(model, prompt_ids, steps):
    """Our KV-cache greedy continuation of prompt_ids up to `steps` positions, cut where run.c stops (a BOS)."""
    idx = torch.tensor([prompt_ids])
    full = model.generate(idx, steps - (len(prompt_ids) - 1), temperature=0.0, use_cache=True)[0].tolist()
    new = full[len(prompt_ids):]
    if 1 in new:
        new = new[:new.index(1)]
    return prompt_ids + new


def random_checkpoint(path, seed=0):
    """A GQA model with large random weights (so greedy text is varied, not one repeated word) saved as train.py
    saves checkpoints (its config names the session corpus, whose tokenizer export.py picks up)."""
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(**RANDOM_SHAPE))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("norm.weight") else 0.15 * torch.randn_like(p))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_args": model.params.to_dict(), "step": 1,
                "config": {"dataset": "storyworld", "vocab_size": RANDOM_SHAPE["vocab_size"]}}, path)
    return path


def run_c_generate(run_c, model_bin, steps, prompt=""):
    cmd = [str(run_c), str(model_bin), "-z", str(model_bin.parent / "tokenizer.bin"), "-t", "0", "-n", str(steps)]
    proc = subprocess.run(cmd + (["-i", prompt] if prompt else []), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    printed = proc.stdout.decode("utf-8", errors="replace")
    assert printed.endswith("\n")
    return printed[:-1]


@pytest.mark.parametrize("which", ["trained", "random"])
def test_runc_generates_our_greedy_tokens(tiny_run, run_c, tmp_path, which):
    workspace = tiny_run.parent.parent
    tokenizer = workspace / "data/storyworld/tok512/tokenizer.model"
    ckpt = list_checkpoints(tiny_run)[-1][1] if which == "trained" else \
        random_checkpoint(tmp_path / "ckpt" / "step_000001.pt")
    model_bin = tmp_path / "export" / "model.bin"
    run_stage(workspace, "modelling/export.py", "--ckpt", ckpt, "--format", "llama2c", "--out", model_bin)
    model, _ = load_model(ckpt)
    model.eval()
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    for prompt in ("", "Once upon a time, there was"):
        printed = run_c_generate(run_c, model_bin, RUNC_STEPS, prompt)
        ours = our_greedy(model, [1] + sp.encode(prompt), RUNC_STEPS)
        n_new = len(ours) - 1 - len(sp.encode(prompt))
        assert n_new > 20, f"only {n_new} generated tokens to compare"
        if which == "random":
            assert len(set(ours)) > 20, "random weights should give varied text"
        assert printed == runc_text(sp, ours), f"{which}, prompt {prompt!r}: run.c and our greedy generation differ"


def test_runc_output_depends_on_weights(tiny_run, run_c, tmp_path):
    """The null: other weights (another seed) print different text."""
    workspace = tiny_run.parent.parent
    texts = []
    for seed in (0, 1):
        ckpt = random_checkpoint(tmp_path / f"s{seed}" / "ckpt" / "step_000001.pt", seed)
        model_bin = tmp_path / f"s{seed}" / "model.bin"
        run_stage(workspace, "modelling/export.py", "--ckpt", ckpt, "--format", "llama2c", "--out", model_bin)
        texts.append(run_c_generate(run_c, model_bin, 60))
    assert texts[0] != texts[1]


@pytest.fixture(scope="module")
def parity_run(tok_dataset):
    """A 20-step fp32 run of our modelling/train.py at constant learning rate (llama2.c's decay_lr=False)."""
    ws = tok_dataset["workspace"]
    shutil.rmtree(ws / PARITY_CONFIG["out_dir"], ignore_errors=True)
    run_stage(ws, "modelling/train.py", *train_args(dataset=tok_dataset["dataset"],
                                                    vocab_size=tok_dataset["vocab_size"], **PARITY_CONFIG),
              env=ONE_THREAD)
    return ws / PARITY_CONFIG["out_dir"]


def llama2c_args(llama2c, vocab_size):
    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len")
    return llama2c.ModelArgs(**{k: PARITY_CONFIG[k] for k in keys}, vocab_size=vocab_size, dropout=0.0)


def llama2c_train(llama2c, vocab_size, batches, ours=False):
    """llama2.c train.py's inner loop (fp32 CPU, no accumulation, constant lr): forward, backward, clip, step —
    on llama2.c's model, or (ours=True) on ours with llama2.c's own optimizer set-up."""
    torch.manual_seed(PARITY_CONFIG["seed"])
    if ours:
        keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len")
        model = Transformer(ModelArgs(**{k: PARITY_CONFIG[k] for k in keys}, vocab_size=vocab_size))
    else:
        model = llama2c.Transformer(llama2c_args(llama2c, vocab_size))
    model.train()
    optimizer = llama2c.Transformer.configure_optimizers(
        model, PARITY_CONFIG["weight_decay"], PARITY_CONFIG["learning_rate"],
        (PARITY_CONFIG["beta1"], PARITY_CONFIG["beta2"]), "cpu")
    losses = []
    for x, y in batches:
        model(x, y)
        loss = model.last_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), PARITY_CONFIG["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return np.array(losses), model


def run_batches(tok_dataset, run_dir):
    """The (x, y) tensors of every step of our run, rebuilt from its batch log by the trainer's own reader."""
    cwd = os.getcwd()
    os.chdir(tok_dataset["workspace"])
    try:
        ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
    finally:
        os.chdir(cwd)
    reader = SegmentBatches(ds, PARITY_CONFIG["max_seq_len"], bos_id=1)
    log = BatchLog(run_dir)
    batches = [reader.batch(log.step(k)) for k in range(1, len(log) + 1)]
    assert all(positions is None and segment_ids is None for _, _, positions, segment_ids in batches)
    return [(x, y) for x, y, _, _ in batches]


def test_llama2c_initial_weights_equal_ours(tok_dataset):
    llama2c = import_llama2c_model()
    torch.manual_seed(PARITY_CONFIG["seed"])
    theirs = llama2c.Transformer(llama2c_args(llama2c, tok_dataset["vocab_size"])).state_dict()
    torch.manual_seed(PARITY_CONFIG["seed"])
    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len")
    ours = Transformer(ModelArgs(**{k: PARITY_CONFIG[k] for k in keys}, vocab_size=tok_dataset["vocab_size"]))
    ours = ours.state_dict()
    assert set(ours) <= set(theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def test_llama2c_loss_trajectory_equals_train_py(tok_dataset, parity_run):
    llama2c = import_llama2c_model()
    torch.set_num_threads(1)  # as the run (ONE_THREAD): same reduction order
    batches = run_batches(tok_dataset, parity_run)
    assert len(batches) == PARITY_STEPS
    ours = pd.read_csv(parity_run / "train_log.csv")["loss"].to_numpy()
    theirs, model = llama2c_train(llama2c, tok_dataset["vocab_size"], batches)
    np.testing.assert_allclose(theirs, ours, rtol=LOSS_RTOL, atol=0)
    assert ours[-1] < ours[0] - 0.5  # it learned: the trajectories compared are not flat
    # the end weights too: train.py's last checkpoint vs llama2.c after the same 20 steps. Our loss is summed
    # chunk by chunk, another fp32 order than F.cross_entropy's, and AdamW turns those last-bit gradient
    # differences into weight differences where a gradient is near zero: ~1e-6 on AVX-512, up to 2.3e-5 in one
    # element of 6,144 on an AMX CPU. So: every element within 1e-4, and all but 0.1% within 1e-5 + 1e-4 relative.
    final = load_checkpoint(list_checkpoints(parity_run)[-1][1])["model"]
    for name, tensor in model.state_dict().items():
        if name in final:
            diff = (final[name].float() - tensor.float()).abs()
            loose = diff > 1e-5 + 1e-4 * tensor.float().abs()
            assert diff.max() <= 1e-4 and loose.float().mean() <= 1e-3, \
                f"{name}: max |diff| {diff.max():.3g}, {int(loose.sum())} of {diff.numel()} beyond 1e-5"


def test_llama2c_loss_trajectory_differs_on_other_batches(tok_dataset, parity_run):
    """The null: the same trainer on the batches in another order does not reproduce train.py's losses."""
    llama2c = import_llama2c_model()
    batches = run_batches(tok_dataset, parity_run)
    ours = pd.read_csv(parity_run / "train_log.csv")["loss"].to_numpy()
    shuffled, _ = llama2c_train(llama2c, tok_dataset["vocab_size"], batches[::-1])
    assert np.max(np.abs(shuffled - ours) / ours) > 100 * LOSS_RTOL


def test_llama2c_task_batches_train_both_models_alike(tok_dataset, monkeypatch):
    """llama2.c's own data path — its Task iterator (tinystories.py) over our stories written in its
    data/tok512/*.bin layout — feeds its model and ours through its training loop: the same 20 fp32 losses."""
    need_reference()
    from bench.reference import llama2c_workdir
    llama2c = import_llama2c_model()
    work = llama2c_workdir(tok_dataset["workspace"], tok_dataset["dataset"], tok_dataset["vocab_size"])
    monkeypatch.chdir(work)  # its DATA_CACHE_DIR is data/, relative
    monkeypatch.syspath_prepend(str(work))
    spec = importlib.util.spec_from_file_location("llama2c_tinystories", work / "tinystories.py")
    tinystories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tinystories)
    batch_iter = tinystories.Task.iter_batches(batch_size=PARITY_CONFIG["batch_size"], device="cpu",
                                               max_seq_len=PARITY_CONFIG["max_seq_len"],
                                               vocab_size=tok_dataset["vocab_size"], vocab_source="custom",
                                               split="train")
    batches = [next(batch_iter) for _ in range(PARITY_STEPS)]
    assert all(x.shape == (PARITY_CONFIG["batch_size"], PARITY_CONFIG["max_seq_len"]) for x, _ in batches)
    torch.set_num_threads(1)
    theirs, _ = llama2c_train(llama2c, tok_dataset["vocab_size"], batches)
    ours, _ = llama2c_train(llama2c, tok_dataset["vocab_size"], batches, ours=True)
    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL, atol=0)
    assert ours[-1] < ours[0] - 0.5
