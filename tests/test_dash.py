"""Dashboard callbacks, called directly on a real tiny run (tests/fixtures_run.py) after the real eval and
visualizer stages ran on it: the figures carry the run's actual numbers, names from the browser are checked
against --out, and a missing artifact becomes a message naming the stage to run."""
import base64
import shutil

import numpy as np
import pandas as pd
import pytest
from dash import Dash, no_update

from dash_llama.app import PAGES, create_app, pick_run, render_page, resolve_view, view_query
from dash_llama.data import Missing, NoRun, Store, UnknownName
from dash_llama.pages import attention, data_page, embeddings, generations, runs, saturation
from dash_llama.ui import figure_or_message, guard, is_log_spaced, make_query, nearest_index, parse_query
from modelling.batch_log import BatchLog
from modelling.checkpoints import list_checkpoints, load_checkpoint
from common.paths import ROOT_ENV
from tests.fixtures_run import EVAL_ARGS, EVALUATED_RUN, TINY_CKPTS, TINY_STEPS

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
    figure, msg, _ = update_grid("../../etc/passwd", 0, "val_0")
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


def test_the_url_holds_the_view_and_only_names_under_out(store):
    search = f"?run={RUN}&cmp={RUN},nope,../x&step=4&head=1.2&metric=flesch_ease&junk=1"
    params = parse_query(search)
    assert params == {"run": RUN, "cmp": f"{RUN},nope,../x", "step": "4", "head": "1.2", "metric": "flesch_ease"}
    assert parse_query(make_query(params)) == params  # a written URL reads back the same
    view = resolve_view(store, search)
    assert view["run"] == RUN and view["cmp"] == []  # compared runs must exist and differ from the run
    assert resolve_view(store, "?run=../../etc")["run"] is None
    # the header's keys and the page's own make one query; defaults stay out of it
    assert view_query(RUN, [], "auto", {"step": "4"}) == f"?run={RUN}&step=4"
    assert parse_query(view_query(RUN, ["b"], "log", {"step": "4"})) == {"run": RUN, "cmp": "b", "axis": "log",
                                                                         "step": "4"}
    # a page built from a URL starts where the URL says: the attention slider on step 4, head L1 H2
    layout = render_page("/attention", f"?run={RUN}&step=4&head=1.2", store)
    ids = {c.id: c for c in component_tree(layout) if isinstance(getattr(c, "id", None), str)}
    assert TINY_CKPTS[ids["attn-step"].value] == 4 and ids["attn-step"].max == len(TINY_CKPTS) - 1
    assert ids["attn-head-sel"].data == {"layer": 1, "head": 2}
    assert ids["attn-step-caption"].children == "step 4"
    # a step between checkpoints opens the nearest one; no step opens the last
    assert TINY_CKPTS[nearest_index(TINY_CKPTS, 14)] == 16 and TINY_CKPTS[nearest_index(TINY_CKPTS, 13)] == 10
    assert nearest_index(TINY_CKPTS, None) == len(TINY_CKPTS) - 1
    # a run switch keeps the step the user looked at (the nearest checkpoint of the new run)
    update_controls, *_ = callbacks(attention, store)
    assert update_controls(RUN, None, None, None, 0, 0, None, {"step": "20"})[4] == len(TINY_CKPTS) - 1


def test_version_changes_only_when_files_change(store, tmp_path):
    live = tmp_path / "out"
    shutil.copytree(store.out_dir / RUN, live / "live")
    live_store = Store(live)
    before = live_store.version()
    assert live_store.version() == before  # nothing changed: the refresh redraws nothing
    last_step, last_path = list_checkpoints(live / "live")[-1]
    last_path.unlink()
    assert live_store.version() != before


def test_pause_stops_the_refresh_and_ticked_rows_compare_runs(store):
    app = create_app(store.out_dir)
    pause = app.callback_map["refresh.disabled"]["callback"].__wrapped__
    assert pause(["on"]) is False and pause([]) is True
    # the URL writer leaves a refused or missing run's URL alone and drops default values
    write_url = app.callback_map["url.search"]["callback"].__wrapped__
    assert write_url(None, [], "auto", {"step": "4"}, "?run=../etc") is no_update
    assert write_url(RUN, ["b"], "auto", {"step": "4"}, "") == f"?run={RUN}&cmp=b&step=4"
    _, tick_rows, *_ = callbacks(runs, store)
    rows = [{"run": RUN}, {"run": "b"}, {"run": "c"}]
    assert tick_rows([0, 2], rows, RUN, []) == ["c"]  # the header's run is not compared with itself
    assert tick_rows([0, 2], rows, RUN, ["c"]) is no_update


