"""Running the suite: ``up``, ``down``, ``status`` and ``db upgrade``."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.request
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from htmengine.cli.common import (
    CONNECT_TIMEOUT_SEC,
    SUPERVISOR_URL_ENV,
    ScrapeError,
    checkout_script,
    describe_error,
    ensure_config_dir,
    scrape_metrics,
    status_name,
    supervisor_url_from_config,
    without_credentials,
)

# Key figures `status` shows per service: (label, Prometheus sample name). A histogram's mean is
# given as (label, "<name>_sum/<name>_count").
SERVICE_FIGURES: dict[str, list[tuple[str, str]]] = {
    "metric_listener": [
        ("lines received", "htmengine_listener_lines_received_total"),
        ("lines rejected", "htmengine_listener_lines_rejected_total"),
        ("lines published", "htmengine_listener_lines_published_total"),
        ("connections open", "htmengine_listener_connections_open"),
    ],
    "metric_storer": [
        ("rows stored", "htmengine_storer_samples_stored_total"),
        ("samples dropped", "htmengine_storer_samples_dropped_total"),
        ("messages dead-lettered", "htmengine_storer_messages_rejected_total"),
    ],
    "model_scheduler": [
        ("models running", "htmengine_scheduler_models_running"),
        ("models waiting", "htmengine_scheduler_models_waiting"),
        ("swaps", "htmengine_scheduler_swaps_total"),
        ("rows run", "htmengine_scheduler_rows_run_total"),
    ],
    "anomaly_service": [
        ("rows scored", "htmengine_anomaly_rows_scored_total"),
        ("batches rejected", "htmengine_anomaly_batches_rejected_total"),
        (
            "mean scoring seconds",
            "htmengine_anomaly_scoring_seconds_sum/htmengine_anomaly_scoring_seconds_count",
        ),
    ],
}


def _run_script(name: str) -> None:
    script = checkout_script(name)
    returncode = subprocess.run(["bash", str(script)], check=False).returncode
    if returncode != 0:
        raise click.ClickException(
            f"{script} failed with exit code {returncode} (its output is above)"
        )


@click.command()
def up() -> None:
    """Install what is missing and start MariaDB, RabbitMQ and supervisord (scripts/up.sh)."""
    _run_script("up.sh")


@click.command()
def down() -> None:
    """Stop supervisord and the services, then RabbitMQ and MariaDB (scripts/down.sh)."""
    _run_script("down.sh")


@click.group()
def db() -> None:
    """The database schema."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Create the configured database if needed and run the migrations."""
    ensure_config_dir()
    from htmengine.config import get_app_config
    from htmengine.repository import migrate

    migrate.upgrade(revision=revision)
    name = get_app_config().get("repository", "db")
    click.echo(f"database {name!r} is at revision {migrate.current_revision()}")


# -- status -------------------------------------------------------------------------------------


class _TimeoutTransport(xmlrpc.client.Transport):
    """XML-RPC over HTTP that gives up on a silent server after CONNECT_TIMEOUT_SEC."""

    def make_connection(self, host) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = CONNECT_TIMEOUT_SEC
        return connection


@dataclass
class SuiteStatus:
    """Everything `status` found out; `problems` are the reasons the suite is not healthy."""

    supervisor_url: str
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    queues: dict[str, int | None] = field(default_factory=dict)
    model_input_queues: dict[str, int] = field(default_factory=dict)
    metrics_by_status: dict[str, int] = field(default_factory=dict)
    rows_waiting_for_scores: int | None = None
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    webapp: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _collect_services(status: SuiteStatus, url: str) -> None:
    """supervisord's view; `url` may hold credentials, which never reach the status shown."""
    proxy = xmlrpc.client.ServerProxy(url, transport=_TimeoutTransport())
    try:
        infos = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error, http.client.HTTPException) as exc:
        detail = str(exc).replace(url.removeprefix("http://"), status.supervisor_url)
        status.problems.append(f"supervisord not reachable at {status.supervisor_url} ({detail})")
        return
    for info in infos:
        status.services[info["name"]] = {
            "state": info["statename"],
            "description": info["description"],
        }
        if info["statename"] != "RUNNING":
            status.problems.append(f"{info['name']} is {info['statename']}")


def _collect_queues(status: SuiteStatus, model_uids: list[str] | None) -> None:
    """Queue depths by passive declare; model input queues of `model_uids` (None: unknown)."""
    from htmengine.bus import MessageBus, rejected_queue_name
    from htmengine.config import get_app_config, get_model_swapper_config
    from htmengine.exceptions import MessageQueueNotFound

    app_config = get_app_config()
    swapper_config = get_model_swapper_config()
    data_queue = app_config.get("metric_listener", "queue_name")
    results_queue = swapper_config.get("interface_bus", "results_queue")
    names = [
        data_queue,
        rejected_queue_name(data_queue),
        results_queue,
        rejected_queue_name(results_queue),
        swapper_config.get("interface_bus", "scheduler_notification_queue"),
    ]
    prefix = swapper_config.get("interface_bus", "model_input_queue_prefix")
    with MessageBus(reconnect_timeout=CONNECT_TIMEOUT_SEC) as bus:
        for name in names:
            try:
                status.queues[name] = bus.declare_queue(name, passive=True)
            except MessageQueueNotFound:
                status.queues[name] = None
        if model_uids is None:
            return
        waiting = with_backlog = 0
        for uid in model_uids:
            try:
                depth = bus.declare_queue(prefix + uid, passive=True)
            except MessageQueueNotFound:
                continue
            waiting += depth
            with_backlog += depth > 0
    status.model_input_queues = {
        "models": len(model_uids),
        "models_with_backlog": with_backlog,
        "messages": waiting,
    }


