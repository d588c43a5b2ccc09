"""ModelRunner logic with an in-memory bus and a toy model (the real model runs in integration)."""

from __future__ import annotations

import datetime
import errno
import json
import os
from collections.abc import Callable, Iterator

import pytest

from htmengine import exceptions
from htmengine.config import Config
from htmengine.model_swapper.checkpoint_mgr import CheckpointManager, set_fault_hook
from htmengine.model_swapper.model_runner import (
    TRANSIENT_ATTEMPTS,
    ModelRunner,
    full_save_interval,
)
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommand,
    ModelCommandResult,
    ModelInferenceResult,
    ModelInputRow,
    ModelSwapperInterface,
    decode_result_message,
)
from tests.unit.model_swapper.fakes import FakeBus, ToyModel

T0 = datetime.datetime(2020, 1, 1)
DEFINE_ARGS = {
    "modelConfig": {"start": 1.0, "fail_on": -1.0},
    "inferenceArgs": {"predictedField": "c1"},
    "inputRecordSchema": [["c0", "datetime", "T"], ["c1", "float", ""]],
}


def never() -> bool:
    return False


def input_rows(first: int, count: int) -> list[ModelInputRow]:
    return [
        ModelInputRow(rowid, [T0 + datetime.timedelta(minutes=5 * rowid), float(rowid % 7)])
        for rowid in range(first, first + count)
    ]


def expected_scores(rowids: list[int]) -> list[float]:
    model = ToyModel(DEFINE_ARGS["modelConfig"])
    return [model.run(T0 + datetime.timedelta(minutes=5 * r), float(r % 7)) for r in rowids]


class Harness:
    def __init__(self, tmp_path, full_rows: int = 5, target: int = 500) -> None:
        (tmp_path / "model-swapper.conf").write_text(
            "[interface_bus]\nresults_queue = r\n"
            "model_input_queue_prefix = in.\nscheduler_notification_queue = n\n"
        )
        self.bus = FakeBus()
        self.swapper = ModelSwapperInterface(
            bus=self.bus, config=Config("model-swapper.conf", str(tmp_path))
        )
        self.checkpoints = CheckpointManager(str(tmp_path / "ckpt"))
        self.runner = ModelRunner(
            self.swapper,
            self.checkpoints,
            target_requests_per_checkpoint=target,
            full_checkpoint_rows=full_rows,
            model_class=ToyModel,
            adaptive_full_saves=False,
        )

    def results(self) -> list:
        items = []
        for message in self.bus.queues.get("r", []):
            model_id, batch = decode_result_message(message.body)
            items.extend(batch)
        return items

    def inference_results(self) -> list[ModelInferenceResult]:
        return [r for r in self.results() if isinstance(r, ModelInferenceResult)]


@pytest.fixture
def harness(tmp_path) -> Harness:
    return Harness(tmp_path)


def test_define_then_rows_yield_one_result_per_row_in_order(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 3))
    harness.swapper.submitRequests("m", input_rows(4, 2))
    report = harness.runner.serve("m", never)
    assert report.drained and report.rows == 5 and report.batches == 3
    (command,) = [r for r in harness.results() if isinstance(r, ModelCommandResult)]
    assert command == ModelCommandResult("c1", "defineModel", exceptions.SUCCESS)
    results = harness.inference_results()
    assert [r.rowID for r in results] == [1, 2, 3, 4, 5]
    assert [r.anomalyScore for r in results] == expected_scores([1, 2, 3, 4, 5])
    assert all(m.acked for _, m in harness.bus.taken)


def test_scores_survive_swapping_with_journal_replay_and_full_saves(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.runner.serve("m", never)
    reports = []
    for first in range(1, 23, 2):  # 11 serves of 2 rows: journal appends and full saves mix
        harness.swapper.submitRequests("m", input_rows(first, 2))
        reports.append(harness.runner.serve("m", never))
    scores = [r.anomalyScore for r in harness.inference_results()]
    assert scores == expected_scores(list(range(1, 23)))
    assert sum(r.full_saves for r in reports) >= 3
    assert sum(r.incremental_saves for r in reports) >= 5
    assert sum(r.replayed_rows for r in reports) > 0


def test_redelivered_batch_after_a_lost_ack_is_skipped(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 2))
    harness.runner.serve("m", never)
    for _, message in harness.bus.taken:  # the acks never reached the broker
        message.acked = False
    harness.bus.requeue_unacked()
    report = harness.runner.serve("m", never)
    assert report.duplicate_batches == 2 and report.rows == 0
    assert [r.rowID for r in harness.inference_results()] == [1, 2]