def test_step_axis_is_log_where_checkpoints_are_log_spaced(store):
    assert is_log_spaced(TINY_CKPTS) and is_log_spaced([1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 350])
    assert not is_log_spaced(list(range(50, 1001, 50))) and not is_log_spaced([1, 2])
    assert runs.loss_figure(store, [RUN], "step", 0.0)[0]["layout"]["xaxis"]["type"] == "log"
    assert runs.loss_figure(store, [RUN], "step", 0.0, "linear")[0]["layout"]["xaxis"]["type"] == "linear"
    summary_steps = store.table(RUN, "summary")["step"].tolist()
    sat, _ = saturation.saturation_figure(store, [RUN], "flesch_ease", "step", ["in", "out"], "auto")
    assert sat["layout"]["xaxis"]["type"] == sat["layout"]["xaxis2"]["type"] == \
        ("log" if is_log_spaced(summary_steps) else "linear")
    assert saturation.saturation_figure(store, [RUN], "flesch_ease", "step", ["out"], "log")[0]["layout"][
        "xaxis"]["type"] == "log"
    assert generations.scores_figure(store, RUN, None, "linear")["layout"]["xaxis"]["type"] == "linear"


def test_no_run_selected_is_said_once_by_the_header(store):
    with pytest.raises(NoRun):
        store.run_dir(None)
    _, update_grid, *_ = callbacks(attention, store)
    figure, msg, _ = update_grid(None, 0, "val_0")
    assert msg is None  # the header's message covers it; panels add no "none found" of their own


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
        layout = render_page(path, f"?run={RUN}", app.store)
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
    home = {c.id for c in component_tree(render_page("/", "", app.store)) if isinstance(getattr(c, "id", None), str)}
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
    start = trajectories["data"][1]  # the open circle on the path's first step
    assert start["marker"]["symbol"] == "circle-open" and (start["x"][0], start["y"][0]) == (path["x"][0], path["y"][0])
    ratio = store.table_json(RUN, "embd_basis")["explained_variance_ratio"][0]
    assert figure["layout"]["xaxis"]["title"]["text"].startswith(f"PC1 ({100 * ratio:.1f}% of variance")
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


# ---- comparison ----

@pytest.fixture
def two_runs(store, tmp_path):
    """A Store over two copies of the run, "a" and "b" (b is what the header compares with)."""
    out = tmp_path / "out"
    for name in ("a", "b"):
        shutil.copytree(store.out_dir / RUN, out / name)
    return Store(out)


def test_compared_runs_show_beside_the_run_at_the_nearest_step(two_runs):
    probe = attention.probe_names(two_runs, "b")[0]
    figures, note_lines = attention.compared_heads(two_runs, ["b"], 13, probe, 1, 2)
    assert note_lines == [] and len(figures) == 1
    assert figures[0]["layout"]["title"]["text"] == "b · layer 1 · head 2 · step 10 (nearest to step 13)"
    alone, _ = attention.head_figure(two_runs, "b", 10, probe, 1, 2)
    assert np.allclose(z_of(figures[0]["data"][0]), z_of(alone["data"][0]))
    stats, _ = attention.stats_figure(two_runs, "a", "induction", 10, (1, 2), compare=["b"])
    theirs = next(t for t in stats["data"] if t["name"] == "b · L1 H2")
    mine = next(t for t in stats["data"] if t["name"] == "L1 H2")
    assert theirs["y"] == mine["y"] and theirs["line"]["dash"] == "dash"  # identical copies draw alike
    steps = generations.generation_steps(two_runs, "a")
    columns, rows = generations.generations_table(two_runs, "a", steps[1], "all", [], ["b"])
    assert [c["id"] for c in columns][:2] == ["run", "step"] and {r["run"] for r in rows} == {"a", "b"}
    assert len(rows) == 2 * len(generations.generations_table(two_runs, "a", steps[1])[1])
    scores = generations.scores_figure(two_runs, "a", steps[-1], compare=["b"])
    assert any(t["name"].startswith("b · ") for t in scores["data"])
    comp, _ = data_page.composition_figure(two_runs, "a", "flesch_ease", compare=["b"])
    assert comp["data"][-1]["name"].startswith("b EMA") and comp["data"][-1]["y"] == comp["data"][1]["y"]


