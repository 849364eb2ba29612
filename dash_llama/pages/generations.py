"""Generations page: per checkpoint, each prompt with the generated text and the expected continuation, with
their metrics (tables/generations.csv from eval.py), and how the comparison scores move across steps."""
from dash import Input, Output, State, dcc, html

from dash_llama.data import Missing
from dash_llama.ui import (GRAPH_CONFIG, PALETTE, checkpoint_slider, figure_or_message, guard, keep_unchanged, message,
                           slider_update, table, table_data, triggered_id)

TEXT_COLUMNS = ["prompt_id", "prompt_kind", "prompt_text", "generated_text", "expected_text"]
SCORE_COLUMNS = ["bleu", "rougeL", "prefix_token_acc", "first_divergence", "ppl_ref"]
KINDS = {"all": "all prompts", "val_prefix": "validation prefixes", "bos": "BOS only"}


def layout():
    return html.Div([
        html.H2("Generations"),
        html.Div(className="controls", children=[
            html.Label(["Checkpoint", checkpoint_slider("gen-step")], className="slider wide"),
            html.Label(["Prompts", dcc.RadioItems(id="gen-kind", options=[{"label": v, "value": k}
                                                                          for k, v in KINDS.items()],
                                                  value="all", inline=True)]),
            html.Label(["Extra metric columns", dcc.Dropdown(id="gen-metrics", multi=True)], className="grow"),
        ]),
        html.Div(id="gen-msg"),
        table("gen-table", page_size=8),
        html.H3("Comparison with the expected continuation, per checkpoint"),
        html.Div(id="gen-fig-msg"),
        dcc.Graph(id="gen-fig", config=GRAPH_CONFIG),
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


def scores_figure(store, name, step=None):
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
    layout = {"height": 360, "margin": {"l": 60, "r": 60, "t": 20, "b": 50},
              "xaxis": {"title": {"text": "step"}},
              "yaxis": {"title": {"text": "ROUGE-L / token accuracy"}},
              "yaxis2": {"title": {"text": "BLEU"}, "overlaying": "y", "side": "right"},
              "legend": {"orientation": "h", "y": -0.25}}
    if step is not None:
        layout["shapes"] = [{"type": "line", "xref": "x", "yref": "paper", "x0": step, "x1": step, "y0": 0,
                             "y1": 1, "line": {"color": "#444", "dash": "dot"}}]
    return {"data": traces, "layout": layout}


def register(app, store):
    @app.callback(Output("gen-step", "max"), Output("gen-step", "marks"), Output("gen-step", "value"),
                  Output("gen-metrics", "options"),
                  Input("run", "value"), Input("refresh", "n_intervals"), State("gen-step", "value"),
                  State("gen-step", "max"), State("gen-step", "marks"), State("gen-metrics", "options"))
    @guard(lambda text, kind: (0, {}, 0, []))
    def update_steps(run, _n, index, old_max, old_marks, old_options):
        slider = slider_update(generation_steps(store, run), index, old_max, old_marks,
                               follow=triggered_id() == "run")
        options = [{"label": c, "value": c} for c in metric_columns(store, run)]
        return slider + keep_unchanged((options, old_options))

    @app.callback(Output("gen-table", "columns"), Output("gen-table", "data"), Output("gen-msg", "children"),
                  Input("run", "value"), Input("gen-step", "value"), Input("gen-kind", "value"),
                  Input("gen-metrics", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind)))
    def update_table(run, index, kind, extra):
        steps = generation_steps(store, run)
        step = steps[min(index or 0, len(steps) - 1)]
        columns, data = generations_table(store, run, step, kind or "all", extra or [])
        return columns, data, message(f"step {step}: {len(data)} generations", "note")

    @app.callback(Output("gen-fig", "figure"), Output("gen-fig-msg", "children"),
                  Input("run", "value"), Input("gen-step", "value"), Input("refresh", "n_intervals"))
    @guard(figure_or_message())
    def update_figure(run, index, _n):
        steps = generation_steps(store, run)
        return scores_figure(store, run, steps[min(index or 0, len(steps) - 1)]), None

    return update_steps, update_table, update_figure