def test_target_requests_per_checkpoint_splits_runs(tmp_path) -> None:
    harness = Harness(tmp_path, target=2)
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    for first in (1, 2, 3, 4):
        harness.swapper.submitRequests("m", input_rows(first, 1))
    report = harness.runner.serve("m", never)
    assert report.runs >= 3 and report.drained
    assert [r.rowID for r in harness.inference_results()] == [1, 2, 3, 4]


def test_should_stop_ends_after_the_current_batch_with_a_checkpoint(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 2))
    harness.swapper.submitRequests("m", input_rows(3, 2))
    report = harness.runner.serve("m", lambda: True)
    assert not report.drained
    # define batch, then first row batch, then stop
    assert report.batches == 1
    assert len(harness.bus.queues["in.m"]) == 2
    harness.runner.serve("m", never)
    assert [r.anomalyScore for r in harness.inference_results()] == expected_scores([1, 2, 3, 4])


def test_a_failing_row_reports_an_error_and_the_rest_continue(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    rows = input_rows(1, 3)
    rows[1] = ModelInputRow(2, [rows[1].data[0], -1.0])
    harness.swapper.submitRequests("m", rows)
    report = harness.runner.serve("m", never)
    results = harness.inference_results()
    assert [r.status for r in results] == [0, exceptions.ERR, 0]
    assert "cannot learn" in results[1].errorMessage and report.failed_rows == 1
    model = ToyModel(DEFINE_ARGS["modelConfig"])
    model.run(rows[0].data[0], rows[0].data[1])
    assert results[2].anomalyScore == model.run(rows[2].data[0], rows[2].data[1])


def test_rows_for_an_undefined_model_get_no_such_model(harness) -> None:
    harness.bus.declare_queue("in.m")
    harness.swapper.submitRequests("m", input_rows(1, 1))
    harness.runner.serve("m", never)
    (result,) = harness.inference_results()
    assert result.status == exceptions.ERR_NO_SUCH_MODEL


def test_define_twice_is_idempotent_and_a_different_definition_fails(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.defineModel("m", DEFINE_ARGS, "c2")
    harness.swapper.defineModel("m", {**DEFINE_ARGS, "modelConfig": {"start": 2.0}}, "c3")
    harness.swapper.submitRequests("m", [ModelCommand("c4", "frobnicate")])
    harness.swapper.defineModel("m", {"inferenceArgs": {}}, "c5")
    harness.runner.serve("m", never)
    statuses = {r.commandID: r.status for r in harness.results()}
    assert statuses == {
        "c1": 0,
        "c2": 0,
        "c3": exceptions.ERR_MODEL_ALREADY_EXISTS,
        "c4": exceptions.ERR_INVALID_ARG,
        "c5": exceptions.ERR_INVALID_ARG,
    }
    messages = [r.errorMessage for r in harness.results() if r.status]
    assert all("model m" in m for m in messages)


def test_delete_model_removes_checkpoint_and_queue(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 2))
    harness.runner.serve("m", never)
    harness.swapper.deleteModel("m", "d1")
    report = harness.runner.serve("m", never)
    assert report.deleted
    assert not harness.checkpoints.exists("m")
    assert "in.m" not in harness.bus.queues
    assert harness.results()[-1] == ModelCommandResult("d1", "deleteModel", 0)
    assert os.listdir(harness.checkpoints.locks) == []  # no leftover lock file


def test_a_define_queued_behind_a_delete_is_served_not_deleted_with_the_queue(harness) -> None:
    """unmonitor then monitor at once (``monitor --force``): deleteModel, then a new defineModel
    and rows wait in the queue; the model is recreated from scratch and the queue kept."""
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 3))
    harness.runner.serve("m", never)
    harness.swapper.deleteModel("m", "d1")
    harness.swapper.defineModel("m", DEFINE_ARGS, "c2")
    harness.swapper.submitRequests("m", input_rows(1, 3))  # the backlog again, from row 1
    report = harness.runner.serve("m", never)
    assert report.drained and not report.deleted and report.skipped_rows == 0
    assert harness.checkpoints.exists("m") and "in.m" in harness.bus.queues
    commands = [r for r in harness.results() if isinstance(r, ModelCommandResult)]
    assert [(c.commandID, c.status) for c in commands] == [("c1", 0), ("d1", 0), ("c2", 0)]
    scores = [r.anomalyScore for r in harness.inference_results()]
    assert scores == expected_scores([1, 2, 3]) * 2  # the new model starts afresh


