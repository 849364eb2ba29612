"""Generations page: per checkpoint, each prompt with the generated text and the expected continuation, with
their metrics (tables/generations.csv from eval.py), and how the comparison scores move across steps."""
import difflib
import re

import pandas as pd
from dash import Input, Output, State, dcc, html, no_update

from dash_llama.data import Missing, UnknownName
from dash_llama.ui import (PALETTE, checkpoint_slider, figure_or_message, guard, keep_unchanged, keep_zoom, message,
                           nearest_index, remember, slider_update, step_axis_type, step_caption, table, table_data,
                           step_at, triggered_id, view_slider, zoomable_graph)

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


def _escape_md(word):
    return re.sub(r"([\\`*_~\[\]<>#|])", r"\\\1", word)


def word_diff(before, after):
    """Markdown of the word-level edit from `before` to `after`: removed words ~~struck~~, added ones **bold**."""
    a, b = str(before or "").split(), str(after or "").split()
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        old, new = " ".join(map(_escape_md, a[i1:i2])), " ".join(map(_escape_md, b[j1:j2]))
        if op == "equal":
            parts.append(old)
        if op in ("delete", "replace"):
            parts.append(f"~~{old}~~")
        if op in ("insert", "replace"):
            parts.append(f"**{new}**")
    return " ".join(parts)


def _rows_at(store, name, step, kind):
    """(rows of generations.csv at the run's step nearest `step`, that step, the run's final step)."""
    gens = store.table(name, "generations")
    steps = sorted(gens["step"].unique().tolist())
    if not steps:
        raise Missing(f"{name}/tables/generations.csv has no rows — run `python eval.py --out_dir "
                      f"{store.out_dir.as_posix()}/{name}`")
    at = steps[nearest_index(steps, step)]
    rows = gens[gens["step"] == at]
    if kind != "all":
        rows = rows[rows["prompt_kind"] == kind]
    final = gens[gens["step"] == steps[-1]].drop_duplicates("prompt_id").set_index("prompt_id")["generated_text"]
    rows = rows.assign(final_text=rows["prompt_id"].map(final))
    rows = rows.assign(diff=[word_diff(k, f) for k, f in zip(rows["generated_text"], rows["final_text"])])
    return rows, at, steps[-1]


def generations_table(store, name, step, kind="all", extra_metrics=(), compare=()):
    """(columns, records) of the generations at `step`: texts, the same prompt's text at the final step and the
    word diff between them, comparison scores, chosen metrics; then the compared runs' rows at their nearest
    step (a run column says whose)."""
    gens = store.table(name, "generations")
    if step not in set(gens["step"]):
        raise Missing(f"no generations for step {step} in {name}/tables/generations.csv")
    frames, final_steps = [], []
    for run in [name] + [c for c in compare or [] if c != name]:
        try:
            rows, at, final = _rows_at(store, run, step, kind)
        except Missing:
            if run == name:
                raise
            continue
        frames.append(rows.assign(run=run, step=at))
        final_steps.append(final)
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise Missing(f"no generations for step {step} ({KINDS.get(kind, kind)}) in {name}/tables/generations.csv")
    lead = ["run", "step"] if len(frames) > 1 else []
    texts = ["prompt_id", "prompt_kind", "prompt_text", "generated_text", "final_text", "diff", "expected_text"]
    columns = [c for c in lead + texts + SCORE_COLUMNS + list(extra_metrics or []) if c in rows.columns]
    table_columns, records = table_data(rows[columns])
    final_label = f"final step {final_steps[0]}" if len(set(final_steps)) == 1 else "the run's final step"
    names = {"generated_text": f"generated at step {step}" if not lead else "generated at step",
             "final_text": f"generated at {final_label}",
             "diff": f"step {step} → final (~~removed~~ **added**)"}
    for column in table_columns:
        column["name"] = names.get(column["id"], column["name"])
        if column["id"] == "diff":
            column["presentation"] = "markdown"
    return table_columns, records


def _mean_scores(store, name):
    gens = store.table(name, "generations")
    if "prompt_kind" in gens.columns and (gens["prompt_kind"] == "val_prefix").any():
        gens = gens[gens["prompt_kind"] == "val_prefix"]
    scores = [c for c in ("bleu", "rougeL", "prefix_token_acc") if c in gens.columns]
    if not scores:
        raise Missing(f"{name}/tables/generations.csv has no comparison scores (bleu, rougeL, prefix_token_acc)")
    return gens.groupby("step")[scores].mean().reset_index(), scores


def scores_figure(store, name, step=None, axis="auto", compare=()):
    """Mean BLEU, ROUGE-L and prefix token accuracy of the validation-prefix prompts against step; compared
    runs dashed (same colour per score)."""
    means, scores = _mean_scores(store, name)
    # BLEU is 0–100 in sacrebleu, the others 0–1: put BLEU on its own axis
    traces = [{"type": "scatter", "mode": "lines+markers", "x": means["step"].tolist(),
               "y": means[c].round(4).tolist(), "name": c, "line": {"color": PALETTE[i]},
               "yaxis": "y2" if c == "bleu" else "y"} for i, c in enumerate(scores)]
    for k, other in enumerate(c for c in compare or [] if c != name):
        try:
            theirs, _ = _mean_scores(store, other)
        except Missing:
            continue
        traces += [{"type": "scatter", "mode": "lines+markers", "x": theirs["step"].tolist(),
                    "y": theirs[c].round(4).tolist(), "name": f"{other} · {c}", "yaxis": "y2" if c == "bleu" else "y",
                    "line": {"color": PALETTE[i], "dash": ["dash", "dot", "dashdot"][k % 3]}, "marker": {"size": 4}}
                   for i, c in enumerate(scores) if c in theirs.columns]
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
                  Input("gen-metrics", "value"), Input("cmp", "value"))
    @guard(lambda text, kind: ([], [], message(text, kind), no_update))
    def update_table(run, index, kind, extra, cmp):
        steps = generation_steps(store, run)
        step = step_at(steps, index)
        columns, data = generations_table(store, run, step, kind or "all", extra or [], cmp or [])
        return columns, data, message(f"step {step}: {len(data)} generations", "note"), f"step {step}"

    @app.callback(Output("gen-fig-next", "data"), Output("gen-fig-msg", "children"),
                  Input("run", "value"), Input("gen-step", "value"), Input("axis", "value"), Input("cmp", "value"),
                  Input("version", "data"))
    @guard(figure_or_message())
    def update_figure(run, index, axis, cmp, _version):
        steps = generation_steps(store, run)
        return scores_figure(store, run, step_at(steps, index), axis, cmp or []), None

    @app.callback(Output("page-view", "data", allow_duplicate=True), Input("gen-step", "value"),
                  Input("gen-kind", "value"), State("run", "value"), State("page-view", "data"),
                  prevent_initial_call=True)
    def remember_view(index, kind, run, view):
        try:
            steps = generation_steps(store, run)
        except (Missing, UnknownName):
            return no_update
        return remember(view, step=step_at(steps, index) if steps else None,
                        kind=None if kind == "all" else kind)

    return update_steps, update_table, update_figure, remember_view
