"""Cost of swapping a model in and out for one new row: the steady state of a 5-minute cadence.

``inprocess``: for each full-save interval N, a model that has seen `--history` rows is swapped in
(checkpoint read, model load, journal replay), runs one row, and is checkpointed (journal append, or
a full save every N rows), `--swaps` times over. Prints per-swap milliseconds (swap-in, run,
checkpoint) and checkpoint bytes written per row. Real ScalarAnomalyModel and CheckpointManager
(fsync included); no broker.

``steady``: the running model scheduler (its own process, `--slots` workers, real RabbitMQ) with
`--models` models that have each seen `--history` rows (one trained model, cloned), then `--cycles`
times one new row for every model, as at a 5-minute cadence. Prints per cycle the seconds until
every row has its result, swaps per second, swap-in time and checkpoint bytes per row (from the
scheduler's /metrics).

    python benchmarks/model_swap.py inprocess --intervals 1,5,10,25,100
    python benchmarks/model_swap.py steady --models 1000 --slots 2
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _suite import scrape_metrics  # noqa: E402

from htmengine.htm.model import ScalarAnomalyModel  # noqa: E402
from htmengine.htm.params import get_scalar_metric_params  # noqa: E402
from htmengine.model_swapper.checkpoint_mgr import CheckpointManager  # noqa: E402
from htmengine.model_swapper.model_runner import definition_from_args  # noqa: E402

T0 = datetime.datetime(2015, 3, 1)


def row(i: int) -> tuple[datetime.datetime, float]:
    return T0 + datetime.timedelta(minutes=5 * i), 50 + 30 * math.sin(i / 12.0) + (i * 7) % 5


def measure(interval: int, history: int, swaps: int, params: dict) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        archive = CheckpointManager(root)
        archive.define(
            "m",
            definition_from_args(
                {"modelConfig": params["modelConfig"], "inferenceArgs": params["inferenceArgs"]}
            ),
        )
        model = ScalarAnomalyModel(params["modelConfig"])
        for i in range(history):
            model.run(*row(i))
        checkpoint = archive.load("m")
        archive.save_full(checkpoint, model.save(), ["warm-up"])
        del model
        swap_in, run, save, written = [], [], [], 0
        for step in range(swaps):
            started = time.perf_counter()
            checkpoint = archive.load("m")
            model = ScalarAnomalyModel.load(checkpoint.model_blob)
            for timestamp, value in checkpoint.journal_rows:
                model.run(timestamp, value)
            loaded = time.perf_counter()
            new_row = row(history + step)
            model.run(*new_row)
            ran = time.perf_counter()
            if len(checkpoint.journal_rows) + 1 >= interval:
                written += archive.save_full(checkpoint, model.save(), [f"b{step}"])
            else:
                written += archive.append(checkpoint, [f"b{step}"], [new_row])
            saved = time.perf_counter()
            swap_in.append((loaded - started) * 1000)
            run.append((ran - loaded) * 1000)
            save.append((saved - ran) * 1000)
        return {
            "swap_in_ms_median": statistics.median(swap_in),
            "swap_in_ms_mean": statistics.fmean(swap_in),
            "run_ms_mean": statistics.fmean(run),
            "checkpoint_ms_mean": statistics.fmean(save),
            "total_ms_mean": statistics.fmean(swap_in)
            + statistics.fmean(run)
            + statistics.fmean(save),
            "bytes_per_row": written / swaps,
        }


def run_inprocess(args: argparse.Namespace) -> None:
    params = get_scalar_metric_params(0.0, 100.0)
    measure(1, 5, 2, params)  # Numba cache load, page cache
    print(
        f"{'N':>5} {'swap-in ms (median/mean)':>26} {'run ms':>8} {'ckpt ms':>8} "
        f"{'total ms':>9} {'bytes/row':>11}"
    )
    for interval in (int(n) for n in args.intervals.split(",")):
        figures = measure(interval, args.history, args.swaps, params)
        print(
            f"{interval:>5} {figures['swap_in_ms_median']:>12.1f} / {figures['swap_in_ms_mean']:<11.1f}"
            f" {figures['run_ms_mean']:>8.1f} {figures['checkpoint_ms_mean']:>8.1f}"
            f" {figures['total_ms_mean']:>9.1f} {figures['bytes_per_row']:>11.0f}"
        )


def prepare_models(count: int, history: int, params: dict) -> tuple[list[str], int]:
    """One model trained on `history` rows, saved, and cloned `count` times."""
    archive = CheckpointManager()
    definition = definition_from_args(
        {"modelConfig": params["modelConfig"], "inferenceArgs": params["inferenceArgs"]}
    )
    archive.define("seed", definition)
    model = ScalarAnomalyModel(params["modelConfig"])
    for i in range(history):
        model.run(*row(i))
    blob = model.save()
    archive.save_full(archive.load("seed"), blob, [])
    model_ids = [f"bench{i:05d}" for i in range(count)]
    started = time.perf_counter()
    for model_id in model_ids:
        archive.clone("seed", model_id)
    print(
        f"prepared {count} models of {history} rows ({len(blob)} byte checkpoints) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return model_ids, len(blob)


def register_metrics(model_ids: list[str]) -> None:
    """ACTIVE metric rows for the models, so that backlog discovery finds their input after a
    broker restart (the scheduler's pings are not durable)."""
    from htmengine.repository import MetricStatus, get_engine, queries

    with get_engine().begin() as conn:
        for model_id in model_ids:
            queries.insert_metric(
                conn, uid=model_id, datasource="custom", name=model_id, status=MetricStatus.ACTIVE
            )


def run_steady(args: argparse.Namespace) -> None:
    from htmengine.bus import MessageBus
    from htmengine.model_swapper.model_swapper_interface import (
        ModelInputRow,
        ModelSwapperInterface,
        decode_result_message,
    )
    from htmengine.repository import migrate
    from tests.support.app import create_test_app, drop_database, start_servers

    start_servers()
    root = Path(tempfile.mkdtemp(prefix="htmengine-swap-bench-"))
    app = create_test_app(root)
    migrate.upgrade()
    params = get_scalar_metric_params(0.0, 100.0)
    model_ids, blob_bytes = prepare_models(args.models, args.history, params)
    register_metrics(model_ids)
    swapper = ModelSwapperInterface()
    for model_id in model_ids:
        swapper.bus.declare_queue(swapper.model_input_queue(model_id), durable=True)
    results_bus = MessageBus()
    results_bus.declare_queue(swapper.results_queue, durable=True)
    port = app.ports["scheduler_metrics"]
    log = open(app.logs_dir / "model_scheduler.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["_NTA_UTILS_CONFIG__MODEL_SWAPPER__MODEL_RUNNER__FULL_CHECKPOINT_ROWS"] = str(args.cap)
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "htmengine.model_swapper.model_scheduler_service",
         "--concurrency", str(args.slots)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up on kill too
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if scrape_metrics(port).get("htmengine_scheduler_slots", 0) >= args.slots:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        print(
            f"{'cycle':>5} {'seconds':>8} {'swaps/s':>8} {'swap-in ms':>10} "
            f"{'full saves':>10} {'bytes/row':>10}"
        )
        for cycle in range(args.cycles):
            before = scrape_metrics(port)
            rowid = args.history + cycle + 1
            started = time.perf_counter()
            for model_id in model_ids:
                swapper.submitRequests(model_id, [ModelInputRow(rowid, list(row(rowid)))])
            pending = set(model_ids)
            while pending:
                message = results_bus.get(swapper.results_queue)
                if message is None:
                    time.sleep(0.01)
                    continue
                model_id, _ = decode_result_message(message.body)
                pending.discard(model_id)
                message.ack()
            seconds = time.perf_counter() - started
            after = scrape_metrics(port)

            def delta(key: str, after=after, before=before) -> float:
                return after.get(key, 0.0) - before.get(key, 0.0)

            loads = delta("htmengine_scheduler_load_seconds_count")
            load_ms = 1000 * delta("htmengine_scheduler_load_seconds_sum") / max(loads, 1)
            full = delta('htmengine_scheduler_checkpoint_bytes_total{kind="full"}')
            incremental = delta('htmengine_scheduler_checkpoint_bytes_total{kind="incremental"}')
            rows = delta("htmengine_scheduler_rows_run_total")
            full_saves = full / blob_bytes
            print(
                f"{cycle + 1:>5} {seconds:>8.1f} {delta('htmengine_scheduler_swaps_total') / seconds:>8.1f}"
                f" {load_ms:>10.1f} {full_saves:>10.0f} {(full + incremental) / max(rows, 1):>10.0f}"
            )
    finally:
        scheduler.send_signal(signal.SIGINT)
        scheduler.wait(timeout=300)
        for model_id in model_ids:
            swapper.bus.delete_queue(swapper.model_input_queue(model_id))
        swapper.close()
        results_bus.close()
        drop_database(app)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    inprocess = modes.add_parser("inprocess", help="one model, swap costs by full-save interval")
    inprocess.add_argument("--intervals", default="1,5,10,25,100", help="full-save intervals N")
    inprocess.add_argument("--history", type=int, default=300, help="rows seen before the swaps")
    inprocess.add_argument("--swaps", type=int, default=50, help="one-row swaps per interval")
    steady = modes.add_parser("steady", help="the running scheduler, one row for every model")
    steady.add_argument("--models", type=int, default=1000)
    steady.add_argument("--slots", type=int, default=2)
    steady.add_argument("--history", type=int, default=300)
    steady.add_argument("--cycles", type=int, default=3)
    steady.add_argument("--cap", type=int, default=100, help="full_checkpoint_rows")
    args = parser.parse_args()
    if args.mode == "inprocess":
        run_inprocess(args)
    else:
        run_steady(args)


if __name__ == "__main__":
    main()
