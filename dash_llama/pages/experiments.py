"""Experiments page: a durability experiment (out/experiments/durability/NAME/): output-metric curves per
condition with the mean ± 95% CI over seeds (the experiment's curves.csv, or computed live from its runs'
summaries while it is still running), the end-point table (results.csv) and the report (report.md)."""
import json

import numpy as np
import pandas as pd
from dash import Input, Output, State, dcc, html

from experiments.durability.naming import BASELINE, RUN_NAME
from experiments.durability.stats import curve_band

from dash_llama.data import Missing, UnknownName
from dash_llama.ui import (GRAPH_CONFIG, PALETTE, figure_or_message, guard, message, message_figure, notes, table,
                           table_data)

FIGURE_ROUTE = "/experiment-figures"


def layout():
    return html.Div([
        html.H2("Experiments"),
        html.Div(className="controls", children=[
            html.Label(["Experiment", dcc.Dropdown(id="exp-name", clearable=False)], className="grow"),
            html.Label(["Metric", dcc.Dropdown(id="exp-metric", clearable=False)], className="grow"),
        ]),
        html.Div(id="exp-msg"),
        html.Div(id="exp-status"),
        html.Div(id="exp-curves-msg"),
        dcc.Graph(id="exp-curves", config=GRAPH_CONFIG),
        html.H3("End points (results.csv)"),
        html.Div(id="exp-table-msg"),
        table("exp-table", page_size=12),
        html.H3("Final-model divergence (divergence.csv)"),
        html.Div(id="exp-div-msg"),
        table("exp-div", page_size=8),
        html.H3("Report"),
        html.Div(id="exp-report-msg"),
        dcc.Markdown(id="exp-report", className="report"),
    ])


def condition_runs(store, name):
    """{condition: [run names]} from runs/<condition>_s<seed>."""
    groups = {}
    for run in store.experiment_runs(name):
        leaf = run.rsplit("/", 1)[-1]
        match = RUN_NAME.match(leaf)
        groups.setdefault(match["condition"] if match else leaf, []).append(run)
    if not groups:
        raise Missing(f"experiment {name} has no runs under runs/ yet")
    return groups


def live_curves(store, name):
    """curves.csv's layout (condition, column, step, tokens_seen, n_seeds, mean, ci_lo, ci_hi) computed from
    the runs' summaries with the experiment's own statistics, for an experiment still running."""
    rows = []
    for condition, runs in condition_runs(store, name).items():
        summaries = []
        for run in runs:
            try:
                summaries.append(store.table(run, "summary").set_index("step"))
            except Missing:
                continue
        if not summaries:
            continue
        columns = [c for c in summaries[0].columns if c == "val_loss" or c.startswith(("out_", "in_"))]
        for column in columns:
            wide = pd.concat([s[column] for s in summaries if column in s], axis=1)
            mean, lo, hi = curve_band(wide.to_numpy().T)
            tokens = summaries[0]["tokens_seen"].reindex(wide.index) if "tokens_seen" in summaries[0] else wide.index
            rows += [{"condition": condition, "column": column, "step": int(step), "tokens_seen": tokens.iloc[k],
                      "n_seeds": int(np.isfinite(wide.iloc[k]).sum()), "mean": mean[k], "ci_lo": lo[k],
                      "ci_hi": hi[k]} for k, step in enumerate(wide.index)]
    if not rows:
        raise Missing(f"no run of experiment {name} has tables/summary.csv yet — eval runs after training")
    return pd.DataFrame(rows)


def experiment_curves(store, name):
    """(curves table, note): the experiment's curves.csv, or live curves from its runs while it is running."""
    try:
        return store.experiment_table(name, "curves"), ""
    except Missing:
        return live_curves(store, name), "curves.csv not written yet (experiment running?): curves computed live " \
                                         "from the finished runs' summaries"


def curve_metrics(store, name):
    curves, _ = experiment_curves(store, name)
    return list(dict.fromkeys(curves["column"]))


