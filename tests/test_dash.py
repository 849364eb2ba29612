"""Dashboard callbacks, called directly on a real tiny run (tests/fixtures_run.py) after the real eval and
visualizer stages ran on it: the figures carry the run's actual numbers, names from the browser are checked
against --out, and a missing artifact becomes a message naming the stage to run."""
import base64
import shutil

import numpy as np
import pandas as pd
import pytest
from dash import Dash, no_update

from dash_llama.app import PAGES, create_app, pick_run, render_page
from dash_llama.data import Missing, Store, UnknownName
from dash_llama.pages import attention, data_page, embeddings, generations, runs, saturation
from dash_llama.ui import figure_or_message, guard
from modelling.batch_log import BatchLog
from modelling.checkpoints import list_checkpoints, load_checkpoint
from common.paths import ROOT_ENV
from tests.fixtures_run import EVALUATED_RUN, TINY_CKPTS, TINY_STEPS

RUN = EVALUATED_RUN  # the shared evaluated copy of the tiny run (tests/fixtures_run.py), read-only here


@pytest.fixture(scope="session")
def dash_workspace(evaluated_run):
    """The shared workspace with out/RUN: the tiny run with eval and the visualizers run on it."""
    return evaluated_run["ws"]


@pytest.fixture
def store(dash_workspace, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(dash_workspace))  # data/ resolves from the project root, as for the app
    return Store(dash_workspace / "out")


# ---- discovery, names, refresh ----

def test_discovers_the_run_and_refuses_names_outside_out(store, tmp_path):
    assert RUN in store.runs()
    assert store.run_dir(RUN) == (store.out_dir / RUN).resolve()
    for bad in [f"../{RUN}", f"{RUN}/../../etc", "/etc", f"{RUN}/ckpt", "..", f"{RUN}/", None, 3]:
        with pytest.raises((UnknownName, Missing)):
            store.run_dir(bad)
    # a symlink inside --out pointing at a run elsewhere is neither listed nor accepted
    outside = tmp_path / "elsewhere"
    shutil.copytree(store.out_dir / RUN, outside, ignore=shutil.ignore_patterns("ckpt", "*.bin"))
    link = store.out_dir / "linked"
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert "linked" not in store.runs()
        with pytest.raises(UnknownName):
            store.run_dir("linked")
    finally:
        link.unlink()


def z_of(trace):
    """A heatmap's z as a numpy array (the pages send it as plotly's base64 typed-array spec)."""
    spec = trace["z"]
    shape = tuple(int(n) for n in spec["shape"].split(","))
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.float32).reshape(shape)


def callbacks(module, store):
    """The page's registered callbacks (guard included), as Dash calls them."""
    return module.register(Dash(__name__, suppress_callback_exceptions=True), store)


def test_run_names_from_the_url_and_callbacks_are_refused(store):
    options, value, msg = pick_run(store, "?run=../../etc/passwd", None, triggered_by_url=True)
    assert value is None and "refused: unknown run '../../etc/passwd'" in msg.children
    assert pick_run(store, f"?run={RUN}", None, triggered_by_url=True)[1:] == (RUN, None)
    # without a URL choice the header keeps a valid current run, else picks the first
    assert pick_run(store, "", RUN, triggered_by_url=False)[1] == RUN
    assert pick_run(store, "", "gone", triggered_by_url=False)[1] in store.runs()
    # a callback handed a bad name (a crafted request) answers with a message, not a path
    update_controls, update_grid, *_ = callbacks(attention, store)
    figure, msg = update_grid("../../etc/passwd", 0, "val_0")
    assert "unknown run" in figure["layout"]["annotations"][0]["text"]
    assert "msg-error" in msg.className and "unknown run" in msg.children


def test_new_checkpoints_appear_without_restart(store, tmp_path):
    live = tmp_path / "out"
    shutil.copytree(store.out_dir / RUN, live / "live")
    last_step, last_path = list_checkpoints(live / "live")[-1]
    held = tmp_path / "held.pt"
    shutil.move(last_path, held)
    live_store = Store(live)
    assert live_store.checkpoint_steps("live") == TINY_CKPTS[:-1]
    update_controls, *_ = callbacks(attention, live_store)
    options, probe, max_, marks, value, _ = update_controls("live", 0, None, None, 0, 0, None)
    assert max_ == value == len(TINY_CKPTS) - 2 and marks[max_] == str(TINY_CKPTS[-2])
    shutil.move(held, last_path)  # training writes the next checkpoint
    assert live_store.checkpoint_steps("live") == TINY_CKPTS
    assert last_step == TINY_CKPTS[-1]
    # a refresh: the slider sitting at the end follows the new checkpoint; probes unchanged are not re-sent
    _, same_probe, max_, marks, value, _ = update_controls("live", 1, options, probe, value, max_, marks)
    assert same_probe is no_update and max_ == value == len(TINY_CKPTS) - 1
    # a slider moved back by the user stays where it is, and nothing is re-sent
    assert update_controls("live", 2, options, probe, 3, max_, marks)[1:5] == (no_update,) * 4


