"""The dashboard: browse every run and experiment under --out in the browser.

    python dash_llama/app.py [--root .] [--out ROOT/out] [--host 127.0.0.1] [--port 8050]

Pages: Runs, Saturation, Attention, Embeddings, Generations, Data, Experiments (one module each in
dash_llama/pages/). Runs are discovered under --out (any folder with a config.json) and re-read when their
files change, so a run still training shows new checkpoints on the next refresh. Everything is read through
the project's shared readers (dash_llama/data.py); a missing artifact shows a message naming the stage that
makes it. Datasets (data/) are read from the project root (--root, $LLAMA_PREBIAS_ROOT or the working
directory), so --out may point elsewhere. Binds 127.0.0.1 unless told otherwise."""
import argparse
import sys
from pathlib import Path
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dash import Dash, Input, Output, State, dcc, html, no_update  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.paths import ROOT_ENV, add_root_argument, apply_root, data_dir  # noqa: E402
from common.paths import out_dir as root_out_dir  # noqa: E402
from dash_llama.data import Store, UnknownName  # noqa: E402
from dash_llama.pages import attention, data_page, embeddings, experiments, generations, runs, saturation  # noqa: E402
from dash_llama.ui import message, triggered_id  # noqa: E402

REFRESH_SECONDS = 15   # how often the run list, checkpoints and logs are re-read
PAGES = {              # path -> (title, module)
    "/runs": ("Runs", runs),
    "/saturation": ("Saturation", saturation),
    "/attention": ("Attention", attention),
    "/embeddings": ("Embeddings", embeddings),
    "/generations": ("Generations", generations),
    "/data": ("Data", data_page),
    "/experiments": ("Experiments", experiments),
}


def default_run(names):
    """The run to open first: out/demo if present, else the first top-level run."""
    return "demo" if "demo" in names else (names[0] if names else None)


def pick_run(store, search, current, triggered_by_url):
    """(options, value, message) of the header's run picker. A ?run= from the URL is used only if it names a
    run under --out; anything else (a typo, `../../etc`) is refused with a message and selects nothing."""
    names = store.runs()
    options = [{"label": n, "value": n} for n in names]
    requested = parse_qs((search or "").lstrip("?")).get("run", [None])[0]
    if requested is not None and triggered_by_url:
        try:
            store.run_dir(requested)
        except UnknownName as e:
            return options, None, message(f"refused: {e}", "error")
        return options, requested, None
    if current in names:
        return options, current, None
    return options, default_run(names), None


def render_page(pathname):
    pathname = pathname if pathname not in (None, "", "/") else "/runs"
    if pathname not in PAGES:
        return message(f"no page {pathname!r}: pick one of {', '.join(PAGES)}", "error")
    return PAGES[pathname][1].layout()


def create_app(out_dir=None, refresh_seconds=REFRESH_SECONDS):
    out_dir = out_dir if out_dir is not None else root_out_dir()
    store = Store(out_dir)
    app = Dash(__name__, title="llama2_prebiasing", suppress_callback_exceptions=True,
               assets_folder=str(Path(__file__).parent / "assets"))
    app.layout = html.Div([
        dcc.Location(id="url"),
        dcc.Interval(id="refresh", interval=refresh_seconds * 1000),
        html.Header(className="header", children=[
            html.Div("llama2_prebiasing", className="brand"),
            html.Nav([dcc.Link(title, href=path, className="nav-link", id=f"nav-{path.strip('/')}")
                      for path, (title, _) in PAGES.items()]),
            html.Label(["run", dcc.Dropdown(id="run", clearable=False, placeholder="no runs yet")],
                       className="run-picker"),
        ]),
        html.Div(f"runs and experiments under {Path(out_dir).as_posix()}/", className="out-dir"),
        html.Div(id="run-msg"),
        html.Main(id="page"),
    ])

    @app.callback(Output("run", "options"), Output("run", "value"), Output("run-msg", "children"),
                  Input("url", "search"), Input("refresh", "n_intervals"), State("run", "value"),
                  State("run", "options"))
    def update_runs(search, _n, current, current_options):
        options, value, msg = pick_run(store, search, current, triggered_id() in (None, "url"))
        # unchanged values are not re-sent: every page's callbacks listen to the run and would redraw
        return (no_update if options == current_options else options,
                no_update if value == current and current is not None else value, msg)

    app.callback(Output("page", "children"), Input("url", "pathname"))(render_page)
    for _, module in PAGES.values():
        module.register(app, store)
    app.store = store
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder holding runs and experiments (default: ROOT/out)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, error pop-ups)")
    add_root_argument(parser)
    args = apply_root(parser.parse_args(argv))
    args.out = args.out or str(root_out_dir())
    if not Path(args.out).is_dir():
        raise UserError(f"--out folder not found: {args.out} — train a run first (python modelling/train.py) "
                        "or point --out at the folder holding your runs")
    app = create_app(args.out)
    if not data_dir().is_dir():
        print(f"note: no datasets under {data_dir().resolve()} — pages that show story text need --root "
              f"(or ${ROOT_ENV}) pointing at the project holding data/", file=sys.stderr)
    print(f"dashboard for {Path(args.out).resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    app.run(host=args.host, port=args.port, debug=args.debug)


if __name__ == "__main__":
    run_main(main)
