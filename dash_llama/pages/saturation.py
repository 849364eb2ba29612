"""Saturation page: for one metric, what went in (mean over the stories of each interval between checkpoints,
and cumulatively) beside what came out (mean over each checkpoint's generations), with the plateau steps of
tables/saturation.csv marked; other runs can be overlaid."""
import math

from dash import Input, Output, State, dcc, html

from dash_llama.data import Missing, UnknownName
from dash_llama.ui import GRAPH_CONFIG, PALETTE, figure_or_message, guard, message, notes, table, table_data

SIDES = {"in": "input (interval)", "cum": "input (cumulative)", "out": "output (generations)"}
X_AXES = {"step": "optimizer step", "tokens_seen": "tokens seen"}


def layout():
    return html.Div([
        html.H2("Saturation"),
        html.Div(className="controls", children=[
            html.Label(["Metric", dcc.Dropdown(id="sat-metric", clearable=False)], className="grow"),
            html.Label(["Overlay runs", dcc.Dropdown(id="sat-compare", multi=True, placeholder="other runs")],
                       className="grow"),
            html.Label(["x axis", dcc.RadioItems(id="sat-x", options=[{"label": v, "value": k}
                                                                      for k, v in X_AXES.items()],
                                                 value="step", inline=True)]),
            html.Label(["Curves", dcc.Checklist(id="sat-sides", options=[{"label": v, "value": k}
                                                                         for k, v in SIDES.items()],
                                                value=["in", "out"], inline=True)]),
        ]),
        html.Div(id="sat-msg"),
        dcc.Graph(id="sat-fig", config=GRAPH_CONFIG),
        html.H3("Plateaus (tables/saturation.csv)"),
        html.Div(id="sat-table-msg"),
        table("sat-table", page_size=12),
    ])


def summary_metrics(store, name):
    """Metric names that have an input or output column in the run's summary.csv (in_/cum_/out_ prefixes)."""
    summary = store.table(name, "summary")
    metrics = []
    for column in summary.columns:
        prefix, _, metric = column.partition("_")
        if prefix in SIDES and metric and metric not in metrics:
            metrics.append(metric)
    return metrics


def _plateaus(store, name, metric):
    """{side: (plateau_step, plateau_tokens, saturated)} for a metric, {} when saturation.csv is absent."""
    try:
        sat = store.table(name, "saturation")
    except Missing:
        return {}
    found = {}
    for row in sat.to_dict("records"):
        if str(row.get("metric")) in (metric, f"in_{metric}", f"out_{metric}"):
            found[str(row.get("side"))] = (row.get("plateau_step"), row.get("plateau_tokens"),
                                           bool(row.get("saturated")))
    return found


