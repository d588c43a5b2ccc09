"""Ingestion throughput: graphite lines over loopback TCP -> listener -> queue -> storer -> MySQL.

Starts MariaDB/RabbitMQ with the project's script, creates a throw-away application (own database,
queues, ports) and runs metric_listener + metric_storer under supervisord with the project's
config, like the integration tests. Then it sends N lines for M metrics over one TCP connection
and prints:

* lines/s accepted by the listener (until its received-lines counter reaches N) and published
  (confirmed by the broker);
* rows/s committed by the storer (from its first to its last committed row);
* the end-to-end time until the last row is in MySQL;
* the ceilings measured in the same run: parsing the same lines in a tight loop (the listener's
  and the storer's parser), and inserting the same rows with multi-row INSERTs (1,000 rows per
  statement, 50,000 per transaction) over one PyMySQL connection; and our figures as ratios.

    python benchmarks/ingest.py [--lines 1000000] [--metrics 1000] [--connections N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _suite import scrape_metrics as counters  # noqa: E402
from _suite import start_supervised  # noqa: E402

BASE_TS = 1_370_000_000
INSERT_ROWS_PER_STATEMENT = 1000
INSERT_ROWS_PER_TRANSACTION = 50_000
SEND_CHUNK_BYTES = 256 * 1024


def make_lines(count: int, metrics: int) -> list[bytes]:
    """`count` lines round-robin over `metrics` names, timestamps increasing per metric."""
    return [
        b"bench.metric.%d %d.%d %d" % (i % metrics, i % 997, i % 10, BASE_TS + i // metrics)
        for i in range(count)
    ]


def parse_ceilings(lines: list[bytes]) -> tuple[float, float]:
    """Lines/s of the listener's parser (bytes) and the storer's (text) in a tight loop."""
    from htmengine.runtime.plaintext_protocol import normalize_lines, parse_samples

    payload = b"\n".join(lines)
    started = time.perf_counter()
    good = normalize_lines(payload.split(b"\n")).good
    listener_rate = len(lines) / (time.perf_counter() - started)
    texts = [line.decode() for line in good]
    started = time.perf_counter()
    parse_samples(texts)
    storer_rate = len(lines) / (time.perf_counter() - started)
    return listener_rate, storer_rate


def insert_ceiling(lines: list[bytes], metrics: int) -> float:
    """Rows/s of multi-row INSERTs of the same rows over one PyMySQL connection."""
    import pymysql

    from htmengine.config import get_app_config

    config = get_app_config()
    conn = pymysql.connect(
        host=config.get("repository", "host"),
        port=config.getint("repository", "port"),
        user=config.get("repository", "user"),
        password=config.get("repository", "passwd"),
        database=config.get("repository", "db"),
        init_command="SET time_zone = '+00:00'",
    )
    epoch = datetime.datetime(1970, 1, 1)
    uids = [f"{i:032x}" for i in range(metrics)]
    rows = []
    for i, line in enumerate(lines):
        _, value, ts = line.split()
        rows.append(
            (
                uids[i % metrics],
                i // metrics + 1,
                epoch + datetime.timedelta(seconds=int(ts)),
                float(value),
            )
        )
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_metric_data")
            cur.execute("CREATE TABLE bench_metric_data LIKE metric_data")
        started = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, len(rows), INSERT_ROWS_PER_TRANSACTION):
                chunk = rows[start : start + INSERT_ROWS_PER_TRANSACTION]
                for first in range(0, len(chunk), INSERT_ROWS_PER_STATEMENT):
                    cur.executemany(
                        "INSERT INTO bench_metric_data (uid, rowid, timestamp, metric_value) "
                        "VALUES (%s, %s, %s, %s)",
                        chunk[first : first + INSERT_ROWS_PER_STATEMENT],
                    )
                conn.commit()
        rate = len(rows) / (time.perf_counter() - started)
        with conn.cursor() as cur:
            cur.execute("DROP TABLE bench_metric_data")
        return rate
    finally:
        conn.close()


def send(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        view = memoryview(payload)
        for start in range(0, len(payload), SEND_CHUNK_BYTES):
            sock.sendall(view[start : start + SEND_CHUNK_BYTES])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)


def committed_rows() -> int:
    """Rows committed so far: the sum of every metric's last_rowid (cheap, unlike COUNT(*))."""
    import sqlalchemy as sa

    from htmengine.repository import get_engine
    from htmengine.repository.schema import metric

    with get_engine().connect() as conn:
        return int(conn.execute(sa.select(sa.func.sum(metric.c.last_rowid))).scalar() or 0)


