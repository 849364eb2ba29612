"""The dashboard: browse every run and experiment under --out in the browser.

    python dash_llama/app.py [--root .] [--out ROOT/out] [--host 127.0.0.1] [--port 8050] [--refresh 15]

Pages: Runs, Saturation, Attention, Embeddings, Generations, Data, Experiments (one module each in
dash_llama/pages/). The header picks the run, up to three runs to compare with it, the step axis (log where
checkpoints are log-spaced) and pauses the refresh. The URL holds the whole view (header and page controls), so a
reload, a nav link or a link sent to a colleague opens the same view. Runs are discovered under --out (any folder
with a config.json); every --refresh seconds the app checks whether any file changed and only then redraws, keeping
sliders, selections and zoom. Damage to the selected run's files (cut logs, deleted checkpoints, stale tables) is
warned about above every page. Everything is read through the project's shared readers (dash_llama/data.py); a
missing artifact shows a message naming the stage that makes it. Datasets (data/) are read from the project root
(--root, $LLAMA_PREBIAS_ROOT or the working directory), so --out may point elsewhere. Binds 127.0.0.1 unless told
otherwise."""
import argparse
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dash import Dash, Input, Output, State, dcc, html, no_update  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.paths import ROOT_ENV, add_root_argument, apply_root, data_dir  # noqa: E402
from common.paths import out_dir as root_out_dir  # noqa: E402
from dash_llama.data import Missing, Store, UnknownName  # noqa: E402
from dash_llama.pages import attention, data_page, embeddings, experiments, generations, runs, saturation  # noqa: E402
from dash_llama.ui import MAX_COMPARE, make_query, message, parse_query, triggered_id  # noqa: E402

REFRESH_SECONDS = 15   # how often the run folders are checked for new checkpoints, log rows and tables
PAGES = {              # path -> (title, module)
    "/runs": ("Runs", runs),
    "/saturation": ("Saturation", saturation),
    "/attention": ("Attention", attention),
    "/embeddings": ("Embeddings", embeddings),
    "/generations": ("Generations", generations),
    "/data": ("Data", data_page),
    "/experiments": ("Experiments", experiments),
}
HEADER_KEYS = ("run", "cmp", "axis")  # URL keys the header owns; every other key belongs to the page
AXES = {"auto": "auto", "log": "log", "linear": "linear"}


def default_run(names):
    """The run to open first: out/demo if present, else the first top-level run."""
    return "demo" if "demo" in names else (names[0] if names else None)


def pick_run(store, search, current, triggered_by_url):
    """(options, value, message) of the header's run picker. A ?run= from the URL is used only if it names a
    run under --out; anything else (a typo, `../../etc`) is refused with one message and selects nothing."""
    names = store.runs()
    options = [{"label": n, "value": n} for n in names]
    requested = parse_query(search).get("run")
    if requested is not None and triggered_by_url:
        try:
            store.run_dir(requested)
        except UnknownName as e:
            return options, None, message(f"refused: {e}", "error")
        return options, requested, None
    if not names:
        return options, None, message(f"no runs under {store.out_dir} yet — train one with "
                                      f"`python modelling/train.py --out_dir={store.out_dir.as_posix()}/NAME`",
                                      "info")
    if current in names:
        return options, current, None
    return options, default_run(names), None


def pick_compare(store, search, run):
    """The runs to show beside `run`: the URL's cmp= list, kept only where each names a run under --out."""
    names = set(store.runs())
    wanted = [c for c in (parse_query(search).get("cmp") or "").split(",") if c]
    return [c for c in dict.fromkeys(wanted) if c in names and c != run][:MAX_COMPARE]


def resolve_view(store, search):
    """The whole view a URL asks for: its keys, with run and cmp checked against --out (run falls back to
    the default run when the URL names none)."""
    params = parse_query(search)
    _, run, _ = pick_run(store, search, None, triggered_by_url=True)
    return {**params, "run": run, "cmp": pick_compare(store, search, run), "axis": params.get("axis", "auto")}


def render_page(pathname, search="", store=None):
    """The page for `pathname`, its controls set from the URL's query (a reload or a shared link shows the
    same view)."""
    pathname = pathname if pathname not in (None, "", "/") else "/runs"
    if pathname not in PAGES:
        return message(f"no page {pathname!r}: pick one of {', '.join(PAGES)}", "error")
    module = PAGES[pathname][1]
    view = resolve_view(store, search) if store is not None else {"run": None, "cmp": [], "axis": "auto"}
    return module.layout(store, view) if inspect.signature(module.layout).parameters else module.layout()


def page_keys(search):
    """The URL keys that belong to pages (kept across pages: the step you looked at follows you)."""
    return {k: v for k, v in parse_query(search).items() if k not in HEADER_KEYS}


def view_query(run, cmp, axis, page_view):
    """The URL query of the current view: the header's choices and the page's own keys."""
    return make_query({**(page_view or {}), "run": run, "cmp": list(cmp or []),
                       "axis": axis if axis and axis != "auto" else None})


