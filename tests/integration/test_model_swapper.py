"""The model scheduler under supervisord with real RabbitMQ, MariaDB and HTM models.

Slots are few (2), runs short and full saves frequent (see SCHEDULER_ENV), so every test swaps
models in and out and mixes journal appends with full checkpoints. Each model's raw scores are
compared with the same rows run through one ScalarAnomalyModel in this process.
"""

from __future__ import annotations

import datetime
import math
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from htmengine import exceptions
from htmengine.bus import MessageBus
from htmengine.exceptions import MessageQueueNotFound, ModelNotFound
from htmengine.model_swapper.checkpoint_mgr import FAULT_DIR_ENV, CheckpointManager
from htmengine.model_swapper.model_runner import TRANSIENT_ATTEMPTS
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommandResult,
    ModelInferenceResult,
    ModelInputRow,
    ModelSwapperInterface,
    decode_result_message,
    encode_request_message,
    new_batch_id,
)
from tests.support.app import Supervisor, TestApp

SCHEDULER_ENV = {
    "_NTA_UTILS_CONFIG__MODEL_SWAPPER__MODEL_SCHEDULER__CONCURRENCY": "2",
    "_NTA_UTILS_CONFIG__MODEL_SWAPPER__MODEL_RUNNER__TARGET_REQUESTS_PER_CHECKPOINT": "8",
    "_NTA_UTILS_CONFIG__MODEL_SWAPPER__MODEL_RUNNER__FULL_CHECKPOINT_ROWS": "6",
}
SCHEMA = [["c0", "datetime", "T"], ["c1", "float", ""]]
T0 = datetime.datetime(2015, 3, 1)
RESULT_TIMEOUT_SEC = 240.0


def series(seed: int, count: int) -> list[tuple[datetime.datetime, float]]:
    """A daily-periodic series with a per-model phase and a spike."""
    rows = []
    for i in range(count):
        value = 50 + 30 * math.sin(i / 12.0 + seed) + (i * 7 + seed * 13) % 5
        if i == count * 2 // 3:
            value = 98.0
        rows.append((T0 + datetime.timedelta(minutes=5 * i), round(value, 3)))
    return rows


@pytest.fixture(scope="module")
def model_config() -> dict:
    from htmengine.htm.params import get_scalar_metric_params

    return get_scalar_metric_params(0.0, 100.0)


def reference_scores(
    model_config: dict, rows: list[tuple[datetime.datetime, float]]
) -> list[float]:
    from htmengine.htm.model import ScalarAnomalyModel

    model = ScalarAnomalyModel(model_config["modelConfig"])
    return [model.run(ts, value) for ts, value in rows]


def define_args(model_config: dict) -> dict:
    return {
        "modelConfig": model_config["modelConfig"],
        "inferenceArgs": model_config["inferenceArgs"],
        "inputRecordSchema": SCHEMA,
    }