def run_pipeline(app, lines: list[bytes]) -> dict[str, float]:
    """Send the lines through the running services; timings from polling counters and the DB."""
    import sqlalchemy as sa

    from htmengine.repository import get_engine
    from htmengine.repository.schema import metric_data

    total = len(lines)
    payload = b"\n".join(lines) + b"\n"
    listener_port = app.ports["listener_metrics"]
    marks: dict[str, float] = {}
    started = time.perf_counter()
    sender = threading.Thread(target=send, args=(app.ports["plaintext"], payload))
    sender.start()
    while "stored" not in marks:
        now = time.perf_counter()
        listener = counters(listener_port)
        stored = committed_rows()
        if "received" not in marks and listener["htmengine_listener_lines_received_total"] >= total:
            marks["received"] = now
        if (
            "published" not in marks
            and listener["htmengine_listener_lines_published_total"] >= total
        ):
            marks["published"] = now
        if "first_row" not in marks and stored > 0:
            marks["first_row"] = now
        if stored >= total:
            marks["stored"] = now
        if now - started > 1800:
            raise TimeoutError(f"only {stored} of {total} rows stored after 30 minutes")
        time.sleep(0.02)
    sender.join()
    with get_engine().connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(metric_data)).scalar_one()
    if rows != total:
        raise AssertionError(f"{rows} rows in metric_data, expected {total}")
    return {
        "listener_lines_per_sec": total / (marks["received"] - started),
        "published_lines_per_sec": total / (marks["published"] - started),
        "storer_rows_per_sec": total / (marks["stored"] - marks["first_row"]),
        "end_to_end_sec": marks["stored"] - started,
    }


def start_services(app):
    """supervisord with the listener and the storer, as the integration tests run them."""
    return start_supervised(
        app, ["metric_listener", "metric_storer"], [app.ports["listener_metrics"]], timeout=30
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--metrics", type=int, default=1000)
    parser.add_argument(
        "--connections",
        type=int,
        help="DB connections of the storer (default: [metric_storer] connections)",
    )
    args = parser.parse_args()

    from tests.support.app import create_test_app, drop_database, start_servers

    start_servers()
    root = Path(tempfile.mkdtemp(prefix="htmengine-bench-ingest-"))
    app = create_test_app(root)
    if args.connections is not None:
        app.override("application.conf", {"metric_storer": {"connections": str(args.connections)}})
    from htmengine.repository import migrate

    migrate.upgrade()
    lines = make_lines(args.lines, args.metrics)
    supervisor = None
    try:
        from htmengine.config import get_app_config

        connections = get_app_config().getint("metric_storer", "connections")
        print(
            f"{args.lines:,} lines for {args.metrics:,} metrics; storer with {connections} DB "
            f"connection(s); app {app.name} in {root}"
        )
        parse_listener, parse_storer = parse_ceilings(lines)
        print(f"ceiling: listener parser   {parse_listener:12,.0f} lines/s (tight loop)")
        print(f"ceiling: storer parser     {parse_storer:12,.0f} lines/s (tight loop)")
        insert = insert_ceiling(lines, args.metrics)
        print(f"ceiling: multi-row INSERT  {insert:12,.0f} rows/s (one PyMySQL connection)")

        supervisor = start_services(app)
        figures = run_pipeline(app, lines)
        print(
            f"listener accepted          {figures['listener_lines_per_sec']:12,.0f} lines/s"
            f"  = {figures['listener_lines_per_sec'] / parse_listener:.2f} x parser ceiling"
        )
        print(f"listener published         {figures['published_lines_per_sec']:12,.0f} lines/s")
        print(
            f"storer committed           {figures['storer_rows_per_sec']:12,.0f} rows/s"
            f"  = {figures['storer_rows_per_sec'] / insert:.2f} x INSERT ceiling"
        )
        print(f"end to end                 {figures['end_to_end_sec']:12.1f} s until the last row")
        figures.update(
            ceiling_listener_parse=parse_listener,
            ceiling_storer_parse=parse_storer,
            ceiling_insert=insert,
        )
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    finally:
        if supervisor is not None:
            supervisor.stop()
        from htmengine.bus import MessageBus, rejected_queue_name

        with MessageBus() as bus:
            bus.delete_queue(app.data_queue)
            bus.delete_queue(rejected_queue_name(app.data_queue))
        drop_database(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