def create_app(out_dir=None, refresh_seconds=REFRESH_SECONDS):
    out_dir = out_dir if out_dir is not None else root_out_dir()
    store = Store(out_dir)
    app = Dash(__name__, title="llama2_prebiasing", suppress_callback_exceptions=True,
               assets_folder=str(Path(__file__).parent / "assets"))
    app.layout = html.Div([
        dcc.Location(id="url", refresh=False),   # controls write the URL; it never reloads the page
        dcc.Interval(id="refresh", interval=refresh_seconds * 1000),
        dcc.Store(id="version"),                 # changes only when a file under --out changed
        dcc.Store(id="page-view", data={}),      # the page's own URL keys (step, metric, head, …)
        html.Header(className="header", children=[
            html.Div("llama2_prebiasing", className="brand"),
            html.Nav([dcc.Link(title, href=path, className="nav-link", id=f"nav-{path.strip('/')}")
                      for path, (title, _) in PAGES.items()], className="nav"),
            html.Div(className="pickers", children=[
                html.Label(["run", dcc.Dropdown(id="run", clearable=False, placeholder="no runs yet")],
                           className="run-picker"),
                html.Label(["compare", dcc.Dropdown(id="cmp", multi=True, placeholder=f"up to {MAX_COMPARE} runs")],
                           className="run-picker"),
                html.Label(["step axis", dcc.RadioItems(id="axis", options=list(AXES), value="auto", inline=True)],
                           className="axis-picker", title="auto: log where the checkpoints are log-spaced"),
                dcc.Checklist(id="live", options=[{"label": f"live (re-read every {refresh_seconds:g} s)",
                                                   "value": "on"}], value=["on"], className="live"),
            ]),
        ]),
        html.Div(f"runs and experiments under {Path(out_dir).as_posix()}/", className="out-dir"),
        html.Div(id="run-msg"),
        html.Div(id="run-warn"),
        html.Main(id="page"),
    ])

    @app.callback(Output("run", "options"), Output("run", "value"), Output("run-msg", "children"),
                  Output("cmp", "options"), Output("cmp", "value"), Output("axis", "value"),
                  Input("url", "search"), Input("version", "data"), State("run", "value"),
                  State("run", "options"), State("cmp", "value"), State("axis", "value"))
    def update_header(search, _version, current, current_options, current_cmp, current_axis):
        from_url = triggered_id() in (None, "url")
        options, value, msg = pick_run(store, search, current, from_url)
        names = [o["value"] for o in options]
        if from_url:
            cmp = pick_compare(store, search, value)
            axis = parse_query(search).get("axis", "auto")
            axis = axis if axis in AXES else "auto"
        else:
            cmp, axis = [c for c in (current_cmp or []) if c in names], current_axis
        # unchanged values are not re-sent: every page's callbacks listen to them and would redraw
        return (no_update if options == current_options else options,
                no_update if value == current and current is not None else value, msg,
                no_update if options == current_options else options,
                no_update if cmp == (current_cmp or []) else cmp,
                no_update if axis == current_axis else axis)

    @app.callback(Output("run-warn", "children"), Input("run", "value"), Input("version", "data"))
    def warn_damage(run, _version):
        """Damage to the selected run's files, said once above every page (the figures alone would hide it)."""
        if run is None:
            return None
        try:
            return [message(w, "warn") for w in store.health(run)] or None
        except (Missing, UnknownName):
            return None

    @app.callback(Output("refresh", "disabled"), Input("live", "value"))
    def pause(live):
        return "on" not in (live or [])

    @app.callback(Output("version", "data"), Input("refresh", "n_intervals"), State("version", "data"))
    def check_files(_n, old):
        new = store.version()
        return no_update if new == old else new

    @app.callback(Output("url", "search"), Input("run", "value"), Input("cmp", "value"), Input("axis", "value"),
                  Input("page-view", "data"), State("url", "search"), prevent_initial_call=True)
    def write_url(run, cmp, axis, page_view, search):
        if run is None:  # nothing selected (a refused ?run=, or no runs yet): leave the URL as the user wrote it
            return no_update
        query = view_query(run, cmp, axis, page_view)
        return no_update if query == (search or "") else query

    @app.callback([Output(f"nav-{path.strip('/')}", "href") for path in PAGES], Input("url", "search"))
    def nav_links(search):
        return [path + (search or "") for path in PAGES]

    @app.callback(Output("page", "children"), Output("page-view", "data"),
                  Input("url", "pathname"), Input("url", "search"),
                  State("run", "value"), State("cmp", "value"), State("axis", "value"), State("page-view", "data"))
    def show_page(pathname, search, run, cmp, axis, page_view):
        # a URL our own controls wrote needs no new page; a link, reload, back/forward or a typed URL does
        fired = triggered_props()
        if fired == {"url.search"} and (search or "") == view_query(run, cmp, axis, page_view):
            return no_update, no_update
        return render_page(pathname, search, store), page_keys(search)

    for _, module in PAGES.values():
        module.register(app, store)
    app.store = store
    return app


def triggered_props():
    """{'url.search', …}: the input properties that fired the running callback (empty on a first call)."""
    from dash import ctx
    from dash.exceptions import MissingCallbackContextException
    try:
        return {p for p in ctx.triggered_prop_ids if p != "."}
    except MissingCallbackContextException:
        return set()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder holding runs and experiments (default: ROOT/out)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, error pop-ups)")
    parser.add_argument("--refresh", type=float, default=REFRESH_SECONDS,
                        help=f"seconds between checks for new checkpoints and rows (default {REFRESH_SECONDS})")
    add_root_argument(parser)
    args = apply_root(parser.parse_args(argv))
    args.out = args.out or str(root_out_dir())
    if not Path(args.out).is_dir():
        raise UserError(f"--out folder not found: {args.out} — train a run first (python modelling/train.py) "
                        "or point --out at the folder holding your runs")
    if args.refresh <= 0:
        raise UserError(f"--refresh must be a positive number of seconds, got {args.refresh}")
    app = create_app(args.out, args.refresh)
    if not data_dir().is_dir():
        print(f"note: no datasets under {data_dir().resolve()} — pages that show story text need --root "
              f"(or ${ROOT_ENV}) pointing at the project holding data/", file=sys.stderr)
    print(f"dashboard for {Path(args.out).resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    app.run(host=args.host, port=args.port, debug=args.debug)


if __name__ == "__main__":
    run_main(main)