def _collect_database(status: SuiteStatus) -> list[str]:
    """Metrics by status and rows waiting for scores; returns the uids of the models that run."""
    from htmengine.repository import MetricStatus, get_engine, queries

    with get_engine().connect() as conn:
        counts = queries.count_metrics_by_status(conn)
        status.rows_waiting_for_scores = queries.get_unprocessed_model_data_count(conn)
        models = queries.get_metrics_by_status(
            conn, [MetricStatus.ACTIVE, MetricStatus.CREATE_PENDING], ["uid"]
        )
    status.metrics_by_status = {
        status_name(value): count for value, count in sorted(counts.items())
    }
    return [model.uid for model in models]


def _collect_figures(status: SuiteStatus) -> None:
    from htmengine.instrumentation import METRICS_PORT_KEYS, metrics_port

    for service in METRICS_PORT_KEYS:
        port = metrics_port(service)
        entry: dict[str, Any] = {"port": port, "error": None, "values": {}}
        status.figures[service] = entry
        try:
            samples = scrape_metrics(port)
        except ScrapeError as exc:
            entry["error"] = str(exc)
            continue
        for label, name in SERVICE_FIGURES[service]:
            if "/" in name:
                total, count = (samples.get(part) for part in name.split("/"))
                entry["values"][label] = total / count if total is not None and count else None
            else:
                entry["values"][label] = samples.get(name)


def _collect_webapp(status: SuiteStatus) -> None:
    """The webapp's URL and whether it answers; a disabled webapp (EXITED) is no problem."""
    from htmengine.config import get_app_config
    from htmengine.webapp.settings import SECTION, api_key_path, enabled

    config = get_app_config()
    if not enabled(config):
        status.webapp = {"enabled": False}
        status.problems = [p for p in status.problems if p != "webapp is EXITED"]
        return
    host = config.get(SECTION, "host")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{config.getint(SECTION, 'port')}/"
    key_source = (
        "[webapp] api_key" if config.get(SECTION, "api_key").strip() else api_key_path(config)
    )
    status.webapp = {"enabled": True, "url": url, "api_key_in": key_source, "health": None}
    try:
        with urllib.request.urlopen(url + "_health", timeout=CONNECT_TIMEOUT_SEC) as response:
            status.webapp["health"] = json.loads(response.read())
    except (OSError, ValueError) as exc:
        status.problems.append(f"webapp not answering at {url} ({exc})")


def collect_status(supervisor_url: str) -> SuiteStatus:
    """Ask supervisord, RabbitMQ, MySQL and each service's /metrics how the suite is doing."""
    status = SuiteStatus(supervisor_url=without_credentials(supervisor_url))
    _collect_services(status, supervisor_url)
    model_uids: list[str] | None = None
    # A failure is reported as a problem; the other sections are still shown.
    try:
        model_uids = _collect_database(status)
    except Exception as exc:
        status.problems.append(f"MySQL: {describe_error(exc) or repr(exc)}")
    try:
        _collect_queues(status, model_uids)
    except Exception as exc:
        status.problems.append(f"RabbitMQ: {describe_error(exc) or repr(exc)}")
    _collect_figures(status)
    _collect_webapp(status)
    return status


def _print_status(status: SuiteStatus) -> None:
    echo = click.echo
    echo(f"services (supervisord at {status.supervisor_url}):")
    if not status.services:
        echo("  (unavailable)")
    for name, info in status.services.items():
        echo(f"  {name:<20} {info['state']:<10} {info['description']}")
    echo("queues (messages ready):")
    for name, depth in status.queues.items():
        echo(f"  {name:<50} {'absent' if depth is None else depth}")
    if status.model_input_queues:
        q = status.model_input_queues
        echo(
            f"  model input queues: {q['messages']} messages for {q['models_with_backlog']} "
            f"of {q['models']} models"
        )
    by_status = ", ".join(f"{name} {count}" for name, count in status.metrics_by_status.items())
    echo(f"metrics by status: {by_status or 'none'}")
    waiting = status.rows_waiting_for_scores
    echo(f"rows waiting to be scored: {'-' if waiting is None else waiting}")
    echo("service figures (from /metrics):")
    for service, entry in status.figures.items():
        if entry["error"]:
            echo(f"  {service:<20} unreachable ({entry['error']})")
            continue
        figures = ", ".join(f"{label} {_figure(value)}" for label, value in entry["values"].items())
        echo(f"  {service:<20} {figures}")
    web = status.webapp
    if not web.get("enabled"):
        echo("webapp: disabled (no [webapp] section, or enabled = false, in application.conf)")
    else:
        health = web["health"] or {}
        state = (
            "not answering"
            if not health
            else f"following results {'yes' if health.get('results_followed') else 'no'}, "
            f"{health.get('live_clients', 0)} live clients"
        )
        echo(f"webapp: {web['url']} ({state}; API key: {web['api_key_in']})")


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


@click.command()
@click.option(
    "--supervisor-url",
    envvar=SUPERVISOR_URL_ENV,
    help="supervisord XML-RPC URL (default: [inet_http_server] of <conf>/supervisord.conf).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
def status(supervisor_url: str | None, output_format: str) -> None:
    """Services, queue depths, metrics by status, rows waiting to be scored, key figures.

    Exits 1 when supervisord, MySQL or RabbitMQ cannot be reached or a service is not RUNNING.
    """
    conf_dir = ensure_config_dir()
    url = supervisor_url or supervisor_url_from_config(conf_dir)
    suite_status = collect_status(url)
    if output_format == "json":
        click.echo(json.dumps(asdict(suite_status), indent=2, sort_keys=True))
    else:
        _print_status(suite_status)
    if suite_status.problems:
        raise click.ClickException("suite not healthy: " + "; ".join(suite_status.problems))


COMMANDS = [up, down, status, db]
