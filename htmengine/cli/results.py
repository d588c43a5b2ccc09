"""Reading the engine's output: ``scores`` (table/CSV/JSON), ``plot`` (PNG) and ``watch``
(the results exchange, live)."""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import click

from htmengine.cli.common import (
    CONNECT_TIMEOUT_SEC,
    TimestampType,
    ensure_config_dir,
    format_table,
)
from htmengine.protocol.results import deserialize_model_result, is_command_result

# anomaly_score at or above which `plot` marks a row: the original's display_value jumps from
# 1000 to 1000000 there (the "warning" level of its UI).
DEFAULT_PLOT_THRESHOLD = 0.9999

_SCORE_COLUMNS = (
    "rowid",
    "timestamp",
    "metric_value",
    "raw_anomaly_score",
    "anomaly_score",
    "display_value",
)

# Seconds `watch` keeps trying to reach a broker that went away (e.g. restarted) before it gives up.
WATCH_RECONNECT_SEC = 120.0


def _load_rows(name: str, since: datetime.datetime | None, limit: int | None) -> list[Any]:
    """Rows of metric `name` in rowid order: from `since` the first `limit`, else the last `limit`."""
    from htmengine.repository import get_engine, queries
    from htmengine.repository.schema import metric_data

    with get_engine().connect() as conn:
        uid = queries.get_custom_metric_by_name(conn, name, ["uid"]).uid
        if since is not None or limit is None:
            return queries.get_metric_data(
                conn, uid, _SCORE_COLUMNS, from_timestamp=since, limit=limit
            )
        newest = queries.get_metric_data(
            conn, uid, _SCORE_COLUMNS, limit=limit, sort=metric_data.c.rowid.desc()
        )
        return newest[::-1]


@click.command()
@click.argument("name")
@click.option("--since", type=TimestampType(), help="Rows from this time on (UTC).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="At most this many rows: the first ones from --since, else the newest.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
def scores(
    name: str, since: datetime.datetime | None, limit: int | None, output_format: str
) -> None:
    """Values and anomaly scores of metric NAME, oldest first (unscored rows show no score)."""
    ensure_config_dir()
    rows = _load_rows(name, since, limit)
    if output_format == "json":
        click.echo(json.dumps([_row_dict(row) for row in rows], indent=2))
    elif output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_SCORE_COLUMNS)
        for row in rows:
            record = _row_dict(row)
            writer.writerow(["" if record[c] is None else record[c] for c in _SCORE_COLUMNS])
        click.echo(buffer.getvalue(), nl=False)
    else:
        click.echo(format_table(_SCORE_COLUMNS, [tuple(row) for row in rows]))


def _row_dict(row: Any) -> dict[str, Any]:
    record = dict(row._mapping)
    record["timestamp"] = record["timestamp"].strftime("%Y-%m-%d %H:%M:%S")
    return record


