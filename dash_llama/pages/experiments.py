"""Experiments page: any experiment under out/experiments/<kind>/<name>/, drawn from the description.json the
experiment kit writes (experiments/common/describe.py): per-condition curves (mean ± 95% t-interval over the
runs' curve files), the primary comparisons, any of its tables, and its report. While an experiment is still
running (experiment.json, no description.json yet) the curves are computed live from its finished runs'
val_log.csv, grouped by the condition each planned run records."""
import json

import pandas as pd
from dash import Input, Output, State, dcc, html

from common.errors import UserError
from dash_llama.data import Missing, UnknownName
from dash_llama.ui import (GRAPH_CONFIG, PALETTE, figure_or_message, guard, message, message_figure, notes, remember,
                           table, table_data)
from experiments.common import describe

FIGURE_ROUTE = "/experiment-figures"
PRIMARY_COLUMNS = ["comparison", "outcome", "n", "diff", "ci_lo", "ci_hi", "p", "min_p", "threshold", "mde", "mde_sd",
                   "g_av", "tested", "significant"]


def layout(store=None, view=None):
    view = view or {}  # ?exp=<kind>/<name>&curve=<column>: a shared link opens the same experiment and curve
    return html.Div([
        html.H2("Experiments"),
        html.Div(className="controls", children=[
            html.Label(["Experiment", dcc.Dropdown(id="exp-name", clearable=False, value=view.get("exp"))],
                       className="grow"),
            html.Label(["Curve", dcc.Dropdown(id="exp-metric", clearable=False, value=view.get("curve"))],
                       className="grow"),
        ]),
        html.Div(id="exp-msg"),
        html.Div(id="exp-status"),
        html.Div(id="exp-curves-msg"),
        dcc.Graph(id="exp-curves", config=GRAPH_CONFIG),
        html.H3("Primary comparisons"),
        html.Div(id="exp-primary-msg"),
        table("exp-primary", page_size=8),
        html.H3("Tables"),
        html.Label(["Table", dcc.Dropdown(id="exp-table-name", clearable=False)]),
        html.Div(id="exp-table-msg"),
        table("exp-table", page_size=12),
        html.H3("Report"),
        html.Div(id="exp-report-msg"),
        dcc.Markdown(id="exp-report", className="report"),
    ])


# ---- reading an experiment ----

def experiment_names(store):
    """'<kind>/<name>' of every experiment under --out (a description.json or a running experiment.json)."""
    return describe.find_experiments(store.out_dir)


def experiment_dir(store, name):
    """The folder of experiment `name`, only if it is exactly one of the discovered experiments."""
    if not isinstance(name, str) or name not in experiment_names(store):
        raise UnknownName(f"unknown experiment {name!r}: pick one under {store.out_dir}/experiments/")
    return (store.out_dir / "experiments" / name).resolve()


def description(store, name):
    """description.json of the experiment, or None while it is still running (only experiment.json)."""
    folder = experiment_dir(store, name)
    if not (folder / describe.FILENAME).exists():
        return None
    try:
        return describe.read_description(folder)
    except UserError as e:
        raise Missing(str(e))


def live_curves(folder):
    """Per-run val_log.csv of the finished-so-far runs of a running experiment, as the long table the curve
    files give (run, condition, step, tokens_seen, columns)."""
    try:
        design = json.loads((folder / "experiment.json").read_text())["design"]
    except (OSError, ValueError, KeyError):
        raise Missing(f"{folder}/experiment.json is missing or unreadable — is the experiment running?")
    frames = []
    for run in design.get("runs", []):
        path = folder / "runs" / run["name"] / "val_log.csv"
        if path.exists():
            frames.append(pd.read_csv(path).assign(run=run["name"], condition=run.get("condition", run["name"])))
    if not frames:
        raise Missing(f"no run of {folder.name} has a val_log.csv yet — training writes it at the first checkpoint")
    return pd.concat(frames, ignore_index=True)


