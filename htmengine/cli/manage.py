"""Metrics and their models: ``metrics``, ``monitor``, ``unmonitor``, ``delete``, ``export``,
``import``. Model changes go through the custom datasource adapter, as an application's would."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from htmengine.cli.common import ensure_config_dir, format_table, status_name

# How `metrics --format json` writes timestamps (naive UTC, whole seconds), as exports do.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


def _adapter():
    from htmengine.adapters.datasource import createDatasourceAdapter

    return createDatasourceAdapter("custom")


def _metric_by_name(name: str):
    """The custom metric row called `name` (MetricNotFound, a one-line error, if none)."""
    from htmengine.repository import get_engine, queries

    with get_engine().connect() as conn:
        return queries.get_custom_metric_by_name(conn, name)


@click.command("metrics")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
def metrics_command(output_format: str) -> None:
    """Table of custom metrics: name, status, rows, last timestamp, last anomaly score."""
    ensure_config_dir()
    from htmengine.repository import get_engine, queries

    with get_engine().connect() as conn:
        summaries = queries.get_metric_summaries(conn)
    if output_format == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "uid": m.uid,
                        "status": status_name(m.status),
                        "message": m.message,
                        "rows": m.row_count,
                        "last_timestamp": _iso(m.last_timestamp),
                        "last_anomaly_score": m.last_anomaly_score,
                    }
                    for m in summaries
                ],
                indent=2,
            )
        )
        return
    if not summaries:
        click.echo("no metrics yet (send data with `htmengine send` or to the listener)")
        return
    headers = ["name", "status", "rows", "last timestamp", "last anomaly score"]
    rows = [
        [m.name, status_name(m.status), m.row_count, m.last_timestamp, m.last_anomaly_score]
        for m in summaries
    ]
    if any(m.message for m in summaries):
        # An ERROR metric's reason is what its owner needs next.
        headers.append("message")
        for row, m in zip(rows, summaries, strict=True):
            row.append(m.message)
    click.echo(format_table(headers, rows))


def _iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.strftime(TIMESTAMP_FORMAT)


@click.command()
@click.argument("name")
@click.option("--min", "min_value", type=float, help="Smallest expected value (with --max).")
@click.option("--max", "max_value", type=float, help="Largest expected value (with --min).")
@click.option("--min-resolution", type=float, help="Smallest change of value worth encoding.")
@click.option(
    "--force",
    is_flag=True,
    help="Unmonitor first if the metric already has a model (recovers a metric in ERROR).",
)
def monitor(
    name: str,
    min_value: float | None,
    max_value: float | None,
    min_resolution: float | None,
    force: bool,
) -> None:
    """Create a model for metric NAME (created if it does not exist yet).

    Without --min/--max the engine derives them from the data once the metric has 288 rows.
    """
    if (min_value is None) != (max_value is None):
        raise click.UsageError("give both --min and --max, or neither")
    if min_value is not None and max_value is not None and max_value <= min_value:
        raise click.UsageError(f"--max ({max_value}) must be greater than --min ({min_value})")
    ensure_config_dir()
    from htmengine.exceptions import MetricNotFound
    from htmengine.repository import MetricStatus

    adapter = _adapter()
    if force:
        try:
            metric = _metric_by_name(name)
        except MetricNotFound:
            pass
        else:
            if metric.status != MetricStatus.UNMONITORED:
                adapter.unmonitorMetric(metric.uid)
                click.echo(f"unmonitored {name} (was {status_name(metric.status)})")
    model_params: dict[str, Any] = {}
    if min_value is not None:
        model_params.update({"min": min_value, "max": max_value})
    if min_resolution is not None:
        model_params["minResolution"] = min_resolution
    spec: dict[str, Any] = {"datasource": "custom", "metricSpec": {"metric": name}}
    if model_params:
        spec["modelParams"] = model_params
    try:
        uid = adapter.monitorMetric(spec)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"cannot monitor {name}: {exc}") from exc
    metric = _metric_by_name(name)
    click.echo(f"monitoring {name} (uid {uid}): status {status_name(metric.status)}")


@click.command()
@click.argument("name")
def unmonitor(name: str) -> None:
    """Delete the model of metric NAME and clear its scores (the data is kept)."""
    ensure_config_dir()
    metric = _metric_by_name(name)
    _adapter().unmonitorMetric(metric.uid)
    click.echo(f"unmonitored {name} (uid {metric.uid})")


@click.command()
@click.argument("name")
def delete(name: str) -> None:
    """Delete metric NAME, its model and all its data."""
    ensure_config_dir()
    metric = _metric_by_name(name)
    _adapter().deleteMetricByName(name)
    click.echo(f"deleted {name} (uid {metric.uid})")


@click.command("export")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to this file instead of stdout.",
)
def export_command(name: str, output: str | None) -> None:
    """Export the model spec of metric NAME with its last 14 days of data, as JSON."""
    ensure_config_dir()
    metric = _metric_by_name(name)
    try:
        exported = _adapter().exportModel(metric.uid)
    except ValueError as exc:
        raise click.ClickException(f"cannot export {name}: {exc}") from exc
    from htmengine.adapters.datasource.custom import export_file_data

    text = json.dumps(export_file_data(exported), indent=2)
    if output is None:
        click.echo(text)
        return
    with open(output, "w") as fh:
        fh.write(text + "\n")
    click.echo(f"exported {name} to {output}", err=True)


@click.command("import")
@click.argument("file", type=click.File("r"))
def import_command(file) -> None:
    """Recreate a metric and its model from a file written by `htmengine export`."""
    try:
        spec = json.load(file)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{file.name} is not JSON: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("metricSpec"), dict):
        raise click.ClickException(f"{file.name} is not an exported model (no metricSpec object)")
    ensure_config_dir()
    try:
        uid = _adapter().importModel(spec)
    except (ValueError, TypeError, KeyError) as exc:
        raise click.ClickException(f"cannot import {file.name}: {exc}") from exc
    click.echo(f"imported {spec['metricSpec'].get('metric', uid)} (uid {uid})")


COMMANDS = [
    metrics_command,
    monitor,
    unmonitor,
    delete,
    export_command,
    import_command,
]
