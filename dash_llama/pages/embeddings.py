"""Embeddings page: token embeddings projected on the PCA basis shared by all checkpoints
(tables/embd_pca.csv from visualize_embd.py), a step slider, token search/highlight, and the trajectories of
the highlighted tokens across steps."""
import numpy as np
import pandas as pd
from dash import Input, Output, State, dcc, html, no_update

from dash_llama.data import Missing, UnknownName
from dash_llama.ui import (GRAPH_CONFIG, PALETTE, checkpoint_slider, figure_or_message, guard, keep_zoom, message,
                           nearest_index, nearest_label, notes, remember, slider_update, step_caption, triggered_id,
                           step_at, view_slider, zoomable_graph)

MAX_POINTS = 6000     # tokens drawn per step; the rest of a large vocab is strided out (with a note)
MAX_TRACKED = 12      # trajectories drawn at once
WORD_START = "\u2581"  # SentencePiece's word-start marker


def layout(store=None, view=None):
    view = view or {}
    steps, index = view_slider(store, view.get("run"), pca_steps, view.get("step"))
    return html.Div([
        html.H2("Embeddings"),
        html.Div(className="controls", children=[
            html.Label(["Step", checkpoint_slider("embd-step", steps, index),
                        step_caption("embd-step-caption", steps, index)], className="slider wide"),
            html.Label(["Find tokens (comma-separated)", dcc.Input(id="embd-search", type="text", debounce=True,
                                                                   placeholder="e.g. she, he, doctor",
                                                                   value=view.get("q"), className="text-input")],
                       className="grow"),
        ]),
        html.Div(id="embd-msg"),
        html.Div(className="row", children=[
            html.Div(className="col", children=[zoomable_graph("embd-fig")]),
            html.Div(className="col", children=[html.Div(id="embd-traj-msg"),
                                                 zoomable_graph("embd-traj")]),
        ]),
        html.H3("Compared runs at the nearest step (header: compare)"),
        html.Div(id="embd-compare-msg"),
        html.Div(id="embd-compare", className="row"),
    ])


PCA_COLUMNS = ("step", "token_id", "piece", "pc1", "pc2")


def pca_table(store, name):
    """tables/embd_pca.csv, checked for the columns the page draws."""
    table = store.table(name, "embd_pca")
    lacking = [c for c in PCA_COLUMNS if c not in table.columns]
    if lacking:
        raise Missing(f"{name}/tables/embd_pca.csv lacks column(s) {', '.join(lacking)} — rebuild it with "
                      f"`python visualize_embd.py --out_dir {store.out_dir.as_posix()}/{name}`")
    return table


def pca_steps(store, name):
    return sorted(pca_table(store, name)["step"].unique().tolist())


def _bare(piece):
    return str(piece).replace(WORD_START, "").strip().lower()


def matching_tokens(table, query):
    """token_ids whose piece (word-start marker stripped, case-insensitive) equals one of the query words."""
    words = [w.strip().lower() for w in (query or "").split(",") if w.strip()]
    if not words:
        return []
    pieces = table.drop_duplicates("token_id")
    bare = pieces["piece"].map(_bare)
    return pieces.loc[bare.isin(words), "token_id"].tolist()


def _tracked(table, query):
    """Tokens to highlight and trace: the search hits, else the labelled groups (not 'other')."""
    hits = matching_tokens(table, query)
    if hits or query:
        return hits
    if "group" in table.columns:
        grouped = table.loc[~table["group"].isin(["other", "", None]) & table["group"].notna()]
        return grouped.drop_duplicates("token_id")["token_id"].head(MAX_TRACKED).tolist()
    return []


def pc_title(store, name, k):
    """'PC1 (85.8% of variance at step 40)' from tables/embd_basis.json, or 'PC1' when it does not say."""
    basis = store.table_json(name, "embd_basis")
    ratios, fitted = basis.get("explained_variance_ratio") or [], basis.get("fitted_on_steps") or []
    if k >= len(ratios):
        return f"PC{k + 1}"
    where = f" at step {fitted[0]}" if len(fitted) == 1 else ""
    return f"PC{k + 1} ({100 * float(ratios[k]):.1f}% of variance{where})"


