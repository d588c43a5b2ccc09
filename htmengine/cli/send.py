"""``send``: replay a CSV file of (timestamp, value) rows to the metric listener over TCP."""

from __future__ import annotations

import csv
import socket
import sys
import time
from dataclasses import dataclass

import click
from tqdm import tqdm

from htmengine.cli.common import (
    CONNECT_TIMEOUT_SEC,
    ScrapeError,
    ensure_config_dir,
    parse_timestamp,
    scrape_metrics,
)
from htmengine.protocol.timestamps import to_epoch_seconds

# Listener counters that account for every line it read: published (accepted), rejected at the
# edge, dropped for lack of buffer space.
_PUBLISHED = "htmengine_listener_lines_published_total"
_REJECTED = "htmengine_listener_lines_rejected_total"
_DROPPED = "htmengine_listener_lines_dropped_total"

# Lines per write when no --rate is given.
_CHUNK_LINES = 500
# Seconds between polls while waiting for the engine to account for the lines.
_POLL_SEC = 0.2
# With only the database to go by: stop waiting once the row count stood still this long.
_ROWS_SETTLE_SEC = 3.0


def read_samples(path: str) -> list[tuple[int, float]]:
    """(epoch seconds, value) rows of a CSV file: timestamp in column 1, value in column 2.

    A first row that does not parse is taken as the header (NAB's ``timestamp,value``); any
    other bad row is an error naming the file and line.
    """
    samples: list[tuple[int, float]] = []
    try:
        with open(path, newline="") as fh:
            for number, row in enumerate(csv.reader(fh), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                try:
                    samples.append(_parse_row(row))
                except ValueError as exc:
                    if number == 1:
                        continue
                    raise click.ClickException(f"{path}:{number}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path} is not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise click.ClickException(f"{path} is not a CSV file ({exc})") from None
    if not samples:
        raise click.ClickException(f"{path} has no (timestamp, value) rows")
    return samples


def _parse_row(row: list[str]) -> tuple[int, float]:
    if len(row) < 2:
        raise ValueError(f"expected timestamp,value but got {','.join(row)!r}")
    moment = parse_timestamp(row[0])
    try:
        value = float(row[1])
    except ValueError:
        raise ValueError(f"value {row[1]!r} is not a number") from None
    return to_epoch_seconds(moment), value


def format_lines(
    metric: str, samples: list[tuple[int, float]], limit: int | None = None
) -> list[bytes]:
    """Graphite plaintext lines, each checked by the listener's own parser before it is sent.

    `limit`: the first epoch second the listener does not accept (its future-timestamp rule,
    `timestamp_limit`); default: the format's bound, 2100-01-01.
    """
    from htmengine.runtime.plaintext_protocol import MAX_TIMESTAMP, LineError, parse_line

    limit = MAX_TIMESTAMP if limit is None else limit
    lines = []
    for timestamp, value in samples:
        line = f"{metric} {value!r} {timestamp}"
        try:
            parse_line(line, limit=limit)
        except LineError as exc:
            raise click.ClickException(
                f"the listener would reject {line!r}: {exc.reason}"
            ) from None
        lines.append(line.encode() + b"\n")
    return lines


@dataclass
class Baseline:
    """Counts taken before sending, to measure what the engine did with our lines."""

    listener: dict[str, float] | None
    rows: int | None


def _listener_counts(port: int) -> dict[str, float] | None:
    try:
        samples = scrape_metrics(port)
    except ScrapeError:
        return None
    if _PUBLISHED not in samples:
        return None
    return {name: samples.get(name, 0.0) for name in (_PUBLISHED, _REJECTED, _DROPPED)}


def _row_count(metric: str) -> int | None:
    import sqlalchemy.exc

    from htmengine.exceptions import MetricNotFound
    from htmengine.repository import get_engine, queries

    try:
        with get_engine().connect() as conn:
            uid = queries.get_custom_metric_by_name(conn, metric, ["uid"]).uid
            return queries.get_metric_data_count(conn, uid)
    except MetricNotFound:
        return 0
    except sqlalchemy.exc.SQLAlchemyError:  # no database: the listener's counters must do
        return None


def _send(lines: list[bytes], host: str, port: int, rate: float) -> None:
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SEC)
    except OSError as exc:
        raise click.ClickException(
            f"cannot connect to the metric listener at {host}:{port} ({exc.strerror or exc}); "
            "is the suite running? (htmengine up)"
        ) from None
    chunk = max(1, int(rate / 20)) if rate > 0 else _CHUNK_LINES
    start = time.monotonic()
    with sock, tqdm(total=len(lines), unit="line", file=sys.stderr, leave=False) as progress:
        sock.settimeout(None)
        for first in range(0, len(lines), chunk):
            batch = lines[first : first + chunk]
            if rate > 0:
                delay = start + first / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                sock.sendall(b"".join(batch))
            except OSError as exc:
                raise click.ClickException(
                    f"the listener at {host}:{port} closed the connection after "
                    f"{first} of {len(lines)} lines ({exc})"
                ) from None
            progress.update(len(batch))
        # Half-close and wait for the listener to close its side: it has read every line.
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(CONNECT_TIMEOUT_SEC * 10)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass


def _confirm(metric: str, sent: int, baseline: Baseline, port: int, wait: float) -> tuple[int, str]:
    """(lines accepted, how we know) once the engine accounted for them or `wait` ran out."""
    deadline = time.monotonic() + wait
    if baseline.listener is not None:
        accepted = 0
        while True:
            now = _listener_counts(port) or baseline.listener
            delta = {name: now[name] - baseline.listener[name] for name in now}
            accepted = int(min(delta[_PUBLISHED], sent))
            if sum(delta.values()) >= sent or time.monotonic() >= deadline:
                break
            time.sleep(_POLL_SEC)
        return accepted, "published to the data queue, per metric_listener's /metrics counters"
    if baseline.rows is not None:
        last, last_change = baseline.rows, time.monotonic()
        while time.monotonic() < deadline:
            rows = _row_count(metric)
            if rows is not None and rows != last:
                last, last_change = rows, time.monotonic()
            if last - baseline.rows >= sent or time.monotonic() - last_change >= _ROWS_SETTLE_SEC:
                break
            time.sleep(_POLL_SEC)
        return min(last - baseline.rows, sent), f"new rows of {metric} in metric_data"
    raise click.ClickException(
        f"sent {sent} lines but cannot confirm them: neither the listener's /metrics nor MySQL "
        "answered"
    )


@click.command()
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-m", "--metric", required=True, help="Metric name to send the values under.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Lines per second (0: as fast as the listener reads).",
)
@click.option("--host", help="Listener host (default: [metric_listener] host).")
@click.option(
    "--port", type=int, help="Listener TCP port (default: [metric_listener] plaintext_port)."
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=30,
    show_default=True,
    help="Seconds to wait for the engine to confirm the lines.",
)
def send(
    csv_file: str, metric: str, rate: float, host: str | None, port: int | None, wait: float
) -> None:
    """Replay CSV_FILE (timestamp,value rows; NAB's layout works) to the listener over TCP.

    Prints how many lines were accepted: the listener's published-line counter (its /metrics)
    when it answers, else the new rows of the metric in MySQL. Other clients sending at the
    same time inflate the listener's counter; the count is capped at the lines sent.
    Exits 1 when fewer lines than sent were accepted.
    """
    samples = read_samples(csv_file)
    ensure_config_dir()
    from htmengine.config import get_app_config
    from htmengine.instrumentation import metrics_port
    from htmengine.runtime.plaintext_protocol import timestamp_limit

    listener = get_app_config()
    max_future = listener.getint("metric_listener", "max_future_seconds")
    lines = format_lines(metric, samples, timestamp_limit(time.time(), max_future))
    host = host or listener.get("metric_listener", "host")
    port = port or listener.getint("metric_listener", "plaintext_port")
    listener_metrics_port = metrics_port("metric_listener")
    baseline = Baseline(listener=_listener_counts(listener_metrics_port), rows=_row_count(metric))
    _send(lines, host, port, rate)
    accepted, source = _confirm(metric, len(lines), baseline, listener_metrics_port, wait)
    click.echo(
        f"sent {len(lines)} lines of {metric} to {host}:{port}; accepted {accepted} ({source})"
    )
    if accepted < len(lines):
        raise click.ClickException(f"only {accepted} of {len(lines)} lines were accepted")


COMMANDS = [send]
