"""The CLI's pure parts: CSV and timestamp parsing, tables, error lines, result decoding, scraping."""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path

import click
import pymysql
import pytest
import sqlalchemy.exc
from click.testing import CliRunner

from htmengine import config
from htmengine.cli import cli
from htmengine.cli.common import (
    DEFAULT_SUPERVISOR_URL,
    ScrapeError,
    describe_error,
    format_table,
    parse_timestamp,
    scrape_metrics,
    supervisor_url_from_config,
)
from htmengine.cli.results import _ResultPrinter, format_record, result_records
from htmengine.cli.send import format_lines, read_samples
from htmengine.cli.suite import _figure
from htmengine.config import ConfigError
from htmengine.exceptions import MetricAlreadyMonitored, MetricNotFound
from htmengine.instrumentation import (
    METRICS_PORT_KEYS,
    AnomalyServiceMetrics,
    SchedulerMetrics,
    metrics_port,
    serve_metrics,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_conf(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The checkout's default configuration directory, active for this test."""
    monkeypatch.setenv(config.CONFIG_PATH_ENV, str(REPO / "conf"))
    config.clear_cache()
    yield REPO / "conf"
    config.clear_cache()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- timestamps and CSV files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1396310400", datetime.datetime(2014, 4, 1)),
        ("1396310400.9", datetime.datetime(2014, 4, 1, 0, 0, 0, 900000)),
        ("2014-04-01 00:05:00", datetime.datetime(2014, 4, 1, 0, 5)),
        ("2014-04-01T00:05", datetime.datetime(2014, 4, 1, 0, 5)),
        ("2014-04-01", datetime.datetime(2014, 4, 1)),
        ("2014-04-01T02:00:00+02:00", datetime.datetime(2014, 4, 1)),
    ],
)
def test_parse_timestamp_gives_naive_utc(text: str, expected: datetime.datetime) -> None:
    assert parse_timestamp(text) == expected


def test_parse_timestamp_rejects_text_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="'soon' is not a timestamp"):
        parse_timestamp("soon")


def test_read_samples_takes_nab_layout_and_skips_its_header(tmp_path: Path) -> None:
    path = tmp_path / "nab.csv"
    path.write_text("timestamp,value\n2014-04-01 00:00:00,1.5\n\n2014-04-01 00:05:00,-2\n")
    assert read_samples(str(path)) == [(1396310400, 1.5), (1396310700, -2.0)]


def test_read_samples_takes_epoch_rows_without_header_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "epoch.csv"
    path.write_text("1396310400,3,label\n1396310700,4,label\n")
    assert read_samples(str(path)) == [(1396310400, 3.0), (1396310700, 4.0)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("timestamp,value\n2014-04-01,1\nnope,2\n", "bad.csv:3: 'nope' is not a timestamp"),
        ("timestamp,value\n2014-04-01,1\n2014-04-02\n", "bad.csv:3: expected timestamp,value"),
        ("timestamp,value\n", "bad.csv has no (timestamp, value) rows"),
    ],
)
def test_read_samples_names_file_and_line_of_a_bad_row(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(click.ClickException) as info:
        read_samples(str(path))
    assert message in info.value.message


def test_read_samples_rejects_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "image.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(click.ClickException, match="not a text CSV file"):
        read_samples(str(path))


def test_format_lines_are_graphite_plaintext_checked_by_the_listener_parser() -> None:
    assert format_lines("cpu", [(1396310400, 12.5)]) == [b"cpu 12.5 1396310400\n"]
    with pytest.raises(click.ClickException, match="would reject"):
        format_lines("two words", [(1396310400, 1.0)])
    with pytest.raises(click.ClickException, match="would reject"):
        format_lines("cpu", [(4102444800, 1.0)])  # 2100-01-01: outside the accepted range
    # the listener's future-timestamp rule, when the caller passes its limit
    assert format_lines("cpu", [(1_700_000_000, 1.0)], limit=1_700_000_001)
    with pytest.raises(click.ClickException, match="too far in the future"):
        format_lines("cpu", [(1_700_000_001, 1.0)], limit=1_700_000_001)


# -- output ------------------------------------------------------------------------------------


def test_format_table_aligns_numbers_right_and_shows_none_as_dash() -> None:
    table = format_table(
        ["name", "rows", "score"],
        [["cpu", 3, 0.25], ["a_longer_name", 12345, None]],
    )
    assert table.splitlines() == [
        "name            rows  score",
        "cpu                3   0.25",
        "a_longer_name  12345      -",
    ]


@pytest.mark.parametrize(
    ("value", "text"), [(None, "-"), (3.0, "3"), (0.87923, "0.8792"), (12, "12")]
)
def test_status_figures_are_short(value: float | None, text: str) -> None:
    assert _figure(value) == text


# -- supervisord URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "url"),
    [
        ("[inet_http_server]\nport=127.0.0.1:9101\n", "http://127.0.0.1:9101/RPC2"),
        ("[inet_http_server]\nport=*:9001\n", "http://127.0.0.1:9001/RPC2"),
        ("[inet_http_server]\nport=9002\n", "http://127.0.0.1:9002/RPC2"),
        (
            "[inet_http_server]\nport=localhost:9003\nusername=ops\npassword=s3cret\n",
            "http://ops:s3cret@localhost:9003/RPC2",
        ),
        ("[supervisord]\nlogfile=%(here)s/x.log\n", DEFAULT_SUPERVISOR_URL),
    ],
)
def test_supervisor_url_comes_from_inet_http_server(tmp_path: Path, section: str, url: str) -> None:
    (tmp_path / "supervisord.conf").write_text(section)
    assert supervisor_url_from_config(str(tmp_path)) == url


