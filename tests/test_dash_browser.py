"""The dashboard in a real browser: Debian's chromium driven by playwright against `dash_llama/app.py` serving
the tiny run (evaluated by the real stages) on a free 127.0.0.1 port. Every page loads without console errors,
failed callbacks or server tracebacks; the checkpoint slider and a click on a head change figures; a
path-traversal run name is refused in the page. Screenshots land in the session's temp folder (the path is
printed; run with -s to see it), never in the repository."""
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures_data import PYTHON, REPO
from tests.test_dash import RUN, dash_workspace  # noqa: F401  (shared session fixture: eval + visualizers on tiny)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--no-first-run"]
PAGES = ["runs", "saturation", "attention", "embeddings", "generations", "data", "experiments"]
SETTLE_S = 0.6  # after network idle, for plotly to finish drawing


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dash_screens")
    print(f"screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def server(dash_workspace, tmp_path_factory):  # noqa: F811
    port = free_port()
    log = open(dash_workspace / "dash_server.log", "w+")
    # started elsewhere with --root: the app must find runs and datasets from the root, not the working directory
    proc = subprocess.Popen([PYTHON, str(REPO / "dash_llama" / "app.py"), "--root", str(dash_workspace),
                             "--port", str(port)],
                            cwd=tmp_path_factory.mktemp("elsewhere"), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(url + "/runs", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        else:
            pytest.fail("dashboard did not answer within 30 s")
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"dashboard exited {proc.returncode}:\n{log.read()[-3000:]}")
        yield {"url": url, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"chromium not found at {CHROMIUM} — install it with `apt-get install -y chromium` "
                    "(.ci/run does this); the dashboard's browser test needs it")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors, page errors and failed Dash callback requests."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("response", lambda r: pg.problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    yield pg
    context.close()


def visit(page, url):
    page.goto(url)
    page.wait_for_load_state("networkidle")
    page.wait_for_function("!document.querySelector('[data-dash-is-loading=\"true\"]')")
    time.sleep(SETTLE_S)


def figure_data(page, graph_id, expr):
    """Evaluate `expr` on the plotly div inside dcc.Graph `graph_id` (e.g. 'd.data[0].z[5]')."""
    return page.evaluate(f"() => {{ const d = document.querySelector('#{graph_id} .js-plotly-plot'); "
                         f"return d && d.data ? JSON.stringify({expr}) : null; }}")


def wait_figure(page, graph_id, timeout_s=30):
    page.wait_for_function(f"() => {{ const d = document.querySelector('#{graph_id} .js-plotly-plot'); "
                           f"return d && d.data && d.data.length > 0; }}", timeout=timeout_s * 1000)


def wait_change(page, graph_id, expr, before, timeout_s=20):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = figure_data(page, graph_id, expr)
        if now is not None and now != before:
            return now
        time.sleep(0.2)
    raise AssertionError(f"{graph_id}: {expr} did not change within {timeout_s} s")


def test_every_page_loads_cleanly_with_the_runs_data(server, page, screens):
    for name in PAGES:
        visit(page, f"{server['url']}/{name}?run={RUN}")
        page.screenshot(path=str(screens / f"{name}.png"), full_page=True)
        assert page.problems == [], f"/{name}: {page.problems}"
        errors = page.locator(".msg-error").all_inner_texts()
        assert errors == [], f"/{name} shows errors: {errors}"
        if name != "experiments":  # every artifact of the tiny run exists, so each page draws real figures
            assert page.locator(".js-plotly-plot .plot-container .main-svg").count() >= 1, f"/{name}: no figure"
            infos = page.locator(".msg-info").all_inner_texts()
            assert infos == [], f"/{name} says something is missing: {infos}"
        else:  # no durability experiment in this workspace: a clear message in place
            assert "no experiments under" in page.locator(".msg-info").first.inner_text()
    server["log"].seek(0)
    assert "Traceback" not in server["log"].read()


def test_slider_and_head_click_change_the_attention_figures(server, page, screens):
    visit(page, f"{server['url']}/attention?run={RUN}")
    wait_figure(page, "attn-grid")
    wait_figure(page, "attn-head")
    cell = "Array.from(d._fullData[3].z[6])"  # a row of head (0, 3), decoded by plotly.js
    before = figure_data(page, "attn-grid", cell)
    assert before is not None
    page.locator("#attn-step [role=slider]").first.focus()
    page.keyboard.press("Home")  # to the first checkpoint (step 1)
    after = wait_change(page, "attn-grid", cell, before)
    assert json.loads(after) != json.loads(before)
    assert "step 1 " in figure_data(page, "attn-grid", "d.layout.title.text")
    # a click on head (layer 1, head 2) enlarges it
    title = figure_data(page, "attn-head", "d.layout.title.text")
    box = page.locator("#attn-grid .draglayer .x7y7 .nsewdrag").bounding_box()  # trace 1*4+2, axes x7/y7
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    title = wait_change(page, "attn-head", "d.layout.title.text", title)
    assert "layer 1 · head 2" in json.loads(title)
    page.screenshot(path=str(screens / "attention_clicked.png"), full_page=True)
    assert page.problems == []


def test_path_traversal_run_name_is_refused_in_the_page(server, page):
    visit(page, f"{server['url']}/attention?run=../../../etc")
    errors = " ".join(page.locator(".msg-error").all_inner_texts())
    assert "refused: unknown run '../../../etc'" in errors
    assert "no run selected" in page.locator("#attn-msg").inner_text()  # and the page reads nothing
    assert page.problems == []