def test_generations_step_k_beside_the_final_step_with_a_word_diff(store):
    gens = pd.read_csv(store.run_dir(RUN) / "tables" / "generations.csv")
    steps = generations.generation_steps(store, RUN)
    columns, rows = generations.generations_table(store, RUN, steps[0])
    names = {c["id"]: c["name"] for c in columns}
    assert names["final_text"] == f"generated at final step {steps[-1]}"
    final = gens[gens["step"] == steps[-1]].set_index("prompt_id")["generated_text"]
    for row in rows:
        assert row["final_text"] == final[row["prompt_id"]]
    # the diff of a text with itself marks nothing; a real edit is struck out / bold
    _, last = generations.generations_table(store, RUN, steps[-1])
    assert all("~~" not in r["diff"] and "**" not in r["diff"] for r in last)
    assert generations.word_diff("the cat sat", "the dog sat down") == "the ~~cat~~ **dog** sat **down**"
    assert generations.word_diff("a*b", "a*b") == "a\\*b"  # markdown characters are escaped


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
    with pytest.raises(UnknownName, match="whole number"):  # the step box refuses 2.5 instead of "step None"
        data_page.batch_rows(store, RUN, 2.5, [])
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

def damage(run_dir):
    """Cut and delete files of a run copy the way a full disk, a stopped copy or a stray rm would: train log
    after step 11, checkpoint 16 gone, batch log after step 7, summary.csv after its first row."""
    lines = (run_dir / "train_log.csv").read_text().splitlines(keepends=True)
    (run_dir / "train_log.csv").write_text("".join(lines[:12]))
    dict(list_checkpoints(run_dir))[16].unlink()
    ends = np.fromfile(run_dir / "batch_log_steps.bin", dtype="<i8")
    with open(run_dir / "batch_log.bin", "r+b") as f:
        f.truncate(int(ends[6]) * 32)  # 4 int64 fields per segment record
    summary = run_dir / "tables" / "summary.csv"
    summary.write_text("".join(summary.read_text().splitlines(keepends=True)[:2]))


def test_damaged_files_are_warned_about_with_the_command_that_rebuilds_them(store, tmp_path):
    assert store.health(RUN) == []  # the intact run: no warning
    out = tmp_path / "out"
    shutil.copytree(store.out_dir / RUN, out / "dmg")
    damage(out / "dmg")
    dmg = Store(out)
    warnings = dmg.health("dmg")
    text = "\n".join(warnings)
    assert "dmg/train_log.csv ends at step 11 but the checkpoints go to step 40" in text
    assert "dmg/ckpt/ lacks 1 checkpoint(s)" in text and "(step 16)" in text
    assert "dmg/batch_log.bin holds steps 1..7 but the run has checkpoints to step 40" in text
    evaluated = len(EVAL_ARGS[EVAL_ARGS.index("--steps") + 1:])
    assert f"dmg/tables/summary.csv lacks {evaluated - 1} of the {evaluated} steps" in text
    assert f"python eval.py --out_dir {out.as_posix()}/dmg --rebuild" in text
    assert "dmg/tables/saturation.csv is older than summary.csv" in text  # its plateaus came from the full file
    assert len(warnings) == 5 and "{" not in text  # one line per damage, no unformatted placeholders
    assert runs.runs_table(dmg).set_index("run").loc["dmg", "status"] == \
        "train log cut at step 11 (checkpoints to 40)"



def test_missing_and_corrupt_tables_become_messages(store, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(store.out_dir / RUN, out / "bare", ignore=shutil.ignore_patterns("tables", "ckpt"))
    bare = Store(out)
    _, update_figure, *_ = callbacks(saturation, bare)
    figure, msg = update_figure("bare", [], "flesch_ease", "step", ["in", "out"], "auto", None)
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