def scatter_figure(store, name, step, query=""):
    """Every token at `step` coloured by group, search hits enlarged and labelled; axes fixed over all steps
    (the basis is shared, so motion is real). Returns (figure, notes)."""
    table = pca_table(store, name)
    at = table[table["step"] == step]
    if at.empty:
        raise Missing(f"no embeddings for step {step} in {name}/tables/embd_pca.csv")
    note_lines = []
    if len(at) > MAX_POINTS:
        keep = np.unique(np.linspace(0, len(at) - 1, MAX_POINTS).astype(int))
        tracked_rows = at[at["token_id"].isin(_tracked(table, query))]
        note_lines.append(f"showing {len(keep):,} of {len(at):,} tokens (evenly strided) plus the highlighted ones")
        at = pd.concat([at.iloc[keep], tracked_rows]).drop_duplicates("token_id")
    pad = lambda lo, hi: [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]  # noqa: E731
    x_range = pad(table["pc1"].min(), table["pc1"].max())
    y_range = pad(table["pc2"].min(), table["pc2"].max())
    traces = []
    groups = at["group"].fillna("other") if "group" in at.columns else None
    for i, (group, rows) in enumerate(at.groupby(groups, sort=True) if groups is not None else [("tokens", at)]):
        traces.append({"type": "scattergl", "mode": "markers", "x": rows["pc1"].round(4).tolist(),
                       "y": rows["pc2"].round(4).tolist(), "text": rows["piece"].astype(str).tolist(),
                       "customdata": rows["token_id"].tolist(), "name": str(group),
                       "marker": {"size": 5 if group == "other" else 7,
                                  "color": "#bbbbbb" if group == "other" else PALETTE[i % len(PALETTE)],
                                  "opacity": 0.6 if group == "other" else 0.9},
                       "hovertemplate": "%{text} (id %{customdata})<br>pc1 %{x}<br>pc2 %{y}<extra>%{fullData.name}"
                                        "</extra>"})
    hits = matching_tokens(table, query)
    if query and not hits:
        note_lines.append(f"no token piece equals any of: {query}")
    found = at[at["token_id"].isin(hits)]
    if not found.empty:
        traces.append({"type": "scatter", "mode": "markers+text", "x": found["pc1"].tolist(),
                       "y": found["pc2"].tolist(), "text": found["piece"].astype(str).tolist(),
                       "textposition": "top center", "name": "search",
                       "marker": {"size": 14, "color": "rgba(0,0,0,0)", "line": {"color": "#d62728", "width": 2}}})
    figure = {"data": traces, "layout": {
        "height": 560, "margin": {"l": 50, "r": 10, "t": 40, "b": 50},
        "title": {"text": f"{name} · token embeddings at step {step} (shared PCA basis)", "font": {"size": 14}},
        "xaxis": {"title": {"text": pc_title(store, name, 0)}, "range": x_range},
        "yaxis": {"title": {"text": pc_title(store, name, 1)}, "range": y_range},
        "legend": {"orientation": "h", "y": -0.15}, "uirevision": name}}
    return figure, note_lines


def trajectory_figure(store, name, query="", step=None):
    """Paths of the tracked tokens through PC space over all steps; the slider's step is the bold point.
    Returns (figure, notes)."""
    table = pca_table(store, name)
    tracked = _tracked(table, query)
    if not tracked:
        raise Missing("type tokens to follow (comma-separated) to see their trajectories")
    note_lines = []
    if len(tracked) > MAX_TRACKED:
        note_lines.append(f"tracing the first {MAX_TRACKED} of {len(tracked)} tokens")
        tracked = tracked[:MAX_TRACKED]
    traces = []
    for i, token_id in enumerate(tracked):
        rows = table[table["token_id"] == token_id].sort_values("step")
        color = PALETTE[i % len(PALETTE)]
        piece = str(rows["piece"].iloc[0])
        # arrows point along the path (from the previous step); an open circle marks the first step
        traces.append({"type": "scatter", "mode": "lines+markers", "x": rows["pc1"].round(4).tolist(),
                       "y": rows["pc2"].round(4).tolist(), "customdata": rows["step"].tolist(), "name": piece,
                       "line": {"color": color}, "marker": {"size": 9, "symbol": "arrow", "angleref": "previous"},
                       "hovertemplate": f"{piece}<br>step %{{customdata}}<extra></extra>"})
        traces.append({"type": "scatter", "mode": "markers", "x": rows["pc1"].head(1).round(4).tolist(),
                       "y": rows["pc2"].head(1).round(4).tolist(), "showlegend": False, "hoverinfo": "skip",
                       "marker": {"size": 11, "symbol": "circle-open", "color": color, "line": {"width": 2}}})
        now = rows[rows["step"] == step]
        if not now.empty:
            traces.append({"type": "scatter", "mode": "markers+text", "x": now["pc1"].tolist(),
                           "y": now["pc2"].tolist(), "text": [piece], "textposition": "top center",
                           "showlegend": False, "marker": {"size": 12, "color": color}, "hoverinfo": "skip"})
    figure = {"data": traces, "layout": {
        "height": 560, "margin": {"l": 50, "r": 10, "t": 40, "b": 50},
        "title": {"text": "trajectories across checkpoints (○ first step, arrows point forward)",
                  "font": {"size": 14}},
        "uirevision": f"{name}{query}",
        "xaxis": {"title": {"text": pc_title(store, name, 0)}}, "yaxis": {"title": {"text": pc_title(store, name, 1)}},
        "legend": {"orientation": "h", "y": -0.15}}}
    return figure, note_lines


