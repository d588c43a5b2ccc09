"""A slot worker SIGKILLed at each fault point of the save path, then a new one: nothing lost,
nothing run twice, nothing left over.

The victim is a real process running the real ModelRunner and CheckpointManager (a toy model, and
a directory standing in for the broker: `FileBus` keeps a killed consumer's unacked messages as
RabbitMQ does). It is armed through ``HTMENGINE_FAULT_DIR`` and kills itself at the point. The
test then requeues what it had not acked and serves the model again in this process, and
compares every raw score with an uninterrupted run of the same rows.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys

import pytest

from htmengine import exceptions
from htmengine.config import Config
from htmengine.model_swapper.checkpoint_mgr import FAULT_DIR_ENV, CheckpointManager
from htmengine.model_swapper.model_runner import ModelRunner
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommandResult,
    ModelInferenceResult,
    ModelInputRow,
    ModelSwapperInterface,
    decode_result_message,
)
from tests.unit.model_swapper.fakes import FileBus, ToyModel

MODEL = "m"
T0 = datetime.datetime(2020, 1, 1)
DEFINE_ARGS = {
    "modelConfig": {"start": 1.0},
    "inferenceArgs": {"predictedField": "c1"},
    "inputRecordSchema": [["c0", "datetime", "T"], ["c1", "float", ""]],
}
ROWS = 20  # in batches of 2: runs of 2 batches, journal appends and full saves interleaved
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

POINTS = [
    "define.built",
    "run.published",
    "append.written",
    "append.synced",
    "full.built",
    "full.renamed",
    "full.linked",
    "full.switched",
    "run.checkpointed",
]


class Worker:
    """What a slot worker builds, on the directory `root`."""

    def __init__(self, root: str) -> None:
        conf = os.path.join(root, "conf")
        os.makedirs(conf, exist_ok=True)
        with open(os.path.join(conf, "model-swapper.conf"), "w") as fh:
            fh.write(
                "[interface_bus]\nresults_queue = r\n"
                "model_input_queue_prefix = in.\nscheduler_notification_queue = n\n"
            )
        self.bus = FileBus(os.path.join(root, "bus"))
        self.bus.declare_queue("r")
        self.bus.declare_queue("n")
        self.swapper = ModelSwapperInterface(
            bus=self.bus, config=Config("model-swapper.conf", conf)
        )
        self.checkpoints = CheckpointManager(os.path.join(root, "ckpt"))
        self.runner = ModelRunner(
            self.swapper,
            self.checkpoints,
            target_requests_per_checkpoint=4,
            full_checkpoint_rows=5,
            model_class=ToyModel,
            adaptive_full_saves=False,
        )

    def serve(self) -> None:
        while not self.runner.serve(MODEL, lambda: False).drained:
            pass

    def submit(self, first: int, count: int, batch: int = 2) -> None:
        for start in range(first, first + count, batch):
            self.swapper.submitRequests(
                MODEL,
                [
                    ModelInputRow(r, [T0 + datetime.timedelta(minutes=5 * r), float(r % 7)])
                    for r in range(start, min(start + batch, first + count))
                ],
            )

    def results(self) -> list:
        items: list = []
        for body in self.bus.messages("r"):
            items.extend(decode_result_message(body)[1])
        return items


def victim_main(root: str) -> None:
    """The killed process (run as ``python -c``)."""
    Worker(root).serve()


def uninterrupted_scores(root: str) -> dict[int, float]:
    worker = Worker(root)
    worker.swapper.defineModel(MODEL, DEFINE_ARGS, "define")
    worker.submit(1, ROWS + 2)
    worker.serve()
    return {
        r.rowID: r.anomalyScore for r in worker.results() if isinstance(r, ModelInferenceResult)
    }


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[int, float]:
    return uninterrupted_scores(str(tmp_path_factory.mktemp("uninterrupted")))


@pytest.mark.parametrize("point", [*POINTS, "append.written+torn"])
def test_a_worker_killed_at_a_fault_point_loses_nothing_and_runs_nothing_twice(
    tmp_path, point, expected
) -> None:
    root = str(tmp_path)
    worker = Worker(root)
    worker.swapper.defineModel(MODEL, DEFINE_ARGS, "define")
    worker.submit(1, ROWS)
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / f"{point.split('+')[0]}@{MODEL}").write_text("kill")
    victim = subprocess.run(
        [sys.executable, "-c", f"import {__name__}; {__name__}.victim_main({root!r})"],
        cwd=REPO,
        env={**os.environ, FAULT_DIR_ENV: str(faults)},
        capture_output=True,
        timeout=300,
    )
    assert victim.returncode == -signal.SIGKILL, victim.stderr.decode()[-2000:]
    assert (faults / "fired").read_text().split()[:2] == [f"{point.split('+')[0]}@{MODEL}", "kill"]
    queue = worker.swapper.model_input_queue(MODEL)
    assert worker.bus.unacked(queue) > 0  # the killed run's batches
    if point.endswith("+torn"):
        # The unsynced record was only partly on disk (a power loss rather than a kill).
        journal = os.path.join(worker.checkpoints.load(MODEL).store_dir, "journal.bin")
        os.truncate(journal, os.path.getsize(journal) - 3)

    worker.bus.requeue_unacked(queue)  # the broker, when the victim's connection died
    worker.serve()  # the restarted worker
    worker.submit(ROWS + 1, 2)  # and the model goes on from its checkpoint
    worker.serve()

    results = worker.results()
    commands = [r for r in results if isinstance(r, ModelCommandResult)]
    assert commands and all(c.status == exceptions.SUCCESS for c in commands)
    inference = [r for r in results if isinstance(r, ModelInferenceResult)]
    assert {r.rowID for r in inference} == set(range(1, ROWS + 3))
    # A row whose run was not checkpointed is run again from the checkpoint: the same score.
    for result in inference:
        assert (result.status, result.anomalyScore) == (0, expected[result.rowID]), result
    assert worker.bus.messages(queue) == [] and worker.bus.unacked(queue) == 0
    checkpoints = worker.checkpoints
    assert os.listdir(checkpoints.scratch) == []
    entry = sorted(os.listdir(checkpoints.entry_dir(MODEL)))
    assert [n for n in entry if not n.startswith("store_")] == [
        "current",
        "definition.json",
        "version.txt",
    ]
    assert len(entry) == 4  # one store
    assert checkpoints.load(MODEL).last_rowid == ROWS + 2
