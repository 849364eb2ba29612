"""Runs page: a table of every run under --out (a branch names its parent run and step), and train/val loss
curves of the header's run and the runs compared with it (tick rows in the table to compare them), aligned on
step or tokens seen, with optional smoothing."""
from pathlib import Path

import pandas as pd
from dash import Input, Output, State, dcc, html, no_update

from dash_llama.data import Missing, UnknownName, downsample_rows
from dash_llama.ui import (MAX_COMPARE, PALETTE, figure_or_message, guard, keep_zoom, message, notes, remember,
                           smooth_ema, step_axis_type, table, table_data, zoomable_graph)

MAX_POINTS_PER_RUN = 3000  # train-log points drawn per run; longer logs are strided (with a note)
X_AXES = {"step": "optimizer step", "tokens_seen": "tokens seen"}


DEFAULT_SMOOTHING = 0.6


def layout(store=None, view=None):
    view = view or {}
    x = view.get("x") if view.get("x") in X_AXES else "step"
    try:
        smoothing = min(max(float(view.get("smooth", DEFAULT_SMOOTHING)), 0.0), 0.99)
    except ValueError:
        smoothing = DEFAULT_SMOOTHING
    return html.Div([
        html.H2("Runs"),
        html.Div(id="runs-msg"),
        html.Div(f"tick rows to compare them with the header's run (up to {MAX_COMPARE})", className="hint"),
        table("runs-table", page_size=10, row_selectable="multi"),
        html.H3("Loss curves"),
        html.Div(className="controls", children=[
            html.Label(["Align on", dcc.RadioItems(id="runs-x", options=[{"label": v, "value": k}
                                                                         for k, v in X_AXES.items()],
                                                   value=x, inline=True)]),
            html.Label(["Smoothing", dcc.Slider(id="runs-smooth", min=0, max=0.99, step=0.01, value=smoothing,
                                                marks={0: "0", 0.5: "0.5", 0.9: "0.9", 0.99: ".99"})],
                       className="slider"),
        ]),
        html.Div(id="runs-loss-msg"),
        zoomable_graph("runs-loss"),
    ])


def _last(frame, column):
    if frame is None or frame.empty or column not in frame.columns:
        return None
    values = frame[column].dropna()
    return values.iloc[-1].item() if len(values) else None


def run_status(step, max_iters, checkpoints):
    """'done', 'S/N steps', or — when the train log stops before the checkpoints do — that the log was cut."""
    last_ckpt = max((int(s) for s, _ in checkpoints), default=0)
    if last_ckpt > (step or 0):
        return f"train log cut at step {step or 0} (checkpoints to {last_ckpt})"
    if step and max_iters and step >= max_iters:
        return "done"
    return f"{step or 0}/{max_iters} steps" if max_iters else ""