def curves_figure(store, name, metric, x="step"):
    """Mean ± 95% CI over seeds of `metric` against step, one band per condition (dashed: the random
    baseline). Returns (figure, notes)."""
    curves, note = experiment_curves(store, name)
    rows = curves[curves["column"] == metric]
    if rows.empty:
        raise Missing(f"no curves for {metric} in experiment {name}")
    traces = []
    for i, (condition, band) in enumerate(rows.sort_values("step").groupby("condition", sort=True)):
        color = PALETTE[i % len(PALETTE)]
        baseline = condition == BASELINE
        xs = band[x].tolist()
        finite = band["ci_lo"].notna() & band["ci_hi"].notna()
        if finite.any():
            ci = band[finite]
            traces.append({"type": "scatter", "mode": "lines", "x": ci[x].tolist() + ci[x].tolist()[::-1],
                           "y": ci["ci_hi"].tolist() + ci["ci_lo"].tolist()[::-1], "fill": "toself",
                           "fillcolor": color, "opacity": 0.18, "line": {"width": 0}, "hoverinfo": "skip",
                           "showlegend": False, "legendgroup": condition})
        seeds = int(band["n_seeds"].max()) if "n_seeds" in band else 0
        traces.append({"type": "scatter", "mode": "lines+markers", "x": xs, "y": band["mean"].round(5).tolist(),
                       "name": f"{condition} (n={seeds})", "legendgroup": condition,
                       "line": {"color": color, "width": 3 if baseline else 1.8, "dash": "dash" if baseline else
                                "solid"}, "marker": {"size": 4}})
    figure = {"data": traces, "layout": {
        "height": 460, "margin": {"l": 60, "r": 10, "t": 30, "b": 50},
        "xaxis": {"title": {"text": "step" if x == "step" else "tokens seen"}},
        "yaxis": {"title": {"text": f"{metric} (mean ± 95% CI over seeds)"}},
        "legend": {"orientation": "h", "y": -0.2}, "hovermode": "x unified"}}
    return figure, [note]


def status_line(store, name):
    """Progress from experiment.json (design + per-run status) in one line ('' when absent)."""
    try:
        info = json.loads(store.experiment_file(name, "experiment.json").read_text())
    except (Missing, ValueError):
        return ""
    design, status = info.get("design", {}), info.get("status", {})
    planned = design.get("runs", [])
    done = sum(1 for s in status.values() if isinstance(s, dict) and s.get("done"))
    parts = [f"{done} of {len(planned) or len(status)} runs done"]
    for key in ("preset", "dataset", "metrics", "init_seeds", "n_stories"):
        if key in design:
            parts.append(f"{key}: {design[key]}")
    return " · ".join(parts)


def report_markdown(store, name):
    """report.md with its figures/ links pointing at the app's figure route (served by serve_figure)."""
    text = store.experiment_file(name, "report.md").read_text()
    return text.replace("](figures/", f"]({FIGURE_ROUTE}/{name}/")


def serve_figure(store, name, filename):
    """A PNG from the experiment's figures/ folder; unknown experiment or a path leaving figures/ → 404."""
    from flask import abort, send_from_directory
    try:
        folder = store.experiment_dir(name) / "figures"
    except UnknownName:
        abort(404)
    return send_from_directory(folder, filename)  # safe_join: refuses '..' and absolute paths


def register(app, store):
    app.server.add_url_rule(f"{FIGURE_ROUTE}/<name>/<path:filename>", "experiment_figure",
                            lambda name, filename: serve_figure(store, name, filename))

    @app.callback(Output("exp-name", "options"), Output("exp-name", "value"), Output("exp-msg", "children"),
                  Input("refresh", "n_intervals"), Input("url", "pathname"), State("exp-name", "value"))
    def update_names(_n, _path, current):
        names = store.experiments()
        if not names:
            return [], None, message(f"no experiments under {store.out_dir}/experiments/durability yet — run "
                                     "`python experiments/durability/experiment_durability.py`", "info")
        return [{"label": n, "value": n} for n in names], current if current in names else names[0], None

    @app.callback(Output("exp-metric", "options"), Output("exp-metric", "value"), Output("exp-status", "children"),
                  Input("exp-name", "value"), State("exp-metric", "value"))
    @guard(lambda text, kind: ([], None, message(text, kind)))
    def update_metrics(name, current):
        if not name:  # none exist: the line above the panels says so
            return [], None, None
        metrics = curve_metrics(store, name)
        value = current if current in metrics else metrics[0]
        return [{"label": m, "value": m} for m in metrics], value, message(status_line(store, name), "note")

    @app.callback(Output("exp-curves", "figure"), Output("exp-curves-msg", "children"),
                  Input("exp-name", "value"), Input("exp-metric", "value"))
    @guard(figure_or_message())
    def update_curves(name, metric):
        if not name:
            return message_figure("no experiment selected"), None
        if not metric:
            raise Missing("pick a metric")
        figure, note_lines = curves_figure(store, name, metric)
        return figure, notes(*note_lines)

    @app.callback(Output("exp-table", "columns"), Output("exp-table", "data"), Output("exp-table-msg", "children"),
                  Input("exp-name", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_table(name):
        if not name:
            return [], [], None
        columns, data = table_data(store.experiment_table(name, "results"))
        return columns, data, None

    @app.callback(Output("exp-div", "columns"), Output("exp-div", "data"), Output("exp-div-msg", "children"),
                  Input("exp-name", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_divergence(name):
        if not name:
            return [], [], None
        columns, data = table_data(store.experiment_table(name, "divergence"))
        return columns, data, None

    @app.callback(Output("exp-report", "children"), Output("exp-report-msg", "children"), Input("exp-name", "value"))
    @guard(lambda text, kind: ("", message(text, kind)))
    def update_report(name):
        if not name:
            return "", None
        return report_markdown(store, name), None

    return update_names, update_metrics, update_curves, update_table, update_divergence, update_report