def test_supervisor_url_of_the_standalone_app(monkeypatch) -> None:
    # Its credentials are expanded from the environment (or the local secrets file).
    monkeypatch.setenv("HTMENGINE_SUPERVISOR_USER", "htmengine")
    monkeypatch.setenv("HTMENGINE_SUPERVISOR_PASSWORD", "s3cret")
    assert (
        supervisor_url_from_config(str(REPO / "conf"))
        == "http://htmengine:s3cret@127.0.0.1:9001/RPC2"
    )


# -- one-line errors ---------------------------------------------------------------------------


def _db_error(code: int, text: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, pymysql.err.OperationalError(code, text))


def test_describe_error_explains_expected_failures(repo_conf: Path) -> None:
    assert (
        describe_error(ConfigError("x.conf: key 'db' is missing")) == "x.conf: key 'db' is missing"
    )
    assert describe_error(MetricNotFound("custom metric 'a' does not exist")) == (
        "custom metric 'a' does not exist"
    )
    assert "--force" in describe_error(MetricAlreadyMonitored("already monitored", uid="u"))
    assert describe_error(_db_error(2003, "Can't connect")) == (
        "cannot connect to MySQL at 127.0.0.1:3306; is the suite running? (htmengine up)"
    )
    assert "run `htmengine db upgrade`" in describe_error(_db_error(1146, "no table"))
    assert "create it with `htmengine db upgrade`" in describe_error(_db_error(1049, "unknown"))
    assert (
        describe_error(_db_error(1205, "Lock wait timeout")) == "database error: Lock wait timeout"
    )
    assert describe_error(RuntimeError("a bug")) is None


