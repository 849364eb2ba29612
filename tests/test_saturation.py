"""Plateau detection on synthetic curves with known plateaus, and the saturation stage on a summary table.

Tolerance: for a noise-free curve that stops changing at step s*, the band method can fire up to
tol x (rise duration) before s*; smoothing and the checkpoint grid add up to two checkpoint spacings either
side. The asserts below use exactly that window."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from visualize_sat_curves import TOL, detect_plateau, normalise, saturation_table

REPO = Path(__file__).resolve().parents[1]
LOG_THEN_LINEAR = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(600, 2001, 100)), dtype=float)


def test_piecewise_plateau_found_within_tolerance():
    rng = np.random.default_rng(0)
    steps = np.arange(0, 1001, 20, dtype=float)
    knee, spacing = 300.0, 20.0
    y = np.minimum(steps / knee, 1.0) + rng.normal(0, 0.01, len(steps))
    plateau = detect_plateau(steps, y)
    assert plateau is not None
    assert knee - TOL * knee - 2 * spacing <= plateau.x <= knee + 2 * spacing, plateau


def test_falling_exponential_plateau_near_band_entry():
    # loss-like: 2 + 3 exp(-x/100) enters the 10% band at x = 100 ln 10 = 230 (log-spaced early checkpoints)
    y = 2 + 3 * np.exp(-LOG_THEN_LINEAR / 100)
    plateau = detect_plateau(LOG_THEN_LINEAR, y)
    assert plateau is not None and 200 <= plateau.x <= 320, plateau


def test_still_improving_curves_are_not_saturated():
    rng = np.random.default_rng(1)
    steps = np.arange(10, 2001, 50, dtype=float)
    assert detect_plateau(steps, 5 - steps / 1000) is None
    assert detect_plateau(steps, steps / 1000 + rng.normal(0, 0.02, len(steps))) is None
    assert detect_plateau(LOG_THEN_LINEAR, LOG_THEN_LINEAR ** 1.2) is None  # accelerating


def test_flat_curve_plateaus_at_once_and_short_curve_is_undecided():
    steps = np.arange(1, 11, dtype=float)
    assert detect_plateau(steps, np.full(10, 3.0)).x == 1.0
    assert detect_plateau([1, 2, 3], [1, 2, 2]) is None
    # NaNs are dropped, not treated as values
    y = np.minimum(np.arange(1, 41) / 10, 1.0)
    y[[5, 30]] = np.nan
    assert 8 <= detect_plateau(np.arange(1, 41), y).x <= 12


def test_normalise_min_max_and_flat():
    assert np.allclose(normalise([2, 4, 6]), [0, 0.5, 1])
    assert np.allclose(normalise([1, 1, 1]), [0.5, 0.5, 0.5])
    assert np.allclose(normalise([2, 4], lo=0, hi=8), [0.25, 0.5])


def _summary(steps):
    steps = np.asarray(steps, dtype=float)
    return pd.DataFrame({
        "step": steps.astype(int), "tokens_seen": (steps * 1000).astype(int),
        "val_loss": 2 + 3 * np.exp(-steps / 100),                       # saturates near 230
        "out_words": steps / steps.max() * 50,                          # still improving
        "in_words": np.random.default_rng(0).normal(40, 5, len(steps)),
        "cum_words": 40 + 10 * np.exp(-steps / 50),                     # converging input mean
    })


def test_saturation_table_rows():
    table = saturation_table(_summary(LOG_THEN_LINEAR))
    by = table.set_index(["metric", "side"])
    assert by.loc[("val_loss", "output"), "saturated"]
    assert 200 <= by.loc[("val_loss", "output"), "plateau_step"] <= 320
    assert by.loc[("val_loss", "output"), "plateau_tokens"] == by.loc[("val_loss", "output"), "plateau_step"] * 1000
    assert not by.loc[("words", "output"), "saturated"]
    assert np.isnan(by.loc[("words", "output"), "plateau_step"])
    assert by.loc[("words", "input"), "saturated"]
    assert set(table["side"]) == {"input", "output"}


def _run(args, cwd):
    return subprocess.run([sys.executable, str(REPO / "visualize_sat_curves.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_stage_writes_table_and_figures(tmp_path):
    for name, steps in (("a", LOG_THEN_LINEAR), ("b", LOG_THEN_LINEAR[:-3])):
        (tmp_path / "out" / name / "tables").mkdir(parents=True)
        _summary(steps).to_csv(tmp_path / "out" / name / "tables" / "summary.csv", index=False)
    res = _run(["--out_dir", "out/a", "--compare", "out/b"], tmp_path)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "out/a/tables/saturation.csv")
    assert {"metric", "side", "plateau_step", "plateau_tokens", "saturated", "method"} <= set(table.columns)
    for png in ("sat_curves.png", "sat_curves_tokens.png", "sat_compare.png"):
        data = (tmp_path / "out/a/visualize" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not (tmp_path / "out/b/tables/saturation.csv").exists()  # compared runs are only read


@pytest.mark.parametrize("args, message", [
    (["--out_dir", "out/missing"], "run `python eval.py"),
    (["--out_dir", "out/a", "--metrics", "nosuch"], "unknown metric(s) nosuch"),
    (["--out_dir", "out/a", "--tol", "2"], "--tol"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "out/a/tables").mkdir(parents=True)
    _summary(LOG_THEN_LINEAR).to_csv(tmp_path / "out/a/tables/summary.csv", index=False)
    res = _run(args, tmp_path)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "out/a/tables/saturation.csv").exists()
