"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright), against the
real suite. Screenshots go to test-artifacts/webapp/ (git-ignored)."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterator

import httpx
import pytest

from htmengine.repository import MetricStatus, get_engine, queries
from tests.support.app import REPO, Supervisor, TestApp
from tests.support.engine import insert_rows, scored_count, series, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "webapp"


@pytest.fixture(scope="module")
def suite(app: TestApp) -> Iterator[Supervisor]:
    supervisor = Supervisor(app)
    supervisor.start()
    try:
        wait_for(lambda: _following(app), 60, "the webapp to follow the results exchange")
        yield supervisor
    finally:
        supervisor.stop()


def _following(app: TestApp) -> bool:
    try:
        health = httpx.get(f"http://127.0.0.1:{app.ports['webapp']}/_health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return health["results_followed"]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(app: TestApp, suite: Supervisor, browser, request: pytest.FixtureRequest) -> Iterator:
    context = browser.new_context(
        base_url=f"http://127.0.0.1:{app.ports['webapp']}",
        http_credentials={"username": app.api_key, "password": ""},
        viewport={"width": 1280, "height": 900},
    )
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()
    assert not errors, errors


@pytest.fixture
def api(app: TestApp, suite: Supervisor) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{app.ports['webapp']}", auth=(app.api_key, ""), timeout=30
    ) as client:
        yield client


def _metric(name: str, rows: list[tuple]) -> str:
    with get_engine().begin() as conn:
        uid, _ = queries.create_custom_metric(conn, name)
    insert_rows(uid, rows)
    return uid


def test_list_page_shows_metrics_sorted_by_anomaly(clean_db: TestApp, page) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
    rows = [(now - datetime.timedelta(minutes=30 * (40 - i)), float(i % 7)) for i in range(40)]
    uids = {name: _metric(name, rows) for name in ("calm.metric", "hot.metric", "warm.metric")}
    with get_engine().begin() as conn:
        for name, rowids, score, display in [
            ("hot.metric", (10, 30, 39), 0.99999, 1000000001),
            ("warm.metric", (20,), 0.5, 1000),
        ]:
            queries.update_metric_data_scores(
                conn,
                uids[name],
                [queries.ScoreUpdate(r, 0.5, score, display, "null") for r in rowids],
            )
    page.goto("/")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    names = page.locator(".metric-row .c-name a").all_inner_texts()
    assert names == ["hot.metric", "warm.metric", "calm.metric"]
    first = page.locator(".metric-row").first
    assert first.locator(".status").inner_text() == "UNMONITORED"
    assert page.locator("#count").inner_text() == "3 of 3 metrics"
    # Each row has a drawn small chart (a canvas with ink on it).
    inked = page.evaluate(
        """() => Array.from(document.querySelectorAll('.metric-row canvas')).map((c) =>
             c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v) => v !== 0))"""
    )
    assert inked == [True, True, True]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "list_page_sorted.png"))
    page.fill("#filter", "warm")
    assert page.locator(".metric-row .c-name a").all_inner_texts() == ["warm.metric"]


def test_metric_page_shows_a_new_scored_row_without_reload(
    app: TestApp, page, api: httpx.Client
) -> None:
    name = "live.metric"
    uid = _metric(name, series(60))
    response = api.post(
        "/_models",
        json={
            "datasource": "custom",
            "metricSpec": {"metric": name},
            "modelParams": {"min": 0, "max": 100},
        },
    )
    assert response.status_code == 201, response.text
    wait_for(lambda: scored_count(uid) == 60, 120, "the backlog to be scored")
    page.goto(f"/metric/{uid}")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#status").inner_text() == "ACTIVE"
    assert page.locator("#newest tbody tr").first.get_attribute("data-rowid") == "60"
    assert page.locator("#chart-value canvas").count() == 1
    page.wait_for_selector("#live.on")
    marker = page.evaluate("() => (window.__marker = Math.random())")

    newest = int(datetime.datetime.now(datetime.UTC).timestamp())
    with socket.create_connection(("127.0.0.1", app.ports["plaintext"])) as sock:
        sock.sendall(f"{name} 77.25 {newest}\n".encode())
    row = page.wait_for_selector("#newest tbody tr[data-rowid='61']", timeout=60_000)
    cells = row.query_selector_all("td")
    assert cells[2].inner_text() == "77.25"
    assert cells[3].inner_text() != "–"  # it arrived scored
    assert page.evaluate("() => window.__marker") == marker  # the same page: no reload
    assert "61 rows shown" in page.locator("#row-count").inner_text()


def test_monitor_from_the_page_makes_the_metric_active(page, api: httpx.Client) -> None:
    name = "page.monitored"
    uid = _metric(name, series(30))
    page.goto(f"/metric/{uid}")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#status").inner_text() == "UNMONITORED"
    page.fill("#min", "0")
    page.fill("#max", "100")
    page.click("#monitor")
    page.wait_for_function(
        "() => document.getElementById('status').textContent === 'ACTIVE'", timeout=90_000
    )
    assert api.get(f"/_models/{uid}").json()["status"] == MetricStatus.ACTIVE
    assert page.locator("#unmonitor").is_visible()
    page.click("#unmonitor")
    page.wait_for_function("() => document.getElementById('status').textContent === 'UNMONITORED'")
    assert api.get(f"/_models/{uid}").json()["status"] == MetricStatus.UNMONITORED