def experiment_curves(store, name):
    """(long curve table, curve columns, note)."""
    desc = description(store, name)
    folder = experiment_dir(store, name)
    if desc is None:
        curves = live_curves(folder)
        columns = [c for c in curves.columns if c not in ("run", "condition", "step", "tokens_seen")]
        return curves, columns, "no description.json yet (experiment running?): curves computed live from the " \
                                "finished runs' val_log.csv"
    try:
        curves = describe.run_curves(folder, desc)
    except UserError as e:
        raise Missing(str(e))
    return curves, list(desc["curves"]["columns"]), ""


def curves_figure(store, name, column):
    """Mean ± 95% t-interval over runs of `column` per condition against step (baseline dashed). -> (figure,
    notes)."""
    curves, columns, note = experiment_curves(store, name)
    if column not in curves.columns:
        raise Missing(f"no curve {column!r} in experiment {name} — pick one of {', '.join(columns)}")
    desc = description(store, name)
    baseline = desc.get("baseline") if desc else None
    bands = describe.condition_bands(curves, column)
    traces = []
    for i, (condition, band) in enumerate(bands.groupby("condition", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        band = band.sort_values("step")
        ci = band.dropna(subset=["ci_lo", "ci_hi"])
        if len(ci):
            traces.append({"type": "scatter", "mode": "lines", "x": ci.step.tolist() + ci.step.tolist()[::-1],
                           "y": ci.ci_hi.tolist() + ci.ci_lo.tolist()[::-1], "fill": "toself", "fillcolor": color,
                           "opacity": 0.18, "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False,
                           "legendgroup": condition})
        traces.append({"type": "scatter", "mode": "lines+markers", "x": band.step.tolist(),
                       "y": band["mean"].round(5).tolist(), "name": f"{condition} (n={int(band.n.max())})",
                       "legendgroup": condition, "marker": {"size": 4},
                       "line": {"color": color, "width": 3 if condition == baseline else 1.8,
                                "dash": "dash" if condition == baseline else "solid"}})
    figure = {"data": traces, "layout": {
        "height": 460, "margin": {"l": 60, "r": 10, "t": 30, "b": 50},
        "xaxis": {"title": {"text": "step"}, "type": "log"},
        "yaxis": {"title": {"text": f"{column} (mean ± 95% CI over runs)"}},
        "legend": {"orientation": "h", "y": -0.2}, "hovermode": "x unified"}}
    return figure, [note]


def primary_frame(store, name):
    desc = description(store, name)
    if desc is None:
        raise Missing(f"experiment {name} has no description.json yet — its analysis writes it when the runs end")
    if not desc.get("primary"):
        raise Missing(f"experiment {name} lists no primary comparison")
    frame = pd.DataFrame(desc["primary"])
    return frame[[c for c in PRIMARY_COLUMNS if c in frame.columns]]


def table_names(store, name):
    desc = description(store, name)
    return [t["name"] for t in desc["tables"]] if desc else []


def experiment_table(store, name, table_name):
    desc = description(store, name)
    entry = next((t for t in (desc or {}).get("tables", []) if t["name"] == table_name), None)
    if entry is None:
        raise Missing(f"experiment {name} has no table {table_name!r}")
    path = describe.inside(experiment_dir(store, name), entry["path"])
    try:
        return pd.read_csv(path), entry.get("caption", "")
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise Missing(f"cannot read {path} ({e.__class__.__name__}) — re-run the experiment's analysis")


def status_line(store, name):
    """Progress from experiment.json (planned runs, finished runs, size) in one line ('' when absent)."""
    try:
        info = json.loads((experiment_dir(store, name) / "experiment.json").read_text())
    except (OSError, ValueError):
        return ""
    design, status = info.get("design", {}), info.get("status", {})
    done = sum(1 for s in status.values() if isinstance(s, dict) and s.get("done"))
    parts = [f"{done} of {len(design.get('runs', [])) or len(status)} runs done"]
    for key in ("size", "dataset", "metric", "n_pairs", "grid"):
        if key in design:
            parts.append(f"{key}: {design[key]}")
    return " · ".join(parts)


def report_markdown(store, name):
    """The report with its figures/ links pointing at the app's figure route (served by serve_figure)."""
    desc = description(store, name)
    path = describe.inside(experiment_dir(store, name), desc["report"] if desc else "report.md")
    if not path.exists():
        raise Missing(f"experiment {name} has no report yet — its analysis writes it when the runs end")
    return path.read_text().replace("](figures/", f"]({FIGURE_ROUTE}/{name}/")


def serve_figure(store, kind, name, filename):
    """A file from the experiment's figures/ folder; an unknown experiment or a path leaving figures/ → 404."""
    from flask import abort, send_from_directory
    try:
        folder = experiment_dir(store, f"{kind}/{name}") / "figures"
    except UnknownName:
        abort(404)
    return send_from_directory(folder, filename)  # safe_join: refuses '..' and absolute paths


# ---- callbacks ----

def register(app, store):
    app.server.add_url_rule(f"{FIGURE_ROUTE}/<kind>/<name>/<path:filename>", "experiment_figure",
                            lambda kind, name, filename: serve_figure(store, kind, name, filename))

    @app.callback(Output("exp-name", "options"), Output("exp-name", "value"), Output("exp-msg", "children"),
                  Input("version", "data"), Input("url", "pathname"), State("exp-name", "value"))
    def update_names(_version, _path, current):  # re-read only when a file under --out changed
        names = experiment_names(store)
        if not names:
            return [], None, message(f"no experiments under {store.out_dir}/experiments/ yet — run one, e.g. "
                                     "`python experiments/durability/experiment_durability.py`", "info")
        if current in names:
            return [{"label": n, "value": n} for n in names], current, None
        said = message(f"no experiment {current!r} under {store.out_dir}/experiments/ — showing {names[0]}", "warn") \
            if current else None  # a stale or mistyped ?exp= says so instead of silently showing another one
        return [{"label": n, "value": n} for n in names], names[0], said

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("exp-name", "value"),
                  Input("exp-metric", "value"), State("page-view", "data"), prevent_initial_call=True)
    def remember_view(name, curve, view):
        return remember(view, exp=name, curve=curve)

    @app.callback(Output("exp-metric", "options"), Output("exp-metric", "value"), Output("exp-status", "children"),
                  Input("exp-name", "value"), State("exp-metric", "value"))
    @guard(lambda text, kind: ([], None, message(text, kind)))
    def update_metrics(name, current):
        if not name:
            return [], None, None
        _, columns, _ = experiment_curves(store, name)
        if not columns:
            raise Missing(f"experiment {name} lists no curve columns")
        value = current if current in columns else columns[0]
        return [{"label": c, "value": c} for c in columns], value, message(status_line(store, name), "note")

    @app.callback(Output("exp-curves", "figure"), Output("exp-curves-msg", "children"),
                  Input("exp-name", "value"), Input("exp-metric", "value"))
    @guard(figure_or_message())
    def update_curves(name, metric):
        if not name:
            return message_figure("no experiment selected"), None
        if not metric:
            raise Missing("pick a curve")
        figure, note_lines = curves_figure(store, name, metric)
        return figure, notes(*note_lines)

    @app.callback(Output("exp-primary", "columns"), Output("exp-primary", "data"),
                  Output("exp-primary-msg", "children"), Input("exp-name", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_primary(name):
        if not name:
            return [], [], None
        columns, data = table_data(primary_frame(store, name))
        return columns, data, None

    @app.callback(Output("exp-table-name", "options"), Output("exp-table-name", "value"),
                  Input("exp-name", "value"), State("exp-table-name", "value"))
    @guard(lambda text, kind: ([], None))
    def update_table_names(name, current):
        names = table_names(store, name) if name else []
        return [{"label": n, "value": n} for n in names], current if current in names else (names[0] if names else None)

    @app.callback(Output("exp-table", "columns"), Output("exp-table", "data"), Output("exp-table-msg", "children"),
                  Input("exp-name", "value"), Input("exp-table-name", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_table(name, table_name):
        if not name or not table_name:
            return [], [], None
        frame, caption = experiment_table(store, name, table_name)
        columns, data = table_data(frame)
        return columns, data, message(caption, "note")

    @app.callback(Output("exp-report", "children"), Output("exp-report-msg", "children"), Input("exp-name", "value"))
    @guard(lambda text, kind: ("", message(text, kind)))
    def update_report(name):
        if not name:
            return "", None
        return report_markdown(store, name), None

    return (update_names, remember_view, update_metrics, update_curves, update_primary, update_table_names,
            update_table, update_report)
