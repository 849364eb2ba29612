"""Data page: what the run was fed. Distributions of a metadata metric over the dataset (train vs val),
the batch composition over steps (the metric's mean over each step's stories, from the batch log), and the
batch viewer: the stories of one step with their metrics and text."""
import numpy as np
import pandas as pd
from dash import Input, Output, State, dcc, html

from dash_llama.data import Missing, UnknownName
from metadata.metrics import METRICS
from modelling.batch_table import step_table
from dash_llama.ui import (GRAPH_CONFIG, PALETTE, figure_or_message, guard, int_or_none, keep_zoom, message, notes,
                           remember, smooth_ema, table, table_data, zoomable_graph)

HIST_BINS = 60
MAX_STEP_POINTS = 2000   # batch-composition points drawn; longer runs are averaged over step bins (with a note)
TEXT_CHARS = 400         # story text shown per row in the batch viewer
DEFAULT_METRIC = "flesch_ease"


def layout(store=None, view=None):
    view = view or {}
    step = int_or_none(view.get("step"))
    return html.Div([
        html.H2("Data"),
        html.Div(className="controls", children=[
            html.Label(["Metric", dcc.Dropdown(id="data-metric", clearable=False, value=view.get("metric"))],
                       className="grow"),
        ]),
        html.Div(id="data-msg"),
        html.Div(className="row", children=[
            html.Div(className="col", children=[html.H3("Distribution over the dataset"),
                                                 html.Div(id="data-hist-msg"),
                                                 dcc.Graph(id="data-hist", config=GRAPH_CONFIG)]),
            html.Div(className="col", children=[html.H3("Batch composition over steps"),
                                                 html.Div(id="data-comp-msg"),
                                                 zoomable_graph("data-comp")]),
        ]),
        html.H3("Batch viewer"),
        html.Div(className="controls", children=[
            html.Label(["Step", dcc.Input(id="data-step", type="number", min=1, step=1, debounce=True,
                                          value=step if step and step >= 1 else 1, className="num-input")]),
        ]),
        html.Div(id="data-batch-msg"),
        table("data-batch", page_size=10),
    ])


def metric_options(store, name):
    """Dropdown options for the metadata metrics present, in the metrics module's order, described."""
    meta = store.metadata(name)
    return [{"label": f"{m.name} — {m.what}", "value": m.name} for m in METRICS if m.name in meta.columns]


def _metric(store, name, metric):
    meta = store.metadata(name)
    if metric not in meta.columns:
        raise Missing(f"metadata has no column {metric!r} (has: {', '.join(meta.columns[:20])} …)")
    return meta[metric]


def histogram_figure(store, name, metric):
    """Histogram of `metric` over all stories, train and val split overlaid (binned here, so any corpus size
    costs the browser the same)."""
    values = _metric(store, name, metric)
    meta = store.metadata(name)
    split = meta["split"] if "split" in meta.columns else pd.Series("all", index=values.index)
    finite = values[np.isfinite(values.astype(float))]
    if finite.empty:
        raise Missing(f"{metric} has no finite values (NaN means not scorable)")
    edges = np.histogram_bin_edges(finite.astype(float), bins=HIST_BINS)
    traces = []
    for i, (part, rows) in enumerate(finite.groupby(split.reindex(finite.index).fillna("?"))):
        counts, _ = np.histogram(rows.astype(float), bins=edges)
        density = counts / max(1, counts.sum())
        traces.append({"type": "bar", "x": ((edges[:-1] + edges[1:]) / 2).round(5).tolist(),
                       "y": density.round(6).tolist(), "name": f"{part} (n={len(rows):,})", "opacity": 0.6,
                       "marker": {"color": PALETTE[i % len(PALETTE)]}, "width": float(edges[1] - edges[0])})
    n_nan = int(values.isna().sum())
    return {"data": traces, "layout": {
        "barmode": "overlay", "height": 380, "margin": {"l": 60, "r": 10, "t": 30, "b": 50},
        "xaxis": {"title": {"text": metric}}, "yaxis": {"title": {"text": "fraction of stories"}},
        "title": {"text": f"{len(finite):,} stories" + (f" ({n_nan:,} not scorable)" if n_nan else ""),
                  "font": {"size": 13}},
        "legend": {"orientation": "h", "y": -0.2}}}


def step_means(store, name, metric):
    """(steps, the token-weighted mean of `metric` over each optimizer step's segments, notes), binned above
    MAX_STEP_POINTS steps."""
    values = _metric(store, name, metric)
    log = store.batch_log(name)
    n_steps = len(log)
    segments = log.steps(1, n_steps)
    lookup = values.reindex(np.arange(int(values.index.max()) + 1)).to_numpy(dtype=float)
    if len(segments) and segments["story_id"].max() >= len(lookup):
        raise Missing(f"the batch log of {name} names story ids beyond the metadata table — recompute metadata "
                      "for the run's dataset")
    step_of = np.repeat(np.arange(n_steps), log.segments_per_step())
    value = lookup[segments["story_id"]]
    weight = segments["n_tokens"] * np.isfinite(value)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.bincount(step_of, np.where(np.isfinite(value), value, 0) * weight, n_steps) / \
            np.bincount(step_of, weight, n_steps)
    steps = np.arange(1, n_steps + 1)
    note_lines = []
    if n_steps > MAX_STEP_POINTS:
        width = int(np.ceil(n_steps / MAX_STEP_POINTS))
        n_bins = n_steps // width
        steps = steps[: n_bins * width].reshape(n_bins, width)[:, -1]
        means = means[: n_bins * width].reshape(n_bins, width).mean(axis=1)
        note_lines.append(f"{name}: {n_steps:,} steps averaged in bins of {width} for display")
    return steps, means, note_lines


