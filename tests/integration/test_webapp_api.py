"""The webapp's JSON API over HTTP against the real suite (all five programs under supervisord)."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from htmengine.repository import MetricStatus, get_engine, queries
from tests.support.app import REPO, Supervisor, TestApp
from tests.support.engine import insert_rows, scored_count, series, wait_for

# Every API endpoint with a harmless example of its path and body.
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/_metrics/custom", None),
    ("POST", "/_metrics/custom", {"name": "never.created"}),
    ("DELETE", "/_metrics/custom/never.created", None),
    ("POST", "/_metrics/custom/data", "never.created 1 1400000000\n"),
    ("GET", "/_models", None),
    ("POST", "/_models", {"datasource": "custom", "metricSpec": {"metric": "never.created"}}),
    ("GET", "/_models/export", None),
    ("GET", "/_models/0123456789abcdef", None),
    ("DELETE", "/_models/0123456789abcdef", None),
    ("GET", "/_models/0123456789abcdef/data", None),
    ("GET", "/_models/0123456789abcdef/export", None),
    ("GET", "/_models/0123456789abcdef/stream", None),
    ("GET", "/_anomalies", None),
    ("GET", "/_anomalies/period/24", None),
    ("GET", "/_stream", None),
    ("GET", "/", None),
    ("GET", "/metric/0123456789abcdef", None),
]


@pytest.fixture(scope="module")
def suite(app: TestApp) -> Iterator[Supervisor]:
    """supervisord running every program, the webapp included, for this module."""
    supervisor = Supervisor(app)
    supervisor.start()
    try:
        wait_for(lambda: _healthy(app), 60, "the webapp to answer and follow the results")
        yield supervisor
    finally:
        supervisor.stop()


def _healthy(app: TestApp) -> bool:
    try:
        response = httpx.get(f"http://127.0.0.1:{app.ports['webapp']}/_health", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json()["results_followed"]


@pytest.fixture
def client(app: TestApp, suite: Supervisor) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{app.ports['webapp']}", auth=(app.api_key, ""), timeout=30
    ) as http:
        yield http


@pytest.fixture
def anonymous(app: TestApp, suite: Supervisor) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{app.ports['webapp']}", timeout=30) as http:
        yield http


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def make_metric(name: str, count: int, **kwargs: Any) -> str:
    with get_engine().begin() as conn:
        uid, _ = queries.create_custom_metric(conn, name)
    if count:
        insert_rows(uid, series(count, **kwargs))
    return uid


def metric_state(uid: str) -> tuple[Any, list[tuple]]:
    """The metric row and its data rows (to check that a refused request changed nothing)."""
    with get_engine().connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM metric WHERE uid = :u"), {"u": uid}).first()
        data = conn.execute(
            sa.text("SELECT * FROM metric_data WHERE uid = :u ORDER BY rowid"), {"u": uid}
        ).all()
    return (tuple(row) if row is not None else None), [tuple(r) for r in data]


def custom_metric_count() -> int:
    with get_engine().connect() as conn:
        return len(queries.get_custom_metrics(conn, ["uid"]))


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["result"], str) and body["result"]
    for fragment in fragments:
        assert fragment in body["result"], body["result"]


def send(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    if method == "GET" and path.endswith("stream"):
        with client.stream(method, path) as response:
            response.read() if response.status_code != 200 else None
            return response
    if isinstance(body, str):
        return client.request(method, path, content=body)
    if body is None:
        return client.request(method, path)
    return client.request(method, path, json=body)


# -- authentication ---------------------------------------------------------------------------


def test_every_endpoint_refuses_a_request_without_the_key(
    app: TestApp, anonymous: httpx.Client
) -> None:
    before = custom_metric_count()
    wrong = "Basic " + base64.b64encode(b"not-the-key:").decode()
    for method, path, body in ENDPOINTS:
        response = send(anonymous, method, path, body)
        assert_error(response, 401, "API key")
        assert response.headers["www-authenticate"].startswith("Basic ")
        anonymous.headers["Authorization"] = wrong
        assert_error(send(anonymous, method, path, body), 401, "invalid API key")
        del anonymous.headers["Authorization"]
    assert custom_metric_count() == before
    # What needs no key: the service's own counters, its health and the API description.
    for path in ("/metrics", "/_health", "/openapi.json"):
        assert anonymous.get(path).status_code == 200


def test_a_cross_site_write_is_refused_even_with_the_key(client: httpx.Client) -> None:
    name = unique("csrf")
    response = client.post(
        "/_metrics/custom", json={"name": name}, headers={"Origin": "http://evil.example"}
    )
    assert_error(response, 403, "origin")
    response = client.post(
        "/_metrics/custom", json={"name": name}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert_error(response, 403, "cross-site")
    assert all(m["name"] != name for m in client.get("/_metrics/custom").json())


def test_openapi_describes_every_endpoint(anonymous: httpx.Client) -> None:
    spec = anonymous.get("/openapi.json").json()
    paths = spec["paths"]
    for method, path, _ in ENDPOINTS:
        if path.startswith("/_"):
            template = path.replace("0123456789abcdef", "{uid}").replace("never.created", "{name}")
            template = template.replace("/period/24", "/period/{hours}")
            assert template in paths, template
            assert method.lower() in paths[template], (method, template)


# -- metrics ------------------------------------------------------------------------------------


def test_create_list_and_delete_a_metric(client: httpx.Client) -> None:
    name = unique("api.create")
    response = client.post("/_metrics/custom", json={"name": name})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["name"] == name
    assert created["status"] == 0 and created["status_name"] == "UNMONITORED"
    listed = {m["name"]: m for m in client.get("/_metrics/custom").json()}
    assert listed[name]["uid"] == created["uid"]

    before = metric_state(created["uid"])
    count = custom_metric_count()
    assert_error(client.post("/_metrics/custom", json={"name": name}), 409, "already exists")
    for bad, fragment in [
        ({"name": ""}, "non-empty"),
        ({"name": "has space"}, "whitespace"),
        ({"name": "x" * 300}, "255"),
        ({"nam": "typo"}, '{"name"'),
        (["list"], '{"name"'),
    ]:
        assert_error(client.post("/_metrics/custom", json=bad), 400, fragment)
    assert_error(client.post("/_metrics/custom", content=b"{not json"), 400, "not valid JSON")
    assert_error(client.post("/_metrics/custom", content=b""), 400, "empty")
    assert custom_metric_count() == count
    assert metric_state(created["uid"]) == before

    assert client.delete(f"/_metrics/custom/{name}").json() == {"result": "success"}
    assert metric_state(created["uid"])[0] is None
    assert_error(client.delete(f"/_metrics/custom/{name}"), 404, name)


def test_posted_lines_are_stored_like_the_listeners(app: TestApp, client: httpx.Client) -> None:
    name = unique("api.lines")
    start = 1_400_000_000
    lines = "".join(f"{name} {i * 1.5} {start + 300 * i}\n" for i in range(50))
    before = client.get("/metrics").text
    response = client.post("/_metrics/custom/data", content=lines)
    assert response.status_code == 202, response.text
    assert response.json() == {"result": "success", "accepted": 50}

    def stored(metric_name: str = name) -> int:
        try:
            with get_engine().connect() as conn:
                uid = queries.get_custom_metric_by_name(conn, metric_name, ["uid"]).uid
                return queries.get_metric_data_count(conn, uid)
        except Exception:
            return 0

    wait_for(lambda: stored() == 50, 30, "the posted rows to be stored")
    after = client.get("/metrics").text
    assert (
        _sample(after, "htmengine_listener_lines_received_total")
        - _sample(before, "htmengine_listener_lines_received_total")
        == 50
    )
    assert (
        _sample(after, "htmengine_listener_lines_published_total")
        - _sample(before, "htmengine_listener_lines_published_total")
        == 50
    )

    # One bad line refuses the whole body: its good lines are not stored either.
    refused = (
        f"{name} 1 {start + 300 * 60}\n"
        f"{name} not-a-number {start + 300 * 61}\n"
        f"{name} 2\n"
        f"{name} 3 {start + 300 * 62}\n"
    )
    response = client.post("/_metrics/custom/data", content=refused)
    assert_error(response, 400, "2 of 5 lines are invalid", "line 2", "line 3", "none was stored")
    rejected = client.get("/metrics").text
    assert 'htmengine_listener_lines_rejected_total{reason="expected 3 fields"}' in rejected
    assert_error(client.post("/_metrics/custom/data", content=b"\n\n"), 400, "no lines")
    # The listener's future-timestamp rule (max_future_seconds, a day here) applies too.
    future = int(time.time()) + 3 * 86400
    response = client.post("/_metrics/custom/data", content=f"{name} 1 {future}\n")
    assert_error(response, 400, "timestamp too far in the future")
    too_big = b"x" * (16 * 1024 * 1024 + 1)
    assert_error(client.post("/_metrics/custom/data", content=too_big), 413, "limit")
    # A later good line is stored and the refused ones never are.
    client.post("/_metrics/custom/data", content=f"{name} 9 {start + 300 * 70}\n")
    wait_for(lambda: stored() == 51, 30, "the marker row to be stored")
    with get_engine().connect() as conn:
        uid = queries.get_custom_metric_by_name(conn, name, ["uid"]).uid
        values = [row.metric_value for row in queries.get_metric_data(conn, uid)]
    assert values[-1] == 9 and 1.0 not in values[50:] and 3.0 not in values[50:]
    # 1,000 lines of ~280 bytes are over batch_max_bytes (256 KiB here): the webapp cuts them
    # into messages as the listener does, and every line is stored.
    long_name = name + "." + "x" * 230
    bulk = "".join(f"{long_name} {i} {start + 300 * i}\n" for i in range(2000))
    assert len(bulk) / 2 > 262_144
    response = client.post("/_metrics/custom/data", content=bulk)
    assert response.status_code == 202 and response.json()["accepted"] == 2000
    wait_for(lambda: stored(long_name) == 2000, 60, "the long lines to be stored")


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# -- models ---------------------------------------------------------------------------------


def _monitor(client: httpx.Client, spec: dict) -> dict:
    response = client.post("/_models", json=spec)
    assert response.status_code == 201, response.text
    (metric,) = response.json()
    return metric


def _wait_active(client: httpx.Client, uid: str) -> dict:
    return wait_for(
        lambda: (m := client.get(f"/_models/{uid}").json())["status"] == MetricStatus.ACTIVE and m,
        90,
        "the model to become ACTIVE",
    )


def test_monitor_follow_live_and_unmonitor(app: TestApp, client: httpx.Client) -> None:
    name = unique("api.monitor")
    uid = make_metric(name, 120)
    metric = _monitor(
        client,
        {
            "datasource": "custom",
            "metricSpec": {"metric": name},
            "modelParams": {"min": 0, "max": 100},
        },
    )
    assert metric["uid"] == uid
    assert metric["status_name"] in ("CREATE_PENDING", "ACTIVE")
    assert metric["parameters"]["modelParams"] == {"min": 0, "max": 100}
    _wait_active(client, uid)
    wait_for(lambda: scored_count(uid) == 120, 120, "the backlog to be scored")
    assert uid in {m["uid"] for m in client.get("/_models").json()}
    listed = {m["uid"]: m for m in client.get("/_metrics/custom").json()}[uid]
    assert listed["last_rowid"] == 120 and listed["last_anomaly_score"] is not None

    # A live stream delivers the next scored row.
    events: list[tuple[str, dict]] = []
    opened = threading.Event()

    def follow() -> None:
        with client.stream("GET", f"/_models/{uid}/stream") as response:
            event = None
            for line in response.iter_lines():
                opened.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "rows":
                    events.append((event, json.loads(line[6:])))
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert opened.wait(10)
    newest = datetime.datetime.now(datetime.UTC).timestamp()
    with socket.create_connection(("127.0.0.1", app.ports["plaintext"])) as sock:
        sock.sendall(f"{name} 42.5 {int(newest)}\n".encode())
    thread.join(60)
    assert events, "no live rows arrived"
    (row,) = events[0][1]["rows"]
    assert row[1] == 42.5 and row[3] == 121 and row[2] is not None

    # Refused monitor requests change nothing.
    wait_for(lambda: scored_count(uid) == 121, 60, "the live row to be stored scored")
    before = metric_state(uid)
    for bad, status, fragment in [
        ({"datasource": "custom", "metricSpec": {"metric": name}}, 409, "already monitored"),
        ({"datasource": "custom", "metricSpec": {"uid": uid}}, 409, "already monitored"),
        ({"datasource": "custom", "metricSpec": {"uid": "f" * 32}}, 404, "does not exist"),
        ({"metricSpec": {"metric": name}}, 400, "datasource"),
        ({"datasource": "cloudwatch", "metricSpec": {"metric": name}}, 400, "datasource"),
        (
            {
                "datasource": "custom",
                "metricSpec": {"metric": name},
                "modelParams": {"min": 5, "max": 1},
            },
            400,
            "greater than max",
        ),
        ({"datasource": "custom", "metricSpec": {"metric": name, "bogus": 1}}, 400, "bogus"),
        ({"datasource": "custom", "metricSpec": {}}, 400, "metric"),
        ([], 400, "no model spec"),
        ("not an object", 400, "JSON object"),
    ]:
        assert_error(client.post("/_models", json=bad), status, fragment)
    assert_error(client.post("/_models", content=b"[{"), 400, "not valid JSON")
    assert metric_state(uid) == before

    assert client.delete(f"/_models/{uid}").json() == {"result": "success"}
    after = client.get(f"/_models/{uid}").json()
    assert after["status_name"] == "UNMONITORED" and after["parameters"] is None
    assert scored_count(uid) == 0
    assert_error(client.delete(f"/_models/{uid}"), 409, "not monitored")
    assert_error(client.delete(f"/_models/{'f' * 32}"), 404, "f" * 32)
    assert_error(client.get(f"/_models/{'f' * 32}"), 404, "f" * 32)


def test_a_list_of_specs_with_one_bad_spec_monitors_none(client: httpx.Client) -> None:
    good, bad = unique("api.list.good"), unique("api.list.bad")
    good_uid, bad_uid = make_metric(good, 10), make_metric(bad, 10)
    specs = [
        {
            "datasource": "custom",
            "metricSpec": {"metric": good},
            "modelParams": {"min": 0, "max": 1},
        },
        {"datasource": "custom", "metricSpec": {"metric": bad}, "modelParams": {"min": 0}},
    ]
    before = metric_state(good_uid), metric_state(bad_uid)
    assert_error(client.post("/_models", json=specs), 400, "spec 1", "min and max")
    assert (metric_state(good_uid), metric_state(bad_uid)) == before


def test_rows_over_a_time_window_in_pages(client: httpx.Client) -> None:
    name = unique("api.data")
    uid = make_metric(name, 0)
    first = datetime.datetime(2015, 1, 1)
    rows = [(first + datetime.timedelta(minutes=5 * i), float(i)) for i in range(600)]
    insert_rows(uid, rows)
    with get_engine().begin() as conn:
        queries.update_metric_data_scores(
            conn, uid, [queries.ScoreUpdate(10, 0.3, 0.99999, 1000000001, "null")]
        )

    day = client.get(
        f"/_models/{uid}/data",
        params={"from": "2015-01-01 00:00:00", "to": "2015-01-01T23:55:00Z", "limit": 100},
    )
    assert day.status_code == 200, day.text
    page = day.json()
    assert page["names"][:4] == ["timestamp", "value", "anomaly_score", "rowid"]
    collected = page["data"]
    assert collected[0] == ["2015-01-01 00:00:00", 0.0, None, 1, None, None]
    while page["next"]:
        page = client.get(page["next"]).json()
        collected.extend(page["data"])
    assert [r[3] for r in collected] == list(range(1, 289))
    assert collected[9][2] == 0.99999 and collected[9][5] == 1000000001

    newest = client.get(f"/_models/{uid}/data", params={"limit": 3}).json()
    assert [r[3] for r in newest["data"]] == [600, 599, 598]
    older = client.get(newest["next"]).json()
    assert [r[3] for r in older["data"]] == [597, 596, 595]
    epoch = int(datetime.datetime(2015, 1, 2, tzinfo=datetime.UTC).timestamp())
    since = client.get(f"/_models/{uid}/data", params={"from": str(epoch), "limit": 1}).json()
    assert since["data"][0][0] == "2015-01-02 00:00:00"
    high = client.get(f"/_models/{uid}/data", params={"anomaly": 0.9}).json()
    assert [r[3] for r in high["data"]] == [10] and high["next"] is None

    for params, fragment in [
        ({"from": "yesterday"}, "not a time"),
        ({"from": "2015-01-02", "to": "2015-01-01"}, "before"),
        ({"limit": 0}, "limit"),
        ({"anomaly": 2}, "anomaly"),
        ({"order": "sideways"}, "order"),
        ({"from": "1e20"}, "1970..2099"),
    ]:
        assert_error(client.get(f"/_models/{uid}/data", params=params), 400, fragment)
    assert_error(client.get(f"/_models/{'f' * 32}/data"), 404, "f" * 32)


def test_export_and_import(client: httpx.Client) -> None:
    name = unique("api.export")
    uid = make_metric(name, 50)
    assert_error(client.get(f"/_models/{uid}/export"), 409, "not monitored")
    _monitor(
        client,
        {
            "datasource": "custom",
            "metricSpec": {"metric": name},
            "modelParams": {"min": 0, "max": 100},
        },
    )
    exported = client.get(f"/_models/{uid}/export").json()
    assert exported["metricSpec"] == {"metric": name} and len(exported["data"]) == 50
    assert name in {e["metricSpec"]["metric"] for e in client.get("/_models/export").json()}

    assert client.delete(f"/_metrics/custom/{name}").status_code == 200
    response = client.post("/_models", json=exported)
    assert response.status_code == 201, response.text
    (imported,) = response.json()
    assert imported["name"] == name and imported["uid"] != uid
    assert imported["status_name"] in ("CREATE_PENDING", "ACTIVE")
    assert imported["last_rowid"] == 50
    broken = dict(exported, data=[[1.0, "not a time"]])
    broken["metricSpec"] = {"metric": unique("api.import.bad")}
    count = custom_metric_count()
    assert_error(client.post("/_models", json=broken), 400, "data[0]")
    assert custom_metric_count() == count


def test_metrics_sorted_by_anomaly(client: httpx.Client) -> None:
    """getMetricIdsSortedByDisplayValue: per metric, the sum over 24 buckets of the period of
    each bucket's highest display value; a period no other test asks for, so it is computed now."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
    names = {level: unique(f"api.rank.{level}") for level in ("high", "mid", "none")}
    uids = {}
    for level, name in names.items():
        uid = make_metric(name, 0)
        uids[level] = uid
        insert_rows(
            uid, [(now - datetime.timedelta(minutes=30 * (20 - i)), 1.0) for i in range(20)]
        )
    with get_engine().begin() as conn:
        queries.update_metric_data_scores(
            conn,
            uids["high"],
            [queries.ScoreUpdate(rowid, 0.5, 0.99999, 1000000001, "null") for rowid in (5, 15)],
        )
        queries.update_metric_data_scores(
            conn, uids["mid"], [queries.ScoreUpdate(18, 0.5, 0.5, 1000, "null")]
        )
    assert client.get("/_anomalies").json() == [2, 24, 192]
    response = client.get("/_anomalies/period/11")
    assert response.status_code == 200, response.text
    order = [m["uid"] for m in response.json() if m["uid"] in uids.values()]
    assert order == [uids["high"], uids["mid"], uids["none"]]
    ranked = {m["uid"]: m["anomaly_rank"] for m in response.json()}
    assert ranked[uids["high"]] == 2 * 1000000001 and ranked[uids["mid"]] == 1000
    assert_error(client.get("/_anomalies/period/0"), 400, "period")
    assert_error(client.get("/_anomalies/period/abc"), 400, "hours")