def test_usage_errors_are_one_line_with_exit_code_2() -> None:
    result = CliRunner().invoke(cli, ["send"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: Missing argument 'CSV_FILE'. (see 'htmengine send --help')"
    ]
    unknown = CliRunner().invoke(cli, ["frobnicate"])
    assert unknown.exit_code == 2
    assert len(unknown.stderr.splitlines()) == 1
    assert "No such command 'frobnicate'" in unknown.stderr


def test_config_errors_are_one_line_with_exit_code_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --conf sets APPLICATION_CONFIG_PATH for the process; monkeypatch puts it back afterwards.
    monkeypatch.setenv(config.CONFIG_PATH_ENV, str(tmp_path))
    result = CliRunner().invoke(cli, ["--conf", str(tmp_path), "metrics"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: configuration file {tmp_path}/application.conf is missing"
    ]
    config.clear_cache()


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in (
        "up", "down", "status", "db", "metrics", "monitor", "unmonitor", "delete",
        "export", "import", "send", "scores", "plot", "watch",
    ):  # fmt: skip
        assert f"\n  {command} " in result.stdout


# -- results exchange messages -----------------------------------------------------------------


INFERENCE = {
    "metric": {"uid": "u1", "name": "cpu"},
    "results": [
        {"rowid": 1, "ts": 1396310400.0, "value": 12.5, "rawAnomaly": 0.25, "anomaly": 0.5},
        {"rowid": 2, "ts": 1396310700.0, "value": 13.0, "rawAnomaly": None, "anomaly": None},
    ],
}
COMMAND = {
    "method": "defineModel",
    "modelId": "u1",
    "commandId": "c",
    "status": 4,
    "errorMessage": "bad params",
}


def test_result_records_flatten_inference_results() -> None:
    records = result_records(INFERENCE, {})
    assert [format_record(r) for r in records] == [
        "2014-04-01 00:00:00  cpu  rowid=1  value=12.5  anomaly=0.500000  raw=0.2500",
        "2014-04-01 00:05:00  cpu  rowid=2  value=13  anomaly=-  raw=-",
    ]


def test_result_records_of_a_failed_command() -> None:
    (record,) = result_records(COMMAND, {"dataType": "model-cmd-result"})
    assert record["kind"] == "command" and record["metric"] is None
    assert format_record(record) == "u1  defineModel  error 4: bad params"


def test_result_printer_filters_by_metric_and_stops_at_count(capsys) -> None:
    printer = _ResultPrinter({"cpu"}, 3, "json")
    other = dict(INFERENCE, metric={"name": "mem"})
    assert printer.show(result_records(other, {})) is False
    assert printer.show(result_records(INFERENCE, {})) is False
    assert printer.show(result_records(INFERENCE, {})) is True
    out, _ = capsys.readouterr()
    assert [json.loads(line)["rowid"] for line in out.splitlines()] == [1, 2, 1]


# -- Prometheus ---------------------------------------------------------------------------------


def test_metrics_ports_come_from_each_services_config_section(repo_conf: Path) -> None:
    assert {service: metrics_port(service) for service in METRICS_PORT_KEYS} == {
        "metric_listener": 9101,
        "metric_storer": 9102,
        "model_scheduler": 9103,
        "anomaly_service": 9104,
    }


def test_scrape_reads_what_start_metrics_server_serves() -> None:
    scheduler = SchedulerMetrics()
    scheduler.models_running.set(3)
    scheduler.swaps.inc(7)
    scheduler.batch_seconds.observe(0.5)
    port = free_port()
    serve_metrics(scheduler.registry, port)
    values = scrape_metrics(port)
    assert values["htmengine_scheduler_models_running"] == 3
    assert values["htmengine_scheduler_swaps_total"] == 7
    assert values["htmengine_scheduler_batch_seconds_count"] == 1
    assert values["htmengine_scheduler_batch_seconds_sum"] == 0.5

    anomaly = AnomalyServiceMetrics()
    port = free_port()
    serve_metrics(anomaly.registry, port)
    # A labelled counter nobody incremented yet still reads as zero.
    assert scrape_metrics(port)["htmengine_anomaly_batches_rejected_total"] == 0


def test_scrape_of_a_closed_port_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError, match="Connection refused"):
        scrape_metrics(free_port())


# -- up / down run the checkout's scripts -------------------------------------------------------


class _Completed:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


@pytest.mark.parametrize(("command", "script"), [("up", "up.sh"), ("down", "down.sh")])
def test_up_and_down_run_the_readme_scripts(
    monkeypatch: pytest.MonkeyPatch, command: str, script: str
) -> None:
    calls = []
    monkeypatch.setattr(
        "htmengine.cli.suite.subprocess.run",
        lambda args, check: calls.append(args) or _Completed(0),
    )
    result = CliRunner().invoke(cli, [command])
    assert result.exit_code == 0, result.output
    assert calls == [["bash", str(REPO / "scripts" / script)]]


def test_a_failing_script_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("htmengine.cli.suite.subprocess.run", lambda args, check: _Completed(3))
    result = CliRunner().invoke(cli, ["up"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {REPO / 'scripts' / 'up.sh'} failed with exit code 3 (its output is above)"
    ]


def test_config_dir_defaults_to_the_checkouts_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    from htmengine.cli.common import ensure_config_dir

    monkeypatch.delenv(config.CONFIG_PATH_ENV, raising=False)
    try:
        assert ensure_config_dir() == str(REPO / "conf")
    finally:
        config.clear_cache()