def test_clone_model_copies_the_state_including_this_runs_rows(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 3))
    harness.swapper.cloneModel("m", "copy", "k1")
    harness.runner.serve("m", never)
    assert harness.results()[-1] == ModelCommandResult("k1", "cloneModel", 0)
    harness.swapper.submitRequests("copy", input_rows(4, 1))
    harness.runner.serve("copy", never)
    assert harness.inference_results()[-1].anomalyScore == expected_scores([1, 2, 3, 4])[-1]
    harness.swapper.cloneModel("m", "copy", "k2")  # target exists: success
    harness.runner.serve("m", never)
    assert harness.results()[-1] == ModelCommandResult("k2", "cloneModel", 0)


def test_clone_of_an_undefined_model_fails_with_no_such_model(harness) -> None:
    harness.bus.declare_queue("in.ghost")
    harness.swapper.cloneModel("ghost", "x", "k3")
    harness.runner.serve("ghost", never)
    assert harness.results()[-1].status == exceptions.ERR_NO_SUCH_MODEL


def test_full_save_interval_balances_replay_against_save_cost() -> None:
    assert full_save_interval(None, 100.0, cap=100) == 100  # nothing measured yet: the cap
    assert full_save_interval(2.0, 100.0, cap=100) == 10  # sqrt(2 * 100 / 2)
    assert full_save_interval(0.01, 100.0, cap=100) == 100  # cheap rows: the cap
    assert full_save_interval(50.0, 10.0, cap=100) == 1  # rows dearer than a save: save each time


def test_adaptive_runner_saves_full_sooner_when_rows_are_dear(tmp_path) -> None:
    harness = Harness(tmp_path, full_rows=100)
    harness.runner.adaptive_full_saves = True
    harness.runner.row_ms.add(50.0)
    harness.runner.full_save_ms.add(10.0)
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 1))
    report = harness.runner.serve("m", never)
    assert (
        report.full_saves == 1 and report.incremental_saves == 0
    )  # the cap alone: a journal append


def test_full_saves_of_models_fed_in_lockstep_are_spread(tmp_path) -> None:
    runner = Harness(tmp_path, full_rows=100).runner
    runner.adaptive_full_saves = True
    runner.row_ms.add(2.0)
    runner.full_save_ms.add(100.0)  # interval 10
    thresholds = {
        min(j for j in range(1, 101) if runner.full_save_due(j, f"model{i}")) for i in range(50)
    }
    assert len(thresholds) > 3 and min(thresholds) >= 5 and max(thresholds) <= 15


def test_an_unreadable_checkpoint_fails_rows_as_unusable_not_the_runner(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 5))  # a full save (full_rows=5)
    harness.runner.serve("m", never)
    checkpoint = harness.checkpoints.load("m")
    with open(f"{checkpoint.store_dir}/model.bin", "wb") as fh:
        fh.write(b"not a model")
    harness.swapper.submitRequests("m", input_rows(6, 2))
    report = harness.runner.serve("m", never)
    failed = harness.inference_results()[-2:]
    assert [r.status for r in failed] == [exceptions.ERR_MODEL_UNUSABLE] * 2
    assert exceptions.is_permanent_failure(exceptions.ERR_MODEL_UNUSABLE)
    assert "load model" in failed[0].errorMessage and report.failed_rows == 2
    assert not harness.bus.queues["in.m"] and all(m.acked for _, m in harness.bus.taken)


def test_an_unreadable_definition_fails_rows_as_unusable(harness) -> None:
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.runner.serve("m", never)
    with open(f"{harness.checkpoints.entry_dir('m')}/definition.json", "w") as fh:
        fh.write("{not json")
    harness.swapper.submitRequests("m", input_rows(1, 1))
    harness.runner.serve("m", never)
    (result,) = harness.inference_results()
    assert result.status == exceptions.ERR_MODEL_UNUSABLE
    assert "load checkpoint" in result.errorMessage


def test_rows_at_or_below_the_checkpointed_rowid_mark_are_skipped(tmp_path) -> None:
    """Forwarding rows again (a storer re-forward after a crash) changes no score: the runner
    skips what it already ran, across swaps, journal appends and full saves."""
    harness = Harness(tmp_path, full_rows=4)
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 3))
    harness.runner.serve("m", never)  # journal append (3 rows < 4)
    harness.swapper.submitRequests("m", input_rows(2, 4))  # 2, 3 again, then 4, 5
    report = harness.runner.serve("m", never)  # full save (5 rows >= 4)
    assert report.skipped_rows == 2 and report.rows == 2 and report.full_saves == 1
    harness.swapper.submitRequests("m", input_rows(1, 6))  # 1-5 again, then 6
    report = harness.runner.serve("m", never)
    assert report.skipped_rows == 5 and report.rows == 1
    assert harness.checkpoints.load("m").last_rowid == 6
    results = harness.inference_results()
    assert [r.rowID for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r.anomalyScore for r in results] == expected_scores([1, 2, 3, 4, 5, 6])


