"""Small UI helpers shared by the pages: in-place messages, empty figures that say why, and the guard that turns
a missing artifact (or any surprise) into a message instead of a traceback or a blank panel."""
import functools
import textwrap
import traceback
from urllib.parse import parse_qsl, urlencode

import numpy as np
import pandas as pd
from dash import ctx, dash_table, dcc, html, no_update
from dash.exceptions import MissingCallbackContextException
from _plotly_utils.utils import to_typed_array_spec
from scipy.signal import lfilter

from common.errors import UserError
from dash_llama.data import Missing, NoRun, UnknownName

# no plotly logo, and nothing that sends a chart to an online service
GRAPH_CONFIG = {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False,
                "modeBarButtonsToRemove": ["sendDataToCloud"], "toImageButtonOptions": {"format": "png"}}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
# 24 distinguishable colours (plotly's Dark24) for many lines at once, e.g. one per attention head
MANY_COLOURS = ["#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86",
                "#EB663B", "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE",
                "#862A16", "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038"]
# the view lives in the URL: the header's keys (shared by every page) and each page's own, in this order
URL_KEYS = ("run", "cmp", "axis", "step", "metric", "probe", "head", "stat", "q", "kind", "x", "smooth", "exp")
MAX_COMPARE = 3  # runs shown beside the selected one


def parse_query(search):
    """{key: value} of a URL query ('?run=a&step=4'); the first value of a repeated key, unknown keys dropped."""
    params = {}
    for key, value in parse_qsl((search or "").lstrip("?")):
        if key in URL_KEYS and key not in params:
            params[key] = value
    return params


def make_query(params):
    """'?run=a&step=4' from {key: value} in URL_KEYS order; empty values left out ('' when nothing is left)."""
    items = [(k, params[k]) for k in URL_KEYS if params.get(k) not in (None, "", [])]
    items = [(k, ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)) for k, v in items]
    return "?" + urlencode(items, safe=",/") if items else ""


def int_or_none(value):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def step_at(steps, index):
    """The checkpoint step a slider index points at, clamped to the last one (a refresh can shorten the list)."""
    return steps[min(index or 0, len(steps) - 1)]


def nearest_index(steps, step):
    """Index in `steps` of the step closest to `step` (the last one when step is None)."""
    if not steps:
        return 0
    step = int_or_none(step)
    if step is None:
        return len(steps) - 1
    return int(np.argmin([abs(s - step) for s in steps]))


def nearest_label(step, wanted):
    """' (nearest to step K)' when a run has no checkpoint at the step asked for, else ''."""
    return "" if wanted is None or int(step) == int(wanted) else f" (nearest to step {int(wanted)})"


def triggered_id():
    """The id of the input that fired the running callback; None when called directly (tests, bench)."""
    try:
        return ctx.triggered_id
    except MissingCallbackContextException:
        return None


def typed_array(values):
    """A float32 array as plotly.js's base64 typed-array spec (plotly's own encoder): a 24-head attention grid
    encodes in ~30 ms instead of ~450 ms as nested JSON lists, at a third of the size."""
    return to_typed_array_spec(np.ascontiguousarray(values, dtype=np.float32))


def message(text, kind="info"):
    """A visible line in place of a panel: kind 'info' (stage not run yet), 'error' (refused/unreadable)
    or 'note' (e.g. data downsampled for display)."""
    if not text:
        return None
    return html.Div(text, className=f"msg msg-{kind}")


def notes(*texts):
    return [message(t, "note") for t in texts if t] or None


def message_figure(text=""):
    """An empty figure carrying `text` in its middle (wrapped to stay inside it), so a panel is never blank."""
    text = "<br>".join(textwrap.wrap(str(text), 90)) if text else ""
    return {"data": [], "layout": {
        "xaxis": {"visible": False}, "yaxis": {"visible": False}, "height": 260,
        "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        "annotations": [{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5,
                         "y": 0.5, "font": {"size": 14, "color": "#666"}}] if text else []}}