@click.command()
@click.argument("name")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write."
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=DEFAULT_PLOT_THRESHOLD,
    show_default=True,
    help="Mark rows whose anomaly score is at least this.",
)
@click.option("--since", type=TimestampType(), help="Rows from this time on (UTC).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
def plot(
    name: str,
    output: str,
    threshold: float,
    since: datetime.datetime | None,
    limit: int | None,
) -> None:
    """Plot metric NAME's values with its anomaly score beneath, rows over a threshold marked."""
    ensure_config_dir()
    rows = _load_rows(name, since, limit)
    if not rows:
        raise click.ClickException(f"metric {name!r} has no data to plot")
    marked = render_plot(name, rows, threshold, output)
    click.echo(f"wrote {output}: {len(rows)} rows, {marked} with anomaly score >= {threshold}")


def render_plot(name: str, rows: Sequence[Any], threshold: float, output: str) -> int:
    """Write the PNG (matplotlib's Agg canvas, no display needed); returns how many rows are marked."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = np.array([row.timestamp for row in rows], dtype="datetime64[s]")
    values = np.array([row.metric_value for row in rows], dtype=float)
    score = np.array([np.nan if r.anomaly_score is None else r.anomaly_score for r in rows])
    raw = np.array([np.nan if r.raw_anomaly_score is None else r.raw_anomaly_score for r in rows])
    over = np.nan_to_num(score, nan=-1.0) >= threshold

    figure = Figure(figsize=(12, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    value_axes, score_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    value_axes.plot(times, values, color="tab:blue", linewidth=0.8, label="value")
    if over.any():
        value_axes.scatter(
            times[over],
            values[over],
            color="tab:red",
            s=18,
            zorder=3,
            label=f"anomaly score >= {threshold:g}",
        )
    value_axes.set_ylabel("value")
    value_axes.set_title(f"{name}: {len(rows)} rows, {int(over.sum())} over {threshold:g}")
    value_axes.legend(loc="best")
    score_axes.plot(times, raw, color="0.6", linewidth=0.6, label="raw anomaly")
    score_axes.plot(times, score, color="tab:orange", linewidth=1.0, label="anomaly score")
    score_axes.axhline(threshold, color="tab:red", linestyle="--", linewidth=0.8)
    if over.any():
        score_axes.scatter(times[over], score[over], color="tab:red", s=12, zorder=3)
    score_axes.set_ylim(-0.02, 1.02)
    score_axes.set_ylabel("score")
    score_axes.set_xlabel("time (UTC)")
    score_axes.legend(loc="best")
    figure.savefig(output, format="png")
    return int(over.sum())


# -- watch ----------------------------------------------------------------------------------------


def result_records(payload: Any, headers: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat records of one results-exchange message: one per scored row, or one command result."""
    if is_command_result(headers):
        info = payload.get("modelInfo") or {}
        return [
            {
                "kind": "command",
                "metric": info.get("metricName"),
                "model": payload.get("modelId"),
                "method": payload.get("method"),
                "status": payload.get("status"),
                "error": payload.get("errorMessage"),
            }
        ]
    metric = payload.get("metric") or {}
    return [
        {
            "kind": "score",
            "metric": metric.get("name"),
            "rowid": result.get("rowid"),
            "timestamp": datetime.datetime.fromtimestamp(result["ts"], datetime.UTC).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "value": result.get("value"),
            "raw_anomaly_score": result.get("rawAnomaly"),
            "anomaly_score": result.get("anomaly"),
        }
        for result in payload.get("results", [])
    ]


def format_record(record: dict[str, Any]) -> str:
    """One human line per record."""
    if record["kind"] == "command":
        outcome = "ok" if record["status"] == 0 else f"error {record['status']}: {record['error']}"
        return f"{record['metric'] or record['model']}  {record['method']}  {outcome}"
    return (
        f"{record['timestamp']}  {record['metric']}  rowid={record['rowid']}  "
        f"value={_number(record['value'], 'g')}  "
        f"anomaly={_number(record['anomaly_score'], '.6f')}  "
        f"raw={_number(record['raw_anomaly_score'], '.4f')}"
    )


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@click.command()
@click.option("-m", "--metric", "metrics", multiple=True, help="Only these metrics (repeatable).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many scored rows.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds without a message.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line.",
)
def watch(
    metrics: tuple[str, ...], count: int | None, timeout: float | None, output_format: str
) -> None:
    """Print anomaly scores as the engine publishes them on the results exchange.

    Uses its own exclusive, auto-deleted queue bound to the exchange, so it takes nothing from
    the application's queues and leaves nothing behind. A message it cannot decode is moved to
    the durable queue ``<exchange>.watch.rejected`` (shared by every watcher) and reported on
    stderr (rate-limited).
    """
    ensure_config_dir()
    from htmengine.bus import MessageBus, PoisonGuard, rejected_queue_name
    from htmengine.config import get_app_config
    from htmengine.exceptions import MessageQueueNotFound

    exchange = get_app_config().get("metric_streamer", "results_exchange_name")
    queue = f"{exchange}.watch.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    printer = _ResultPrinter(set(metrics), count, output_format)
    guard = PoisonGuard(
        _stderr_logger("htmengine.cli.watch"),
        dead_letter_queue=rejected_queue_name(exchange + ".watch"),
    )
    with MessageBus(reconnect_timeout=CONNECT_TIMEOUT_SEC) as bus:
        _bind_private_queue(bus, exchange, queue)
        # Started: from now on ride out a broker restart instead of failing at once.
        bus.reconnect_timeout = WATCH_RECONNECT_SEC
        click.echo(f"watching {exchange} through queue {queue} (Ctrl-C to stop)", err=True)
        try:
            while True:
                try:
                    for message in bus.consume(queue, prefetch=100, inactivity_timeout=timeout):
                        if message is None:
                            click.echo(f"no results for {timeout:g} s; stopping", err=True)
                            return
                        records = guard.decode(message, _records_decoder(message.headers))
                        if records is None:  # dead-lettered and acked
                            continue
                        message.ack()
                        if printer.show(records):
                            return
                except MessageQueueNotFound:
                    pass
                # The private queue went away with a lost connection (or was deleted).
                _bind_private_queue(bus, exchange, queue)
                click.echo(
                    "reconnected to the broker; results published meanwhile were missed", err=True
                )
        except KeyboardInterrupt:
            return


def _records_decoder(headers: dict[str, Any]) -> Any:
    """The watch's decoder for a message with these headers: body -> its records."""
    return lambda body: result_records(deserialize_model_result(body), headers)


def _stderr_logger(name: str) -> logging.Logger:
    """A logger that prints its warnings on stderr as bare lines, whatever the CLI's log level
    (logging is silenced below CRITICAL unless HTMENGINE_LOG_LEVEL says otherwise)."""
    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False
    return log


def _bind_private_queue(bus: Any, exchange: str, queue: str) -> None:
    bus.declare_exchange(exchange, "fanout", durable=True)
    bus.declare_queue(queue, durable=False, exclusive=True, auto_delete=True)
    bus.bind_queue(queue, exchange)


class _ResultPrinter:
    """Prints results-exchange records; knows when `count` scores were shown."""

    def __init__(self, metrics: set[str], count: int | None, output_format: str) -> None:
        self.metrics = metrics
        self.count = count
        self.output_format = output_format
        self.scores_shown = 0

    def show(self, records: list[dict[str, Any]]) -> bool:
        """Print one message's records; True once `count` scored rows have been printed."""
        for record in records:
            if self.metrics and record["metric"] not in self.metrics:
                continue
            if self.output_format == "json":
                click.echo(json.dumps(record))
            else:
                click.echo(format_record(record))
            if record["kind"] == "score":
                self.scores_shown += 1
                if self.count is not None and self.scores_shown >= self.count:
                    return True
        return False


COMMANDS = [scores, plot, watch]