def component_tree(component):
    """Every Dash component in a layout, depth first."""
    yield component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if hasattr(child, "to_plotly_json"):
            yield from component_tree(child)


def test_every_page_renders_its_controls_and_unknown_page_says_so(store):
    app = create_app(store.out_dir)
    # every component id a callback writes to, from Dash's own map ("..a.children...b.figure.." or "a.children")
    outputs = {part.rsplit(".", 1)[0] for key in app.callback_map for part in key.strip(".").split("...")
               if not part.startswith("{")}  # pattern-matching ids are dicts, not laid out statically
    shell_ids = {c.id for c in component_tree(app.layout) if getattr(c, "id", None)}
    page_ids = {}
    for path, (title, _) in PAGES.items():
        layout = render_page(path)
        ids = [c.id for c in component_tree(layout) if isinstance(getattr(c, "id", None), str)]
        assert len(ids) == len(set(ids)), f"{path}: duplicate ids"
        headings = [c.children for c in component_tree(layout) if type(c).__name__ == "H2"]
        assert headings[:1] == [title], (path, headings)
        page_ids[path] = set(ids)
        assert page_ids[path] & outputs, f"{path}: no component any callback draws into"
    # every callback output exists on exactly one page or in the header (a renamed id would break a page)
    for out_id in outputs:
        owners = [p for p, ids in page_ids.items() if out_id in ids] + (["shell"] if out_id in shell_ids else [])
        assert len(owners) == 1, (out_id, owners)
    home = {c.id for c in component_tree(render_page("/")) if isinstance(getattr(c, "id", None), str)}
    assert home == page_ids["/runs"]
    assert "no page" in render_page("/nope").children


# ---- Runs ----

def test_runs_table_and_loss_curves_carry_the_logs(store):
    table = runs.runs_table(store).set_index("run")
    row = table.loc[RUN]
    run = store.run(RUN)
    assert row["step"] == TINY_STEPS and row["checkpoints"] == len(TINY_CKPTS)
    assert row["val_loss_sub"] == pytest.approx(run.val_log["val_loss_sub"].iloc[-1])
    figure, _ = runs.loss_figure(store, [RUN], "step", 0.0)
    train = next(t for t in figure["data"] if t["name"] == f"{RUN} train")
    val = next(t for t in figure["data"] if t["name"].startswith(f"{RUN} val"))
    assert train["x"] == run.train_log["step"].tolist()
    assert np.allclose(train["y"], run.train_log["loss"], atol=1e-5)
    assert val["y"] == run.val_log["val_loss_sub"].tolist()
    smooth, _ = runs.loss_figure(store, [RUN], "tokens_seen", 0.9)
    smoothed = next(t for t in smooth["data"] if t["name"] == f"{RUN} train")
    assert smoothed["x"] == run.train_log["tokens_seen"].tolist()
    assert np.std(np.diff(smoothed["y"])) < np.std(np.diff(train["y"]))  # smoothing smooths
    with pytest.raises(UnknownName):
        runs.loss_figure(store, [RUN], "__class__", 0)
    with pytest.raises(UnknownName):
        runs.loss_figure(store, [f"../{RUN}"], "step", 0)


# ---- Attention ----