def guard(on_error):
    """Decorate a callback: Missing/UnknownName/UserError → on_error(message, kind); any other exception is
    printed to the server log and shown as a one-line error, never as a traceback in the page."""
    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except NoRun:  # the header already says why no run is selected: one message, not one per panel
                return on_error("", "info")
            except Missing as e:
                return on_error(str(e), "info")
            except (UnknownName, UserError) as e:
                return on_error(str(e), "error")
            except Exception as e:  # noqa: BLE001 — the page must stay usable; details go to the log
                traceback.print_exc()
                return on_error(f"could not build this view: {type(e).__name__}: {e} (details in the server log)",
                                "error")
        return wrapper
    return wrap


def figure_or_message(n_extra=0):
    """on_error for callbacks returning (figure, message, *extra): message figure + message + no_update."""
    from dash import no_update

    def on_error(text, kind):
        return (message_figure(text), message(text, kind)) + (no_update,) * n_extra
    return on_error


def table(id_, page_size=15, **kwargs):
    """A DataTable styled alike on every page: long texts wrap (even words without spaces), an Export button
    downloads the table as CSV."""
    return dash_table.DataTable(
        id=id_, page_size=page_size, sort_action="native", filter_action="native",
        export_format="csv", export_headers="display",
        style_table={"overflowX": "auto"},
        style_cell={"textAlign": "left", "whiteSpace": "normal", "height": "auto", "fontFamily": "inherit",
                    "fontSize": "13px", "maxWidth": "420px", "padding": "4px", "overflowWrap": "anywhere"},
        style_header={"fontWeight": "bold", "backgroundColor": "#f3f3f3"}, **kwargs)


def table_data(frame, digits=4):
    """DataFrame → (columns, records) for a DataTable, floats rounded for reading."""
    frame = frame.copy()
    for c in frame.columns:
        if frame[c].dtype.kind == "f":
            frame[c] = frame[c].round(digits)
    columns = [{"name": str(c), "id": str(c)} for c in frame.columns]
    frame.columns = [str(c) for c in frame.columns]
    return columns, frame.astype(object).where(frame.notna(), None).to_dict("records")


def checkpoint_slider(id_, steps=(), index=0):
    """A slider over checkpoint indices (labelled with steps by slider_update); fires on release."""
    last = max(len(steps) - 1, 0)
    return dcc.Slider(id=id_, min=0, max=last, step=1, value=min(index, last), updatemode="mouseup",
                      allow_direct_input=False, marks=slider_marks(steps) if steps else None)


def step_caption(id_, steps=(), index=0):
    """The line under a checkpoint slider saying which step it is on."""
    return html.Div(f"step {steps[min(index, len(steps) - 1)]}" if steps else "", id=id_, className="step-caption")


def view_slider(store, run, steps_of, wanted_step):
    """(steps, index) for a page's slider at layout time: the checkpoint nearest the URL's step (the last one
    when the URL has none); ([], 0) when the run or its artifact is not there yet (the page's callback says so)."""
    if store is None or run is None:
        return [], 0
    try:
        steps = steps_of(store, run)
    except (Missing, UnknownName, UserError):
        return [], 0
    return steps, nearest_index(steps, wanted_step)


def keep_unchanged(*pairs):
    """(new, old) pairs -> the new values, no_update where nothing changed, so a periodic refresh does not
    re-fire every figure that listens to a control (and keeps what the user is looking at)."""
    return tuple(no_update if new == old else new for new, old in pairs)


def slider_update(steps, index, old_max, old_marks, follow, keep_step=None):
    """(max, marks, value) of a checkpoint slider over `steps`, as keep_unchanged values. The slider follows
    the newest checkpoint while it sits at the end (or when `follow`); otherwise it stays. keep_step (e.g. after
    a run switch: the step the user was looking at) puts it on the nearest checkpoint to that step."""
    last = len(steps) - 1
    stays = not follow and index is not None and index < (old_max or 0)
    if keep_step is not None:
        value = nearest_index(steps, keep_step)
    else:
        value = min(index, last) if stays else last
    marks = slider_marks(steps) if (last != old_max or not old_marks) else old_marks
    return keep_unchanged((last, old_max), (marks, old_marks), (value, index))


