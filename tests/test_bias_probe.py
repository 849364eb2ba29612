"""eval.py's bias probe moves the right way: a model trained on storyworld with --occupation_bias 1.0 (the
stereotyped gender always) scores a larger bias_stereotype than the same model trained on the same stories
with --occupation_bias 0.5 (no association).

The slowest test of the suite (measured 142-168 s on the shared 2-core machine at load ~3.5-4; both trainings
run in parallel, one thread each); it runs in every `make test` because nothing smaller learns the association
(why, and the numbers behind the margin: the README, section 3, "Bias probe").

Set-up (every piece is the real stage script):
- two storyworld corpora of N_STORIES stories with the same --seed, so the texts differ only in the gendered
  words that refer to occupation helpers (and the helpers' names);
- one SentencePiece vocab of VOCAB pieces trained on the biased corpus and used for both (the unbiased one is
  pretokenized with --vocab_size 0 --tokenizer): at 2048 every storyworld occupation is one piece;
- the same 1-layer model (dim 64), seed, data order and STEPS steps for both;
- eval.probe_items + eval.bias_probe (what eval.py writes to tables/probes.csv) on the last checkpoint.

Margin: measured with this set-up (seeds 2 and 3, checkpoints 400-800) the unbiased model's bias_stereotype
stayed within ±0.18 (−0.03 and −0.07 at step 800) while the biased model's reached +0.92 (seed 2) and +0.28
(seed 3) at step 800 (+1.90 for seed 1 at step 800 of a 1200-step schedule). MARGIN = 0.25 is > the
unbiased spread and below the smallest biased − unbiased gap measured at step 800 (0.35).
"""
import os
import subprocess

from tests.fixtures_data import PYTHON, REPO, run_stage
from tests.fixtures_run import ONE_THREAD, train_args

N_STORIES = 3000
VOCAB = 2048
STEPS = 800
SEED = 2
MARGIN = 0.25
TRAIN = dict(max_iters=STEPS, eval_interval=STEPS, eval_iters=1, batch_size=8, max_seq_len=256, dim=64,
             n_layers=1, n_heads=4, n_kv_heads=4, multiple_of=16, learning_rate=1e-2, warmup_iters=10,
             min_lr=1e-3, n_probe_stories=1, probe_len=32, dtype="float32", seed=SEED, data_seed=SEED,
             n_stories=0, epochs=10)


def _probe(run_dir, dataset, vocab_size):
    import torch

    import eval as ev
    from modelling.checkpoints import list_checkpoints, load_model
    from tokenization.dataset import TokenizedDataset
    torch.set_num_threads(1)
    cwd = os.getcwd()
    try:
        os.chdir(run_dir.parents[1])  # dataset paths are relative to the workspace
        ds = TokenizedDataset(dataset, vocab_size)
        sp, bos = ds.tokenizer, int(ds.manifest["bos_id"])
        model, _ = load_model(list_checkpoints(run_dir)[-1][1])
    finally:
        os.chdir(cwd)
    model.eval()
    items = ev.probe_items(sp, bos)
    return {r["probe"]: r["value"] for r in ev.bias_probe(model, *items["bias"])}


def test_bias_probe_follows_occupation_bias_knob(tmp_path):
    ws = tmp_path
    for name, bias in (("swbias", 1.0), ("swnone", 0.5)):
        run_stage(ws, "download/download_datasets.py", "storyworld", "--name", name, "--n_stories", N_STORIES,
                  "--shard_size", N_STORIES, "--seed", 0, "--occupation_bias", bias)
    run_stage(ws, "tokenization/pretokenize.py", "train_vocab", "--dataset", "swbias", "--vocab_size", VOCAB)
    run_stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", "swbias", "--vocab_size", VOCAB)
    tok = ws / "data" / "swbias" / f"tok{VOCAB}" / "tokenizer.model"
    run_stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", "swnone", "--vocab_size", 0,
              "--tokenizer", tok)
    # both trainings at once, one thread each
    runs = {"swbias": (VOCAB, ws / "out" / "bias"), "swnone": (0, ws / "out" / "none")}
    procs = []
    for dataset, (vocab, out) in runs.items():
        cmd = [PYTHON, str(REPO / "modelling/train.py"),
               *train_args(out_dir=f"out/{out.name}", dataset=dataset, vocab_size=vocab, **TRAIN)]
        procs.append((cmd, subprocess.Popen(cmd, cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD})))
    for cmd, proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{err[-4000:]}"

    biased = _probe(runs["swbias"][1], "swbias", VOCAB)
    unbiased = _probe(runs["swnone"][1], "swnone", 0)
    b, u = biased["bias_stereotype"], unbiased["bias_stereotype"]
    print(f"bias_stereotype: biased {b:+.3f}, unbiased {u:+.3f}")
    assert b - u > MARGIN, f"bias_stereotype biased {b:+.3f} vs unbiased {u:+.3f}: gap below {MARGIN}"