def test_attention_grid_is_the_checkpoints_probe_attention(store):
    cfg = store.config(RUN)
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    probe = attention.probe_names(store, RUN)[0]
    step = TINY_CKPTS[-1]
    figure, _ = attention.grid_figure(store, RUN, step, probe)
    assert len(figure["data"]) == n_layers * n_heads
    attn = load_checkpoint(dict(list_checkpoints(store.run_dir(RUN)))[step])["probe_attn"][probe].float().numpy()
    layer, head = attention.head_from_click({"points": [{"curveNumber": n_heads + 1}]}, n_heads)
    assert (layer, head) == (1, 1)
    z = z_of(figure["data"][n_heads + 1])
    assert np.allclose(z, attn[1, 1, :len(z), :len(z)], atol=1e-3)
    assert np.allclose(z.sum(axis=1), 1, atol=0.02)  # rows are attention distributions
    # the first position is BOS, shown as a readable (escaped) piece, not an HTML tag
    labels = figure["data"][0]["x"]
    assert labels[0].startswith("0:") and "<" not in "".join(labels)
    early, _ = attention.grid_figure(store, RUN, TINY_CKPTS[0], probe)
    assert not np.allclose(z_of(early["data"][0]), z_of(figure["data"][0]))  # the slider changes the maps
    big, _ = attention.head_figure(store, RUN, step, probe, 1, 1)
    assert np.allclose(z_of(big["data"][0]), attn[1, 1], atol=1e-4)
    with pytest.raises(Missing):
        attention.head_figure(store, RUN, step, probe, n_layers, 0)


def test_attention_stats_come_from_attn_stats_csv(store):
    stats = pd.read_csv(store.run_dir(RUN) / "tables" / "attn_stats.csv")
    figure, _ = attention.stats_figure(store, RUN, "induction", TINY_CKPTS[-1], (0, 1))
    heads = stats.groupby(["layer", "head"]).ngroups
    assert len(figure["data"]) == heads
    trace = next(t for t in figure["data"] if t["name"] == "L0 H1")
    expected = stats[(stats["layer"] == 0) & (stats["head"] == 1)].sort_values("step")
    assert trace["x"] == expected["step"].tolist() and trace["line"]["width"] == 4
    assert np.allclose(trace["y"], expected["induction"], atol=1e-4)


# ---- Embeddings ----

def test_embeddings_scatter_search_and_trajectories(store):
    pca = pd.read_csv(store.run_dir(RUN) / "tables" / "embd_pca.csv")
    steps = embeddings.pca_steps(store, RUN)
    assert steps == sorted(pca["step"].unique())
    word = pca.loc[pca["piece"].astype(str).str.fullmatch("\u2581[a-z]{3,}"), "piece"].iloc[0]
    query = word.strip("\u2581").upper()  # search is case-insensitive and ignores the word-start marker
    figure, _ = embeddings.scatter_figure(store, RUN, steps[-1], query)
    n_points = sum(len(t["x"]) for t in figure["data"] if t.get("name") != "search")
    assert n_points == (pca["step"] == steps[-1]).sum()
    search = next(t for t in figure["data"] if t["name"] == "search")
    assert word in search["text"] and {t.strip("\u2581").lower() for t in search["text"]} == {query.lower()}
    trajectories, _ = embeddings.trajectory_figure(store, RUN, query, steps[0])
    path = trajectories["data"][0]
    assert len(path["x"]) == len(steps) and path["customdata"] == steps
    with pytest.raises(Missing):
        embeddings.trajectory_figure(store, RUN, "zzzqqq", steps[0])


# ---- Generations ----

def test_generations_table_for_a_checkpoint(store):
    gens = pd.read_csv(store.run_dir(RUN) / "tables" / "generations.csv")
    steps = generations.generation_steps(store, RUN)
    columns, data = generations.generations_table(store, RUN, steps[-1], "all", [])
    assert len(data) == (gens["step"] == steps[-1]).sum()
    ids = {c["id"] for c in columns}
    assert {"prompt_text", "generated_text", "expected_text"} <= ids
    assert data[0]["generated_text"] == gens[gens["step"] == steps[-1]]["generated_text"].iloc[0]
    figure = generations.scores_figure(store, RUN, steps[-1])
    assert figure["data"][0]["x"] == steps
    with pytest.raises(Missing):
        generations.generations_table(store, RUN, -5, "all", [])


# ---- Saturation ----

