"""Saturation page: for one metric, what went in (mean over the stories of each interval between checkpoints,
and cumulatively) beside what came out (mean over each checkpoint's generations), with the plateau steps of
tables/saturation.csv marked (measures.saturation classifies the interval input and the output curves:
improving, plateaued at a step, flat or too noisy); other runs can be overlaid. Metrics are paired by
measures.saturation.curve_columns."""
import math

from dash import Input, Output, State, dcc, html, no_update

from dash_llama.data import Missing, UnknownName
from dash_llama.ui import (PALETTE, figure_or_message, guard, keep_zoom, message, notes, remember, step_axis_type,
                           table, table_data, zoomable_graph)
from measures.saturation import curve_columns

SIDES = {"in": "input (interval)", "cum": "input (cumulative)", "out": "output (generations)"}
X_AXES = {"step": "optimizer step", "tokens_seen": "tokens seen"}
DEFAULT_METRIC = "flesch_ease"


def layout(store=None, view=None):
    view = view or {}
    return html.Div([
        html.H2("Saturation"),
        html.Div(className="controls", children=[
            html.Label(["Metric", dcc.Dropdown(id="sat-metric", clearable=False, value=view.get("metric"))],
                       className="grow"),
            html.Label(["x axis", dcc.RadioItems(id="sat-x", options=[{"label": v, "value": k}
                                                                      for k, v in X_AXES.items()],
                                                 value=view.get("x") if view.get("x") in X_AXES else "step",
                                                 inline=True)]),
            html.Label(["Curves", dcc.Checklist(id="sat-sides", options=[{"label": v, "value": k}
                                                                         for k, v in SIDES.items()],
                                                value=["in", "cum", "out"], inline=True)]),
        ]),
        html.Div(id="sat-msg"),
        zoomable_graph("sat-fig"),
        html.H3("Plateaus (tables/saturation.csv)"),
        html.Div(id="sat-table-msg"),
        table("sat-table", page_size=12),
    ])


def panels(store, name):
    """{metric: {side: summary column}} from the saturation module's own pairing (measures.saturation):
    paired metrics have in_/cum_/out_ columns, output-only ones (val_loss, probes) just an output."""
    found = {}
    for title, out_col, in_col, cum_col in curve_columns(store.table(name, "summary")):
        found[title] = {side: col for side, col in (("in", in_col), ("cum", cum_col), ("out", out_col)) if col}
    return found


def summary_metrics(store, name):
    return list(panels(store, name))


def _plateaus(store, name):
    """{summary column: (plateau_step, plateau_tokens, class)} from tables/saturation.csv ({} if absent; a
    table from before the classes gives 'plateaued' or 'not saturated')."""
    try:
        sat = store.table(name, "saturation")
    except Missing:
        return {}
    out = {}
    for row in sat.to_dict("records"):
        if "column" in row:
            cls = row.get("class") or ("plateaued" if row.get("saturated") else "not saturated")
            out[str(row["column"])] = (row.get("plateau_step"), row.get("plateau_tokens"), str(cls))
    return out


