"""Every published command runs with no arguments: the defaults are the embedded corpus (storyworld), vocab
512, the run out/demo and the experiment `example`, resolved against the project root (bias_unlearning is left
out: with no arguments it builds its own corpora, minutes of work, which its smoke test covers). In process (imports
are shared); a subprocess only where what the user sees is the point."""
import importlib
from pathlib import Path

import pytest

from common.errors import UserError
from common.paths import ROOT_ENV
from tests.fixtures_data import run_stage

# (module, argv, what the error must name when the root holds nothing yet)
EMPTY_ROOT = [
    ("tokenization.pretokenize", ["train_vocab"], "data/storyworld"),
    ("tokenization.pretokenize", ["pretokenize"], "data/storyworld"),
    ("metadata.batch_metadata", ["compute_metadata"], "storyworld/tok512"),
    ("visualize_attn", [], "out/demo"),
    ("visualize_embd", [], "out/demo"),
    ("visualize_sat_curves", [], "out/demo"),
    ("experiments.durability.experiment_durability", [], "storyworld/tok512"),
    ("experiments.dynamic_sampling.experiment_dynamic", [], "storyworld/tok512"),
    ("experiments.fact_injection.experiment_fact_injection", [], "storyworld_facts"),
    ("dash_llama.app", [], "out"),
]


@pytest.mark.parametrize("module,argv,needle", EMPTY_ROOT, ids=[f"{m}:{' '.join(a)}" for m, a, _ in EMPTY_ROOT])
def test_no_arguments_reach_the_default_inputs(module, argv, needle, tmp_path, monkeypatch):
    """In an empty project the defaults are used (no argparse 'required' exit) and the one error names the
    default input under the root, so a newcomer knows which stage comes first."""
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    with pytest.raises(UserError) as e:
        importlib.import_module(module).main(argv)
    assert needle in str(e.value) and str(tmp_path) in str(e.value), str(e.value)


def test_no_arguments_on_the_demo_dataset_are_up_to_date(meta_dataset):
    """The session's dataset is storyworld/512, the default: the no-argument commands find it done."""
    ws = meta_dataset["workspace"]
    for script, *argv in [("tokenization/pretokenize.py", "train_vocab"),
                          ("tokenization/pretokenize.py", "pretokenize"),
                          ("metadata/batch_metadata.py", "compute_metadata")]:
        proc = run_stage(ws, script, *argv)
        assert "up to date" in proc.stdout, (script, proc.stdout)


def test_root_flag_points_a_stage_at_another_project(meta_dataset, tmp_path):
    """Started from an unrelated folder, --root finds the dataset there (no chdir needed)."""
    proc = run_stage(tmp_path, "metadata/batch_metadata.py", "compute_metadata", "--root", meta_dataset["workspace"])
    assert "up to date" in proc.stdout
    assert not (Path(tmp_path) / "data").exists() and not (Path(tmp_path) / "out").exists()