def test_saturation_curves_and_plateau_markers(store):
    summary = pd.read_csv(store.run_dir(RUN) / "tables" / "summary.csv").sort_values("step")
    sat = pd.read_csv(store.run_dir(RUN) / "tables" / "saturation.csv")
    paired = [m for m in saturation.summary_metrics(store, RUN) if f"in_{m}" in summary]
    # a metric with a plateaued curve when the tiny run has one (exercises the markers), else any paired one
    classified = sat.set_index("column")["class"]
    metric = max(paired, key=lambda m: sum(classified.get(f"{s}_{m}") == "plateaued" for s in ("in", "out")))
    figure, notes_out = saturation.saturation_figure(store, [RUN], metric, "step", ["in", "cum", "out"])
    lines = {t["name"]: t for t in figure["data"] if t["mode"] == "lines+markers"}
    assert len(lines) == 3
    out = lines[f"{RUN} · output (generations)"]
    assert out["x"] == summary["step"].tolist() and out["xaxis"] == "x2"  # output is the right-hand panel
    assert np.allclose(out["y"], summary[f"out_{metric}"], equal_nan=True)
    assert np.allclose(lines[f"{RUN} · input (interval)"]["y"], summary[f"in_{metric}"], equal_nan=True)
    mine = sat[sat["column"].isin([f"in_{metric}", f"out_{metric}"])]
    assert len(mine) == 2  # both sides classified; the running cum_ mean is not
    expected = mine[mine["class"] == "plateaued"]
    marked = sorted(shape["x0"] for shape in figure["layout"]["shapes"])
    assert marked == sorted(expected["plateau_step"].tolist())
    for row in mine[mine["class"] != "plateaued"].to_dict("records"):
        assert f"{RUN}: {row['column']} {row['class'].replace('_', ' ')}" in notes_out
    by_tokens, _ = saturation.saturation_figure(store, [RUN], metric, "tokens_seen", ["out"])
    assert [s["x0"] for s in by_tokens["layout"]["shapes"]] == \
        expected.loc[expected["column"] == f"out_{metric}", "plateau_tokens"].tolist()


# ---- Data ----

def test_batch_composition_and_viewer_use_the_batch_log(store):
    meta = store.metadata(RUN)
    log = BatchLog(store.run_dir(RUN))
    figure, _ = data_page.composition_figure(store, RUN, "flesch_ease", smoothing=0.5)
    per_step = figure["data"][0]
    assert per_step["x"][:3] == [1, 2, 3] and len(per_step["x"]) == len(log)
    step3 = log.step(3)
    assert per_step["y"][2] == pytest.approx(np.average(meta.loc[step3["story_id"], "flesch_ease"],
                                                        weights=step3["n_tokens"]), abs=1e-4)
    hist = data_page.histogram_figure(store, RUN, "flesch_ease")
    assert {t["name"].split(" ")[0] for t in hist["data"]} == {"train", "val", "val_novel"}
    assert all(sum(t["y"]) == pytest.approx(1, abs=1e-4) for t in hist["data"])
    columns, rows = data_page.batch_rows(store, RUN, 5, ["flesch_ease"])
    assert [(r["story_id"], r["start"], r["n_tokens"]) for r in rows] == log.step(5)[["story_id", "start",
                                                                                     "n_tokens"]].tolist()
    first = next(r for r in rows if r["start"] == 0)
    assert first["text"][:40] == store.dataset(RUN).text(first["story_id"])[:40]
    assert first["flesch_ease"] == pytest.approx(meta.loc[first["story_id"], "flesch_ease"], abs=1e-4)
    with pytest.raises(Missing):
        data_page.batch_rows(store, RUN, TINY_STEPS + 1, [])


# ---- Experiments: tests/test_dash_experiments.py ----


# ---- missing and corrupt files ----

def test_missing_and_corrupt_tables_become_messages(store, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(store.out_dir / RUN, out / "bare", ignore=shutil.ignore_patterns("tables", "ckpt"))
    bare = Store(out)
    _, update_figure, _ = callbacks(saturation, bare)
    figure, msg = update_figure("bare", [], "flesch_ease", "step", ["in", "out"], 0)
    assert "eval.py --out_dir" in figure["layout"]["annotations"][0]["text"] and "msg-info" in msg.className
    update_controls, *_ = callbacks(attention, bare)
    *_, msg = update_controls("bare", 0, None, None, None, None, None)
    assert "no checkpoints yet" in msg.children
    (out / "bare" / "tables").mkdir()
    (out / "bare" / "tables" / "generations.csv").write_bytes(b'step,prompt_id\n1,"unterminated\n')
    with pytest.raises(Missing, match="unreadable"):
        generations.generation_steps(bare, "bare")
    # a surprise inside a callback is one line in the page, not a traceback
    figure, msg = guard(figure_or_message())(lambda: 1 / 0)()
    assert "ZeroDivisionError" in msg.children and "msg-error" in msg.className