def _finite(value):
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def saturation_figure(store, names, metric, x="step", sides=("in", "cum", "out"), axis="auto"):
    """Side-by-side panels (input | output) of `metric` against x for each run (the first is the header's, the
    others are overlaid); plateau steps from saturation.csv as dotted lines and an x on the curve. The x axis is
    log when the header says so or ('auto') the checkpoints are log-spaced. Returns (figure, notes)."""
    if x not in X_AXES:
        raise UnknownName(f"unknown x axis {x!r}: use one of {list(X_AXES)}")
    if not names:
        raise Missing("pick a run in the header")
    if not metric:
        raise Missing("pick a metric")
    sides = [s for s in SIDES if s in (sides or [])]
    if not sides:
        raise Missing("tick at least one of the curves")
    panel_of = {"in": "input", "cum": "input", "out": "output"}
    shown_panels = list(dict.fromkeys(panel_of[s] for s in sides))
    traces, shapes, note_lines = [], [], []
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        summary = store.table(name, "summary").sort_values("step")
        columns = panels(store, name).get(metric)
        if columns is None:
            note_lines.append(f"{name}: no {metric} in summary.csv")
            continue
        plateaus = _plateaus(store, name)
        for side in sides:
            column = columns.get(side)
            if column is None:
                continue
            k = shown_panels.index(panel_of[side]) + 1
            sub = "" if k == 1 else str(k)
            traces.append({"type": "scatter", "mode": "lines+markers", "x": summary[x].tolist(),
                           "y": summary[column].tolist(), "xaxis": f"x{sub}", "yaxis": f"y{sub}",
                           "name": f"{name} · {SIDES[side]}", "legendgroup": name,
                           "line": {"color": color, "dash": "dash" if side == "cum" else "solid",
                                    "width": 1.2 if side == "in" else 2}, "marker": {"size": 4}})
            if column not in plateaus:
                continue
            p_step, p_tokens, cls = plateaus[column]
            at = p_step if x == "step" else p_tokens
            if not (cls == "plateaued" and _finite(at)):
                note_lines.append(f"{name}: {column} {cls.replace('_', ' ')}")
                continue
            shapes.append({"type": "line", "xref": f"x{sub}", "yref": f"y{sub} domain", "x0": at, "x1": at,
                           "y0": 0, "y1": 1, "line": {"color": color, "dash": "dot", "width": 2}})
            y_at = summary.loc[summary["step"] >= p_step, column].head(1)  # first checkpoint on the plateau
            traces.append({"type": "scatter", "mode": "markers", "x": [at], "y": y_at.tolist(),
                           "xaxis": f"x{sub}", "yaxis": f"y{sub}", "legendgroup": name,
                           "marker": {"symbol": "x", "size": 12, "color": color, "line": {"width": 2}},
                           "name": f"{name} · {column} plateau @ step {int(p_step)}"})
    if not traces:
        raise Missing("; ".join(note_lines) or f"no curves for {metric}")
    n = len(shown_panels)
    x_type = step_axis_type(axis, store.table(names[0], "summary")["step"].tolist())
    layout = {"height": 440, "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
              "legend": {"orientation": "h", "y": -0.25}, "shapes": shapes, "annotations": [],
              "uirevision": f"{metric}{x}{x_type}"}
    for k, panel in enumerate(shown_panels, start=1):
        suffix = "" if k == 1 else str(k)
        lo, hi = (k - 1) / n + (0.04 if k > 1 else 0), k / n - (0.04 if k < n else 0)
        layout[f"xaxis{suffix}"] = {"domain": [lo, hi], "anchor": f"y{suffix}", "type": x_type,
                                  "title": {"text": X_AXES[x] + (" (log)" if x_type == "log" else "")}}
        layout[f"yaxis{suffix}"] = {"title": {"text": f"{metric} ({panel})"}, "anchor": f"x{suffix}"}
        layout["annotations"].append({"text": f"<b>{panel}</b>", "xref": "paper", "yref": "paper",
                                      "x": (lo + hi) / 2, "y": 1.08, "showarrow": False})
    return {"data": traces, "layout": layout}, note_lines


def saturation_table(store, name):
    return table_data(store.table(name, "saturation"))


def register(app, store):
    keep_zoom(app, "sat-fig")

    @app.callback(Output("sat-metric", "options"), Output("sat-metric", "value"),
                  Input("run", "value"), Input("version", "data"), State("sat-metric", "value"))
    @guard(lambda text, kind: ([], no_update))
    def update_metrics(run, _version, current):
        metrics = summary_metrics(store, run)
        value = current if current in metrics else (DEFAULT_METRIC if DEFAULT_METRIC in metrics else
                                                    (metrics[0] if metrics else None))
        return [{"label": m, "value": m} for m in metrics], value

    @app.callback(Output("sat-fig-next", "data"), Output("sat-msg", "children"),
                  Input("run", "value"), Input("cmp", "value"), Input("sat-metric", "value"),
                  Input("sat-x", "value"), Input("sat-sides", "value"), Input("axis", "value"),
                  Input("version", "data"))
    @guard(figure_or_message())
    def update_figure(run, compare, metric, x, sides, axis, _version):
        store.table(run, "summary")  # an unknown run or a missing summary says so before "pick a metric"
        figure, note_lines = saturation_figure(store, [run] + [c for c in (compare or []) if c != run],
                                               metric, x, sides, axis)
        return figure, notes(*note_lines)

    @app.callback(Output("sat-table", "columns"), Output("sat-table", "data"), Output("sat-table-msg", "children"),
                  Input("run", "value"), Input("version", "data"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_table(run, _version):
        columns, data = saturation_table(store, run)
        return columns, data, None

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("sat-metric", "value"),
                  Input("sat-x", "value"), State("page-view", "data"), prevent_initial_call=True)
    def remember_view(metric, x, view):
        return remember(view, metric=metric, x=None if x == "step" else x)

    return update_metrics, update_figure, update_table, remember_view
