"""The whole engine under supervisord: graphite lines in over TCP, anomaly scores committed.

Each part runs on its own throw-away application (own database, queues, ports, checkpoint
archive; MariaDB/RabbitMQ started with scripts/servers.sh) with all four services
(metric_listener, metric_storer, model_scheduler with `--slots` slot workers, anomaly_service)
under supervisord, as the integration tests run them.

``stream``: `--stream-metrics` metrics are monitored with min/max first (so each row goes to its
model as it is stored), then `--stream-rows` rows of each are sent over one TCP connection in
rounds of one row per metric. At most `--window` rounds are unscored at any time (the sender waits
for round r - window before sending round r). Prints rows scored per second, p50/p99 latency from
a round's send to each row's score, swap-in time per model (the scheduler's load_seconds
histogram), and the peak resident memory of the scheduler with its slot workers (psutil, sampled).

``steady``: a large host at a 5-minute cadence. `--steady-metrics` ACTIVE metrics, each already past
its first `--history` rows (rows, raw and anomaly scores, likelihood state and model checkpoints
prepared directly: `--seeds` distinct series are run through ScalarAnomalyModel in a process
pool and their checkpoints cloned; the rows go in with multi-row INSERTs). Then, `--cycles` times,
one new row for every metric in one TCP send. Prints per cycle the seconds until every new row is
scored, swaps per second, p50/p99 row latency, and checkpoint bytes written per row (the
scheduler's checkpoint_bytes counter, and the archive's size on disk before and after).

Latency and completion are observed on the results exchange: a queue bound to it receives each
scored row, published by the anomaly service right after the transaction that committed it.

    python benchmarks/engine.py --quick
    python benchmarks/engine.py [--part stream|steady|both] [--slots 2]
        [--stream-metrics 200] [--stream-rows 1000] [--window 50]
        [--steady-metrics 1000] [--history 300] [--cycles 3] [--seeds 8]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from _suite import histogram_quantile, scrape_metrics, start_supervised  # noqa: E402
from tqdm import tqdm  # noqa: E402

PROGRAMS = ["model_scheduler", "metric_listener", "metric_storer", "anomaly_service"]
VALUE_RANGE = (0.0, 130.0)  # encoder min/max given to monitorMetric (series() stays inside)
SCORE_TIMEOUT_SEC = 3600.0


# --- observing the suite -----------------------------------------------------------------------


class ResultsTracker:
    """Consumes a queue bound to the results exchange in a thread; records when each
    (uid, rowid) first arrived (time.monotonic())."""

    def __init__(self, exchange: str, queue: str) -> None:
        from htmengine.bus import MessageBus

        self.exchange = exchange
        self.queue = queue
        with MessageBus() as bus:
            bus.declare_exchange(exchange, exchange_type="fanout", durable=True)
            bus.declare_queue(queue, durable=True)
            bus.bind_queue(queue, exchange)
            bus.purge_queue(queue)
        self.arrivals: dict[tuple[str, int], float] = {}
        self.by_rowid: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        from htmengine.bus import MessageBus
        from htmengine.protocol.results import deserialize_model_result

        with MessageBus() as bus:
            for message in bus.consume(self.queue, prefetch=1000, inactivity_timeout=0.2):
                if message is not None:
                    now = time.monotonic()
                    if not message.headers or "dataType" not in message.headers:
                        payload = deserialize_model_result(message.body)
                        uid = payload["metric"]["uid"]
                        with self.lock:
                            for item in payload["results"]:
                                key = (uid, int(item["rowid"]))
                                if key not in self.arrivals:
                                    self.arrivals[key] = now
                                    self.by_rowid[key[1]] += 1
                    message.ack()
                if self._stop.is_set():
                    return

    def reset(self) -> None:
        with self.lock:
            self.arrivals.clear()
            self.by_rowid.clear()

    def count(self, rowid: int | None = None) -> int:
        with self.lock:
            return len(self.arrivals) if rowid is None else self.by_rowid[rowid]

    def close(self) -> None:
        from htmengine.bus import MessageBus

        self._stop.set()
        self._thread.join(timeout=10)
        with MessageBus() as bus:
            bus.delete_queue(self.queue)


class MemorySampler:
    """Samples the resident memory of the model scheduler and its slot workers (the process tree
    under the scheduler's pid) every `interval` seconds; keeps the peaks."""

    def __init__(self, supervisor, interval: float = 0.5) -> None:
        self.supervisor = supervisor
        self.interval = interval
        self.peak_total = 0
        self.peak_scheduler = 0
        self.peak_worker = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        root: psutil.Process | None = None
        while not self._stop.wait(self.interval):
            try:
                if root is None or not root.is_running():
                    root = psutil.Process(self.supervisor.pid("model_scheduler"))
                scheduler = root.memory_info().rss
                workers = [child.memory_info().rss for child in root.children(recursive=True)]
            except (psutil.Error, OSError):
                root = None
                continue
            self.samples += 1
            self.peak_scheduler = max(self.peak_scheduler, scheduler)
            self.peak_worker = max([self.peak_worker, *workers])
            self.peak_total = max(self.peak_total, scheduler + sum(workers))

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(timeout=10)
        mib = 1024 * 1024
        return (
            f"peak RSS: scheduler + workers {self.peak_total / mib:.0f} MiB "
            f"(scheduler {self.peak_scheduler / mib:.0f} MiB, largest worker "
            f"{self.peak_worker / mib:.0f} MiB; {self.samples} samples)"
        )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def scheduler_figures(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Swaps, swap-in times and checkpoint bytes between two scrapes of the scheduler."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    loads = delta("htmengine_scheduler_load_seconds_count")
    full = delta('htmengine_scheduler_checkpoint_bytes_total{kind="full"}')
    incremental = delta('htmengine_scheduler_checkpoint_bytes_total{kind="incremental"}')
    name = "htmengine_scheduler_load_seconds"
    return {
        "swaps": delta("htmengine_scheduler_swaps_total"),
        "preemptions": delta("htmengine_scheduler_preemptions_total"),
        "rows_run": delta("htmengine_scheduler_rows_run_total"),
        "rows_failed": delta("htmengine_scheduler_rows_failed_total"),
        "loads": loads,
        "load_ms_mean": 1000 * delta(f"{name}_sum") / loads if loads else float("nan"),
        "load_ms_p50_bucket": 1000 * histogram_quantile(after, before, name, 0.5),
        "load_ms_p99_bucket": 1000 * histogram_quantile(after, before, name, 0.99),
        "checkpoint_bytes_full": full,
        "checkpoint_bytes_incremental": incremental,
    }


def archive_bytes(root: str) -> int:
    """Bytes of every file under the checkpoint archive (what `du --apparent-size` counts)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                pass
    return total


# --- common set-up -----------------------------------------------------------------------------


def new_app(prefix: str, slots: int):
    """A migrated throw-away app whose scheduler runs `slots` slot workers."""
    from htmengine.repository import migrate
    from tests.support.app import create_test_app

    app = create_test_app(Path(tempfile.mkdtemp(prefix=prefix)))
    app.override("model-swapper.conf", {"model_scheduler": {"concurrency": str(slots)}})
    migrate.upgrade()
    return app


def start_suite(app):
    from htmengine.bus import MessageBus

    with MessageBus() as bus:
        bus.declare_queue(app.results_queue, durable=True)
    ports = [app.ports[key] for key in ("listener_metrics", "scheduler_metrics", "anomaly_metrics")]
    return start_supervised(app, PROGRAMS, ports, timeout=120)


def wait_slots(app, slots: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (
        scrape_metrics(app.ports["scheduler_metrics"]).get("htmengine_scheduler_slots", 0) < slots
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler has fewer than {slots} slots after {timeout} s")
        time.sleep(0.2)


def teardown(app, supervisor, model_ids: list[str]) -> None:
    """Stop the suite, delete the app's queues, database and directory."""
    from htmengine.bus import MessageBus, rejected_queue_name
    from tests.support.app import drop_database

    if supervisor is not None:
        supervisor.stop()
    with MessageBus() as bus:
        for model_id in tqdm(model_ids, desc="deleting model queues", leave=False):
            bus.delete_queue(app.model_input_queue_prefix + model_id)
        for queue in (app.data_queue, app.results_queue, app.notification_queue):
            bus.delete_queue(queue)
            bus.delete_queue(rejected_queue_name(queue))
    drop_database(app)
    shutil.rmtree(app.root, ignore_errors=True)


def epoch(timestamp) -> int:
    from htmengine.protocol.timestamps import to_epoch_seconds

    return to_epoch_seconds(timestamp)


def line(name: str, timestamp, value: float) -> bytes:
    return f"{name} {value!r} {epoch(timestamp)}\n".encode()


def wait_scored(tracker: ResultsTracker, rowid: int, count: int, progress: tqdm) -> None:
    deadline = time.monotonic() + SCORE_TIMEOUT_SEC
    while (done := tracker.count(rowid)) < count:
        show(progress, done)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {count} rows {rowid} scored")
        time.sleep(0.05)
    show(progress, count)


def show(progress: tqdm, done: int) -> None:
    """Move a progress bar to `done` (drawn at most every mininterval)."""
    progress.update(done - progress.n)


def warm_up(app, tracker: ResultsTracker, slots: int) -> None:
    """Give every slot worker a model run before anything is timed (the first run in a fresh
    worker loads or compiles the Numba kernels), then forget those results."""
    from htmengine.adapters.datasource import createDatasourceAdapter
    from tests.support.engine import series

    started = time.monotonic()
    adapter = createDatasourceAdapter("custom")
    payload = b""
    for k in range(slots):
        name = f"bench.warmup.{k}"
        adapter.monitorMetric(
            {
                "datasource": "custom",
                "metricSpec": {"metric": name},
                "modelParams": {"min": VALUE_RANGE[0], "max": VALUE_RANGE[1]},
            }
        )
        payload += b"".join(line(name, *row) for row in series(3, seed=1000 + k))
    with socket.create_connection(("127.0.0.1", app.ports["plaintext"]), timeout=60) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 900
        while tracker.count() < 3 * slots:
            if time.monotonic() > deadline:
                raise TimeoutError("warm-up rows not scored after 900 s")
            time.sleep(0.1)
    tracker.reset()
    print(f"warm-up: {slots} models run once in {time.monotonic() - started:.1f} s (not timed)")


# --- part 1: stream ----------------------------------------------------------------------------


def run_stream(args: argparse.Namespace) -> None:
    import sqlalchemy as sa

    from htmengine.adapters.datasource import createDatasourceAdapter
    from htmengine.repository import MetricStatus, get_engine
    from htmengine.repository.schema import metric
    from tests.support.engine import series

    metrics, rows_each, window = args.stream_metrics, args.stream_rows, args.window
    print(
        f"== stream: {metrics} metrics x {rows_each} rows, {args.slots} slots, "
        f"at most {window} rounds ({window * metrics} rows) unscored =="
    )
    app = new_app("htmengine-bench-engine-stream-", args.slots)
    supervisor = tracker = None
    uids: list[str] = []
    try:
        tracker = ResultsTracker(app.results_exchange, f"{app.name}.bench_results")
        supervisor = start_suite(app)
        wait_slots(app, args.slots)
        warm_up(app, tracker, args.slots)
        adapter = createDatasourceAdapter("custom")
        names = [f"bench.stream.{i}" for i in range(metrics)]
        started = time.monotonic()
        for name in tqdm(names, desc="monitorMetric", leave=False):
            uids.append(
                adapter.monitorMetric(
                    {
                        "datasource": "custom",
                        "metricSpec": {"metric": name},
                        "modelParams": {"min": VALUE_RANGE[0], "max": VALUE_RANGE[1]},
                    }
                )
            )
        engine = get_engine()
        while True:
            with engine.connect() as conn:
                active = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(metric)
                    .where(metric.c.status == int(MetricStatus.ACTIVE))
                ).scalar_one()
            if active >= metrics + args.slots:
                break
            if time.monotonic() - started > 600:
                raise TimeoutError(f"only {active} of {metrics} metrics ACTIVE after 600 s")
            time.sleep(0.2)
        print(f"{metrics} models defined and ACTIVE in {time.monotonic() - started:.1f} s")

        data = [series(rows_each, seed=i) for i in range(metrics)]
        rounds = [
            b"".join(line(names[m], *data[m][r]) for m in range(metrics)) for r in range(rows_each)
        ]
        before = scrape_metrics(app.ports["scheduler_metrics"])
        memory = MemorySampler(supervisor)
        sent_at: list[float] = []
        total = metrics * rows_each
        progress = tqdm(total=total, desc="rows scored", unit="row", mininterval=5, leave=False)
        with socket.create_connection(("127.0.0.1", app.ports["plaintext"]), timeout=60) as sock:
            first_sent = time.monotonic()
            for r, payload in enumerate(rounds):
                if r >= window:
                    # rowid of round r is r + 1
                    while tracker.count(r + 1 - window) < metrics:
                        time.sleep(0.005)
                sent_at.append(time.monotonic())
                sock.sendall(payload)
                show(progress, tracker.count())
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + SCORE_TIMEOUT_SEC
            while (done := tracker.count()) < total:
                show(progress, done)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {done} of {total} rows scored")
                time.sleep(0.05)
        progress.close()
        peak = memory.stop()
        after = scrape_metrics(app.ports["scheduler_metrics"])
        with tracker.lock:
            arrivals = dict(tracker.arrivals)
        finished = max(arrivals.values())
        latencies = [at - sent_at[rowid - 1] for (_, rowid), at in arrivals.items()]
        with engine.connect() as conn:
            scored = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM metric_data WHERE anomaly_score IS NOT NULL "
                    "AND uid IN :uids"
                ).bindparams(sa.bindparam("uids", expanding=True)),
                {"uids": uids},
            ).scalar_one()
        figures = scheduler_figures(after, before)
        elapsed = finished - first_sent
        print(f"rows scored: {scored} of {total} in metric_data; {len(arrivals)} on the exchange")
        print(
            f"throughput: {total / elapsed:.0f} rows/s scored ({elapsed:.1f} s first send -> last score)"
        )
        print(
            f"latency line sent -> score committed (results exchange): "
            f"p50 {statistics.median(latencies):.2f} s, p99 {percentile(latencies, 0.99):.2f} s, "
            f"max {max(latencies):.2f} s"
        )
        print(
            f"swap-ins: {figures['swaps']:.0f} ({figures['preemptions']:.0f} preemptions) for "
            f"{figures['rows_run']:.0f} rows = {figures['rows_run'] / max(figures['swaps'], 1):.1f} "
            f"rows per swap; load time per swap mean {figures['load_ms_mean']:.1f} ms, "
            f"p50 <= {figures['load_ms_p50_bucket']:g} ms, p99 <= {figures['load_ms_p99_bucket']:g} ms"
        )
        written = figures["checkpoint_bytes_full"] + figures["checkpoint_bytes_incremental"]
        print(
            f"checkpoints written: {written / 2**20:.0f} MiB "
            f"({figures['checkpoint_bytes_full'] / 2**20:.0f} MiB full saves) = "
            f"{written / max(figures['rows_run'], 1):.0f} bytes/row"
        )
        print(peak)
        print(
            "JSON "
            + json.dumps(
                {
                    "part": "stream",
                    "metrics": metrics,
                    "rows": rows_each,
                    "slots": args.slots,
                    "window": window,
                    "rows_per_sec": round(total / elapsed, 1),
                    "latency_p50_s": round(statistics.median(latencies), 3),
                    "latency_p99_s": round(percentile(latencies, 0.99), 3),
                    **{k: round(v, 2) for k, v in figures.items()},
                    "peak_rss_total_mib": round(memory.peak_total / 2**20),
                }
            )
        )
    finally:
        if tracker is not None:
            tracker.close()
        teardown(app, supervisor, uids)


