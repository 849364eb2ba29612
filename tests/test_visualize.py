"""visualize_attn.py and visualize_embd.py on the tiny run: statistics recomputed from the checkpoints' own
attention, score definitions on hand-made attention, and ONE PCA basis shared by every checkpoint."""
import json

import numpy as np
import pandas as pd
import pytest
import visualize_attn as va
import visualize_embd as ve
from tests.fixtures_data import run_stage
from tests.fixtures_run import EVALUATED_RUN, copied_run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def vis_run(evaluated_run):
    """The shared evaluated copy of the tiny run (both visualizers ran on it; read-only here)."""
    return {**evaluated_run, "rel": f"out/{EVALUATED_RUN}", "attn": evaluated_run["procs"]["visualize_attn.py"],
            "embd": evaluated_run["procs"]["visualize_embd.py"]}


def test_scores_on_hand_made_attention():
    T = 9
    prev = np.zeros((1, 2, T, T))
    prev[0, :, 0, 0] = 1
    for t in range(1, T):
        prev[0, :, t, t - 1] = 1
    entropy, prev_score = va.attn_stats(prev)
    assert np.allclose(prev_score, 1) and np.allclose(entropy, 0)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    entropy, prev_score = va.attn_stats(uniform[None, None])
    assert entropy[0, 0] == pytest.approx(np.mean(np.log(np.arange(2, T + 1))))
    # BOS + block + block: a perfect induction head attends from the 2nd copy of x to what followed x before
    tokens = [1, 10, 11, 12, 13, 10, 11, 12, 13]
    induct = np.zeros((1, 1, T, T))
    induct[0, 0, :, 0] = 1
    for t in range(5, T):
        induct[0, 0, t] = 0
        induct[0, 0, t, t - 4 + 1] = 1
    assert va.induction_score(induct, tokens)[0, 0] == pytest.approx(1.0)
    assert va.induction_score(prev, tokens)[0, 0] == pytest.approx(0.0)


def test_attn_stats_table_matches_checkpoint_attention(vis_run):
    from modelling.checkpoints import list_checkpoints, load_checkpoint
    stats = pd.read_csv(vis_run["dir"] / "tables" / "attn_stats.csv")
    ckpts = list_checkpoints(vis_run["dir"])
    assert len(stats) == len(ckpts) * 2 * 4  # 2 layers x 4 heads
    assert stats["prev_token"].between(0, 1).all() and stats["induction"].between(0, 1).all()
    assert (stats["entropy"] >= 0).all()
    probes = json.loads((vis_run["dir"] / "attn_probes.json").read_text())
    step, path = ckpts[-1]
    attn = load_checkpoint(path)["probe_attn"]
    story = [p for p in probes if p["story_id"] is not None]
    a = attn[story[0]["name"]].float().numpy()
    t = np.arange(1, a.shape[-1])
    prev_first = a[1, 3, t, t - 1].mean()
    prev_all = np.mean([attn[p["name"]].float().numpy()[1, 3, t, t - 1].mean() for p in story])
    row = stats[(stats["step"] == step) & (stats["layer"] == 1) & (stats["head"] == 3)].iloc[0]
    assert row["prev_token"] == pytest.approx(prev_all, rel=1e-6) and len(story) == 2
    assert prev_all != pytest.approx(prev_first)  # both story probes count
    # attention grows less uniform as the model trains (entropy of the mean head falls)
    mean_entropy = stats.groupby("step")["entropy"].mean()
    assert mean_entropy.iloc[-1] < mean_entropy.iloc[0] - 0.01


def test_attention_pngs_per_step_and_rerun_skips(vis_run):
    from modelling.checkpoints import list_checkpoints
    vis = vis_run["dir"] / "visualize"
    for step, _ in list_checkpoints(vis_run["dir"]):
        assert (vis / f"attn_step{step:06d}.png").read_bytes()[:8] == PNG
    assert (vis / "attn_stats.png").read_bytes()[:8] == PNG
    again = run_stage(vis_run["ws"], "visualize_attn.py", "--out_dir", vis_run["rel"], "--steps", "40")
    assert "0 grid(s) drawn, 1 already there" in again.stdout
    bad = run_stage(vis_run["ws"], "visualize_attn.py", "--out_dir", vis_run["rel"], "--probe", "nope", check=False)
    assert bad.returncode == 2 and "unknown probe 'nope'" in bad.stderr


def test_pca_basis_is_one_for_all_checkpoints(vis_run):
    from sklearn.decomposition import PCA

    from modelling.checkpoints import list_checkpoints
    table = pd.read_csv(vis_run["dir"] / "tables" / "embd_pca.csv")
    basis = json.loads((vis_run["dir"] / "tables" / "embd_basis.json").read_text())
    mean, components = np.array(basis["mean"]), np.array(basis["components"])
    ckpts = list_checkpoints(vis_run["dir"])
    assert basis["basis"] == "final" and basis["fitted_on_steps"] == [ckpts[-1][0]]
    for step, path in ckpts:
        emb = ve.embeddings(path)
        rows = table[(table["step"] == step) & (table["token_id"] >= 0)].sort_values("token_id")
        want = (emb - mean) @ components.T  # the one stored basis, for every step
        assert np.allclose(rows[["pc1", "pc2"]].to_numpy(), want, atol=1e-6), step
    # the basis is sklearn's PCA of the final checkpoint's embeddings (up to each axis' sign)
    final = PCA(n_components=2, svd_solver="full").fit(ve.embeddings(ckpts[-1][1]))
    assert np.allclose(np.abs(np.sum(final.components_ * components, axis=1)), 1.0, atol=1e-6)
    # embeddings moved during training, so a per-checkpoint fit would have given different axes
    first = PCA(n_components=2, svd_solver="full").fit(ve.embeddings(ckpts[0][1]))
    assert not np.allclose(np.abs(np.sum(first.components_ * components, axis=1)), 1.0, atol=1e-3)
    groups = set(table["group"])
    assert {"female", "male", "occupation", "frequent", "other"} <= groups
    assert table[(table["step"] == ckpts[-1][0]) & (table["piece"] == "\u2581she")]["group"].tolist() == ["female"]


def test_embedding_pngs_named_by_step(vis_run):
    from modelling.checkpoints import list_checkpoints
    vis = vis_run["dir"] / "visualize"
    for step, _ in list_checkpoints(vis_run["dir"]):
        data = (vis / f"embd_step{step:06d}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 20_000
    assert (vis / "embd_trajectories.png").read_bytes()[:8] == PNG


def test_pca_basis_all_stacked(tiny_run):
    from modelling.checkpoints import list_checkpoints
    # its own copy: --basis all rewrites the embedding outputs the other tests read from vis_run
    run_dir = copied_run(tiny_run, "tiny_vis_all", [("visualize_embd.py", ["--basis", "all"])],
                         ignore=("tables", "visualize"))["dir"]
    basis = json.loads((run_dir / "tables" / "embd_basis.json").read_text())
    steps = [s for s, _ in list_checkpoints(run_dir)]
    assert basis["basis"] == "all" and basis["fitted_on_steps"] == steps
    stacked = np.vstack([ve.embeddings(p) for _, p in list_checkpoints(run_dir)])
    assert np.allclose(np.array(basis["mean"]), stacked.mean(0), atol=1e-9)