def slider_marks(steps, max_marks=8):
    """Marks for a slider over checkpoint indices: up to max_marks step labels, first and last included."""
    n = len(steps)
    idx = range(n) if n <= max_marks else np.unique(np.linspace(0, n - 1, max_marks).round().astype(int))
    return {int(i): str(steps[i]) for i in idx}


def smooth_ema(values, weight):
    """TensorBoard-style debiased exponential moving average (weight 0 = raw); NaNs carry the last value."""
    values = pd.Series(values, dtype=float).ffill().bfill().to_numpy()
    if weight <= 0 or len(values) == 0:
        return values
    ema = lfilter([1 - weight], [1, -weight], values)
    return ema / (1 - weight ** np.arange(1, len(values) + 1))


def remember(view, **keys):
    """The page-view data (the page's URL keys) with `keys` set, None removing one; no_update if unchanged."""
    new = dict(view or {})
    for key, value in keys.items():
        if value is None or value == "":
            new.pop(key, None)
        else:
            new[key] = str(value)
    return no_update if new == (view or {}) else new


def is_log_spaced(steps):
    """True when checkpoints crowd at the start (1, 2, 4, … then every N): the smallest gap is at most a fifth
    of the largest. Evenly spaced checkpoints read better on a linear axis."""
    steps = sorted({int(s) for s in steps if s is not None and s > 0})
    if len(steps) < 4:
        return False
    gaps = np.diff(steps)
    return gaps.min() * 5 <= gaps.max()


def step_axis_type(axis, steps):
    """plotly's axis type for a step (or tokens) axis: the header's choice, 'auto' = log where log-spaced."""
    if axis == "log":
        return "log"
    if axis == "linear":
        return "linear"
    return "log" if is_log_spaced(steps) else "linear"


def run_colour(i):
    return PALETTE[i % len(PALETTE)]


# Redrawn figures keep the user's zoom. plotly's uirevision alone does not survive dcc.Graph here: after a zoom,
# dcc.Graph copies the zoomed axes into its `figure` prop and re-plots, which drops plotly's record of the GUI
# edit, so the next server figure (no range) autoranges again. So the server writes each such figure to a
# store, and this browser-side function copies the zoomed axis ranges of the figure on screen into it when
# both carry the same uirevision (a new run, metric or axis type changes the uirevision and resets the view).
KEEP_ZOOM_JS = """
function(next, current) {
    if (!next) { return window.dash_clientside.no_update; }
    const old = current && current.layout;
    const lay = Object.assign({}, next.layout || {});
    if (old && lay.uirevision !== undefined && old.uirevision === lay.uirevision) {
        for (const key of Object.keys(old)) {
            const ax = old[key];
            if (/^[xy]axis[0-9]*$/.test(key) && ax && ax.autorange === false && Array.isArray(ax.range)) {
                lay[key] = Object.assign({}, lay[key] || {}, {range: ax.range.slice(), autorange: false});
            }
        }
    }
    return Object.assign({}, next, {layout: lay});
}
"""


def zoomable_graph(id_):
    """A dcc.Graph whose figure arrives through the store `<id>-next` (see KEEP_ZOOM_JS): callbacks output
    the figure to (f"{id_}-next", "data")."""
    return html.Div([dcc.Store(id=f"{id_}-next"), dcc.Graph(id=id_, config=GRAPH_CONFIG)])


def keep_zoom(app, *graph_ids):
    """Register the browser-side zoom keeper for each zoomable_graph."""
    from dash import Input, Output, State
    for id_ in graph_ids:
        app.clientside_callback(KEEP_ZOOM_JS, Output(id_, "figure"), Input(f"{id_}-next", "data"),
                                State(id_, "figure"))
