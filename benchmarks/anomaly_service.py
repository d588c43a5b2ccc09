"""Anomaly service throughput and latency, without models: synthetic raw scores in, scores committed.

Creates a throw-away application (own database and queues on the local MariaDB/RabbitMQ, started
with scripts/servers.sh), monitors METRICS metrics, stores ROWS rows each, activates them, then runs
the anomaly service in this process and publishes result batches as model runners would:

1. catch-up: every metric's ROWS results in backlog-sized batches (chunk_size rows) ->
   rows scored per second (likelihood + multi-row writes + publish, end to end);
2. steady state: one new row per metric, one result batch each, as at a 5-minute cadence ->
   p50/p99 latency from publishing a result to its score being committed, and rows/s.

Usage: python benchmarks/anomaly_service.py [--metrics 20] [--rows 3000] [--steady-rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from htmengine.adapters.datasource import createDatasourceAdapter  # noqa: E402
from htmengine.bus import MessageBus  # noqa: E402
from htmengine.config import get_app_config  # noqa: E402
from htmengine.engine.lifecycle import MODEL_START_KEY  # noqa: E402
from htmengine.model_swapper.model_swapper_interface import (  # noqa: E402
    ModelCommandResult,
    ModelInferenceResult,
    ModelSwapperInterface,
)
from htmengine.repository import MetricStatus, get_engine, migrate  # noqa: E402
from htmengine.runtime.anomaly_likelihood_helper import AnomalyLikelihoodHelper  # noqa: E402
from htmengine.runtime.anomaly_service import AnomalyService  # noqa: E402
from tests.support.app import create_test_app, drop_database, start_servers  # noqa: E402
from tests.support.engine import insert_rows, metric_row, series  # noqa: E402


def scored_total(uids: list[str]) -> int:
    with get_engine().connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM metric_data WHERE anomaly_score IS NOT NULL AND uid IN :uids"
            ).bindparams(sa.bindparam("uids", expanding=True)),
            {"uids": uids},
        ).scalar_one()


def wait_scored(uids: list[str], total: int, interval: float = 0.05) -> None:
    deadline = time.monotonic() + 3600
    while scored_total(uids) < total:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {total} scored rows")
        time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--steady-rounds", type=int, default=5)
    args = parser.parse_args()

    start_servers()
    app = create_test_app(Path(tempfile.mkdtemp(prefix="anomaly-bench-")))
    migrate.upgrade()
    bus = MessageBus()
    swapper = ModelSwapperInterface(bus=bus)
    service_bus = MessageBus()
    config = get_app_config()
    chunk_size = config.getint("metric_streamer", "chunk_size")
    service = AnomalyService(
        service_bus,
        ModelSwapperInterface(bus=service_bus),
        app.results_exchange,
        AnomalyLikelihoodHelper.from_config(config),
        chunk_size,
    )
    thread = threading.Thread(target=service.run, daemon=True)
    uids: list[str] = []
    try:
        adapter = createDatasourceAdapter("custom")
        rng = random.Random(1)
        for i in range(args.metrics):
            uid = adapter.createMetric(f"bench.{i}")
            insert_rows(uid, series(args.rows + args.steady_rounds, seed=i)[: args.rows])
            adapter.monitorMetric(
                {
                    "datasource": "custom",
                    "metricSpec": {"metric": f"bench.{i}"},
                    "modelParams": {"min": 0, "max": 130},
                }
            )
            bus.purge_queue(swapper.model_input_queue(uid))
            uids.append(uid)
        thread.start()
        for uid in uids:
            command_id = json.loads(metric_row(uid).model_params)[MODEL_START_KEY]["commandId"]
            swapper.submitResults(uid, [ModelCommandResult(command_id, "defineModel", 0, {})])
        while any(metric_row(uid).status != MetricStatus.ACTIVE for uid in uids):
            time.sleep(0.1)

        def raw() -> float:
            return rng.choice([0.0, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0])

        started = time.monotonic()
        for first in range(1, args.rows + 1, chunk_size):
            for uid in uids:
                last = min(first + chunk_size - 1, args.rows)
                swapper.submitResults(
                    uid, [ModelInferenceResult(r, 0, raw()) for r in range(first, last + 1)]
                )
        wait_scored(uids, args.metrics * args.rows)
        catch_up = time.monotonic() - started
        total = args.metrics * args.rows
        print(
            f"catch-up: {total} rows of {args.metrics} metrics in {catch_up:.1f} s "
            f"= {total / catch_up:.0f} rows/s scored (batches of {chunk_size})"
        )

        latencies = []
        steady_started = time.monotonic()
        tail = series(args.rows + args.steady_rounds, seed=0)[args.rows :]
        for round_index in range(args.steady_rounds):
            rowid = args.rows + round_index + 1
            for uid in uids:
                insert_rows(uid, [tail[round_index]])
            for uid in uids:
                sent = time.monotonic()
                swapper.submitResults(uid, [ModelInferenceResult(rowid, 0, raw())])
                wait_scored([uid], rowid, interval=0.002)
                latencies.append(time.monotonic() - sent)
        steady = time.monotonic() - steady_started
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        print(
            f"steady state: {len(latencies)} one-row batches, latency result published -> score "
            f"committed p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
            f"(sequential, {len(latencies) / steady:.0f} batches/s including the 2 ms polling)"
        )
    finally:
        service.stop()
        thread.join(timeout=30)
        service_bus.close()
        for uid in uids:
            bus.delete_queue(swapper.model_input_queue(uid))
        bus.delete_queue(app.results_queue)
        bus.close()
        drop_database(app)


if __name__ == "__main__":
    main()