def test_unknown_paths_and_methods_are_json_errors(client: httpx.Client) -> None:
    assert_error(client.get("/_nothing_here"), 404, "no such endpoint")
    assert_error(client.put("/_models"), 405, "not allowed")


def test_cli_status_shows_the_webapp(app: TestApp, suite: Supervisor) -> None:
    from click.testing import CliRunner

    from htmengine.cli import cli

    # supervisord's URL and credentials come from the app's conf/supervisord.conf.
    result = CliRunner().invoke(cli, ["status"], catch_exceptions=False)
    assert (
        f"webapp: http://127.0.0.1:{app.ports['webapp']}/ (following results yes" in result.stdout
    )
    assert re.search(r"^ +webapp +RUNNING", result.stdout, re.MULTILINE), result.stdout


def _run_webapp(conf_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, APPLICATION_CONFIG_PATH=str(conf_dir))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "htmengine.webapp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _conf_copy(tmp_path: Path, webapp_section: str | None) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    for path in (REPO / "conf").glob("*.conf"):
        shutil.copy(path, conf / path.name)
    text = (conf / "application.conf").read_text()
    text = text[: text.index("[webapp]")]
    if webapp_section is not None:
        text += webapp_section
    (conf / "application.conf").write_text(text)
    return conf


def test_an_app_without_a_webapp_section_leaves_the_webapp_off(tmp_path: Path) -> None:
    """The program exits 0 (supervisord: EXITED, expected) after outliving startsecs."""
    result = _run_webapp(_conf_copy(tmp_path, None))
    assert result.returncode == 0, result.stderr
    assert "disabled" in result.stderr


def test_a_bad_webapp_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    section = (REPO / "conf" / "application.conf").read_text().split("[webapp]")[1]
    section = "[webapp]" + section.replace("port = 8080", "port = eighty")
    result = _run_webapp(_conf_copy(tmp_path, section))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("webapp: configuration error:") and "eighty" in lines[-1]
