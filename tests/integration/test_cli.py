"""The `htmengine` command line against the real MariaDB, RabbitMQ and supervisord."""

from __future__ import annotations

import csv
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from htmengine.cli import cli
from tests.support.app import REPO, Supervisor, TestApp, free_port

START = datetime.datetime(2014, 4, 1)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def make_metric(name: str, values: list[float], scores: list[float | None] | None = None) -> str:
    """A custom metric with one row a minute from START; `scores` fill anomaly_score."""
    from htmengine.repository import get_engine, queries

    with get_engine().begin() as conn:
        uid, _ = queries.create_custom_metric(conn, name)
        rows = [(START + datetime.timedelta(minutes=i), v) for i, v in enumerate(values)]
        queries.add_metric_data(conn, uid, rows)
        if scores is not None:
            updates = [
                queries.ScoreUpdate(i + 1, score, score, None if score is None else 1000, "null")
                for i, score in enumerate(scores)
                if score is not None
            ]
            queries.update_metric_data_scores(conn, uid, updates)
    return uid


def row_count(name: str) -> int:
    from htmengine.exceptions import MetricNotFound
    from htmengine.repository import get_engine, queries

    try:
        with get_engine().connect() as conn:
            uid = queries.get_custom_metric_by_name(conn, name, ["uid"]).uid
            return queries.get_metric_data_count(conn, uid)
    except MetricNotFound:
        return 0