def saturation_figure(store, names, metric, x="step", sides=("in", "out")):
    """Side-by-side panels (input | output) of `metric` against x for each run, plateau steps as dotted lines.
    Returns (figure, notes)."""
    if x not in X_AXES:
        raise UnknownName(f"unknown x axis {x!r}: use one of {list(X_AXES)}")
    if not names:
        raise Missing("pick a run in the header")
    if not metric:
        raise Missing("pick a metric")
    sides = [s for s in SIDES if s in (sides or [])]
    if not sides:
        raise Missing("tick at least one of the curves")
    panels = ["input" if s != "out" else "output" for s in sides]
    panels = list(dict.fromkeys(panels))
    traces, shapes, note_lines = [], [], []
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        summary = store.table(name, "summary").sort_values("step")
        if x not in summary.columns:
            note_lines.append(f"{name}: summary.csv has no {x} column")
            continue
        plateaus = _plateaus(store, name, metric)
        for side in sides:
            column = f"{side}_{metric}"
            if column not in summary.columns:
                note_lines.append(f"{name}: no {column} column in summary.csv")
                continue
            panel = panels.index("output" if side == "out" else "input") + 1
            axis = "" if panel == 1 else str(panel)
            traces.append({"type": "scatter", "mode": "lines+markers", "x": summary[x].tolist(),
                           "y": summary[column].tolist(), "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                           "name": f"{name} · {SIDES[side]}", "legendgroup": name,
                           "line": {"color": color, "dash": "dash" if side == "cum" else "solid"},
                           "marker": {"size": 5}})
            plateau_side = "output" if side == "out" else "input"
            if side == "cum" or plateau_side not in plateaus:
                continue
            p_step, p_tokens, saturated = plateaus[plateau_side]
            at = p_step if x == "step" else p_tokens
            if saturated and at is not None and not (isinstance(at, float) and math.isnan(at)):
                shapes.append({"type": "line", "xref": f"x{axis}", "yref": f"y{axis} domain", "x0": at,
                               "x1": at, "y0": 0, "y1": 1, "line": {"color": color, "dash": "dot", "width": 2}})
                traces.append({"type": "scatter", "mode": "markers", "x": [at],
                               "y": [summary.loc[summary["step"] >= p_step, column].head(1).squeeze()
                                     if p_step is not None else None],
                               "xaxis": f"x{axis}", "yaxis": f"y{axis}", "legendgroup": name,
                               "marker": {"symbol": "x", "size": 12, "color": color},
                               "name": f"{name} · {plateau_side} plateau @ step {int(p_step)}"})
            else:
                note_lines.append(f"{name}: {plateau_side} side of {metric} not saturated yet")
    if not traces:
        raise Missing("; ".join(note_lines) or f"no curves for {metric}")
    n = len(panels)
    layout = {"height": 440, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "legend": {"orientation": "h",
                                                                                        "y": -0.25},
              "shapes": shapes, "annotations": [], "uirevision": f"{metric}{x}"}
    for k, panel in enumerate(panels, start=1):
        axis = "" if k == 1 else str(k)
        lo, hi = (k - 1) / n + (0.04 if k > 1 else 0), k / n - (0.04 if k < n else 0)
        layout[f"xaxis{axis}"] = {"domain": [lo, hi], "title": {"text": X_AXES[x]}, "anchor": f"y{axis}"}
        layout[f"yaxis{axis}"] = {"title": {"text": f"{metric} ({panel})"}, "anchor": f"x{axis}"}
        layout["annotations"].append({"text": f"<b>{panel}</b>", "xref": "paper", "yref": "paper",
                                      "x": (lo + hi) / 2, "y": 1.08, "showarrow": False})
    return {"data": traces, "layout": layout}, note_lines


def saturation_table(store, name):
    return table_data(store.table(name, "saturation"))


def register(app, store):
    @app.callback(Output("sat-metric", "options"), Output("sat-metric", "value"),
                  Output("sat-compare", "options"),
                  Input("run", "value"), Input("refresh", "n_intervals"), State("sat-metric", "value"))
    @guard(lambda text, kind: ([], None, []))
    def update_metrics(run, _n, current):
        metrics = summary_metrics(store, run)
        others = [{"label": r, "value": r} for r in store.runs() if r != run]
        value = current if current in metrics else (metrics[0] if metrics else None)
        return [{"label": m, "value": m} for m in metrics], value, others

    @app.callback(Output("sat-fig", "figure"), Output("sat-msg", "children"),
                  Input("run", "value"), Input("sat-compare", "value"), Input("sat-metric", "value"),
                  Input("sat-x", "value"), Input("sat-sides", "value"), Input("refresh", "n_intervals"))
    @guard(figure_or_message())
    def update_figure(run, compare, metric, x, sides, _n):
        store.run_dir(run)  # refuse an unknown run before anything else
        figure, note_lines = saturation_figure(store, [run] + [c for c in (compare or []) if c != run],
                                               metric, x, sides)
        return figure, notes(*note_lines)

    @app.callback(Output("sat-table", "columns"), Output("sat-table", "data"), Output("sat-table-msg", "children"),
                  Input("run", "value"), Input("refresh", "n_intervals"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_table(run, _n):
        columns, data = saturation_table(store, run)
        return columns, data, None

    return update_metrics, update_figure, update_table
