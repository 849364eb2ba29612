"""Attention page: the layer × head grid of attention maps for one probe at one checkpoint (the maps the
training run captured in its real forward pass), a click on a head enlarges it, and per-head statistics
across steps (tables/attn_stats.csv from visualize_attn.py)."""
import numpy as np
from dash import Input, Output, State, dcc, html, no_update

from dash_llama.data import Missing, UnknownName
from dash_llama.ui import (GRAPH_CONFIG, MANY_COLOURS, checkpoint_slider, figure_or_message, guard, int_or_none,
                           keep_unchanged, keep_zoom, message, nearest_index, nearest_label, notes, remember,
                           run_colour, slider_update, step_axis_type, step_caption, triggered_id, typed_array,
                           step_at, view_slider, zoomable_graph)

GRID_CELLS = 160_000   # attention values drawn in the whole grid; longer probes are cropped (with a note)
HEAD_MAX_T = 256       # an enlarged head shows at most this many positions
LABELLED_T = 128       # up to this many positions, every token is labelled on the enlarged head's axes
STATS = {"entropy": "attention entropy (nats)", "prev_token": "previous-token score",
         "induction": "induction score"}


def parse_head(text):
    """{'layer': L, 'head': H} from the URL's 'L.H' (layer 0, head 0 when absent or malformed)."""
    parts = str(text or "").split(".")
    if len(parts) == 2 and all(int_or_none(p) is not None and int_or_none(p) >= 0 for p in parts):
        return {"layer": int(parts[0]), "head": int(parts[1])}
    return {"layer": 0, "head": 0}


def layout(store=None, view=None):
    view = view or {}
    steps, index = view_slider(store, view.get("run"), lambda st, r: st.checkpoint_steps(r), view.get("step"))
    return html.Div([
        html.H2("Attention"),
        html.Div(className="controls", children=[
            html.Label(["Probe", dcc.Dropdown(id="attn-probe", clearable=False, value=view.get("probe"))],
                       className="grow"),
            html.Label(["Checkpoint", checkpoint_slider("attn-step", steps, index),
                        step_caption("attn-step-caption", steps, index)], className="slider wide"),
        ]),
        html.Div(id="attn-msg"),
        dcc.Graph(id="attn-grid", config=GRAPH_CONFIG),
        html.Div(className="row", children=[
            html.Div(className="col", children=[
                html.H3("Selected head (click one in the grid)"),
                html.Div(id="attn-head-msg"),
                dcc.Graph(id="attn-head", config=GRAPH_CONFIG)]),
            html.Div(className="col", children=[
                html.H3("Per-head statistics across steps"),
                dcc.Dropdown(id="attn-stat", options=[{"label": v, "value": k} for k, v in STATS.items()],
                             value=view.get("stat") if view.get("stat") in STATS else "induction", clearable=False),
                html.Div(id="attn-stats-msg"),
                zoomable_graph("attn-stats")]),
        ]),
        html.H3("The same head in the compared runs (header: compare)"),
        html.Div(id="attn-compare-msg"),
        html.Div(id="attn-compare", className="row"),
        dcc.Store(id="attn-head-sel", data=parse_head(view.get("head"))),
    ])


def probe_names(store, name):
    probes = store.run(name).probes
    return [p["name"] for p in probes if isinstance(p, dict) and "name" in p]


def _probe_maps(store, name, step, probe):
    """([n_layers, n_heads, T, T] float32 attention, token labels) of `probe` at checkpoint `step`."""
    ckpt = store.checkpoint(name, step)
    maps = ckpt.get("probe_attn") or {}
    if probe not in maps:
        have = ", ".join(maps) or "none"
        raise Missing(f"checkpoint step {step} of {name} has no attention for probe {probe!r} (has: {have})")
    attn = maps[probe].float().numpy()
    tokens = next((p.get("tokens", []) for p in store.run(name).probes if p.get("name") == probe), [])
    pieces = store.token_labels(name, tokens[:attn.shape[-1]]) if tokens else []
    labels = [f"{i}:{pieces[i]}" if i < len(pieces) else str(i) for i in range(attn.shape[-1])]
    return attn, labels


