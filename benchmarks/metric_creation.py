"""A fleet's new names: how fast never-seen metric names become metrics, by the table's size.

On a throw-away application database (MariaDB started with the project's script), for each
table size in `--sizes` the `metric` table is first filled with that many custom metrics
(multi-row INSERTs), then `--names` new names are created through the storer's own path
(`ensure_custom_metrics`, in batches of `--batch` names as the listener's batches bring them).
Side by side, in the same run and table, the path before revision 0002 (no index on the name,
one lookup per new name under the lock row: the landed main before this change) creates
`--old-names` names, with the index dropped for the measurement and rebuilt after.
Prints names/s for both and their ratio, per table size; flat cost means the new path's rate
barely moves from the smallest to the largest table.

`--suite` also sends `--names` never-seen names at once over TCP to metric_listener +
metric_storer under supervisord (table empty) and prints the seconds until all exist.

    python benchmarks/metric_creation.py [--sizes 0,100000,1000000] [--names 20000]
        [--batch 1000] [--old-names 300] [--suite]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _suite import start_supervised  # noqa: E402

FILL_ROWS_PER_STATEMENT = 2000


def fill(engine, target: int) -> None:
    """Add filler custom metrics until `metric` holds `target` rows."""
    import sqlalchemy as sa

    from htmengine.repository.schema import metric

    with engine.connect() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(metric)).scalar_one()
    while have < target:
        count = min(FILL_ROWS_PER_STATEMENT, target - have)
        rows = [
            {
                "uid": uuid.uuid4().hex,
                "datasource": "custom",
                "name": f"filler.{have + i:08d}",
                "description": f"Custom metric filler.{have + i:08d}",
                "server": f"filler.{have + i:08d}",
                "location": "",
                "poll_interval": 300,
                "status": 0,
                "last_rowid": 0,
            }
            for i in range(count)
        ]
        with engine.begin() as conn:
            conn.execute(metric.insert(), rows)
        have += count


def create_new(engine, names: list[str], batch: int) -> float:
    """Seconds to create `names` through the storer's path, `batch` names per call."""
    from htmengine.runtime.metric_streamer import ensure_custom_metrics

    started = time.perf_counter()
    for start in range(0, len(names), batch):
        _, created = ensure_custom_metrics(engine, names[start : start + batch], {})
        assert len(created) == len(names[start : start + batch])
    return time.perf_counter() - started


def create_new_before(engine, names: list[str]) -> float:
    """Seconds to create `names` as before revision 0002: no name index, one lookup per name
    under the lock row."""
    import sqlalchemy as sa

    from htmengine.repository import queries
    from htmengine.repository.schema import metric

    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE metric DROP INDEX datasource_name_idx")
    try:
        started = time.perf_counter()
        with engine.begin() as conn:
            for name in names:
                queries.lock_metrics_table(conn)
                found = conn.execute(
                    sa.select(metric.c.uid)
                    .where(metric.c.datasource == "custom", metric.c.name == name)
                    .limit(1)
                ).first()
                assert found is None
                queries.insert_metric(
                    conn,
                    datasource="custom",
                    name=name,
                    description=f"Custom metric {name}",
                    server=name,
                    location="",
                    poll_interval=300,
                    status=0,
                )
        return time.perf_counter() - started
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "ALTER TABLE metric ADD INDEX datasource_name_idx (datasource, name)"
            )


def run_suite(app, count: int) -> float:
    """Seconds from one TCP send of `count` never-seen names until every one is a metric."""
    import sqlalchemy as sa

    from htmengine.repository import get_engine
    from htmengine.repository.schema import metric

    ports = [app.ports["listener_metrics"], app.ports["storer_metrics"]]
    supervisor = start_supervised(app, ["metric_listener", "metric_storer"], ports)
    try:
        payload = b"".join(b"suite.new.%d 1.5 1500000000\n" % i for i in range(count))
        with get_engine().connect() as conn:
            before = conn.execute(sa.select(sa.func.count()).select_from(metric)).scalar_one()
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", app.ports["plaintext"])) as sock:
            sock.sendall(payload)
        while True:
            with get_engine().connect() as conn:
                have = conn.execute(sa.select(sa.func.count()).select_from(metric)).scalar_one()
            if have - before >= count:
                return time.perf_counter() - started
            if time.perf_counter() - started > 3600:
                raise TimeoutError(f"only {have - before} of {count} metrics after an hour")
            time.sleep(0.1)
    finally:
        supervisor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0,100000,1000000")
    parser.add_argument("--names", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--old-names", type=int, default=300)
    parser.add_argument("--suite", action="store_true")
    args = parser.parse_args()

    from htmengine.repository import get_engine, migrate
    from tests.support.app import create_test_app, drop_database, start_servers

    start_servers()
    app = create_test_app(Path(tempfile.mkdtemp(prefix="htmengine-bench-")))
    migrate.upgrade()
    engine = get_engine()
    try:
        if args.suite:
            seconds = run_suite(app, args.names)
            print(
                f"suite: {args.names} never-seen names sent at once -> all created in "
                f"{seconds:.2f} s ({args.names / seconds:,.0f} metrics/s)"
            )
        rates = []
        for round_, size in enumerate(int(s) for s in args.sizes.split(",")):
            fill(engine, size)
            new_names = [f"fleet.{round_}.{i:06d}" for i in range(args.names)]
            new_seconds = create_new(engine, new_names, args.batch)
            old_names = [f"fleet.old.{round_}.{i:06d}" for i in range(args.old_names)]
            old_seconds = create_new_before(engine, old_names)
            new_rate = args.names / new_seconds
            old_rate = args.old_names / old_seconds
            rates.append(new_rate)
            print(
                f"table of {size:>9,} metrics: {args.names:,} new names in {new_seconds:6.2f} s "
                f"= {new_rate:8,.0f} names/s; before revision 0002: {old_rate:8,.1f} names/s "
                f"({args.old_names} names); ratio {new_rate / old_rate:,.0f}x"
            )
        if len(rates) > 1:
            print(
                f"flatness: rate at the largest table / rate at the smallest = "
                f"{rates[-1] / rates[0]:.2f}"
            )
    finally:
        engine.dispose()
        drop_database(app)


if __name__ == "__main__":
    main()