# --- part 2: steady ----------------------------------------------------------------------------


def train_seed(seed: int, history: int, extra: int) -> tuple[list, bytes, list[float]]:
    """One series of `history + extra` rows; the model after its first `history` rows (blob)
    and their raw scores. Runs in a worker process."""
    from htmengine.engine.swarm_params import generate_swarm_params
    from htmengine.htm.model import ScalarAnomalyModel
    from tests.support.engine import series

    rows = series(history + extra, seed=seed)
    model = ScalarAnomalyModel(generate_swarm_params(*VALUE_RANGE)["modelConfig"])
    raws = [model.run(timestamp, value) for timestamp, value in rows[:history]]
    return rows, model.save(), raws


def prepare_steady(args: argparse.Namespace) -> tuple[list[str], list[str], list[list]]:
    """ACTIVE metrics past their first `history` rows: (uids, names, rows of each seed)."""
    import sqlalchemy as sa

    from htmengine.bus import MessageBus
    from htmengine.config import get_app_config
    from htmengine.engine.swarm_params import generate_swarm_params
    from htmengine.model_swapper.checkpoint_mgr import CheckpointManager
    from htmengine.model_swapper.model_runner import definition_from_args
    from htmengine.repository import MetricStatus, get_engine
    from htmengine.repository.schema import metric, metric_data
    from htmengine.runtime.anomaly_likelihood_helper import (
        AnomalyLikelihoodHelper,
        ScoredRow,
        rescale_for_display,
    )

    count, history, seeds = args.steady_metrics, args.history, min(args.seeds, args.steady_metrics)
    started = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        trained = list(
            tqdm(
                pool.map(train_seed, range(seeds), [history] * seeds, [args.cycles] * seeds),
                total=seeds,
                desc="training seed models",
                leave=False,
            )
        )
    helper = AnomalyLikelihoodHelper.from_config(get_app_config())
    swarm_params = generate_swarm_params(*VALUE_RANGE)
    archive = CheckpointManager()
    definition = definition_from_args(swarm_params)
    seed_rows, seed_data, seed_model_params = [], [], []
    for seed, (rows, blob, raws) in enumerate(trained):
        scored = [
            ScoredRow(rowid, ts, value, raw)
            for rowid, ((ts, value), raw) in enumerate(zip(rows, raws, strict=False), 1)
        ]
        state = helper.update_scores(scored, None, lambda limit: [])
        seed_rows.append(rows)
        seed_data.append(
            [
                (r.rowid, r.timestamp, r.value, r.raw_anomaly_score, r.anomaly_score,
                 rescale_for_display(r.anomaly_score))
                for r in scored
            ]
        )  # fmt: skip
        params = dict(swarm_params)
        if state is not None:
            params["anomalyLikelihoodParams"] = state
        seed_model_params.append(json.dumps(params))
        archive.define(f"seed{seed}", definition)
        archive.save_full(archive.load(f"seed{seed}"), blob, [])
    print(
        f"trained {seeds} seed models on {history} rows ({len(trained[0][1]) / 2**20:.1f} MiB "
        f"checkpoints) in {time.monotonic() - started:.1f} s"
    )

    uids = [uuid.uuid4().hex for _ in range(count)]
    names = [f"bench.steady.{i}" for i in range(count)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(
            tqdm(
                pool.map(lambda i: archive.clone(f"seed{i % seeds}", uids[i]), range(count)),
                total=count,
                desc="cloning checkpoints",
                leave=False,
            )
        )
    for seed in range(seeds):
        archive.remove(f"seed{seed}")
    print(f"cloned {count} checkpoints in {time.monotonic() - started:.1f} s")

    started = time.monotonic()
    engine = get_engine()
    spec = {"datasource": "custom", "modelParams": {"min": VALUE_RANGE[0], "max": VALUE_RANGE[1]}}
    columns = (
        "uid", "rowid", "timestamp", "metric_value", "raw_anomaly_score", "anomaly_score",
        "display_value",
    )  # fmt: skip
    step = max(1, 20_000 // history)
    for first in tqdm(range(0, count, step), desc="inserting metrics and rows", leave=False):
        chosen = range(first, min(first + step, count))
        with engine.begin() as conn:
            conn.execute(
                metric.insert(),
                [
                    {
                        "uid": uids[i],
                        "datasource": "custom",
                        "name": names[i],
                        "description": f"Custom metric {names[i]}",
                        "server": names[i],
                        "location": "",
                        "parameters": json.dumps(dict(spec, metricSpec={"metric": names[i]})),
                        "status": int(MetricStatus.ACTIVE),
                        "model_params": seed_model_params[i % seeds],
                        "last_rowid": history,
                    }
                    for i in chosen
                ],
            )
            conn.execute(
                metric_data.insert(),
                [
                    dict(zip(columns, (uids[i], *row), strict=True))
                    for i in chosen
                    for row in seed_data[i % seeds]
                ],
            )
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(metric_data)).scalar_one()
    print(
        f"inserted {count} ACTIVE metrics and {stored} scored rows in "
        f"{time.monotonic() - started:.1f} s ({stored / (time.monotonic() - started):.0f} rows/s)"
    )

    from htmengine.model_swapper.model_swapper_interface import ModelSwapperInterface

    started = time.monotonic()
    with MessageBus() as bus:
        swapper = ModelSwapperInterface(bus=bus)
        for uid in tqdm(uids, desc="declaring input queues", leave=False):
            bus.declare_queue(swapper.model_input_queue(uid), durable=True)
    print(f"declared {count} model input queues in {time.monotonic() - started:.1f} s")
    return uids, names, seed_rows


def run_steady(args: argparse.Namespace) -> None:
    from htmengine.model_swapper.checkpoint_mgr import checkpoint_root

    count, history, seeds = args.steady_metrics, args.history, min(args.seeds, args.steady_metrics)
    print(
        f"== steady: {count} metrics past {history} rows ({seeds} distinct series), "
        f"{args.slots} slots, {args.cycles} cycles of one row per metric =="
    )
    app = new_app("htmengine-bench-engine-steady-", args.slots)
    supervisor = tracker = None
    uids: list[str] = []
    try:
        uids, names, seed_rows = prepare_steady(args)
        tracker = ResultsTracker(app.results_exchange, f"{app.name}.bench_results")
        supervisor = start_suite(app)
        wait_slots(app, args.slots)
        warm_up(app, tracker, args.slots)
        memory = MemorySampler(supervisor)
        root = checkpoint_root()
        port = app.ports["scheduler_metrics"]
        results = []
        for cycle in range(args.cycles):
            rowid = history + cycle + 1
            payload = b"".join(
                line(names[i], *seed_rows[i % seeds][rowid - 1]) for i in range(count)
            )
            disk_before = archive_bytes(root)
            before = scrape_metrics(port)
            progress = tqdm(
                total=count, desc=f"cycle {cycle + 1} scored", mininterval=5, leave=False
            )
            with socket.create_connection(
                ("127.0.0.1", app.ports["plaintext"]), timeout=60
            ) as sock:
                sent = time.monotonic()
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                wait_scored(tracker, rowid, count, progress)
            progress.close()
            after = scrape_metrics(port)
            disk_after = archive_bytes(root)
            with tracker.lock:
                latencies = [at - sent for (_, row), at in tracker.arrivals.items() if row == rowid]
            seconds = max(latencies)
            figures = scheduler_figures(after, before)
            written = figures["checkpoint_bytes_full"] + figures["checkpoint_bytes_incremental"]
            rows_run = max(figures["rows_run"], 1)
            result = {
                "cycle": cycle + 1,
                "seconds": seconds,
                "latency_p50_s": statistics.median(latencies),
                "latency_p99_s": percentile(latencies, 0.99),
                "swaps_per_sec": figures["swaps"] / seconds,
                "bytes_per_row": written / rows_run,
                "full_save_bytes": figures["checkpoint_bytes_full"],
                "disk_growth_per_row": (disk_after - disk_before) / rows_run,
                **figures,
            }
            results.append(result)
            print(
                f"cycle {cycle + 1}: {count} rows scored in {seconds:.1f} s "
                f"(p50 {result['latency_p50_s']:.1f} s, p99 {result['latency_p99_s']:.1f} s); "
                f"{result['swaps_per_sec']:.1f} swaps/s, load mean {figures['load_ms_mean']:.1f} ms "
                f"(p50 <= {figures['load_ms_p50_bucket']:g} ms); checkpoint "
                f"{result['bytes_per_row']:.0f} bytes/row written "
                f"({figures['checkpoint_bytes_full'] / 2**20:.1f} MiB in full saves), "
                f"archive {disk_before / 2**30:.2f} -> {disk_after / 2**30:.2f} GiB"
            )
        rows_run = sum(r["rows_run"] for r in results)
        written = sum(
            r["checkpoint_bytes_full"] + r["checkpoint_bytes_incremental"] for r in results
        )
        print(
            f"all {args.cycles} cycles: {statistics.fmean(r['seconds'] for r in results):.1f} s "
            f"per cycle on average (slowest {max(r['seconds'] for r in results):.1f} s), "
            f"{written / max(rows_run, 1):.0f} checkpoint bytes/row written "
            f"({sum(r['checkpoint_bytes_full'] for r in results) / 2**20:.0f} MiB in full saves "
            f"for {rows_run:.0f} rows)"
        )
        print(memory.stop())
        print(
            "JSON "
            + json.dumps(
                {
                    "part": "steady",
                    "metrics": count,
                    "slots": args.slots,
                    "cycles": [{k: round(v, 3) for k, v in r.items()} for r in results],
                }
            )
        )
    finally:
        if tracker is not None:
            tracker.close()
        teardown(app, supervisor, uids)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("stream", "steady", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--stream-metrics", type=int, default=200)
    parser.add_argument("--stream-rows", type=int, default=1000)
    parser.add_argument("--window", type=int, default=50, help="rounds unscored at most")
    parser.add_argument("--steady-metrics", type=int, default=1000)
    parser.add_argument("--history", type=int, default=300, help="rows each steady metric has seen")
    parser.add_argument("--cycles", type=int, default=3, help="new rows per steady metric")
    parser.add_argument("--seeds", type=int, default=8, help="distinct series (models) to clone")
    args = parser.parse_args()
    if args.quick:
        args.stream_metrics, args.stream_rows, args.window = 10, 60, 5
        args.steady_metrics, args.cycles, args.seeds = 40, 2, 2

    from tests.support.app import start_servers

    start_servers()
    if args.part in ("stream", "both"):
        run_stream(args)
    if args.part in ("steady", "both"):
        run_steady(args)


if __name__ == "__main__":
    main()
