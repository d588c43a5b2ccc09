"""ModelRunner: runs one model's request batches inside a long-lived slot worker process.

A slot worker asks the runner to *serve* a model: take the model's lock, read its checkpoint,
consume its input queue in runs, then release it (the model leaves memory). One run:

1. take batches from the model's queue (basic.get) until ``target_requests_per_checkpoint`` requests
   were processed (whole batches only), the queue is empty, a deleteModel was handled, or the worker
   is asked to stop; a batch whose id is already in the checkpoint (a redelivery after a lost ack)
   is skipped and acked;
2. publish one result batch per request batch (results before the checkpoint: a crash in between
   repeats the batch, never loses its results);
3. checkpoint: append the run's rows and batch ids to the journal, or save the whole model when a
   full save is due (see `full_save_interval`);
4. ack the run's batches (the checkpoint always precedes the ack).

What can repeat: results of the batches of a run whose checkpoint was not written (the worker or the
host died between publishing results and the checkpoint's fsync). Those batches are redelivered and
processed again from the previous checkpoint, giving the same scores for the same rowids; the
anomaly service drops results for rows that already have a score. Batches whose checkpoint was
written but whose ack was lost are skipped without results.

Input rows are idempotent too: the checkpoint keeps the highest input rowid folded into the model
(``lastRowid``), and rows at or below it are skipped without a result (counted as
``skipped_rows``). Every model receives its input in rowid order (the storer forwards after each
commit, one batch after the other; a model start sends defineModel + backlog atomically and the
anomaly service forwards the rows stored during creation under the metric row lock before the
metric becomes ACTIVE), so a row at or below the mark was already run: the storer's re-forward of
rows whose forwarding a crash may have lost, or a repeated activation hand-off.

Taking the model's lock, the runner first deletes what saves of this model killed midway left
(``CheckpointManager.repair``): every step of a save leaves a checkpoint that loads, as before or
as after that save, so a killed run is simply run again from it.

The model itself (``htmengine.htm.model.ScalarAnomalyModel``) is built lazily on the first input row:
from ``model.bin`` plus a replay of the journal, or from the stored definition.

Failures are either transient or permanent (the status codes' contract is in
``htmengine.exceptions``):

* transient: an OSError or MemoryError while reading, building, saving, defining, deleting or
  cloning a model (disk full, an I/O error, memory pressure). The step is retried in place a few
  times with a short backoff; if it still fails, the run is given back: its batches are nacked
  back into the queue (nothing acked, nothing lost), the model leaves memory, and the report's
  ``retry`` says why, so the controller serves the model again after a growing delay. No result
  is published for a transient fault, so it never puts a metric into ERROR.
* permanent: a model that cannot be restored (a CheckpointError: CRC or format error, a missing
  store file; a blob the model class rejects; a definition it cannot build) answers every row with
  ERR_MODEL_UNUSABLE and the reason; rows of a model without a checkpoint entry get
  ERR_NO_SUCH_MODEL. Either puts the metric into ERROR: the model can never score again, and
  ``htmengine monitor --force`` recreates it.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import tenacity

from htmengine import exceptions
from htmengine.exceptions import ModelAlreadyExists, ModelNotFound
from htmengine.model_swapper.checkpoint_mgr import (
    Checkpoint,
    CheckpointManager,
    InputRow,
    fault_point,
)
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommand,
    ModelCommandResult,
    ModelInferenceResult,
    ModelInputRow,
    ModelSwapperInterface,
    RequestBatch,
)

_log = logging.getLogger("htmengine.model_swapper.model_runner")

# Characters of traceback kept in an error message (as the original did).
_TRACEBACK_TAIL_CHARS = 400

# Faults of the machine, not of the model: retried (see the module doc).
TRANSIENT_FAULTS = (OSError, MemoryError)
# In-place attempts at a step that meets a transient fault, and the first backoff (doubling).
TRANSIENT_ATTEMPTS = 3
TRANSIENT_WAIT_SEC = 0.1

T = TypeVar("T")


class RetryLater(Exception):
    """A transient fault outlasted the in-place retries: give the run back, serve it later."""


class AnomalyModel(Protocol):
    """What the runner needs of a model (ScalarAnomalyModel's API)."""

    def run(self, timestamp: datetime.datetime, value: float) -> float: ...

    def save(self) -> bytes: ...


def default_model_class() -> Any:
    """ScalarAnomalyModel, imported on first use (its Numba code compiles only in workers)."""
    from htmengine.htm.model import ScalarAnomalyModel

    return ScalarAnomalyModel


def definition_from_args(args: dict | None) -> dict:
    """The stored definition of a defineModel command's args (the original's layout)."""
    if not isinstance(args, dict) or not isinstance(args.get("modelConfig"), dict):
        raise ValueError("defineModel args must be a dict with a modelConfig dict")
    schema = args.get("inputRecordSchema")
    if schema is None:
        schema = [["c0", "datetime", "T"], ["c1", "float", ""]]
    return {
        "modelParams": {
            "modelConfig": args["modelConfig"],
            "inferenceArgs": args.get("inferenceArgs"),
        },
        "inputSchema": [_field_state(field) for field in schema],
    }


def _field_state(field: Any) -> list:
    if isinstance(field, dict):
        return [field.get("name"), field.get("type"), field.get("special", "")]
    if isinstance(field, (list, tuple)) and len(field) == 3:
        return list(field)
    raise ValueError(f"bad inputRecordSchema field {field!r}: expected [name, type, special]")


def _row_layout(definition: dict) -> tuple[int, int]:
    """Indexes of the timestamp and the value in an input row, from the stored input schema."""
    schema = definition.get("inputSchema") or []
    types = [str(field[1]).lower() for field in schema]
    timestamp_index = types.index("datetime") if "datetime" in types else 0
    others = [i for i in range(max(len(types), 2)) if i != timestamp_index]
    return timestamp_index, others[0]


def full_save_interval(row_ms: float | None, full_save_ms: float | None, cap: int) -> int:
    """Journal rows after which a full save is due.

    Every swap-in replays the journal, so a journal of j rows costs j * row_ms per load, while a
    full save costs full_save_ms once. For a model swapped in for one row at a time (the steady
    state of a 5-minute cadence), the cost per row over an interval of N rows is about
    N/2 * row_ms + full_save_ms / N, smallest at N = sqrt(2 * full_save_ms / row_ms). `cap`
    (``full_checkpoint_rows``) bounds it; without measurements yet, the cap applies.
    """
    if not row_ms or not full_save_ms:
        return cap
    return max(1, min(cap, round(math.sqrt(2.0 * full_save_ms / row_ms))))


class _Average:
    """Exponential moving average of a cost in milliseconds."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = (
            sample if self.value is None else self.value + self.weight * (sample - self.value)
        )


def error_message(method: str, model_id: str, exc: BaseException) -> str:
    """ISO time, what failed, the model, the exception and the tail of its traceback."""
    tail = "".join(traceback.format_exception(exc))[-_TRACEBACK_TAIL_CHARS:]
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None).isoformat()
    return f"{now}: {method} failed on model {model_id}: {exc!r}; traceback tail: {tail}"


@dataclass
class ServeReport:
    """What one serve() did; the worker sends it to the controller (counters, LRU decisions)."""

    model_id: str
    drained: bool = False
    deleted: bool = False
    runs: int = 0
    batches: int = 0
    duplicate_batches: int = 0
    rows: int = 0
    skipped_rows: int = 0
    failed_rows: int = 0
    loads: int = 0
    replayed_rows: int = 0
    load_ms: float = 0.0
    full_saves: int = 0
    full_save_bytes: int = 0
    incremental_saves: int = 0
    incremental_save_bytes: int = 0
    save_ms: float = 0.0
    batch_seconds: list[float] = field(default_factory=list)
    # Why the serve gave its run back after a transient fault (None: it did not).
    retry: str | None = None
    # Input messages dead-lettered because they could not be decoded, by reason.
    rejected: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Session:
    """One model while it is served: its checkpoint and (once a row arrives) its model."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.checkpoint: Checkpoint | None = None
        self.model: AnomalyModel | None = None
        self.unusable: str | None = None
        self.deleted = False
        # Highest input rowid folded into the model, this run's rows included.
        self.last_rowid: int | None = None

    def use_checkpoint(self, checkpoint: Checkpoint | None) -> None:
        self.checkpoint = checkpoint
        self.last_rowid = checkpoint.last_rowid if checkpoint is not None else None


class ModelRunner:
    """Serves models one at a time for a slot worker."""

    def __init__(
        self,
        swapper: ModelSwapperInterface,
        checkpoints: CheckpointManager,
        *,
        target_requests_per_checkpoint: int = 500,
        full_checkpoint_rows: int = 100,
        model_class: Any | None = None,
        adaptive_full_saves: bool = True,
        transient_wait_sec: float = TRANSIENT_WAIT_SEC,
    ) -> None:
        self.swapper = swapper
        self.checkpoints = checkpoints
        self.target_requests_per_checkpoint = max(1, target_requests_per_checkpoint)
        self.full_checkpoint_rows = max(1, full_checkpoint_rows)
        self._model_class = model_class
        self.adaptive_full_saves = adaptive_full_saves
        self.transient_wait_sec = transient_wait_sec
        # Costs measured in this worker, for the full-save interval: a row through the model, and
        # a full save (a blob load stands in until the first save was timed).
        self.row_ms = _Average()
        self.full_save_ms = _Average()
        self.blob_load_ms = _Average()

    def full_save_due(self, journal_rows: int, model_id: str = "") -> bool:
        """Whether a journal of `journal_rows` rows should be folded into a full save now.

        The adaptive interval is spread over [0.5, 1.5) times itself by a hash of the model id, so
        that models fed in lockstep (one row each every 5 minutes) do not all save in one cycle.
        """
        if not self.adaptive_full_saves:
            return journal_rows >= self.full_checkpoint_rows
        save_ms = self.full_save_ms.value or self.blob_load_ms.value
        interval = full_save_interval(self.row_ms.value, save_ms, self.full_checkpoint_rows)
        spread = 0.5 + (zlib.crc32(model_id.encode()) % 1000) / 1000.0
        return journal_rows >= min(self.full_checkpoint_rows, max(1, round(interval * spread)))

    @property
    def model_class(self) -> Any:
        if self._model_class is None:
            self._model_class = default_model_class()
        return self._model_class

    # --- serving ----------------------------------------------------------------------------------

    def serve(
        self,
        model_id: str,
        should_stop: Callable[[], bool],
        should_yield: Callable[[], bool] | None = None,
    ) -> ServeReport:
        """Run the model until its queue is empty or it is deleted; `should_stop()` (checked after
        each batch) ends it after the current batch, `should_yield()` (checked after each run)
        after the current run."""
        should_yield = should_yield if should_yield is not None else should_stop
        report = ServeReport(model_id)
        with self.checkpoints.model_lock(model_id):
            repaired = self.checkpoints.repair(model_id)
            if repaired:
                _log.warning(
                    "model %s: removed %d leftover(s) of interrupted saves", model_id, repaired
                )
            session = _Session(model_id)
            try:
                self._read_checkpoint(session)
                while True:
                    drained = self._run_once(session, should_stop, report)
                    report.runs += 1
                    if session.deleted:
                        report.deleted = True
                        break
                    if drained:
                        report.drained = True
                        break
                    if should_yield():
                        break
            except RetryLater as exc:
                report.retry = str(exc)
                _log.warning("model %s: run given back, to be retried: %s", model_id, exc)
            if session.deleted and report.retry is None:
                self.checkpoints.discard_lock(model_id)  # still held: see model_lock
        if report.skipped_rows:
            _log.info(
                "model %s: skipped %d input row(s) it had already run",
                model_id,
                report.skipped_rows,
            )
        return report

    def _retrying(self, what: str, model_id: str, operation: Callable[[], T]) -> T:
        """`operation()`, tried again on a transient fault; RetryLater once attempts run out."""
        try:
            return operation()  # the hot path, without the retry machinery (~0.1 ms a call)
        except TRANSIENT_FAULTS as exc:
            _log.warning(
                "%s of model %s failed (attempt 1 of %d): %r; retrying",
                what,
                model_id,
                TRANSIENT_ATTEMPTS,
                exc,
            )

        def before_sleep(state: tenacity.RetryCallState) -> None:
            _log.warning(
                "%s of model %s failed (attempt %d of %d): %r; retrying",
                what,
                model_id,
                state.attempt_number + 1,
                TRANSIENT_ATTEMPTS,
                state.outcome.exception() if state.outcome is not None else None,
            )

        retryer = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TRANSIENT_FAULTS),
            stop=tenacity.stop_after_attempt(TRANSIENT_ATTEMPTS - 1),
            wait=tenacity.wait_exponential(multiplier=self.transient_wait_sec * 2, max=2.0),
            before_sleep=before_sleep,
            reraise=True,
        )
        time.sleep(self.transient_wait_sec)
        try:
            return retryer(operation)
        except TRANSIENT_FAULTS as exc:
            raise RetryLater(error_message(what, model_id, exc)) from exc

    def _read_checkpoint(self, session: _Session) -> None:
        model_id = session.model_id
        try:
            checkpoint = self._retrying(
                "load checkpoint", model_id, lambda: self.checkpoints.load(model_id)
            )
        except ModelNotFound:
            checkpoint = None
        except RetryLater:
            raise
        except Exception as exc:  # a corrupt entry makes the model unusable, not the worker
            _log.exception("checkpoint of model %s is unreadable", model_id)
            session.unusable = error_message("load checkpoint", model_id, exc)
            return
        session.use_checkpoint(checkpoint)

    def _run_once(
        self, session: _Session, should_stop: Callable[[], bool], report: ServeReport
    ) -> bool:
        """One run: batches, results, checkpoint, acks. Returns True if the queue was drained."""
        model_id = session.model_id
        try:
            consumer = self.swapper.consumeRequests(model_id, blocking=False)
        except ModelNotFound:
            _log.info("input queue of model %s is gone; nothing to run", model_id)
            return True
        to_ack: list[RequestBatch] = []
        run_batch_ids: list[str] = []
        run_rows: list[InputRow] = []
        requests = 0
        drained = True
        try:
            with consumer:
                for batch in consumer:
                    to_ack.append(batch)
                    known = session.checkpoint.batch_ids if session.checkpoint else ()
                    if batch.batchID in known or batch.batchID in run_batch_ids:
                        report.duplicate_batches += 1
                        _log.info(
                            "skipping batch %s of model %s: already processed",
                            batch.batchID,
                            model_id,
                        )
                        continue
                    started, load_ms = time.perf_counter(), report.load_ms
                    results = self._process_batch(session, batch, run_rows, run_batch_ids, report)
                    if results:
                        self.swapper.submitResults(model_id, results)
                        fault_point("run.published", model_id)
                    load_sec = (report.load_ms - load_ms) / 1000.0
                    report.batch_seconds.append(time.perf_counter() - started - load_sec)
                    run_batch_ids.append(batch.batchID)
                    report.batches += 1
                    requests += len(batch.objects)
                    if (
                        session.deleted
                        or requests >= self.target_requests_per_checkpoint
                        or should_stop()
                    ):
                        drained = False
                        break
            for kind, count in consumer.guard.rejected.items():
                report.rejected[kind] = report.rejected.get(kind, 0) + count
            if run_batch_ids and not session.deleted:
                self._checkpoint(session, run_batch_ids, run_rows, report)
                fault_point("run.checkpointed", model_id)
        except RetryLater:
            # Nothing of this run is durable: its batches go back to the queue, in order, and
            # the model (which may have run some of them in memory) leaves with the session.
            for batch in to_ack:
                batch.nack(requeue=True)
            raise
        for batch in to_ack:
            batch.ack()
        if session.deleted and not self.swapper.cleanUpAfterModelDeletion(model_id):
            # Requests after the delete (``monitor --force``: unmonitor, then at once a new
            # defineModel and backlog): serve them as for a model not defined yet.
            _log.info("model %s: requests follow its deletion; serving them", model_id)
            session.deleted = False
        return drained

    def _process_batch(
        self,
        session: _Session,
        batch: RequestBatch,
        run_rows: list[InputRow],
        run_batch_ids: list[str],
        report: ServeReport,
    ) -> list:
        results: list = []
        for item in batch.objects:
            if isinstance(item, ModelCommand):
                results.append(self._command(session, item, run_rows, run_batch_ids, report))
                if session.deleted:
                    break
            elif isinstance(item, ModelInputRow):
                if session.last_rowid is not None and item.rowID <= session.last_rowid:
                    report.skipped_rows += 1
                    continue
                result = self._row(session, item, run_rows, report)
                results.append(result)
                report.rows += 1
                if result.status != exceptions.SUCCESS:
                    report.failed_rows += 1
        return results

    # --- rows -------------------------------------------------------------------------------------

    def _ensure_model(self, session: _Session, report: ServeReport) -> AnomalyModel | None:
        if session.model is not None or session.unusable is not None:
            return session.model
        checkpoint = session.checkpoint
        if checkpoint is None:
            return None
        started = time.perf_counter()

        def build() -> AnomalyModel:
            fault_point("model.build", session.model_id)
            if checkpoint.model_blob is not None:
                model = self.model_class.load(checkpoint.model_blob)
                self.blob_load_ms.add((time.perf_counter() - started) * 1000.0)
            else:
                model = self.model_class(checkpoint.definition["modelParams"]["modelConfig"])
            for timestamp, value in checkpoint.journal_rows:
                model.run(timestamp, value)
            return model

        try:
            model = self._retrying("load model", session.model_id, build)
        except RetryLater:
            raise
        except Exception as exc:  # the blob or the definition is not a model: permanent
            _log.exception("model %s cannot be loaded", session.model_id)
            session.unusable = error_message("load model", session.model_id, exc)
            return None
        session.model = model
        report.loads += 1
        report.replayed_rows += len(checkpoint.journal_rows)
        report.load_ms += (time.perf_counter() - started) * 1000.0
        return model

    def _row(
        self,
        session: _Session,
        row: ModelInputRow,
        run_rows: list[InputRow],
        report: ServeReport,
    ) -> ModelInferenceResult:
        model = self._ensure_model(session, report)
        if model is None:
            if session.unusable is not None:
                return ModelInferenceResult(
                    row.rowID, exceptions.ERR_MODEL_UNUSABLE, errorMessage=session.unusable
                )
            return ModelInferenceResult(
                row.rowID,
                exceptions.ERR_NO_SUCH_MODEL,
                errorMessage=f"model {session.model_id} is not defined (no checkpoint entry)",
            )
        assert session.checkpoint is not None
        try:
            timestamp_index, value_index = _row_layout(session.checkpoint.definition)
            timestamp = row.data[timestamp_index]
            value = float(row.data[value_index])
            if not isinstance(timestamp, datetime.datetime):
                raise ValueError(f"field {timestamp_index} is not a datetime: {timestamp!r}")
            started = time.perf_counter()
            score = float(model.run(timestamp, value))
            self.row_ms.add((time.perf_counter() - started) * 1000.0)
        except MemoryError as exc:
            # The model may be half-updated: not retried in place, the run is given back.
            raise RetryLater(error_message("run", session.model_id, exc)) from exc
        except Exception as exc:
            _log.warning("row %s of model %s failed: %r", row.rowID, session.model_id, exc)
            return ModelInferenceResult(
                row.rowID, exceptions.ERR, errorMessage=error_message("run", session.model_id, exc)
            )
        run_rows.append((timestamp, value))
        session.last_rowid = row.rowID
        return ModelInferenceResult(row.rowID, exceptions.SUCCESS, score)

    # --- commands ---------------------------------------------------------------------------------

    def _command(
        self,
        session: _Session,
        command: ModelCommand,
        run_rows: list[InputRow],
        run_batch_ids: list[str],
        report: ServeReport,
    ) -> ModelCommandResult:
        model_id = session.model_id
        method = command.method
        try:
            if method == "defineModel":
                return self._define(session, command)
            if method == "deleteModel":
                self._retrying(method, model_id, lambda: self.checkpoints.remove(model_id))
                session.deleted = True
                session.use_checkpoint(None)
                session.model = None
                session.unusable = None
                _log.info("deleted model %s", model_id)
                return ModelCommandResult(command.commandID, method, exceptions.SUCCESS)
            if method == "cloneModel":
                return self._clone(session, command, run_rows, run_batch_ids, report)
            return ModelCommandResult(
                command.commandID,
                method,
                exceptions.ERR_INVALID_ARG,
                errorMessage=f"unknown command {method!r} for model {model_id}",
            )
        except RetryLater:
            raise
        except Exception as exc:
            _log.exception("command %s of model %s failed", method, model_id)
            return ModelCommandResult(
                command.commandID,
                method,
                exceptions.ERR,
                errorMessage=error_message(method, model_id, exc),
            )

    def _define(self, session: _Session, command: ModelCommand) -> ModelCommandResult:
        try:
            definition = definition_from_args(command.args)
        except ValueError as exc:
            return ModelCommandResult(
                command.commandID,
                command.method,
                exceptions.ERR_INVALID_ARG,
                errorMessage=error_message(command.method, session.model_id, exc),
            )
        model_id = session.model_id
        try:
            created = self._retrying(
                command.method, model_id, lambda: self.checkpoints.define(model_id, definition)
            )
        except ModelAlreadyExists as exc:
            return ModelCommandResult(
                command.commandID,
                command.method,
                exceptions.ERR_MODEL_ALREADY_EXISTS,
                errorMessage=error_message(command.method, session.model_id, exc),
            )
        if created or session.checkpoint is None:
            session.use_checkpoint(
                self._retrying("load checkpoint", model_id, lambda: self.checkpoints.load(model_id))
            )
            session.model = None
            session.unusable = None
        _log.info("defined model %s (%s)", session.model_id, "new" if created else "unchanged")
        return ModelCommandResult(command.commandID, command.method, exceptions.SUCCESS)

    def _clone(
        self,
        session: _Session,
        command: ModelCommand,
        run_rows: list[InputRow],
        run_batch_ids: list[str],
        report: ServeReport,
    ) -> ModelCommandResult:
        new_model_id = (command.args or {}).get("modelID")
        if not isinstance(new_model_id, str) or not new_model_id:
            return ModelCommandResult(
                command.commandID,
                command.method,
                exceptions.ERR_INVALID_ARG,
                errorMessage=f"cloneModel of {session.model_id} needs args {{'modelID': <new id>}}",
            )
        if session.checkpoint is None:
            return ModelCommandResult(
                command.commandID,
                command.method,
                exceptions.ERR_NO_SUCH_MODEL,
                errorMessage=f"cloneModel: source model {session.model_id} does not exist",
            )
        # The copy must include the rows this run already processed: checkpoint them first.
        if run_batch_ids:
            self._checkpoint(session, list(run_batch_ids), list(run_rows), report)
            run_rows.clear()
            run_batch_ids.clear()
        try:
            self._retrying(
                command.method,
                session.model_id,
                lambda: self.checkpoints.clone(session.model_id, new_model_id),
            )
        except ModelAlreadyExists:
            _log.info("cloneModel: %s already exists; treating as done", new_model_id)
        return ModelCommandResult(command.commandID, command.method, exceptions.SUCCESS)

    # --- checkpoint -------------------------------------------------------------------------------

    def _checkpoint(
        self,
        session: _Session,
        batch_ids: list[str],
        rows: list[InputRow],
        report: ServeReport,
    ) -> None:
        checkpoint = session.checkpoint
        if checkpoint is None or session.unusable is not None:
            return  # nothing to fold the batches into: an undefined or unusable model
        started = time.perf_counter()
        journal_rows = len(checkpoint.journal_rows) + len(rows)
        model = session.model
        if model is not None and self.full_save_due(journal_rows, session.model_id):
            written = self._retrying(
                "save checkpoint",
                session.model_id,
                lambda: self.checkpoints.save_full(
                    checkpoint, model.save(), batch_ids, session.last_rowid
                ),
            )
            self.full_save_ms.add((time.perf_counter() - started) * 1000.0)
            report.full_saves += 1
            report.full_save_bytes += written
        else:
            written = self._retrying(
                "save checkpoint",
                session.model_id,
                lambda: self.checkpoints.append(checkpoint, batch_ids, rows, session.last_rowid),
            )
            report.incremental_saves += 1
            report.incremental_save_bytes += written
        report.save_ms += (time.perf_counter() - started) * 1000.0
