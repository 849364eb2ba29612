"""The Experiments page draws any experiment from its description.json (experiments/common/describe.py): the
committed durability example (the repository root laid out like --out), and a running experiment whose curves
are computed live from its runs' val_log.csv."""
import json

import numpy as np
import pandas as pd
import pytest

from common.io import REPO_ROOT
from dash_llama.app import create_app
from dash_llama.data import Missing, Store, UnknownName
from dash_llama.pages import experiments

EXAMPLE = "durability/example"


@pytest.fixture
def repo_store():
    """The repository root as --out: experiments/durability/example is where out/ would hold it."""
    return Store(REPO_ROOT)


def test_draws_the_committed_durability_example(repo_store):
    assert EXAMPLE in experiments.experiment_names(repo_store)
    description = json.loads((REPO_ROOT / "experiments" / EXAMPLE / "description.json").read_text())
    figure, _ = experiments.curves_figure(repo_store, EXAMPLE, "val_loss_sub")
    means = {t["name"].split(" (")[0]: t for t in figure["data"] if t.get("mode") == "lines+markers"}
    assert set(means) == {"random", "asc_flesch_ease", "random_grid"}
    # the random band's last point is the mean of the random runs' curve files at their last step
    files = [REPO_ROOT / "experiments" / EXAMPLE / r["path"] for r in description["curves"]["runs"]
             if r["condition"] == "random"]
    finals = [pd.read_csv(f).sort_values("step")["val_loss_sub"].iloc[-1] for f in files]
    assert means["random"]["y"][-1] == pytest.approx(np.mean(finals), abs=1e-4)
    assert means["random"]["name"] == f"random (n={len(files)})" and len(files) >= 8
    primary = experiments.primary_frame(repo_store, EXAMPLE)
    assert list(primary.comparison) == [p["comparison"] for p in description["primary"]] == ["asc_flesch_ease − random"]
    assert "primary" in experiments.table_names(repo_store, EXAMPLE)
    frame, _ = experiments.experiment_table(repo_store, EXAMPLE, "primary")
    assert frame["p"].tolist() == pytest.approx(primary["p"].tolist())
    report = experiments.report_markdown(repo_store, EXAMPLE)
    assert f"](/experiment-figures/{EXAMPLE}/pairs.png)" in report
    client = create_app(REPO_ROOT).server.test_client()
    assert client.get(f"/experiment-figures/{EXAMPLE}/pairs.png").status_code == 200
    for bad in [f"/experiment-figures/{EXAMPLE}/../report.md", f"/experiment-figures/{EXAMPLE}/..%2Freport.md",
                "/experiment-figures/durability/nope/pairs.png", "/experiment-figures/..%2F..%2Fx/y/pairs.png"]:
        assert client.get(bad).status_code == 404, bad
    with pytest.raises(UnknownName):
        experiments.experiment_dir(repo_store, "durability/../../common")


def test_a_running_experiment_is_drawn_live_from_its_runs(tmp_path):
    exp = tmp_path / "out" / "experiments" / "kit" / "live"
    runs = [{"name": f"{c}_s{s}", "condition": c} for c in ("base", "other") for s in (0, 1, 2)]
    (exp / "runs").mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"design": {"runs": runs, "size": "demo"},
                                                     "status": {"base_s0": {"done": True}}}))
    for k, run in enumerate(runs[:4]):  # two runs not started yet
        (exp / "runs" / run["name"]).mkdir()
        pd.DataFrame({"step": [1, 2, 4], "tokens_seen": [8, 16, 32], "train_loss": [6.0, 5.0, 4.0],
                      "val_loss_sub": [6.0, 5.0 + k, 4.0 + k]}).to_csv(exp / "runs" / run["name"] / "val_log.csv",
                                                                       index=False)
    store = Store(tmp_path / "out")
    assert experiments.experiment_names(store) == ["kit/live"]
    figure, notes = experiments.curves_figure(store, "kit/live", "val_loss_sub")
    means = {t["name"]: t for t in figure["data"] if t.get("mode") == "lines+markers"}
    assert means["base (n=3)"]["y"] == pytest.approx([6.0, 6.0, 5.0])  # k = 0, 1, 2
    assert means["other (n=1)"]["y"] == pytest.approx([6.0, 8.0, 7.0])
    assert "computed live" in notes[0]
    assert experiments.status_line(store, "kit/live").startswith("1 of 6 runs done")
    with pytest.raises(Missing, match="no description.json"):
        experiments.primary_frame(store, "kit/live")
    with pytest.raises(Missing, match="no curve"):
        experiments.curves_figure(store, "kit/live", "nope")