# --- transient faults: retried, never reported; permanent ones: reported with their reason -------


class Faults:
    """A fault hook: `point` raises `error()` the next `times` times it is reached."""

    def __init__(self) -> None:
        self.armed: dict[str, tuple[Callable[[], BaseException], int]] = {}
        self.fired: list[str] = []

    def arm(self, point: str, error: Callable[[], BaseException], times: int) -> None:
        self.armed[point] = (error, times)

    def __call__(self, point: str, model_id: str) -> None:
        error, times = self.armed.get(point, (None, 0))
        if times:
            self.armed[point] = (error, times - 1)
            self.fired.append(point)
            raise error()


@pytest.fixture
def faults() -> Iterator[Faults]:
    hook = Faults()
    previous = set_fault_hook(hook)
    yield hook
    set_fault_hook(previous)


def enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def eio() -> OSError:
    return OSError(errno.EIO, "Input/output error")


@pytest.fixture
def quick(tmp_path) -> Harness:
    """A harness whose runner does not sleep between in-place retries."""
    harness = Harness(tmp_path)
    harness.runner.transient_wait_sec = 0.0
    return harness


def serve_until_drained(harness: Harness) -> list:
    reports = []
    while len(reports) < 20:
        reports.append(harness.runner.serve("m", never))
        if reports[-1].retry is not None:
            # Given back: every batch it took is in the queue again, none acked or left taken.
            assert harness.bus.queues["in.m"]
            assert not [m for _, m in harness.bus.taken if not m.acked]
        elif reports[-1].drained:
            return reports
    raise AssertionError("never drained")


def assert_every_row_scored_as_without_faults(harness: Harness, rowids: list[int]) -> None:
    results = harness.results()
    assert not [r for r in results if r.status != exceptions.SUCCESS]
    scores: dict[int, set[float]] = {}
    for result in harness.inference_results():
        scores.setdefault(result.rowID, set()).add(result.anomalyScore)
    assert scores == {r: {s} for r, s in zip(rowids, expected_scores(rowids), strict=True)}
    assert not harness.bus.queues["in.m"] and not [m for _, m in harness.bus.taken if not m.acked]
    assert harness.checkpoints.load("m").last_rowid == rowids[-1]
    assert os.listdir(harness.checkpoints.scratch) == []
    # (a define in a run given back after its result was published is run, and answered, again)
    commands = [r for r in results if isinstance(r, ModelCommandResult)]
    assert {(c.commandID, c.status) for c in commands} == {("c1", 0)}


def faulty_life(harness: Harness, faults: Faults, point: str, error, times: int) -> list:
    """Define, 4 rows (a journal append), 2 rows (a full save) with `point` failing `times`
    times from the first time it is reached; the reports of every serve."""
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    reports = [] if point == "define.built" else serve_until_drained(harness)
    faults.arm(point, error, times)
    harness.swapper.submitRequests("m", input_rows(1, 4))
    reports += serve_until_drained(harness)
    harness.swapper.submitRequests("m", input_rows(5, 2))
    reports += serve_until_drained(harness)
    assert faults.fired == [point] * times
    assert [r.incremental_saves for r in reports if r.rows == 4 and r.retry is None] == [1]
    assert [r.full_saves for r in reports if r.rows == 2 and r.retry is None] == [1]
    return reports


FAULTS = [
    ("load", enospc),
    ("load", eio),
    ("load", MemoryError),
    ("model.build", MemoryError),
    ("model.build", eio),
    ("define.built", enospc),
    ("append.written", eio),
    ("append.written", enospc),
    ("full.built", enospc),
    ("full.built", MemoryError),
    ("full.renamed", eio),
]


@pytest.mark.parametrize(("point", "error"), FAULTS)
def test_a_fault_that_passes_within_the_retries_is_invisible(quick, faults, point, error) -> None:
    reports = faulty_life(quick, faults, point, error, TRANSIENT_ATTEMPTS - 1)
    assert all(r.retry is None for r in reports)
    assert_every_row_scored_as_without_faults(quick, list(range(1, 7)))


