"""Generations page: per checkpoint, each prompt with the generated text and the expected continuation, with
their metrics (tables/generations.csv from eval.py), and how the comparison scores move across steps."""
from dash import Input, Output, State, dcc, html, no_update

from dash_llama.data import Missing, UnknownName
from dash_llama.ui import (PALETTE, checkpoint_slider, figure_or_message, guard, keep_unchanged, keep_zoom, message,
                           remember, slider_update, step_axis_type, step_caption, table, table_data, triggered_id,
                           view_slider, zoomable_graph)

TEXT_COLUMNS = ["prompt_id", "prompt_kind", "prompt_text", "generated_text", "expected_text"]
SCORE_COLUMNS = ["bleu", "rougeL", "prefix_token_acc", "first_divergence", "ppl_ref"]
KINDS = {"all": "all prompts", "val_prefix": "validation prefixes", "bos": "BOS only"}


def layout(store=None, view=None):
    view = view or {}
    steps, index = view_slider(store, view.get("run"), generation_steps, view.get("step"))
    return html.Div([
        html.H2("Generations"),
        html.Div(className="controls", children=[
            html.Label(["Checkpoint", checkpoint_slider("gen-step", steps, index),
                        step_caption("gen-step-caption", steps, index)], className="slider wide"),
            html.Label(["Prompts", dcc.RadioItems(id="gen-kind", options=[{"label": v, "value": k}
                                                                          for k, v in KINDS.items()],
                                                  value=view.get("kind") if view.get("kind") in KINDS else "all",
                                                  inline=True)]),
            html.Label(["Extra metric columns", dcc.Dropdown(id="gen-metrics", multi=True)], className="grow"),
        ]),
        html.Div(id="gen-msg"),
        table("gen-table", page_size=8),
        html.H3("Comparison with the expected continuation, per checkpoint"),
        html.Div(id="gen-fig-msg"),
        zoomable_graph("gen-fig"),
    ])


def generation_steps(store, name):
    return sorted(store.table(name, "generations")["step"].unique().tolist())


def metric_columns(store, name):
    """Numeric per-generation metric columns beyond the comparison scores (the shared metric set)."""
    gens = store.table(name, "generations")
    skip = set(TEXT_COLUMNS) | set(SCORE_COLUMNS) | {"step"}
    return [c for c in gens.columns if c not in skip and gens[c].dtype.kind in "fiub"]


def generations_table(store, name, step, kind="all", extra_metrics=()):
    """(columns, records) of the generations at `step`: texts, comparison scores, chosen metrics."""
    gens = store.table(name, "generations")
    rows = gens[gens["step"] == step]
    if kind != "all":
        rows = rows[rows["prompt_kind"] == kind]
    if rows.empty:
        raise Missing(f"no generations for step {step} ({KINDS.get(kind, kind)}) in {name}/tables/generations.csv")
    columns = [c for c in TEXT_COLUMNS + SCORE_COLUMNS + list(extra_metrics or []) if c in rows.columns]
    return table_data(rows[columns])


def scores_figure(store, name, step=None, axis="auto"):
    """Mean BLEU, ROUGE-L and prefix token accuracy of the validation-prefix prompts against step."""
    gens = store.table(name, "generations")
    if "prompt_kind" in gens.columns and (gens["prompt_kind"] == "val_prefix").any():
        gens = gens[gens["prompt_kind"] == "val_prefix"]
    scores = [c for c in ("bleu", "rougeL", "prefix_token_acc") if c in gens.columns]
    if not scores:
        raise Missing(f"{name}/tables/generations.csv has no comparison scores (bleu, rougeL, prefix_token_acc)")
    means = gens.groupby("step")[scores].mean().reset_index()
    # BLEU is 0–100 in sacrebleu, the others 0–1: put BLEU on its own axis
    traces = [{"type": "scatter", "mode": "lines+markers", "x": means["step"].tolist(),
               "y": means[c].round(4).tolist(), "name": c, "line": {"color": PALETTE[i]},
               "yaxis": "y2" if c == "bleu" else "y"} for i, c in enumerate(scores)]
    x_type = step_axis_type(axis, means["step"].tolist())
    layout = {"height": 360, "margin": {"l": 60, "r": 60, "t": 20, "b": 50}, "uirevision": f"{name}{x_type}",
              "xaxis": {"title": {"text": "step" + (" (log)" if x_type == "log" else "")}, "type": x_type},
              "yaxis": {"title": {"text": "ROUGE-L / token accuracy"}},
              "yaxis2": {"title": {"text": "BLEU"}, "overlaying": "y", "side": "right"},
              "legend": {"orientation": "h", "y": -0.25}}
    if step is not None:
        layout["shapes"] = [{"type": "line", "xref": "x", "yref": "paper", "x0": step, "x1": step, "y0": 0,
                             "y1": 1, "line": {"color": "#444", "dash": "dot"}}]
    return {"data": traces, "layout": layout}


def register(app, store):
    keep_zoom(app, "gen-fig")

    @app.callback(Output("gen-step", "max"), Output("gen-step", "marks"), Output("gen-step", "value"),
                  Output("gen-metrics", "options"),
                  Input("run", "value"), Input("version", "data"), State("gen-step", "value"),
                  State("gen-step", "max"), State("gen-step", "marks"), State("gen-metrics", "options"),
                  State("page-view", "data"))
    @guard(lambda text, kind: (0, {}, 0, []))
    def update_steps(run, _version, index, old_max, old_marks, old_options, view=None):
        keep = (view or {}).get("step") if triggered_id() == "run" else None
        slider = slider_update(generation_steps(store, run), index, old_max, old_marks, follow=False, keep_step=keep)
        options = [{"label": c, "value": c} for c in metric_columns(store, run)]
        return slider + keep_unchanged((options, old_options))

    @app.callback(Output("gen-table", "columns"), Output("gen-table", "data"), Output("gen-msg", "children"),
                  Output("gen-step-caption", "children"),
                  Input("run", "value"), Input("gen-step", "value"), Input("gen-kind", "value"),
                  Input("gen-metrics", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind), no_update))
    def update_table(run, index, kind, extra):
        steps = generation_steps(store, run)
        step = steps[min(index or 0, len(steps) - 1)]
        columns, data = generations_table(store, run, step, kind or "all", extra or [])
        return columns, data, message(f"step {step}: {len(data)} generations", "note"), f"step {step}"

    @app.callback(Output("gen-fig-next", "data"), Output("gen-fig-msg", "children"),
                  Input("run", "value"), Input("gen-step", "value"), Input("axis", "value"), Input("version", "data"))
    @guard(figure_or_message())
    def update_figure(run, index, axis, _version):
        steps = generation_steps(store, run)
        return scores_figure(store, run, steps[min(index or 0, len(steps) - 1)], axis), None

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("gen-step", "value"),
                  Input("gen-kind", "value"), State("run", "value"), State("page-view", "data"),
                  prevent_initial_call=True)
    def remember_view(index, kind, run, view):
        try:
            steps = generation_steps(store, run)
        except (Missing, UnknownName):
            return no_update
        return remember(view, step=steps[min(index or 0, len(steps) - 1)] if steps else None,
                        kind=None if kind == "all" else kind)

    return update_steps, update_table, update_figure, remember_view
