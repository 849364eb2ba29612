"""The dashboard in a real browser: Debian's chromium driven by playwright against `dash_llama/app.py` serving
copies of the tiny run (evaluated by the real stages) on a free 127.0.0.1 port. Every page loads without console
errors, failed callbacks or server tracebacks; the URL holds the view (slider step, clicked head) through a
reload and a nav link; a checkpoint written while the page is open appears without resetting the slider or a
zoom; a path-traversal run name is refused with one message. Waits are for a specific text or attribute with
generous timeouts (a loaded machine makes callbacks slow), never fixed sleeps. Screenshots land in the
session's temp folder (the path is printed; run with -s to see it), never in the repository."""
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from modelling.checkpoints import list_checkpoints

from tests.fixtures_data import PYTHON, REPO
from tests.fixtures_run import TINY_CKPTS
from tests.test_dash import RUN, damage, dash_workspace  # noqa: F401  (dash_workspace: the shared session fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--no-first-run"]
PAGES = ["runs", "saturation", "attention", "embeddings", "generations", "data", "experiments"]
SETTLE_S = 0.6  # after network idle, for plotly to finish drawing
WAIT_MS = 45_000  # generous: on a loaded 2-core machine a callback chain can take seconds


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dash_screens")
    print(f"screenshots: {folder}")
    return folder


LIVE = "live"  # a second copy of the run, its last checkpoint held back until the refresh test "writes" it
DAMAGED = "damaged"  # a third, with its logs cut and a checkpoint deleted (tests/test_dash.py damage())


@pytest.fixture(scope="module")
def server(dash_workspace, tmp_path_factory):  # noqa: F811
    """The app on a free port over a private --out holding two copies of the evaluated run (RUN, and LIVE
    without its last checkpoint), re-reading files every second; data/ comes from --root."""
    out = tmp_path_factory.mktemp("dash_out")
    for name in (RUN, LIVE, DAMAGED):
        shutil.copytree(dash_workspace / "out" / RUN, out / name)
    damage(out / DAMAGED)
    held_step, held_path = list_checkpoints(out / LIVE)[-1]
    held = out / "held.pt"  # outside any run folder
    shutil.move(held_path, held)
    port = free_port()
    log = open(out / "dash_server.log", "w+")
    # started elsewhere with --root: the app must find datasets from the root, not the working directory
    proc = subprocess.Popen([PYTHON, str(REPO / "dash_llama" / "app.py"), "--root", str(dash_workspace),
                             "--out", str(out), "--port", str(port), "--refresh", "1"],
                            cwd=tmp_path_factory.mktemp("elsewhere"), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/runs", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        else:
            pytest.fail("dashboard did not answer within 60 s")
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"dashboard exited {proc.returncode}:\n{log.read()[-3000:]}")
        yield {"url": url, "log": log, "out": out, "held": (held, held_path, held_step)}
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
    # no toolbar button sends a chart to an online service; tables download as CSV
    visit(page, f"{server['url']}/runs?run={RUN}")
    titles = [b.get_attribute("data-title") or "" for b in page.locator("#runs-loss .modebar-btn").all()]
    assert titles and not [t for t in titles if any(w in t.lower() for w in ("share", "studio", "cloud"))]
    assert page.locator("#runs-table button.export").count() == 1
    # at a phone's width (390 px) every nav link is on screen and nothing runs off the right edge
    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_function("() => document.documentElement.scrollWidth <= 390", timeout=WAIT_MS)
    for link in page.locator(".nav-link").all():
        box = link.bounding_box()
        assert 0 <= box["x"] and box["x"] + box["width"] <= 390, link.inner_text()
    page.screenshot(path=str(screens / "runs_390px.png"), full_page=True)
    server["log"].seek(0)
    assert "Traceback" not in server["log"].read()


def search_params(page):
    return dict(urllib.parse.parse_qsl(page.evaluate("() => window.location.search").lstrip("?")))


def wait_url(page, **expected):
    """Wait until the address bar's query holds `expected` (the controls write it after their callbacks)."""
    checks = " && ".join(f"p.get({k!r}) === {str(v)!r}" for k, v in expected.items())
    page.wait_for_function(f"() => {{ const p = new URLSearchParams(window.location.search); return {checks}; }}",
                           timeout=WAIT_MS)