@pytest.mark.parametrize(("point", "error"), FAULTS)
def test_a_lasting_fault_gives_the_run_back_and_loses_nothing(quick, faults, point, error) -> None:
    reports = faulty_life(quick, faults, point, error, 2 * TRANSIENT_ATTEMPTS)
    retried = [r.retry for r in reports if r.retry is not None]
    assert len(retried) == 2 and all("failed on model m" in reason for reason in retried)
    # The disk recovered: the model was served from its checkpoint as if nothing happened (a
    # run given back after its results were published publishes them again, the same).
    assert_every_row_scored_as_without_faults(quick, list(range(1, 7)))


def test_memory_running_out_mid_row_gives_the_run_back(quick, monkeypatch) -> None:
    quick.swapper.defineModel("m", DEFINE_ARGS, "c1")
    quick.swapper.submitRequests("m", input_rows(1, 3))
    real_run = ToyModel.run
    calls = []

    def run(self, timestamp, value):
        calls.append(value)
        if len(calls) == 2:
            raise MemoryError()
        return real_run(self, timestamp, value)

    monkeypatch.setattr(ToyModel, "run", run)
    report = quick.runner.serve("m", never)
    assert report.retry is not None and "MemoryError" in report.retry
    assert not [r for r in quick.results() if isinstance(r, ModelInferenceResult)]
    serve_until_drained(quick)
    monkeypatch.setattr(ToyModel, "run", real_run)
    assert_every_row_scored_as_without_faults(quick, [1, 2, 3])


def test_a_corrupt_checkpoint_is_a_permanent_error_with_its_reason(quick, faults) -> None:
    quick.swapper.defineModel("m", DEFINE_ARGS, "c1")
    quick.swapper.submitRequests("m", input_rows(1, 2))
    quick.runner.serve("m", never)
    path = os.path.join(quick.checkpoints.load("m").store_dir, "attributes.json")
    with open(path) as fh:
        attributes = json.load(fh)
    attributes["lastRowid"] = 1  # would run row 2 twice: the CRC says no
    with open(path, "w") as fh:
        json.dump(attributes, fh)
    quick.swapper.submitRequests("m", input_rows(3, 1))
    report = quick.runner.serve("m", never)
    assert report.retry is None and report.drained
    (result,) = quick.inference_results()[2:]
    assert result.status == exceptions.ERR_MODEL_UNUSABLE
    assert exceptions.is_permanent_failure(result.status)
    assert "CRC mismatch" in result.errorMessage and "load checkpoint" in result.errorMessage
    assert not exceptions.is_permanent_failure(exceptions.ERR)


# --- re-monitor over a checkpoint a lost deleteModel left behind ----------------------------------


def old_checkpoint_left_behind(harness: Harness) -> None:
    """A model that ran rows 1-6 (a full save among them); its deleteModel was then lost."""
    harness.swapper.defineModel("m", DEFINE_ARGS, "c1")
    harness.swapper.submitRequests("m", input_rows(1, 6))
    harness.runner.serve("m", never)
    assert harness.checkpoints.load("m").last_rowid == 6
    harness.bus.queues["r"].clear()


def test_a_model_start_led_by_delete_model_ignores_an_old_checkpoint(harness) -> None:
    """The lifecycle's model start (deleteModel, defineModel and the backlog, enqueued at once):
    the old checkpoint goes, the backlog is scored by a fresh model, none of it skipped."""
    old_checkpoint_left_behind(harness)
    harness.swapper.submitRequests("m", [ModelCommand("d2", "deleteModel")])
    harness.swapper.defineModel("m", DEFINE_ARGS, "c2")
    for first in (1, 5):
        harness.swapper.submitRequests("m", input_rows(first, 4))
    report = harness.runner.serve("m", never)
    assert report.skipped_rows == 0 and report.drained and not report.deleted
    results = harness.inference_results()
    assert [r.anomalyScore for r in results] == expected_scores(list(range(1, 9)))
    assert harness.checkpoints.load("m").last_rowid == 8


def test_a_define_alone_keeps_an_existing_model_with_its_state(harness) -> None:
    """defineModel is idempotent, as in the original: an equal definition keeps the model and its
    rowid mark (so rows it ran are not run twice). Hence a start must lead with deleteModel."""
    old_checkpoint_left_behind(harness)
    harness.swapper.defineModel("m", DEFINE_ARGS, "c2")
    harness.swapper.submitRequests("m", input_rows(1, 8))
    report = harness.runner.serve("m", never)
    assert report.skipped_rows == 6
    assert [r.rowID for r in harness.inference_results()] == [7, 8]
    assert [r.anomalyScore for r in harness.inference_results()] == expected_scores(
        list(range(1, 9))
    )[6:]