def register(app, store):
    keep_zoom(app, "embd-fig", "embd-traj")

    @app.callback(Output("embd-step", "max"), Output("embd-step", "marks"), Output("embd-step", "value"),
                  Input("run", "value"), Input("version", "data"), State("embd-step", "value"),
                  State("embd-step", "max"), State("embd-step", "marks"), State("page-view", "data"))
    @guard(lambda text, kind: (0, {}, 0))
    def update_steps(run, _version, index, old_max, old_marks, view=None):
        keep = (view or {}).get("step") if triggered_id() == "run" else None
        return slider_update(pca_steps(store, run), index, old_max, old_marks, follow=False, keep_step=keep)

    @app.callback(Output("embd-fig-next", "data"), Output("embd-msg", "children"),
                  Output("embd-step-caption", "children"),
                  Input("run", "value"), Input("embd-step", "value"), Input("embd-search", "value"))
    @guard(figure_or_message(1))
    def update_scatter(run, index, query):
        steps = pca_steps(store, run)
        step = step_at(steps, index)
        figure, note_lines = scatter_figure(store, run, step, query or "")
        return figure, notes(*note_lines), f"step {step}"

    @app.callback(Output("embd-traj-next", "data"), Output("embd-traj-msg", "children"),
                  Input("run", "value"), Input("embd-search", "value"), Input("embd-step", "value"))
    @guard(figure_or_message())
    def update_trajectories(run, query, index):
        steps = pca_steps(store, run)
        figure, note_lines = trajectory_figure(store, run, query or "", step_at(steps, index))
        return figure, notes(*note_lines)

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("embd-step", "value"),
                  Input("embd-search", "value"), State("run", "value"), State("page-view", "data"),
                  prevent_initial_call=True)
    def remember_view(index, query, run, view):
        try:
            steps = pca_steps(store, run)
        except (Missing, UnknownName):
            return no_update
        return remember(view, step=step_at(steps, index) if steps else None, q=query)

    @app.callback(Output("embd-compare", "children"), Output("embd-compare-msg", "children"),
                  Input("cmp", "value"), Input("run", "value"), Input("embd-step", "value"),
                  Input("embd-search", "value"))
    @guard(lambda text, kind: (None, message(text, kind)))
    def update_compare(cmp, run, index, query):
        others = [c for c in cmp or [] if c != run]
        if not others:
            return None, message("pick runs to compare in the header to see their embeddings beside these", "note")
        steps = pca_steps(store, run)
        step = step_at(steps, index)
        graphs, note_lines = [], []
        for other in others:
            try:
                theirs = pca_steps(store, other)
                at = theirs[nearest_index(theirs, step)]
                figure, _ = scatter_figure(store, other, at, query or "")
            except Missing as e:
                note_lines.append(f"{other}: {e}")
                continue
            figure["layout"]["title"]["text"] += nearest_label(at, step)
            graphs.append(html.Div(dcc.Graph(figure=figure, config=GRAPH_CONFIG), className="col"))
        return graphs or None, notes(*note_lines)

    return update_steps, update_scatter, update_trajectories, update_compare, remember_view
