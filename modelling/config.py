"""The training config: --key=value overrides of the constants at the top of modelling/train.py, checked once.

parse_config(defaults, argv) -> (cfg, overrides)   defaults, then a preset's shape, then explicit overrides
validate(cfg)                                       UserError naming the key and the allowed values/range
"""
import ast
import math
from pathlib import Path

import torch

from common.errors import UserError
from common.machine import machine_info
from common.paths import root

# llama2.c's shapes (README "models" table and its 260K recipe)
PRESETS = {
    "260K": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, multiple_of=4, max_seq_len=512),
    "15M": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, multiple_of=32, max_seq_len=256),
    "42M": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, multiple_of=32, max_seq_len=1024),
    "110M": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, multiple_of=32, max_seq_len=1024),
}
CHOICES = {
    "preset": ("",) + tuple(PRESETS), "export_format": ("", "llama2c", "hf"),
    "sampler": ("random", "sort_ascending", "sort_descending", "filter_by_threshold", "combined", "dynamic"),
    "sort_order": ("ascending", "descending"), "filter_keep": ("above", "below"),
    "dtype": ("auto", "float32", "bfloat16", "float16"), "log_to": ("none", "tensorboard", "wandb"),
    "branch_optimizer": ("fresh", "parent"),
}
# numeric ranges: (low, high, low inclusive); None = unbounded
RANGES = {
    "eval_interval": (1, None, True), "log_interval": (1, None, True), "eval_iters": (1, None, True),
    "batch_size": (1, None, True), "max_seq_len": (2, None, True), "n_stories": (0, None, True),
    "epochs": (1, None, True), "n_probe_stories": (0, None, True), "probe_len": (4, None, True),
    "dim": (2, None, True), "n_layers": (1, None, True), "n_heads": (1, None, True), "n_kv_heads": (1, None, True),
    "multiple_of": (1, None, True), "dropout": (0.0, 0.95, True), "gradient_accumulation_steps": (1, None, True),
    "learning_rate": (0.0, 10.0, False), "weight_decay": (0.0, None, True), "beta1": (0.0, 1.0, True),
    "beta2": (0.0, 1.0, True), "grad_clip": (0.0, None, True), "warmup_iters": (0, None, True),
    "min_lr": (0.0, None, True), "seed": (0, None, True), "data_seed": (0, None, True),
    "selection_seed": (0, None, True),
    "dynamic_interval": (1, None, True), "dynamic_pool": (1, None, True), "dynamic_temperature": (0.0, None, False),
}
MODEL_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len", "dropout")
# keys that may differ when resuming (they do not change what the run computes up to the resume step)
RESUME_FREE_KEYS = ("init_from", "max_iters", "log_interval", "compile", "device", "export_format", "log_to",
                    "save_optimizer_at")


def parse_value(defaults, key, text):
    """Parse --key=text to the type of the key's default; UserError naming the key otherwise."""
    want = type(defaults[key])
    if want is str:
        return text
    if want is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"--{key}={text}: expected True or False")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"--{key}={text}: expected {want.__name__}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not want:
        raise UserError(f"--{key}={text}: expected {want.__name__}, got {type(value).__name__}")
    return value


def parse_config(defaults, argv):
    """(cfg, overrides): defaults, then a preset's shape, then explicit --key=value overrides (which win)."""
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"bad argument {arg!r}: use --key=value; valid keys: {', '.join(defaults)}")
        key, text = arg[2:].split("=", 1)
        if key not in defaults:
            raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(defaults)}")
        overrides[key] = parse_value(defaults, key, text)
    cfg = dict(defaults)
    name = overrides.get("preset", cfg["preset"])
    if name not in PRESETS and name:
        raise UserError(f"--preset={name}: unknown; use one of {', '.join(PRESETS)}")
    cfg.update(PRESETS.get(name, {}))
    cfg.update(overrides)
    validate(cfg)
    return cfg, overrides


def validate(cfg):
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise UserError(f"--{key}={cfg[key]}: use one of {', '.join(repr(a) for a in allowed)}")
    for key, (low, high, low_inclusive) in RANGES.items():
        value = cfg[key]
        too_low = low is not None and (value < low if low_inclusive else value <= low)
        if too_low or (high is not None and value > high) or (isinstance(value, float) and not math.isfinite(value)):
            span = f"{'[' if low_inclusive else '('}{low}, {high if high is not None else '∞'}{']' if high else ')'}"
            raise UserError(f"--{key}={value}: must be in {span}")
    if cfg["dim"] % cfg["n_heads"] or (cfg["dim"] // cfg["n_heads"]) % 2:
        raise UserError(f"--dim={cfg['dim']} must be divisible by --n_heads={cfg['n_heads']} into an even head size")
    if cfg["n_heads"] % cfg["n_kv_heads"]:
        raise UserError(f"--n_heads={cfg['n_heads']} must be a multiple of --n_kv_heads={cfg['n_kv_heads']}")
    if cfg["max_iters"] == 0 or cfg["max_iters"] < -1:
        raise UserError(f"--max_iters={cfg['max_iters']}: use a positive step count or -1 (one pass)")
    if not (cfg["device"] == "cpu" or cfg["device"].startswith("cuda")):
        raise UserError(f"--device={cfg['device']}: use cpu, cuda or cuda:N")
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={cfg['device']} but CUDA is not available here — use --device=cpu")
    if cfg["dtype"] == "float16" and not cfg["device"].startswith("cuda"):
        raise UserError("--dtype=float16 needs CUDA (it uses a grad scaler); on CPU use bfloat16 or float32")
    out = root() / cfg["out_dir"]
    if out.exists() and not out.is_dir():
        raise UserError(f"--out_dir={out} is an existing file — pick a folder path")


def resolve_dtype(dtype, device):
    """auto: bfloat16 on CUDA (float16 where bf16 is missing) and on CPUs with native bf16 (AMX or
    AVX512-BF16), else float32 (emulated bf16 is slower than fp32)."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    flags = machine_info()["flags"]
    return "bfloat16" if flags["amx_bf16"] or flags["avx512_bf16"] else "float32"