def test_the_url_holds_the_view_through_reload_and_links(server, page, screens):
    """Step and head come from the URL; moving the slider and clicking a head write it back; a reload and a
    nav link keep the view (the step follows to the Generations page)."""
    visit(page, f"{server['url']}/attention?run={RUN}&step=4&head=0.1")
    expect(page.locator("#attn-step-caption")).to_have_text("step 4", timeout=WAIT_MS)
    wait_figure(page, "attn-head")
    expect(page.locator("#attn-head .gtitle")).to_contain_text("layer 0 · head 1 · step 4", timeout=WAIT_MS)
    cell = "Array.from(d._fullData[3].z[6])"  # a row of head (0, 3), decoded by plotly.js
    before = figure_data(page, "attn-grid", cell)
    page.locator("#attn-step [role=slider]").first.focus()
    page.keyboard.press("End")  # to the last checkpoint
    expect(page.locator("#attn-step-caption")).to_have_text(f"step {TINY_CKPTS[-1]}", timeout=WAIT_MS)
    assert json.loads(wait_change(page, "attn-grid", cell, before)) != json.loads(before)  # the maps changed
    # a click on head (layer 1, head 2) enlarges it
    box = page.locator("#attn-grid .draglayer .x7y7 .nsewdrag").bounding_box()  # trace 1*4+2, axes x7/y7
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(page.locator("#attn-head .gtitle")).to_contain_text("layer 1 · head 2", timeout=WAIT_MS)
    wait_url(page, run=RUN, step=TINY_CKPTS[-1], head="1.2")
    page.reload()
    expect(page.locator("#attn-step-caption")).to_have_text(f"step {TINY_CKPTS[-1]}", timeout=WAIT_MS)
    expect(page.locator("#attn-head .gtitle")).to_contain_text(f"layer 1 · head 2 · step {TINY_CKPTS[-1]}",
                                                               timeout=WAIT_MS)
    page.locator("#nav-generations").click()
    expect(page.locator("#gen-step-caption")).to_have_text(f"step {TINY_CKPTS[-1]}", timeout=WAIT_MS)
    assert page.evaluate("() => window.location.pathname") == "/generations"
    assert search_params(page)["run"] == RUN
    page.screenshot(path=str(screens / "generations_from_link.png"), full_page=True)
    # a shared link with a compared run: its generations and its head sit beside the run's, at the nearest step
    visit(page, f"{server['url']}/generations?run={RUN}&cmp={LIVE}&step=20")
    expect(page.locator("#gen-table")).to_contain_text(LIVE, timeout=WAIT_MS)
    expect(page.locator("#gen-table")).to_contain_text("step 20 → final", timeout=WAIT_MS)
    page.locator("#nav-attention").click()
    expect(page.locator("#attn-compare .gtitle")).to_contain_text(f"{LIVE} · layer 0 · head 0 · step 20",
                                                                  timeout=WAIT_MS)
    assert search_params(page)["cmp"] == LIVE
    assert page.problems == []


def test_refresh_adds_a_checkpoint_and_keeps_zoom_and_slider(server, page):
    """A checkpoint written while the page is open appears on the slider at the next refresh; the slider the
    user moved stays, and a zoomed figure keeps its zoom."""
    held, held_path, held_step = server["held"]
    visit(page, f"{server['url']}/attention?run={LIVE}")
    thumb = page.locator("#attn-step [role=slider]").first
    expect(page.locator("#attn-step-caption")).to_have_text(f"step {TINY_CKPTS[-2]}", timeout=WAIT_MS)
    expect(thumb).to_have_attribute("aria-valuemax", str(len(TINY_CKPTS) - 2), timeout=WAIT_MS)
    thumb.focus()
    page.keyboard.press("Home")
    expect(page.locator("#attn-step-caption")).to_have_text(f"step {TINY_CKPTS[0]}", timeout=WAIT_MS)
    wait_figure(page, "attn-stats")
    full_range = figure_data(page, "attn-stats", "d.layout.xaxis.range")
    box = page.locator("#attn-stats .draglayer .xy .nsewdrag").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=5)
    page.mouse.up()
    zoomed = wait_change(page, "attn-stats", "d.layout.xaxis.range", full_range)
    shutil.move(held, held_path)  # training writes the next checkpoint
    expect(thumb).to_have_attribute("aria-valuemax", str(len(TINY_CKPTS) - 1), timeout=WAIT_MS)
    # the figures redrawn by the refresh kept the user's zoom, and the slider where the user put it
    page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')", timeout=WAIT_MS)
    assert figure_data(page, "attn-stats", "d.layout.xaxis.range") == zoomed
    expect(page.locator("#attn-step-caption")).to_have_text(f"step {TINY_CKPTS[0]}")
    assert page.problems == []


def test_a_refused_run_is_one_message_and_damage_is_warned(server, page):
    visit(page, f"{server['url']}/attention?run=../../../etc")
    expect(page.locator(".msg-error")).to_have_count(1, timeout=WAIT_MS)
    assert "refused: unknown run '../../../etc'" in page.locator(".msg-error").inner_text()
    assert page.locator(".msg-info").all_inner_texts() == []  # no panel adds a "none found" of its own
    assert search_params(page) == {"run": "../../../etc"}  # the URL is left as the user wrote it
    # a run with cut logs and a deleted checkpoint says so above the page, naming each file
    visit(page, f"{server['url']}/runs?run={DAMAGED}")
    expect(page.locator(".msg-warn").first).to_contain_text("train_log.csv ends at step 11", timeout=WAIT_MS)
    warnings = " ".join(page.locator(".msg-warn").all_inner_texts())
    assert "batch_log.bin holds steps 1..7" in warnings and "lacks 1 checkpoint(s)" in warnings
    assert page.problems == []