def write_nab_csv(path: Path, count: int, start: datetime.datetime = START) -> Path:
    """A CSV in NAB's layout: header timestamp,value; one row every 5 minutes."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "value"])
        for i in range(count):
            moment = start + datetime.timedelta(minutes=5 * i)
            writer.writerow(
                [moment.strftime("%Y-%m-%d %H:%M:%S"), f"{50 + 10 * np.sin(i / 10):.3f}"]
            )
    return path


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


SERVICES = ["anomaly_service", "metric_listener", "metric_storer", "model_scheduler", "webapp"]


@pytest.fixture(scope="module")
def suite(app: TestApp) -> Iterator[Supervisor]:
    """supervisord running every service, for the rest of this module once started."""
    supervisor = Supervisor(app)
    supervisor.start()
    # RUNNING means "alive for startsecs"; under load the listener binds its port later.
    wait_for(lambda: _accepts(app.ports["plaintext"]), what="the listener's port")
    try:
        yield supervisor
    finally:
        supervisor.stop()


# -- database-only commands ---------------------------------------------------------------------


def test_db_upgrade_reports_the_revision(app: TestApp) -> None:
    from htmengine.repository import migrate

    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"database {app.db_name!r} is at revision {migrate.current_revision()}" in result.stdout


def test_metrics_lists_rows_last_timestamp_and_last_score(clean_db: TestApp) -> None:
    make_metric("cpu", [1.0, 2.0, 3.0], scores=[0.1, 0.25, None])
    make_metric("empty", [])

    table = run("metrics")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "name",
        "status",
        "rows",
        "last",
        "timestamp",
        "last",
        "anomaly",
        "score",
    ]
    assert lines[1].split() == ["cpu", "UNMONITORED", "3", "2014-04-01", "00:02:00", "0.25"]
    assert lines[2].split() == ["empty", "UNMONITORED", "0", "-", "-"]

    listed = json.loads(run("metrics", "--format", "json").stdout)
    assert [(m["name"], m["rows"], m["last_anomaly_score"]) for m in listed] == [
        ("cpu", 3, 0.25),
        ("empty", 0, None),
    ]
    assert listed[0]["last_timestamp"] == "2014-04-01 00:02:00"


def test_metrics_shows_the_reason_of_an_error(clean_db: TestApp) -> None:
    from htmengine.repository import MetricStatus, get_engine, queries

    uid = make_metric("broken", [1.0])
    make_metric("fine", [1.0])
    with get_engine().begin() as conn:
        queries.set_metric_status(conn, uid, MetricStatus.ERROR, "model failed: bad params")
    lines = run("metrics").stdout.splitlines()
    assert lines[0].split()[-1] == "message"
    assert lines[1].split()[:2] == ["broken", "ERROR"]
    assert lines[1].endswith("model failed: bad params")
    assert lines[2].split()[-1] == "-"


def test_scores_in_every_format_with_since_and_limit(clean_db: TestApp) -> None:
    make_metric("mem", [10.0, 11.0, 12.0, 13.0], scores=[0.5, 0.6, 0.7, None])

    as_json = json.loads(run("scores", "mem", "--format", "json").stdout)
    assert [r["rowid"] for r in as_json] == [1, 2, 3, 4]
    assert as_json[2] == {
        "rowid": 3,
        "timestamp": "2014-04-01 00:02:00",
        "metric_value": 12.0,
        "raw_anomaly_score": 0.7,
        "anomaly_score": 0.7,
        "display_value": 1000,
    }
    assert as_json[3]["anomaly_score"] is None

    as_csv = list(csv.DictReader(run("scores", "mem", "--format", "csv").stdout.splitlines()))
    assert [row["metric_value"] for row in as_csv] == ["10.0", "11.0", "12.0", "13.0"]
    assert as_csv[3]["anomaly_score"] == ""

    newest = json.loads(run("scores", "mem", "--limit", "2", "--format", "json").stdout)
    assert [r["rowid"] for r in newest] == [3, 4]
    since = json.loads(
        run(
            "scores", "mem", "--since", "2014-04-01 00:01:00", "--limit", "2", "--format", "json"
        ).stdout
    )
    assert [r["rowid"] for r in since] == [2, 3]

    table = run("scores", "mem").stdout.splitlines()
    assert table[0].split()[:3] == ["rowid", "timestamp", "metric_value"]
    assert len(table) == 5


def test_plot_writes_a_png_with_values_scores_and_marks(clean_db: TestApp, tmp_path: Path) -> None:
    import matplotlib.image

    values = [50 + 20 * np.sin(i / 15) for i in range(400)]
    scores = [0.5] * 400
    for spike in (120, 300):
        values[spike] = 150.0
        scores[spike] = 0.99999
    make_metric("wave", values, scores)
    output = tmp_path / "wave.png"

    result = run("plot", "wave", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert "400 rows, 2 with anomaly score >= 0.9999" in result.stdout
    assert output.stat().st_size > 10_000
    image = matplotlib.image.imread(output)
    assert image.shape[:2] == (600, 1200)
    rgb = image[..., :3]
    background = np.all(rgb > 0.99, axis=-1)
    assert (~background).mean() > 0.02, "the canvas is blank"
    # tab:red markers (#d62728) on both panels.
    red = (np.abs(rgb - np.array([0xD6, 0x27, 0x28]) / 255).max(axis=-1) < 0.08).sum()
    assert red > 50
    # tab:blue value line in the upper two thirds only.
    blue = np.abs(rgb - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.08
    rows_with_blue = np.nonzero(blue.any(axis=1))[0]
    assert rows_with_blue.size > 0 and rows_with_blue.max() < 0.7 * image.shape[0]


def test_plot_of_a_metric_without_rows_is_an_error(clean_db: TestApp, tmp_path: Path) -> None:
    make_metric("nothing", [])
    result = run("plot", "nothing", "-o", str(tmp_path / "x.png"))
    assert_one_line_error(result, "has no data")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["scores", "nope"],
        ["plot", "nope", "-o", "/tmp/never.png"],
        ["unmonitor", "nope"],
        ["delete", "nope"],
        ["export", "nope"],
    ],
)
def test_unknown_metric_is_a_one_line_error(clean_db: TestApp, args: list[str]) -> None:
    assert_one_line_error(run(*args), "'nope' does not exist")


def test_missing_database_is_a_one_line_error(app: TestApp, monkeypatch) -> None:
    monkeypatch.setenv("_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__DB", app.db_name + "_missing")
    from htmengine.repository import dispose_engines

    dispose_engines()
    try:
        assert_one_line_error(run("metrics"), "does not exist", "htmengine db upgrade")
    finally:
        dispose_engines()


def test_unreachable_mysql_is_a_one_line_error(app: TestApp, monkeypatch) -> None:
    monkeypatch.setenv("_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__PORT", str(free_port()))
    from htmengine.repository import dispose_engines

    dispose_engines()
    try:
        assert_one_line_error(run("metrics"), "cannot connect to MySQL", "htmengine up")
    finally:
        dispose_engines()


# -- models through the custom datasource adapter ---------------------------------------------


MONITORED = {"CREATE_PENDING", "ACTIVE"}


def metric_status(name: str) -> str:
    from htmengine.repository import MetricStatus, get_engine, queries

    with get_engine().connect() as conn:
        return MetricStatus(queries.get_custom_metric_by_name(conn, name).status).name


def test_monitor_unmonitor_force_export_import_delete(clean_db: TestApp, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
    from htmengine.repository import get_engine, queries

    make_metric("disk", [])
    with get_engine().begin() as conn:
        uid = queries.get_custom_metric_by_name(conn, "disk").uid
        queries.add_metric_data(
            conn, uid, [(now - datetime.timedelta(minutes=10 - i), float(i)) for i in range(10)]
        )

    monitored = run("monitor", "disk", "--min", "0", "--max", "100", "--min-resolution", "0.5")
    assert monitored.exit_code == 0, monitored.output
    # ACTIVE once a model scheduler and anomaly service confirm it (if a suite is running).
    assert re.fullmatch(
        f"monitoring disk \\(uid {uid}\\): status (CREATE_PENDING|ACTIVE)", monitored.stdout.strip()
    )
    assert metric_status("disk") in MONITORED

    again = run("monitor", "disk", "--min", "0", "--max", "100")
    assert_one_line_error(again, "already monitored", "--force")

    forced = run("monitor", "disk", "--min", "0", "--max", "50", "--force")
    assert forced.exit_code == 0, forced.output
    assert re.fullmatch(
        "unmonitored disk \\(was (CREATE_PENDING|ACTIVE)\\)", forced.stdout.splitlines()[0]
    )
    assert metric_status("disk") in MONITORED

    exported_path = tmp_path / "disk.json"
    exported = run("export", "disk", "-o", str(exported_path))
    assert exported.exit_code == 0, exported.output
    spec = json.loads(exported_path.read_text())
    assert spec["metricSpec"]["metric"] == "disk"
    assert spec["modelParams"]["max"] == 50
    assert len(spec["data"]) == 10
    assert json.loads(run("export", "disk").stdout) == spec

    unmonitored = run("unmonitor", "disk")
    assert unmonitored.exit_code == 0, unmonitored.output
    assert metric_status("disk") == "UNMONITORED"
    assert_one_line_error(run("export", "disk"), "cannot export disk", "not monitored")

    deleted = run("delete", "disk")
    assert deleted.stdout.strip() == f"deleted disk (uid {uid})"
    assert json.loads(run("metrics", "--format", "json").stdout) == []

    imported = run("import", str(exported_path))
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.startswith("imported disk (uid ")
    assert metric_status("disk") in MONITORED
    assert row_count("disk") == 10


def test_monitor_and_import_reject_bad_input_with_one_line(
    clean_db: TestApp, tmp_path: Path
) -> None:
    half = run("monitor", "x", "--min", "0")
    assert half.exit_code == 2
    assert half.stderr.strip().splitlines() == [
        "Error: give both --min and --max, or neither (see 'htmengine monitor --help')"
    ]
    not_json = tmp_path / "bad.json"
    not_json.write_text("{nope")
    assert_one_line_error(run("import", str(not_json)), "is not JSON")
    no_spec = tmp_path / "list.json"
    no_spec.write_text("[1, 2]")
    assert_one_line_error(run("import", str(no_spec)), "not an exported model")
    bad_data = tmp_path / "data.json"
    bad_data.write_text(
        json.dumps({"datasource": "custom", "metricSpec": {"metric": "y"}, "data": [[1, "soon"]]})
    )
    assert_one_line_error(run("import", str(bad_data)), "cannot import")


# -- send and status against a running listener and storer -----------------------------------


def test_send_replays_a_nab_csv_and_counts_accepted_lines(
    clean_db: TestApp, suite: Supervisor, tmp_path: Path
) -> None:
    path = write_nab_csv(tmp_path / "nab.csv", 250)

    result = run("send", str(path), "--metric", "replayed")
    assert result.exit_code == 0, result.output
    assert "sent 250 lines of replayed" in result.stdout
    assert (
        "accepted 250 (published to the data queue, per metric_listener's /metrics" in result.stdout
    )
    wait_for(lambda: row_count("replayed") == 250, what="250 stored rows")

    rows = json.loads(run("scores", "replayed", "--limit", "1", "--format", "json").stdout)
    assert rows[0]["timestamp"] == "2014-04-01 20:45:00"  # row 250, 5 minutes apart


def test_send_replays_a_real_nab_file(clean_db: TestApp, suite: Supervisor, nab_dir: Path) -> None:
    path = nab_dir / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
    lines = len(path.read_text().splitlines()) - 1  # header
    result = run("send", str(path), "--metric", "jumpsup")
    assert result.exit_code == 0, result.output
    assert f"sent {lines} lines of jumpsup" in result.stdout
    assert f"accepted {lines} (published" in result.stdout
    wait_for(lambda: row_count("jumpsup") == lines, what="every NAB row stored")


def test_send_with_a_rate_paces_and_still_counts(
    clean_db: TestApp, suite: Supervisor, tmp_path: Path
) -> None:
    path = write_nab_csv(tmp_path / "slow.csv", 20)
    started = time.monotonic()
    result = run("send", str(path), "--metric", "paced", "--rate", "50")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 0.3  # 20 lines at 50/s take at least 0.38 s to write
    assert "accepted 20" in result.stdout


def test_send_falls_back_to_rows_when_the_listener_metrics_do_not_answer(
    clean_db: TestApp, suite: Supervisor, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(
        "_NTA_UTILS_CONFIG__APPLICATION__METRIC_LISTENER__METRICS_PORT", str(free_port())
    )
    path = write_nab_csv(tmp_path / "rows.csv", 30)
    result = run("send", str(path), "--metric", "counted_by_rows")
    assert result.exit_code == 0, result.output
    assert "accepted 30 (new rows of counted_by_rows in metric_data)" in result.stdout


def test_send_bad_csv_is_a_one_line_error_and_sends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,abc\n")
    assert_one_line_error(run("send", str(path), "-m", "x"), f"{path}:3", "'abc' is not a number")

    missing = run("send", str(tmp_path / "missing.csv"), "-m", "x")
    assert missing.exit_code == 2
    assert len(missing.stderr.strip().splitlines()) == 1


def test_send_to_a_closed_port_says_the_suite_is_not_running(app: TestApp, tmp_path: Path) -> None:
    path = write_nab_csv(tmp_path / "ok.csv", 3)
    result = run("send", str(path), "-m", "x", "--port", str(free_port()))
    assert_one_line_error(result, "cannot connect to the metric listener", "htmengine up")


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_health", timeout=2).close()
    except OSError:
        return False
    return True


def test_status_shows_services_queues_metrics_and_figures(
    clean_db: TestApp, suite: Supervisor, tmp_path: Path
) -> None:
    make_metric("idle", [1.0])
    run("send", str(write_nab_csv(tmp_path / "s.csv", 10)), "-m", "status_probe")
    # Stored rows: the storer is past its start-up, so its /metrics answers.
    wait_for(lambda: row_count("status_probe") == 10, what="stored rows")
    # RUNNING only means alive for startsecs: wait until the webapp serves too.
    wait_for(lambda: _answers(clean_db.ports["webapp"]), what="the webapp to answer")

    result = run("status", "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    status = json.loads(result.stdout)
    assert status["supervisor_url"] == f"http://127.0.0.1:{clean_db.ports['supervisor']}/RPC2"
    assert {name: s["state"] for name, s in status["services"].items()} == dict.fromkeys(
        SERVICES, "RUNNING"
    )
    assert status["queues"][clean_db.data_queue] == 0 or isinstance(
        status["queues"][clean_db.data_queue], int
    )
    assert status["metrics_by_status"]["UNMONITORED"] >= 1
    assert status["rows_waiting_for_scores"] == 0
    listener = status["figures"]["metric_listener"]
    assert listener["error"] is None
    assert listener["values"]["lines published"] >= 10
    storer = status["figures"]["metric_storer"]
    assert storer["error"] is None, clean_db.log_tail("metric_storer")
    assert storer["values"]["rows stored"] >= 10

    text = run("status")
    assert text.exit_code == 0
    assert "metric_listener" in text.stdout and "RUNNING" in text.stdout
    assert "rows waiting to be scored: 0" in text.stdout


def test_metrics_endpoints_parse_as_prometheus_text(app: TestApp, suite: Supervisor) -> None:
    listener = scrape(app.ports["listener_metrics"])
    assert "htmengine_listener_lines_received_total" in listener
    assert "htmengine_listener_lines_published_total" in listener
    storer = scrape(app.ports["storer_metrics"])
    assert "htmengine_storer_samples_stored_total" in storer


def test_status_without_supervisord_fails_with_one_line(app: TestApp) -> None:
    url = f"http://127.0.0.1:{free_port()}/RPC2"
    result = run("status", "--supervisor-url", url)
    assert_one_line_error(result, "suite not healthy", f"supervisord not reachable at {url}")
    assert "(unavailable)" in result.stdout


def test_status_with_nothing_reachable_names_every_problem_on_one_line(
    app: TestApp, monkeypatch
) -> None:
    from htmengine.repository import dispose_engines

    monkeypatch.setenv("_NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__PORT", str(free_port()))
    monkeypatch.setenv("_NTA_UTILS_CONFIG__RABBITMQ__CONNECTION__PORT", str(free_port()))
    dispose_engines()
    try:
        result = run("status", "--supervisor-url", f"http://127.0.0.1:{free_port()}/RPC2")
    finally:
        dispose_engines()
    assert_one_line_error(
        result,
        "supervisord not reachable",
        "MySQL: cannot connect to MySQL",
        "RabbitMQ: cannot connect to RabbitMQ",
    )
    assert "services (supervisord at" in result.stdout and "(unavailable)" in result.stdout


# -- watch --------------------------------------------------------------------------------------


def _cli_subprocess(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "htmengine.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_watch_prints_results_from_the_exchange_in_a_subprocess(app: TestApp) -> None:
    """`python -m htmengine.cli watch` binds its own queue and prints what the engine publishes."""
    from htmengine.bus import MessageBus

    watcher = _cli_subprocess("watch", "--count", "2", "--timeout", "30", "-m", "cpu")
    try:
        ready = watcher.stderr.readline()
        assert ready.startswith("watching " + app.results_exchange), ready
        inference = {
            "metric": {"uid": "u1", "name": "cpu", "resource": "cpu", "datasource": "custom"},
            "results": [
                {
                    "rowid": 7,
                    "ts": 1396310400.0,
                    "value": 12.5,
                    "rawAnomaly": 0.25,
                    "anomaly": 0.5,
                    "multiStepBestPredictions": None,
                },
                {
                    "rowid": 8,
                    "ts": 1396310700.0,
                    "value": 13.0,
                    "rawAnomaly": 1.0,
                    "anomaly": 0.999999,
                    "multiStepBestPredictions": None,
                },
            ],
        }
        other = dict(inference, metric={"name": "other"})
        command = {
            "method": "defineModel",
            "modelId": "u1",
            "commandId": "c1",
            "status": 0,
            "errorMessage": None,
            "modelInfo": {"metricName": "cpu"},
        }
        with MessageBus() as bus:
            bus.publish_exchange(app.results_exchange, zlib.compress(json.dumps(other).encode()))
            bus.publish_exchange(
                app.results_exchange,
                zlib.compress(json.dumps(command).encode()),
                headers={"dataType": "model-cmd-result"},
            )
            bus.publish_exchange(app.results_exchange, b"not zlib")
            bus.publish_exchange(
                app.results_exchange, zlib.compress(json.dumps(inference).encode())
            )
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    assert out.splitlines() == [
        "cpu  defineModel  ok",
        "2014-04-01 00:00:00  cpu  rowid=7  value=12.5  anomaly=0.500000  raw=0.2500",
        "2014-04-01 00:05:00  cpu  rowid=8  value=13  anomaly=0.999999  raw=1.0000",
    ]
    assert "dead-lettered a message (not_json: not zlib-compressed)" in err
    with MessageBus() as bus:
        dead = bus.get(app.results_exchange + ".watch.rejected")
        assert dead is not None and dead.body == b"not zlib"
        assert dead.headers["x-rejected-kind"] == "not_json"
        dead.ack()
        bus.delete_queue(app.results_exchange + ".watch.rejected")


def test_watch_stops_after_timeout_and_leaves_no_queue(app: TestApp) -> None:
    from htmengine.bus import MessageBus
    from htmengine.exceptions import MessageQueueNotFound

    result = run("watch", "--timeout", "0.5")
    assert result.exit_code == 0, result.output
    first, last = result.stderr.strip().splitlines()
    assert first.startswith(f"watching {app.results_exchange} through queue ")
    assert last == "no results for 0.5 s; stopping"
    queue = first.split()[4]
    with MessageBus() as bus, pytest.raises(MessageQueueNotFound):
        bus.declare_queue(queue, passive=True)


# -- the whole pipeline, through the CLI only ----------------------------------------------------


def nonblank_fraction(path: Path) -> float:
    import matplotlib.image

    rgb = matplotlib.image.imread(path)[..., :3]
    return float((~np.all(rgb > 0.99, axis=-1)).mean())


def test_send_monitor_watch_status_plot_end_to_end(
    clean_db: TestApp, suite: Supervisor, tmp_path: Path
) -> None:
    rows = 300
    sent = run("send", str(write_nab_csv(tmp_path / "e2e.csv", rows)), "-m", "e2e")
    assert sent.exit_code == 0, sent.output
    wait_for(lambda: row_count("e2e") == rows, what="stored rows")

    watched = 20
    watcher = _cli_subprocess(
        "watch", "-m", "e2e", "--count", str(watched), "--timeout", "120", "--format", "json"
    )
    try:
        assert watcher.stderr.readline().startswith("watching ")
        monitored = run("monitor", "e2e", "--min", "0", "--max", "100")
        assert monitored.exit_code == 0, monitored.output
        out, err = watcher.communicate(timeout=600)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    commands = [r for r in records if r["kind"] == "command"]
    assert [(c["method"], c["status"]) for c in commands] == [("defineModel", 0)]
    scored = [r for r in records if r["kind"] == "score"]
    assert len(scored) == watched
    assert len({r["rowid"] for r in scored}) == watched
    assert all(1 <= r["rowid"] <= rows and 0.0 <= r["anomaly_score"] <= 1.0 for r in scored)

    wait_for(
        lambda: (
            json.loads(run("status", "--format", "json").stdout)["rows_waiting_for_scores"] == 0
        ),
        what="every row scored",
    )

    # A slot worker reports its run's counts when the run ends (after results are published,
    # checkpointed and acked), so the scheduler's figure may trail the scores a little.
    def status_after_the_run_is_counted() -> dict | None:
        status = json.loads(run("status", "--format", "json").stdout)
        rows_run = status["figures"]["model_scheduler"]["values"]["rows run"]
        return status if rows_run >= rows else None

    status = wait_for(status_after_the_run_is_counted, what="the scheduler's rows-run figure")
    assert status["metrics_by_status"] == {"ACTIVE": 1}
    assert status["figures"]["model_scheduler"]["values"]["swaps"] >= 1
    assert status["figures"]["anomaly_service"]["values"]["rows scored"] >= rows
    assert status["figures"]["anomaly_service"]["values"]["mean scoring seconds"] > 0
    scheduler = scrape(clean_db.ports["scheduler_metrics"])
    assert scheduler["htmengine_scheduler_rows_run_total"] >= rows
    anomaly = scrape(clean_db.ports["anomaly_metrics"])
    assert anomaly["htmengine_anomaly_scoring_seconds_count"] >= 1

    listed = json.loads(run("metrics", "--format", "json").stdout)
    assert listed[0]["status"] == "ACTIVE" and listed[0]["last_anomaly_score"] is not None
    png = tmp_path / "e2e.png"
    assert run("plot", "e2e", "-o", str(png)).exit_code == 0
    assert nonblank_fraction(png) > 0.02
