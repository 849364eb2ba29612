"""The real llama2.c (../shared/reference/llama2.c, MIT, a fixed commit) next to this project in the benches.

Its files are used from a temporary copy (its train.py reads data/ relative to the working directory) and never
copied into the project. Helpers:
- llama2c_workdir(ws, dataset, vocab): a copy of its scripts + data/tok<V>/data00.bin (val) and data01.bin (train)
  in its pretokenized layout (uint16 stream of BOS + story tokens), written from our pretokenized stories;
- run_llama2c_train(workdir, iters, env, **overrides): its train.py stock (plus --key=value overrides), returning
  the per-iteration wall times it prints;
- build_run_c(folder): run.c compiled with gcc -O3 (None without a C compiler);
- import_llama2c_model(): its model.py as module `llama2c_model`.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [REPO.parent / "shared" / "reference" / "llama2.c", Path("/work/shared/reference/llama2.c")]
SCRIPTS = ("train.py", "model.py", "tinystories.py", "tokenizer.py", "export.py", "configurator.py")
# "{iter} | loss {loss:.4f} | lr {lr:e} | {dt*1000:.2f}ms | mfu {mfu:.2f}%"
ITER_LINE = re.compile(r"^(\d+) \| loss ([-\d.naninf]+) \| lr \S+ \| ([\d.]+)ms")


def llama2c_dir():
    for path in CANDIDATES:
        if (path / "train.py").exists():
            return path
    raise FileNotFoundError(f"llama2.c reference not found (looked in {', '.join(map(str, CANDIDATES))})")


def llama2c_workdir(ws, dataset, vocab_size):
    """ws/llama2c: its scripts and our stories as its data/tok<V>/*.bin shards (shard 0 = val, the rest train)."""
    sys.path.insert(0, str(REPO))
    from tokenization.dataset import TokenizedDataset
    work = Path(ws) / "llama2c"
    work.mkdir(parents=True, exist_ok=True)
    for name in SCRIPTS:
        shutil.copy(llama2c_dir() / name, work / name)
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        ds = TokenizedDataset(dataset, vocab_size)
        shards = {"data00.bin": ds.story_ids("val"), "data01.bin": ds.story_ids("train")}
        out = work / "data" / f"tok{vocab_size}"
        out.mkdir(parents=True, exist_ok=True)
        for name, ids in shards.items():
            np.concatenate([np.asarray(ds.tokens(int(s)), dtype=np.uint16) for s in ids]).tofile(out / name)
        shutil.copy(ds.dir / "tokenizer.model", work / "data" / f"tok{vocab_size}.model")
    finally:
        os.chdir(cwd)
    return work


def run_llama2c_train(work, iters, env=None, **overrides):
    """llama2.c's train.py, stock except --device=cpu, the shape/iteration overrides and the custom vocab.
    Returns [(iter, loss, seconds)] as it prints them (iter 0 includes its first evaluation and compilation)."""
    args = {"device": "cpu", "max_iters": iters, "gradient_accumulation_steps": 1, "eval_iters": 1,
            "vocab_source": "custom", "out_dir": "out", **overrides}
    cmd = [sys.executable, "train.py", *[f"--{k}={v}" for k, v in args.items()]]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"llama2.c train.py {' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    rows = [(int(m[1]), float(m[2]), float(m[3]) / 1000) for m in map(ITER_LINE.match, proc.stdout.splitlines())
            if m]
    if len(rows) != iters + 1:
        raise RuntimeError(f"llama2.c train.py printed {len(rows)} iteration lines, expected {iters + 1}:\n"
                           f"{proc.stdout[-2000:]}")
    return rows


def build_run_c(folder):
    """run.c compiled with gcc -O3 into folder/run; None when no C compiler is on PATH."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    binary = Path(folder) / "run"
    subprocess.run([cc, "-O3", "-o", str(binary), str(llama2c_dir() / "run.c"), "-lm"], check=True,
                   capture_output=True)
    return binary


def import_llama2c_model():
    """llama2.c's model.py as the module `llama2c_model` (ours is modelling.model)."""
    if "llama2c_model" in sys.modules:
        return sys.modules["llama2c_model"]
    spec = importlib.util.spec_from_file_location("llama2c_model", llama2c_dir() / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama2c_model"] = module
    spec.loader.exec_module(module)
    return module