def grid_figure(store, name, step, probe):
    """All heads as small heatmaps (rows = layers, columns = heads); hover shows query/key tokens.
    Returns (figure, notes)."""
    attn, labels = _probe_maps(store, name, step, probe)
    n_layers, n_heads, T, _ = attn.shape
    shown = int(min(T, max(8, np.sqrt(GRID_CELLS / (n_layers * n_heads)))))
    note = (f"probe has {T} positions; the grid shows the first {shown} (click a head to see up to "
            f"{min(T, HEAD_MAX_T)})") if shown < T else ""
    labels = labels[:shown]
    gap = 0.012
    traces, layout = [], {"height": max(320, 150 * n_layers + 60), "margin": {"l": 40, "r": 10, "t": 40, "b": 10},
                          "annotations": [], "hovermode": "closest", "uirevision": f"{name}{probe}"}
    for layer in range(n_layers):
        for head in range(n_heads):
            k = layer * n_heads + head + 1
            axis = "" if k == 1 else str(k)
            x0, x1 = head / n_heads + gap, (head + 1) / n_heads - gap
            y1, y0 = 1 - layer / n_layers - gap, 1 - (layer + 1) / n_layers + gap
            traces.append({"type": "heatmap", "z": typed_array(attn[layer, head, :shown, :shown]),
                           "x": labels, "y": labels, "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                           "coloraxis": "coloraxis", "name": f"L{layer} H{head}",
                           "hovertemplate": f"L{layer} H{head}<br>query %{{y}}<br>key %{{x}}<br>p = %{{z:.3f}}"
                                            "<extra></extra>"})
            layout[f"xaxis{axis}"] = {"domain": [x0, x1], "anchor": f"y{axis}", "showticklabels": False,
                                      "type": "category", "ticks": ""}
            layout[f"yaxis{axis}"] = {"domain": [y0, y1], "anchor": f"x{axis}", "showticklabels": False,
                                      "type": "category", "autorange": "reversed", "ticks": ""}
            if layer == 0:
                layout["annotations"].append({"text": f"head {head}", "x": (x0 + x1) / 2, "y": 1.0,
                                              "xref": "paper", "yref": "paper", "yanchor": "bottom",
                                              "showarrow": False, "font": {"size": 11}})
        layout["annotations"].append({"text": f"L{layer}", "x": 0, "y": 1 - (layer + 0.5) / n_layers,
                                      "xref": "paper", "yref": "paper", "xanchor": "right", "showarrow": False,
                                      "font": {"size": 11}})
    layout["coloraxis"] = {"colorscale": "Viridis", "cmin": 0, "cmax": 1,
                           "colorbar": {"title": {"text": "p"}, "thickness": 12}}
    layout["title"] = {"text": f"{name} · step {step} · probe {probe}", "font": {"size": 14}}
    return {"data": traces, "layout": layout}, [note]


def head_from_click(click_data, n_heads):
    """(layer, head) of the grid heatmap that was clicked (traces are laid out layer-major)."""
    k = int(click_data["points"][0]["curveNumber"])
    return k // n_heads, k % n_heads


def head_figure(store, name, step, probe, layer, head, title_prefix=""):
    """One head enlarged with token labels on the axes (when short enough to read). Returns (figure, notes)."""
    attn, labels = _probe_maps(store, name, step, probe)
    n_layers, n_heads, T, _ = attn.shape
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise Missing(f"no head L{layer} H{head} in this model ({n_layers} layers × {n_heads} heads)")
    shown = min(T, HEAD_MAX_T)
    note = f"showing the first {shown} of {T} positions" if shown < T else ""
    labels = labels[:shown]
    figure = {"data": [{"type": "heatmap", "z": typed_array(attn[layer, head, :shown, :shown]),
                        "x": labels, "y": labels, "colorscale": "Viridis", "zmin": 0, "zmax": 1,
                        "hovertemplate": "query %{y}<br>key %{x}<br>p = %{z:.4f}<extra></extra>"}],
              "layout": {"height": 520, "margin": {"l": 90, "r": 10, "t": 40, "b": 90},
                         "title": {"text": f"{title_prefix}layer {layer} · head {head} · step {step}",
                                   "font": {"size": 14}},
                         "xaxis": {"type": "category", "showticklabels": shown <= LABELLED_T, "tickfont": {"size": 8},
                                   "title": {"text": "key"}, "tickangle": -90},
                         "yaxis": {"type": "category", "autorange": "reversed", "showticklabels": shown <= LABELLED_T,
                                   "tickfont": {"size": 8}, "title": {"text": "query"}}}}
    if shown <= LABELLED_T:  # room for one readable label per position
        figure["layout"]["height"] = max(520, 7 * shown + 160)
        figure["layout"]["margin"].update({"l": 110, "b": 110})
    return figure, [note]