def composition_figure(store, name, metric, smoothing=0.9, compare=()):
    """Mean of `metric` over the tokens trained in every optimizer step (batch log × metadata: each segment's
    story value weighted by its trained tokens), raw and smoothed, with the dataset mean for reference; the
    compared runs' smoothed curves overlaid. Returns (figure, notes)."""
    values = _metric(store, name, metric)
    per_step = store.batch_log(name).meta.get("segments_per_step", 0)
    steps, means, note_lines = step_means(store, name, metric)
    smoothed = smooth_ema(means, smoothing)
    traces = [
        {"type": "scattergl", "mode": "lines", "x": steps.tolist(), "y": np.round(means, 5).tolist(),
         "name": "per step", "line": {"color": PALETTE[0], "width": 1}, "opacity": 0.35},
        {"type": "scattergl", "mode": "lines", "x": steps.tolist(), "y": np.round(smoothed, 5).tolist(),
         "name": f"{name} EMA {smoothing}" if compare else f"EMA {smoothing}",
         "line": {"color": PALETTE[0], "width": 2.5}},
        {"type": "scatter", "mode": "lines", "x": [int(steps[0]), int(steps[-1])],
         "y": [float(np.nanmean(values))] * 2, "name": "dataset mean", "line": {"color": "#777", "dash": "dot"}},
    ]
    for i, other in enumerate(c for c in compare or [] if c != name):
        try:
            their_steps, theirs, their_notes = step_means(store, other, metric)
        except Missing as e:
            note_lines.append(f"{other}: {e}")
            continue
        note_lines += their_notes
        traces.append({"type": "scattergl", "mode": "lines", "x": their_steps.tolist(),
                       "y": np.round(smooth_ema(theirs, smoothing), 5).tolist(), "name": f"{other} EMA {smoothing}",
                       "line": {"color": PALETTE[(i + 1) % len(PALETTE)], "width": 2.5, "dash": "dash"}})
    return {"data": traces, "layout": {
        "height": 380, "margin": {"l": 60, "r": 10, "t": 30, "b": 50}, "uirevision": f"{name}{metric}",
        "xaxis": {"title": {"text": "optimizer step"}},
        "yaxis": {"title": {"text": f"token-weighted mean {metric} of the step's {per_step} segments"}},
        "legend": {"orientation": "h", "y": -0.2}}}, note_lines


def batch_rows(store, name, step, metrics=()):
    """(columns, records) of step `step` as the batch viewer shows it (modelling/batch_table.step_table:
    position, row, story id, start, trained tokens, label, metric columns) plus split and the segment's text."""
    log = store.batch_log(name)
    if step is None or step == "" or float(step) != int(float(step)):
        raise UnknownName(f"step must be a whole number of optimizer steps, got {step!r}")
    step = int(float(step))
    if not 1 <= step <= len(log):
        raise Missing(f"step {step} is not in the batch log of {name} (steps 1..{len(log)})")
    # the batch viewer's own table: ids in training order + metric columns (when metadata exists)
    dataset = store.dataset(name)
    frame = step_table(store.run(name), int(step), [m for m in metrics if m], dataset)
    index = dataset.index.set_index("story_id")
    frame["split"] = index["split"].reindex(frame["story_id"]).to_numpy()
    texts = [dataset.decode(dataset.tokens(int(i))[s:s + n])
             for i, s, n in zip(frame["story_id"], frame["start"], frame["n_tokens"])]
    frame["text"] = [t if len(t) <= TEXT_CHARS else t[:TEXT_CHARS] + " …" for t in texts]
    return table_data(frame)


def register(app, store):
    keep_zoom(app, "data-comp")

    @app.callback(Output("data-metric", "options"), Output("data-metric", "value"), Output("data-msg", "children"),
                  Input("run", "value"), State("data-metric", "value"))
    @guard(lambda text, kind: ([], None, message(text, kind)))
    def update_metrics(run, current):
        options = metric_options(store, run)
        metrics = [o["value"] for o in options]
        value = current if current in metrics else (DEFAULT_METRIC if DEFAULT_METRIC in metrics else
                                                    (metrics[0] if metrics else None))
        return options, value, None

    @app.callback(Output("data-hist", "figure"), Output("data-hist-msg", "children"),
                  Input("run", "value"), Input("data-metric", "value"))
    @guard(figure_or_message())
    def update_hist(run, metric):
        store.metadata(run)  # an unknown run or missing metadata says so first
        if not metric:
            raise Missing("no metadata metric to show")
        return histogram_figure(store, run, metric), None

    @app.callback(Output("data-comp-next", "data"), Output("data-comp-msg", "children"),
                  Input("run", "value"), Input("data-metric", "value"), Input("cmp", "value"),
                  Input("version", "data"))
    @guard(figure_or_message())
    def update_composition(run, metric, cmp, _version):
        store.metadata(run)  # an unknown run or missing metadata says so first
        if not metric:
            raise Missing("no metadata metric to show")
        figure, note_lines = composition_figure(store, run, metric, compare=cmp or [])
        return figure, notes(*note_lines)

    @app.callback(Output("data-batch", "columns"), Output("data-batch", "data"), Output("data-batch-msg", "children"),
                  Input("run", "value"), Input("data-step", "value"), Input("data-metric", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_batch(run, step, metric):
        columns, data = batch_rows(store, run, step, [metric] if metric else [])
        return columns, data, message(f"step {step}: {len(data)} stories, in training order", "note")

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("data-metric", "value"),
                  Input("data-step", "value"), State("page-view", "data"), prevent_initial_call=True)
    def remember_view(metric, step, view):
        step = int_or_none(step)
        return remember(view, metric=metric, step=step if step and step >= 1 else None)

    return update_metrics, update_hist, update_composition, update_batch, remember_view