def runs_table(store):
    """One row per run: what it is (dataset, shape) and where it got to (steps, tokens, losses)."""
    rows = []
    for name in store.runs():
        try:
            run = store.run(name)
        except (Missing, UnknownName) as e:
            rows.append({"run": name, "status": str(e)})
            continue
        cfg = store.config(name)
        max_iters, step = cfg.get("n_steps") or cfg.get("max_iters"), _last(run.train_log, "step")
        lineage = run.config.get("lineage") or {}  # a branch: its parent run folder and step
        rows.append({
            "run": name, "dataset": cfg.get("dataset"), "vocab": cfg.get("vocab_size"),
            "shape": f"{cfg.get('dim')}d·{cfg.get('n_layers')}L·{cfg.get('n_heads')}H",
            "params": cfg.get("n_params"),
            "sampler": cfg.get("sampler"),
            "parent": f"{Path(lineage['parent_run']).name} @ {lineage['parent_step']}" if lineage else None,
            "step": step, "tokens_seen": _last(run.train_log, "tokens_seen"),
            "train_loss": _last(run.train_log, "loss"), "val_loss_sub": _last(run.val_log, "val_loss_sub"),
            "checkpoints": len(run.checkpoints),
            "status": run_status(step, max_iters, run.checkpoints),
        })
    columns = ["run", "dataset", "vocab", "shape", "params", "sampler", "parent", "step", "tokens_seen", "train_loss",
               "val_loss_sub", "checkpoints", "status"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.dropna(axis=1, how="all")


def loss_figure(store, names, x="step", smoothing=0.0, axis="auto"):
    """Train loss (EMA-smoothed, raw faint) and val loss (markers) of each selected run against x; the x axis
    is log when the header says so or ('auto') when the first run's checkpoints are log-spaced.
    Returns (figure, notes)."""
    if x not in X_AXES:
        raise UnknownName(f"unknown x axis {x!r}: use one of {list(X_AXES)}")
    if not names:
        raise Missing("select one or more runs to plot their loss curves")
    traces, note_lines = [], []
    for i, name in enumerate(names):
        run = store.run(name)
        color = PALETTE[i % len(PALETTE)]
        log = run.train_log
        if log.empty or x not in log.columns:
            note_lines.append(f"{name}: no train_log.csv rows yet")
            continue
        smoothed = smooth_ema(log["loss"].to_numpy(), float(smoothing or 0))
        shown = log.assign(smoothed=smoothed)
        shown, note = downsample_rows(shown, MAX_POINTS_PER_RUN)
        if note:
            note_lines.append(f"{name}: train loss {note}")
        if smoothing:
            traces.append({"type": "scattergl", "mode": "lines", "x": shown[x].tolist(),
                           "y": shown["loss"].tolist(), "line": {"color": color, "width": 1}, "opacity": 0.25,
                           "name": f"{name} train (raw)", "legendgroup": name, "showlegend": False,
                           "hoverinfo": "skip"})
        traces.append({"type": "scattergl", "mode": "lines", "x": shown[x].tolist(),
                       "y": shown["smoothed"].round(5).tolist(), "line": {"color": color, "width": 2},
                       "name": f"{name} train", "legendgroup": name})
        val = run.val_log
        if not val.empty and "val_loss_sub" in val.columns and x in val.columns:
            traces.append({"type": "scatter", "mode": "lines+markers", "x": val[x].tolist(),
                           "y": val["val_loss_sub"].tolist(), "line": {"color": color, "dash": "dot"},
                           "marker": {"symbol": "diamond", "size": 7},
                           "name": f"{name} val (train.py's subset of the validation sample)",
                           "legendgroup": name})
    if not traces:
        raise Missing("; ".join(note_lines) or "no loss logged yet")
    x_type = step_axis_type(axis, store.checkpoint_steps(names[0]))
    figure = {"data": traces, "layout": {
        "height": 460, "margin": {"l": 60, "r": 20, "t": 30, "b": 50}, "hovermode": "x unified",
        "xaxis": {"title": {"text": X_AXES[x] + (" (log)" if x_type == "log" else "")}, "type": x_type},
        "yaxis": {"title": {"text": "loss (nats/token)"}},
        "legend": {"orientation": "h", "y": -0.2}, "uirevision": f"{x}{x_type}"}}
    return figure, note_lines


def register(app, store):
    keep_zoom(app, "runs-loss")

    @app.callback(Output("runs-table", "columns"), Output("runs-table", "data"), Output("runs-msg", "children"),
                  Input("version", "data"), Input("url", "pathname"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_table(_n, _path):
        frame = runs_table(store)
        if frame.empty:
            return [], [], message(f"no runs under {store.out_dir} yet — train one with "
                                   f"`python modelling/train.py --out_dir={store.out_dir}/NAME`", "info")
        columns, data = table_data(frame)
        return columns, data, None

    @app.callback(Output("cmp", "value", allow_duplicate=True), Input("runs-table", "selected_rows"),
                  State("runs-table", "data"), State("run", "value"), State("cmp", "value"),
                  prevent_initial_call=True)
    def tick_rows(selected_rows, rows, run, current):
        """Ticked rows become the runs compared with the header's run (only when the user ticks: a refresh
        of the table never touches the comparison)."""
        ticked = [rows[i]["run"] for i in (selected_rows or []) if rows and i < len(rows)]
        cmp = [n for n in ticked if n != run][:MAX_COMPARE]
        return no_update if cmp == (current or []) else cmp

    @app.callback(Output("runs-loss-next", "data"), Output("runs-loss-msg", "children"),
                  Input("run", "value"), Input("cmp", "value"), Input("runs-x", "value"),
                  Input("runs-smooth", "value"), Input("axis", "value"), Input("version", "data"))
    @guard(figure_or_message())
    def update_loss(run, cmp, x, smoothing, axis, _version):
        store.run_dir(run)  # no run selected or a refused one: the header says so
        figure, note_lines = loss_figure(store, [run] + [c for c in cmp or [] if c != run], x, smoothing, axis)
        return figure, notes(*note_lines)

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("runs-x", "value"),
                  Input("runs-smooth", "value"), State("page-view", "data"), prevent_initial_call=True)
    def remember_view(x, smoothing, view):
        return remember(view, x=None if x == "step" else x,
                        smooth=None if smoothing == DEFAULT_SMOOTHING else smoothing)

    return update_table, tick_rows, update_loss, remember_view