def compared_heads(store, names, step, probe, layer, head):
    """The selected head in each compared run, at its checkpoint nearest `step` (labelled when not equal).
    Returns ([figure], notes); a run without that probe or head gets a note instead of a figure."""
    figures, note_lines = [], []
    for name in names:
        steps = store.checkpoint_steps(name)
        if not steps:
            note_lines.append(f"{name}: no checkpoints yet")
            continue
        at = steps[nearest_index(steps, step)]
        probes = probe_names(store, name)
        use = probe if probe in probes else (probes[0] if probes else None)
        if use is None:
            note_lines.append(f"{name}: no probes recorded (attn_probes.json)")
            continue
        try:
            figure, _ = head_figure(store, name, at, use, layer, head, title_prefix=f"{name} · ")
        except Missing as e:
            note_lines.append(f"{name}: {e}")
            continue
        figure["layout"]["title"]["text"] += nearest_label(at, step) + ("" if use == probe else f" · probe {use}")
        figures.append(figure)
    return figures, note_lines


def stats_figure(store, name, stat, step=None, selected=None, axis="auto", compare=()):
    """Each head's `stat` against step (one line per layer·head, each its own colour), the selected head bold,
    the slider's step marked. Returns (figure, notes)."""
    stats = store.table(name, "attn_stats")
    if stat not in stats.columns:
        raise Missing(f"{name}/tables/attn_stats.csv has no column {stat!r} (has: {', '.join(stats.columns)})")
    traces = []
    for i, ((layer, head), rows) in enumerate(stats.sort_values("step").groupby(["layer", "head"])):
        is_selected = selected is not None and (int(layer), int(head)) == tuple(selected)
        traces.append({"type": "scatter", "mode": "lines", "x": rows["step"].tolist(),
                       "y": rows[stat].round(4).tolist(), "name": f"L{layer} H{head}",
                       "line": {"width": 4 if is_selected else 1.2, "color": MANY_COLOURS[i % len(MANY_COLOURS)]},
                       "opacity": 1 if is_selected else 0.6})
    for i, other in enumerate(compare or []):  # the selected head of each compared run, dashed
        try:
            theirs = store.table(other, "attn_stats")
        except Missing:
            continue
        if selected is None or stat not in theirs.columns:
            continue
        rows = theirs[(theirs["layer"] == selected[0]) & (theirs["head"] == selected[1])].sort_values("step")
        traces.append({"type": "scatter", "mode": "lines", "x": rows["step"].tolist(),
                       "y": rows[stat].round(4).tolist(), "name": f"{other} · L{selected[0]} H{selected[1]}",
                       "line": {"width": 3, "dash": "dash", "color": run_colour(i + 1)}})
    x_type = step_axis_type(axis, sorted(stats["step"].unique()))
    layout = {"height": 520, "margin": {"l": 60, "r": 10, "t": 30, "b": 50}, "uirevision": f"{name}{stat}{x_type}",
              "xaxis": {"title": {"text": "step" + (" (log)" if x_type == "log" else "")}, "type": x_type},
              "yaxis": {"title": {"text": STATS.get(stat, stat)}},
              "showlegend": len(traces) <= 24}
    if step is not None:
        layout["shapes"] = [{"type": "line", "xref": "x", "yref": "y domain", "x0": step, "x1": step, "y0": 0,
                             "y1": 1, "line": {"color": "#444", "dash": "dot"}}]
    return {"data": traces, "layout": layout}, []