class Results:
    """Reads the results queue; keeps each model's results in arrival order."""

    def __init__(self, swapper: ModelSwapperInterface) -> None:
        self.bus = MessageBus()
        self.queue = swapper.results_queue
        self.bus.declare_queue(self.queue, durable=True)
        self.by_model: dict[str, list] = {}

    def drain(self) -> None:
        while (message := self.bus.get(self.queue)) is not None:
            model_id, items = decode_result_message(message.body)
            self.by_model.setdefault(model_id, []).extend(items)
            message.ack()

    def inference(self, model_id: str) -> list[ModelInferenceResult]:
        return [r for r in self.by_model.get(model_id, []) if isinstance(r, ModelInferenceResult)]

    def commands(self, model_id: str) -> list[ModelCommandResult]:
        return [r for r in self.by_model.get(model_id, []) if isinstance(r, ModelCommandResult)]

    def wait(
        self, done: Callable[[], bool], what: str, timeout: float = RESULT_TIMEOUT_SEC
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if done():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_rows(self, model_id: str, rowids: list[int]) -> dict[int, list[ModelInferenceResult]]:
        wanted = set(rowids)
        self.wait(
            lambda: wanted <= {r.rowID for r in self.inference(model_id)},
            f"results of {len(wanted)} rows of model {model_id}",
        )
        grouped: dict[int, list[ModelInferenceResult]] = {}
        for result in self.inference(model_id):
            grouped.setdefault(result.rowID, []).append(result)
        return grouped

    def close(self) -> None:
        self.bus.close()


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tests arm the slot workers' fault points (checkpoint_mgr.TokenFaults)."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def scheduler_env(fault_dir: Path) -> Iterator[None]:
    env = {**SCHEDULER_ENV, FAULT_DIR_ENV: str(fault_dir)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def scheduler(app: TestApp, scheduler_env: None) -> Iterator[Supervisor]:
    supervisor = Supervisor(app, ["model_scheduler"])
    supervisor.start()
    yield supervisor
    supervisor.stop()


@pytest.fixture
def swapper(app: TestApp) -> Iterator[ModelSwapperInterface]:
    with ModelSwapperInterface() as interface:
        yield interface


@pytest.fixture
def results(swapper: ModelSwapperInterface) -> Iterator[Results]:
    reader = Results(swapper)
    yield reader
    reader.close()


def submit_rows(
    swapper: ModelSwapperInterface,
    model_id: str,
    rows: list[tuple[datetime.datetime, float]],
    first_rowid: int,
    batch_size: int,
) -> None:
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        swapper.submitRequests(
            model_id,
            [
                ModelInputRow(first_rowid + start + i, [ts, value])
                for i, (ts, value) in enumerate(chunk)
            ],
        )


def assert_scores(
    grouped: dict[int, list[ModelInferenceResult]], expected: list[float], first_rowid: int = 1
) -> None:
    for offset, score in enumerate(expected):
        rowid = first_rowid + offset
        for result in grouped[rowid]:
            assert result.status == 0, result.errorMessage
            assert result.anomalyScore == score, f"row {rowid}"


def scheduler_workers(supervisor: Supervisor) -> list[psutil.Process]:
    main = psutil.Process(supervisor.pid("model_scheduler"))
    return [
        child
        for child in main.children()
        if "spawn_main" in " ".join(child.cmdline())
        and "resource_tracker" not in " ".join(child.cmdline())
    ]


def test_define_then_rows_give_one_result_per_row_in_order(
    scheduler, swapper, results, model_config
) -> None:
    model_id = uuid.uuid4().hex
    swapper.defineModel(model_id, define_args(model_config), "cmd-define")
    rows = series(1, 30)
    submit_rows(swapper, model_id, rows, first_rowid=1, batch_size=4)
    grouped = results.wait_rows(model_id, list(range(1, 31)))
    assert [r.rowID for r in results.inference(model_id)] == list(range(1, 31))
    assert all(len(v) == 1 for v in grouped.values())
    assert_scores(grouped, reference_scores(model_config, rows))
    (define,) = results.commands(model_id)
    assert (define.commandID, define.method, define.status) == ("cmd-define", "defineModel", 0)


def test_a_batch_delivered_twice_is_processed_once(
    app, scheduler, swapper, results, model_config
) -> None:
    model_id = uuid.uuid4().hex
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    rows = series(2, 6)
    batch = [ModelInputRow(i + 1, [ts, v]) for i, (ts, v) in enumerate(rows[:3])]
    body = encode_request_message(new_batch_id(), batch)
    queue = swapper.model_input_queue(model_id)
    swapper.bus.publish(queue, body)
    swapper.bus.publish(queue, body)  # the same batch id again, as after a lost ack
    submit_rows(swapper, model_id, rows[3:], first_rowid=4, batch_size=3)
    grouped = results.wait_rows(model_id, list(range(1, 7)))
    assert [r.rowID for r in results.inference(model_id)] == list(range(1, 7))
    assert_scores(grouped, reference_scores(model_config, rows))
    # The counter comes with the run's report, after its checkpoint: later than the results.
    results.wait(
        lambda: scheduler_counter(app, "htmengine_scheduler_duplicate_batches_total") >= 1,
        "the duplicate batch counted",
        timeout=60,
    )


def scheduler_counter(app: TestApp, name: str) -> float:
    """A counter of the scheduler's /metrics endpoint (summed over labels)."""
    port = app.ports["scheduler_metrics"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_more_models_than_slots_are_all_served_with_unchanged_scores(
    app, scheduler, swapper, results, model_config
) -> None:
    preemptions_before = scheduler_counter(app, "htmengine_scheduler_preemptions_total")
    model_ids = [uuid.uuid4().hex for _ in range(6)]
    data = {model_id: series(seed, 40) for seed, model_id in enumerate(model_ids)}
    for model_id in model_ids:
        swapper.defineModel(model_id, define_args(model_config), "cmd")
    for start in range(0, 40, 2):  # interleaved: every model gets 2 rows at a time
        for model_id in model_ids:
            chunk = data[model_id][start : start + 2]
            swapper.submitRequests(
                model_id,
                [ModelInputRow(start + i + 1, [ts, v]) for i, (ts, v) in enumerate(chunk)],
            )
    for model_id in model_ids:
        grouped = results.wait_rows(model_id, list(range(1, 41)))
        assert [r.rowID for r in results.inference(model_id)] == list(range(1, 41))
        assert_scores(grouped, reference_scores(model_config, data[model_id]))
    archive = CheckpointManager()
    assert set(model_ids) <= set(archive.model_ids())
    assert scheduler_counter(app, "htmengine_scheduler_preemptions_total") > preemptions_before


def test_killed_worker_is_replaced_and_no_result_is_lost(
    app, scheduler, swapper, results, model_config
) -> None:
    model_id = uuid.uuid4().hex
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    rows = series(3, 60)
    submit_rows(swapper, model_id, rows[:20], first_rowid=1, batch_size=1)
    results.wait(lambda: len(results.inference(model_id)) >= 3, "the first results")
    workers = scheduler_workers(scheduler)
    assert len(workers) == 2
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    submit_rows(swapper, model_id, rows[20:], first_rowid=21, batch_size=1)
    grouped = results.wait_rows(model_id, list(range(1, 61)))
    # A killed run's batches come again: their results may repeat, identical; none is missing.
    assert_scores(grouped, reference_scores(model_config, rows))
    arrival = [r.rowID for r in results.inference(model_id)]
    assert sorted(set(arrival)) == list(range(1, 61))
    wait_for_workers(scheduler, 2)


def test_a_worker_killed_between_store_rename_and_switch_recovers_the_model(
    app, scheduler, swapper, results, model_config, fault_dir
) -> None:
    """The issue's crash window, in a real slot worker: SIGKILLed after renaming store_<n+1>
    into place, before switching `current`. The model used to fail every later full save with
    ENOTEMPTY; now its next worker repairs the entry and the model goes on, every score exact."""
    model_id = uuid.uuid4().hex
    (fault_dir / f"full.renamed@{model_id}").write_text("kill")
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    rows = series(7, 30)
    submit_rows(swapper, model_id, rows, first_rowid=1, batch_size=2)
    grouped = results.wait_rows(model_id, list(range(1, 31)))
    assert_scores(grouped, reference_scores(model_config, rows))
    fired = (fault_dir / "fired").read_text().splitlines()
    assert [line.split()[:2] for line in fired if model_id in line] == [
        [f"full.renamed@{model_id}", "kill"]
    ]
    archive = CheckpointManager()
    entry = archive.entry_dir(model_id)
    results.wait(
        lambda: len([n for n in os.listdir(entry) if n.startswith("store_")]) == 1,
        "one store in the entry",
        timeout=30,
    )
    assert not [n for n in os.listdir(archive.scratch) if n.startswith(model_id)]
    wait_for_workers(scheduler, 2)


def test_a_disk_fault_while_loading_is_retried_not_an_error(
    app, scheduler, swapper, results, model_config, fault_dir
) -> None:
    """ENOSPC on every attempt of one swap-in (more than the runner retries in place): the run is
    given back and retried later; no result says anything failed, every row is scored."""
    model_id = uuid.uuid4().hex
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    results.wait(lambda: bool(results.commands(model_id)), "defineModel")
    (fault_dir / f"load@{model_id}").write_text("enospc 4")
    rows = series(8, 8)
    submit_rows(swapper, model_id, rows, first_rowid=1, batch_size=2)
    grouped = results.wait_rows(model_id, list(range(1, 9)))
    assert_scores(grouped, reference_scores(model_config, rows))
    assert [c.status for c in results.commands(model_id)] == [exceptions.SUCCESS]
    assert not (fault_dir / f"load@{model_id}").exists()  # every armed time fired
    assert scheduler_counter(app, "htmengine_scheduler_transient_retries_total") >= 1


def test_a_disk_fault_while_saving_gives_the_run_back_in_order(
    scheduler, swapper, results, model_config, fault_dir
) -> None:
    """EIO on every attempt of one checkpoint: the run's batches (already run, their results
    published) are nacked back into the real queue, in order, and run again from the previous
    checkpoint: every row has its exact score, repeats are identical, none is missing."""
    model_id = uuid.uuid4().hex
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    results.wait(lambda: bool(results.commands(model_id)), "defineModel")
    # The adaptive full-save interval decides which save comes first: arm both kinds.
    for point in ("append.written", "full.built"):
        (fault_dir / f"{point}@{model_id}").write_text(f"eio {TRANSIENT_ATTEMPTS}")
    rows = series(9, 12)
    submit_rows(swapper, model_id, rows, first_rowid=1, batch_size=2)
    grouped = results.wait_rows(model_id, list(range(1, 13)))
    assert_scores(grouped, reference_scores(model_config, rows))
    fired = [line for line in (fault_dir / "fired").read_text().splitlines() if model_id in line]
    assert len(fired) >= TRANSIENT_ATTEMPTS  # at least one run was given back
    assert max(len(found) for found in grouped.values()) > 1  # and came again


def wait_for_workers(supervisor: Supervisor, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(scheduler_workers(supervisor)) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"expected {count} slot workers")


def wait_input_queue_deleted(swapper, results, model_id: str) -> None:
    queue = swapper.model_input_queue(model_id)

    def queue_gone() -> bool:
        try:
            swapper.bus.declare_queue(queue, passive=True)
        except MessageQueueNotFound:
            return True
        return False

    results.wait(queue_gone, f"deletion of {queue}", timeout=30)


def test_delete_model_removes_checkpoint_and_queue(
    scheduler, swapper, results, model_config
) -> None:
    model_id = uuid.uuid4().hex
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    submit_rows(swapper, model_id, series(4, 3), first_rowid=1, batch_size=3)
    results.wait_rows(model_id, [1, 2, 3])
    assert CheckpointManager().exists(model_id)
    swapper.deleteModel(model_id, "cmd-delete")
    results.wait(
        lambda: any(c.method == "deleteModel" for c in results.commands(model_id)), "deleteModel"
    )
    delete = [c for c in results.commands(model_id) if c.method == "deleteModel"][0]
    assert delete.status == 0
    assert not CheckpointManager().exists(model_id)
    wait_input_queue_deleted(swapper, results, model_id)
    lock_file = os.path.join(CheckpointManager().locks, model_id)
    results.wait(lambda: not os.path.exists(lock_file), "removal of the lock file", timeout=30)
    with pytest.raises(ModelNotFound):
        swapper.submitRequests(model_id, [ModelInputRow(9, [T0, 1.0])])
    swapper.deleteModel(model_id, "again")  # idempotent


def test_clone_model_continues_from_the_same_state(
    scheduler, swapper, results, model_config
) -> None:
    source, copy = uuid.uuid4().hex, uuid.uuid4().hex
    rows = series(5, 24)
    swapper.defineModel(source, define_args(model_config), "cmd")
    submit_rows(swapper, source, rows[:16], first_rowid=1, batch_size=4)
    swapper.cloneModel(source, copy, "cmd-clone")
    results.wait(lambda: any(c.method == "cloneModel" for c in results.commands(source)), "clone")
    assert [c.status for c in results.commands(source) if c.method == "cloneModel"] == [0]
    submit_rows(swapper, source, rows[16:], first_rowid=17, batch_size=4)
    submit_rows(swapper, copy, rows[16:], first_rowid=17, batch_size=4)
    expected = reference_scores(model_config, rows)
    assert_scores(results.wait_rows(source, list(range(1, 25))), expected)
    assert_scores(results.wait_rows(copy, list(range(17, 25))), expected[16:], first_rowid=17)


@pytest.fixture
def monitored(app: TestApp) -> Iterator[Callable[[str], None]]:
    """Register model ids as ACTIVE metrics (what backlog discovery reads); removed afterwards."""
    import sqlalchemy as sa

    from htmengine.repository import MetricStatus, get_engine, queries
    from htmengine.repository.schema import metric

    uids: list[str] = []

    def register(uid: str) -> None:
        with get_engine().begin() as conn:
            queries.insert_metric(
                conn,
                uid=uid,
                datasource="custom",
                name=f"swapper.test.{uid}",
                status=int(MetricStatus.ACTIVE),
            )
        uids.append(uid)

    yield register
    with get_engine().begin() as conn:
        conn.execute(sa.delete(metric).where(metric.c.uid.in_(uids)))


def test_backlog_is_discovered_from_the_database_at_start_up(
    scheduler, swapper, results, model_config, monitored
) -> None:
    model_id = uuid.uuid4().hex
    monitored(model_id)
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    results.wait(lambda: bool(results.commands(model_id)), "defineModel")
    scheduler.server.supervisor.stopProcess("htmengine:model_scheduler")
    rows = series(6, 10)
    submit_rows(swapper, model_id, rows, first_rowid=1, batch_size=2)
    swapper.bus.purge_queue(swapper.scheduler_notification_queue)  # the pings are lost
    scheduler.server.supervisor.startProcess("htmengine:model_scheduler")
    grouped = results.wait_rows(model_id, list(range(1, 11)))
    assert [r.rowID for r in results.inference(model_id)] == list(range(1, 11))
    assert_scores(grouped, reference_scores(model_config, rows))


def test_delete_of_an_unmonitored_model_is_discovered_from_the_archive(
    scheduler, swapper, results, model_config
) -> None:
    """The deleteModel's notification is lost (a broker restart): the model has no monitored
    metric, so start-up discovery finds it through the checkpoint archive."""
    model_id = uuid.uuid4().hex  # no metric row: as after unmonitorMetric
    swapper.defineModel(model_id, define_args(model_config), "cmd")
    results.wait(lambda: bool(results.commands(model_id)), "defineModel")
    assert CheckpointManager().exists(model_id)
    scheduler.server.supervisor.stopProcess("htmengine:model_scheduler")
    swapper.deleteModel(model_id, "cmd-delete")
    swapper.bus.purge_queue(swapper.scheduler_notification_queue)  # the ping is lost
    scheduler.server.supervisor.startProcess("htmengine:model_scheduler")
    results.wait(
        lambda: any(c.method == "deleteModel" for c in results.commands(model_id)), "deleteModel"
    )
    assert not CheckpointManager().exists(model_id)
    wait_input_queue_deleted(swapper, results, model_id)


def test_killed_scheduler_restarts_and_every_row_gets_a_result(
    scheduler, swapper, results, model_config, monitored
) -> None:
    model_ids = [uuid.uuid4().hex for _ in range(3)]
    data = {model_id: series(10 + seed, 36) for seed, model_id in enumerate(model_ids)}
    for model_id in model_ids:
        monitored(model_id)
        swapper.defineModel(model_id, define_args(model_config), "cmd")
    for model_id in model_ids:
        submit_rows(swapper, model_id, data[model_id][:18], first_rowid=1, batch_size=2)
    results.wait(
        lambda: sum(len(results.inference(m)) for m in model_ids) >= 6, "the first results"
    )
    old_workers = scheduler_workers(scheduler)
    old_pid = scheduler.kill("model_scheduler", signal.SIGKILL)
    for model_id in model_ids:
        submit_rows(swapper, model_id, data[model_id][18:], first_rowid=19, batch_size=2)
    scheduler.wait_restarted("model_scheduler", old_pid)
    for model_id in model_ids:
        grouped = results.wait_rows(model_id, list(range(1, 37)))
        assert_scores(grouped, reference_scores(model_config, data[model_id]))
        repeated = {rowid: len(found) for rowid, found in grouped.items() if len(found) > 1}
        # Only the rows of a run cut short by the kill may repeat (at most one run per model).
        assert len(repeated) <= 8, repeated
    # Orphaned workers of the killed scheduler finish their run and exit.
    gone, alive = psutil.wait_procs(old_workers, timeout=60)
    assert not alive


def test_graceful_stop_mid_stream_repeats_nothing(
    scheduler, swapper, results, model_config, monitored
) -> None:
    model_ids = [uuid.uuid4().hex for _ in range(3)]
    # Enough one-row batches (900) that the stop lands mid-stream even on a slow machine.
    rows = 300
    data = {model_id: series(20 + seed, rows) for seed, model_id in enumerate(model_ids)}
    for model_id in model_ids:
        monitored(model_id)
        swapper.defineModel(model_id, define_args(model_config), "cmd")
        submit_rows(swapper, model_id, data[model_id], first_rowid=1, batch_size=1)
    results.wait(lambda: sum(len(results.inference(m)) for m in model_ids) >= 10, "first results")
    scheduler.server.supervisor.stopProcess("htmengine:model_scheduler")  # SIGINT, waits
    info = scheduler.process_info()["model_scheduler"]
    assert (info["statename"], info["exitstatus"]) == ("STOPPED", 0), info
    results.drain()
    done_before_restart = sum(len(results.inference(m)) for m in model_ids)
    assert done_before_restart < 3 * rows, "the stop came too late to test anything"
    scheduler.server.supervisor.startProcess("htmengine:model_scheduler")
    for model_id in model_ids:
        grouped = results.wait_rows(model_id, list(range(1, rows + 1)))
        # Every batch was checkpointed and acked before the stop: no result repeats.
        assert [r.rowID for r in results.inference(model_id)] == list(range(1, rows + 1))
        assert_scores(grouped, reference_scores(model_config, data[model_id]))