def register(app, store):
    keep_zoom(app, "attn-stats")

    @app.callback(Output("attn-probe", "options"), Output("attn-probe", "value"),
                  Output("attn-step", "max"), Output("attn-step", "marks"), Output("attn-step", "value"),
                  Output("attn-msg", "children", allow_duplicate=True),
                  Input("run", "value"), Input("version", "data"),
                  State("attn-probe", "options"), State("attn-probe", "value"), State("attn-step", "value"),
                  State("attn-step", "max"), State("attn-step", "marks"), State("page-view", "data"),
                  prevent_initial_call="initial_duplicate")
    @guard(lambda text, kind: ([], None, 0, {}, 0, message(text, kind)))
    def update_controls(run, _version, old_options, probe, index, old_max, old_marks, view=None):
        probes = probe_names(store, run)
        steps = store.checkpoint_steps(run)
        if not steps:
            raise Missing(f"{run} has no checkpoints yet — they appear here as training writes them")
        options = [{"label": p, "value": p} for p in probes]
        new_probe = probe if probe in probes else (probes[0] if probes else None)
        # a new run keeps the step the user was looking at (its nearest checkpoint); a refresh keeps the slider
        keep = (view or {}).get("step") if triggered_id() == "run" else None
        slider = slider_update(steps, index, old_max, old_marks, follow=False, keep_step=keep)
        return keep_unchanged((options, old_options), (new_probe, probe)) + slider + (None,)

    @app.callback(Output("attn-grid", "figure"), Output("attn-msg", "children"),
                  Output("attn-step-caption", "children"),
                  Input("run", "value"), Input("attn-step", "value"), Input("attn-probe", "value"))
    @guard(figure_or_message(1))
    def update_grid(run, index, probe):
        if probe not in probe_names(store, run):
            raise Missing(f"{run} has no probes recorded (attn_probes.json)")
        steps = store.checkpoint_steps(run)
        step = step_at(steps, index)
        figure, note_lines = grid_figure(store, run, step, probe)
        return figure, notes(*note_lines), f"step {step}"

    @app.callback(Output("attn-head-sel", "data"), Input("attn-grid", "clickData"), State("run", "value"),
                  State("attn-step", "value"))
    def select_head(click, run, index):
        if not click:
            return no_update
        try:
            n_heads = int(store.config(run).get("n_heads"))
            layer, head = head_from_click(click, n_heads)
        except (Missing, KeyError, TypeError, ValueError, IndexError):
            return no_update
        return {"layer": layer, "head": head}

    @app.callback(Output("attn-head", "figure"), Output("attn-head-msg", "children"),
                  Input("attn-head-sel", "data"), Input("run", "value"), Input("attn-step", "value"),
                  Input("attn-probe", "value"))
    @guard(figure_or_message())
    def update_head(selected, run, index, probe):
        if probe not in probe_names(store, run):
            raise Missing("no probe selected")
        step = store.checkpoint_steps(run)[index or 0]
        figure, note_lines = head_figure(store, run, step, probe, selected["layer"], selected["head"])
        return figure, notes(*note_lines)

    @app.callback(Output("attn-stats-next", "data"), Output("attn-stats-msg", "children"),
                  Input("run", "value"), Input("attn-stat", "value"), Input("attn-step", "value"),
                  Input("attn-head-sel", "data"), Input("axis", "value"), Input("cmp", "value"),
                  Input("version", "data"))
    @guard(figure_or_message())
    def update_stats(run, stat, index, selected, axis, cmp, _version):
        steps = store.checkpoint_steps(run)
        step = step_at(steps, index) if steps else None
        figure, note_lines = stats_figure(store, run, stat, step, (selected["layer"], selected["head"]), axis,
                                          [c for c in cmp or [] if c != run])
        return figure, notes(*note_lines)

    @app.callback(Output("attn-compare", "children"), Output("attn-compare-msg", "children"),
                  Input("cmp", "value"), Input("attn-head-sel", "data"), Input("run", "value"),
                  Input("attn-step", "value"), Input("attn-probe", "value"))
    @guard(lambda text, kind: (None, message(text, kind)))
    def update_compare(cmp, selected, run, index, probe):
        others = [c for c in cmp or [] if c != run]
        if not others:
            return None, message("pick runs to compare in the header to see this head beside them", "note")
        steps = store.checkpoint_steps(run)
        step = step_at(steps, index) if steps else None
        figures, note_lines = compared_heads(store, others, step, probe, selected["layer"], selected["head"])
        graphs = [html.Div(dcc.Graph(figure=f, config=GRAPH_CONFIG), className="col") for f in figures]
        return graphs or None, notes(*note_lines)

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("attn-step", "value"),
                  Input("attn-probe", "value"), Input("attn-head-sel", "data"), Input("attn-stat", "value"),
                  State("run", "value"), State("page-view", "data"), prevent_initial_call=True)
    def remember_view(index, probe, selected, stat, run, view):
        try:
            steps = store.checkpoint_steps(run)
        except (Missing, UnknownName):
            return no_update
        step = step_at(steps, index) if steps else (view or {}).get("step")
        return remember(view, step=step, probe=probe, stat=None if stat == "induction" else stat,
                        head=f"{selected['layer']}.{selected['head']}" if selected else None)

    return update_controls, update_grid, select_head, update_head, update_stats, update_compare, remember_view
