"""The model swapper's wire format and queues: how apps talk to models and how models answer.

Everything here is shared by the metric streamer and the datasource adapter (they submit requests), the
model runner (it consumes requests and submits results) and the anomaly service (it consumes results).
The byte layout is the original's, so messages left in a broker by either implementation decode in the
other:

* request message: ``<batchID>\\n<JSON array of item states>`` (batch id = ``uuid1().hex``);
* result message: ``<modelID>\\n<JSON array of item states>``;
* item state: a JSON array whose first element is a type tag:

  ======  ====================  =====================================================================
  tag     class                 remaining elements
  ======  ====================  =====================================================================
  mc      ModelCommand          commandID, method, args (dict or null)
  i       ModelInputRow         rowID, data list, indexes of datetime fields in data
  mcR     ModelCommandResult    commandID, method, status, args, errorMessage
  iRv2    ModelInferenceResult  rowID, status, anomalyScore, errorMessage, multiStepBestPredictions
  iR      (legacy)              rowID, status, anomalyScore, errorMessage (decoded with predictions null)
  ======  ====================  =====================================================================

  A datetime in an input row is ``[int epoch seconds, microseconds]`` (naive UTC).

Queues (names from model-swapper.conf ``[interface_bus]``): one durable input queue per model,
``<model_input_queue_prefix><modelID>``; one durable results queue; one non-durable scheduler
notification queue that carries a JSON string model id per submitted batch.
"""

from __future__ import annotations

import calendar
import datetime
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from htmengine.config import Config, get_model_swapper_config
from htmengine.exceptions import MessageQueueNotFound, ModelNotFound

__all__ = [
    "ModelCommand",
    "ModelCommandResult",
    "ModelInferenceResult",
    "ModelInputRow",
    "ModelNotFound",
    "ModelSwapperInterface",
    "RequestBatch",
    "ResultBatch",
    "SchedulerNotification",
    "WireFormatError",
    "decode_request_message",
    "decode_result_message",
    "encode_request_message",
    "encode_result_message",
]

_log = logging.getLogger("htmengine.model_swapper.interface")

_EPOCH = datetime.datetime(1970, 1, 1)

# Publishes of a model start tried on a freshly declared input queue (see `startModel`).
_START_ATTEMPTS = 5

# commandID suffix of the deleteModel that begins a model start (see `startModel`).
START_RESET_SUFFIX = ".reset"


def is_start_reset(command_id: Any) -> bool:
    """True for the commandID of the deleteModel that `ModelSwapperInterface.startModel` puts
    before a defineModel (not an application's deleteModel)."""
    return isinstance(command_id, str) and command_id.endswith(START_RESET_SUFFIX)


class WireFormatError(ValueError):
    """A message or item state that does not follow the wire format."""


# --------------------------------------------------------------------------------------------------
# Items


@dataclass(eq=True)
class ModelCommand:
    """A command for a model: ``defineModel``, ``deleteModel`` or ``cloneModel``."""

    commandID: Any
    method: str
    args: dict | None = None

    TAG = "mc"

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise WireFormatError(f"ModelCommand method must be a string, got {self.method!r}")
        if self.args is not None and not isinstance(self.args, dict):
            raise WireFormatError(f"ModelCommand args must be a dict or None, got {self.args!r}")

    def to_state(self) -> list:
        return [self.TAG, self.commandID, self.method, self.args]


@dataclass(eq=True)
class ModelInputRow:
    """One input record for a model: its metric_data rowid and field values (datetime, value)."""

    rowID: Any
    data: list

    TAG = "i"

    def __post_init__(self) -> None:
        if not isinstance(self.data, (list, tuple)) or not self.data:
            raise WireFormatError(f"ModelInputRow data must be a non-empty list, got {self.data!r}")

    def to_state(self) -> list:
        encoded = []
        datetime_indexes = []
        for index, value in enumerate(self.data):
            if isinstance(value, datetime.datetime):
                value = encode_datetime(value)
                datetime_indexes.append(index)
            encoded.append(value)
        return [self.TAG, self.rowID, encoded, datetime_indexes]


@dataclass(eq=True)
class ModelCommandResult:
    """The outcome of a ModelCommand: status 0 with optional args, or an error code and message."""

    commandID: Any
    method: str
    status: int
    args: dict | None = None
    errorMessage: str | None = None

    TAG = "mcR"

    def __post_init__(self) -> None:
        if not isinstance(self.status, int):
            raise WireFormatError(f"ModelCommandResult status must be an int, got {self.status!r}")
        if self.status == 0 and self.errorMessage is not None:
            raise WireFormatError("ModelCommandResult with status 0 cannot carry an errorMessage")
        if self.status != 0 and not isinstance(self.errorMessage, str):
            raise WireFormatError("ModelCommandResult with a non-zero status needs an errorMessage")
        if self.status != 0 and self.args is not None:
            raise WireFormatError("ModelCommandResult with a non-zero status cannot carry args")

    def to_state(self) -> list:
        return [self.TAG, self.commandID, self.method, self.status, self.args, self.errorMessage]


@dataclass(eq=True)
class ModelInferenceResult:
    """The outcome of one ModelInputRow: a raw anomaly score, or an error code and message."""

    rowID: Any
    status: int
    anomalyScore: float | None = None
    errorMessage: str | None = None
    multiStepBestPredictions: dict | None = None

    TAG = "iRv2"
    LEGACY_TAG = "iR"

    def __post_init__(self) -> None:
        if not isinstance(self.status, int):
            raise WireFormatError(
                f"ModelInferenceResult status must be an int, got {self.status!r}"
            )
        if self.status == 0:
            if not isinstance(self.anomalyScore, (int, float)) or isinstance(
                self.anomalyScore, bool
            ):
                raise WireFormatError(
                    f"ModelInferenceResult with status 0 needs a numeric anomalyScore, "
                    f"got {self.anomalyScore!r}"
                )
            if self.errorMessage is not None:
                raise WireFormatError("ModelInferenceResult with status 0 cannot carry an error")
        elif not isinstance(self.errorMessage, str):
            raise WireFormatError(
                "ModelInferenceResult with a non-zero status needs an errorMessage"
            )

    def to_state(self) -> list:
        return [
            self.TAG,
            self.rowID,
            self.status,
            self.anomalyScore,
            self.errorMessage,
            self.multiStepBestPredictions,
        ]


RequestItem = ModelCommand | ModelInputRow
ResultItem = ModelCommandResult | ModelInferenceResult


def encode_datetime(value: datetime.datetime) -> list[int]:
    """A naive-UTC datetime as ``[int epoch seconds, microseconds]`` (lossless)."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return [calendar.timegm(value.utctimetuple()), value.microsecond]


def decode_datetime(state: Sequence[int]) -> datetime.datetime:
    """Inverse of encode_datetime."""
    try:
        seconds, microseconds = state
        return _EPOCH + datetime.timedelta(seconds=int(seconds), microseconds=int(microseconds))
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireFormatError(f"bad datetime state {state!r}: {exc}") from exc


def _item_from_state(state: Any) -> RequestItem | ResultItem:
    if not isinstance(state, list) or not state:
        raise WireFormatError(f"item state must be a non-empty JSON array, got {state!r}")
    tag, rest = state[0], state[1:]
    try:
        if tag == ModelInputRow.TAG:
            row_id, data, datetime_indexes = rest
            if not isinstance(data, list):
                raise WireFormatError(f"input row data must be an array, got {data!r}")
            for index in datetime_indexes:
                data[index] = decode_datetime(data[index])
            return ModelInputRow(row_id, data)
        if tag == ModelCommand.TAG:
            command_id, method, args = rest
            return ModelCommand(command_id, method, args)
        if tag == ModelInferenceResult.TAG:
            row_id, status, score, error, predictions = rest
            return ModelInferenceResult(row_id, status, score, error, predictions)
        if tag == ModelInferenceResult.LEGACY_TAG:
            row_id, status, score, error = rest
            return ModelInferenceResult(row_id, status, score, error, None)
        if tag == ModelCommandResult.TAG:
            command_id, method, status, args, error = rest
            return ModelCommandResult(command_id, method, status, args, error)
    except (ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, WireFormatError):
            raise
        raise WireFormatError(f"malformed {tag!r} item state {state!r}: {exc}") from exc
    raise WireFormatError(f"unknown item tag {tag!r} in {state!r}")


def encode_batch(items: Sequence[RequestItem | ResultItem]) -> str:
    """The JSON array of item states (the original's ``json.dumps`` layout: ``", "`` separators)."""
    return json.dumps([item.to_state() for item in items])


def decode_batch(text: str) -> tuple[RequestItem | ResultItem, ...]:
    """Inverse of encode_batch, preserving order."""
    try:
        states = json.loads(text)
    except ValueError as exc:
        raise WireFormatError(f"batch is not JSON: {exc}") from exc
    if not isinstance(states, list):
        raise WireFormatError(f"batch must be a JSON array, got {type(states).__name__}")
    return tuple(_item_from_state(state) for state in states)


def _split_header(body: bytes | str, what: str) -> tuple[str, str]:
    text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    header, sep, rest = text.partition("\n")
    if not sep:
        raise WireFormatError(f"{what} message has no header line: {text[:80]!r}")
    return header, rest


def encode_request_message(batch_id: str, requests: Sequence[RequestItem]) -> bytes:
    """``<batchID>\\n<JSON array>`` as UTF-8."""
    if "\n" in batch_id:
        raise WireFormatError(f"batch id must not contain a newline: {batch_id!r}")
    return (batch_id + "\n" + encode_batch(requests)).encode("utf-8")


def decode_request_message(body: bytes | str) -> tuple[str, tuple[RequestItem, ...]]:
    """(batch id, request items) of a request message."""
    batch_id, batch = _split_header(body, "request")
    items = decode_batch(batch)
    for item in items:
        if not isinstance(item, (ModelCommand, ModelInputRow)):
            raise WireFormatError(f"request batch {batch_id} holds a result item {item!r}")
    return batch_id, items  # type: ignore[return-value]


def encode_result_message(model_id: str, results: Sequence[ResultItem]) -> bytes:
    """``<modelID>\\n<JSON array>`` as UTF-8."""
    if "\n" in model_id:
        raise WireFormatError(f"model id must not contain a newline: {model_id!r}")
    return (model_id + "\n" + encode_batch(results)).encode("utf-8")


def decode_result_message(body: bytes | str) -> tuple[str, tuple[ResultItem, ...]]:
    """(model id, result items) of a result message."""
    model_id, batch = _split_header(body, "result")
    items = decode_batch(batch)
    for item in items:
        if not isinstance(item, (ModelCommandResult, ModelInferenceResult)):
            raise WireFormatError(f"result batch of model {model_id} holds a request {item!r}")
    return model_id, items  # type: ignore[return-value]


def new_batch_id() -> str:
    """A request batch id, as the original made them (time-based uuid, hex)."""
    return uuid.uuid1().hex


# --------------------------------------------------------------------------------------------------
# Consumed batches


def _no_ack() -> None:
    return None


@dataclass
class RequestBatch:
    """A consumed request message; call ``ack()`` once its effect is durable (checkpointed)."""

    batchID: str
    objects: tuple[RequestItem, ...]
    ack: Callable[[], None] = field(default=_no_ack, repr=False, compare=False)
    nack: Callable[..., None] = field(default=_no_ack, repr=False, compare=False)
    redelivered: bool = False


@dataclass
class ResultBatch:
    """A consumed result message; call ``ack()`` once its effect is durable (committed)."""

    modelID: str
    objects: tuple[ResultItem, ...]
    ack: Callable[[], None] = field(default=_no_ack, repr=False, compare=False)
    nack: Callable[..., None] = field(default=_no_ack, repr=False, compare=False)
    redelivered: bool = False


@dataclass
class SchedulerNotification:
    """A "model M has new input" ping for the model scheduler."""

    modelID: str
    ack: Callable[[], None] = field(default=_no_ack, repr=False, compare=False)


class _Consumer:
    """An iterator over decoded messages of one queue; a context manager that closes the consumer.

    Blocking consumers run until closed; with ``inactivity_timeout`` they yield ``None`` whenever
    nothing arrived for that many seconds, so the caller can check a stop flag. Non-blocking
    consumers (``blocking=False``) end when the queue is empty.
    """

    def __init__(
        self,
        messages: Iterator[Any],
        decode: Callable[[Any], Any],
        *,
        stop_on_idle: bool,
    ) -> None:
        self._messages = messages
        self._decode = decode
        self._stop_on_idle = stop_on_idle
        self._closed = False

    def __iter__(self) -> _Consumer:
        return self

    def __next__(self) -> Any:
        while not self._closed:
            message = next(self._messages)
            if message is None:
                if self._stop_on_idle:
                    self.close()
                    break
                return None
            try:
                return self._decode(message)
            except WireFormatError as exc:
                # A message no reader can understand would block its queue forever: dead-letter it.
                _log.error("rejecting undecodable message (%s): %r", exc, bytes(message.body[:200]))
                message.nack(requeue=False)
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._messages, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> _Consumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _polling_messages(bus: Any, queue: str) -> Iterator[Any]:
    """basic.get until the queue is empty, then one None."""
    while True:
        message = bus.get(queue)
        yield message
        if message is None:
            return


# --------------------------------------------------------------------------------------------------
# The interface


class ModelSwapperInterface:
    """The app-side and runner-side API of the model swapper (the original's method names).

    One instance owns one broker connection (a MessageBus), so use one per process or thread; it is
    a context manager that closes the connection. Method names follow the original so apps keep
    working; snake_case aliases exist for new code.
    """

    CONFIG_SECTION = "interface_bus"

    def __init__(self, bus: Any | None = None, config: Config | None = None) -> None:
        config = config if config is not None else get_model_swapper_config()
        self.results_queue = config.get(self.CONFIG_SECTION, "results_queue")
        self.model_input_queue_prefix = config.get(self.CONFIG_SECTION, "model_input_queue_prefix")
        self.scheduler_notification_queue = config.get(
            self.CONFIG_SECTION, "scheduler_notification_queue"
        )
        self._bus = bus
        self._owns_bus = bus is None

    @property
    def bus(self) -> Any:
        """The MessageBus, connected on first use (a forked or spawned process builds its own)."""
        if self._bus is None:
            from htmengine.bus import MessageBus

            self._bus = MessageBus()
        return self._bus

    def close(self) -> None:
        if self._bus is not None and self._owns_bus:
            close = getattr(self._bus, "close", None)
            if close is not None:
                close()
            self._bus = None

    def __enter__(self) -> ModelSwapperInterface:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- names ------------------------------------------------------------------------------------

    def model_input_queue(self, model_id: str) -> str:
        """``<model_input_queue_prefix><modelID>``."""
        return self.model_input_queue_prefix + model_id

    def model_id_from_queue(self, queue: str) -> str:
        if not queue.startswith(self.model_input_queue_prefix):
            raise ValueError(f"{queue!r} is not a model input queue")
        return queue[len(self.model_input_queue_prefix) :]

    # --- app side ---------------------------------------------------------------------------------

    def defineModel(self, modelID: str, args: dict, commandID: Any) -> str:
        """Create the model's input queue and submit ``defineModel`` (result arrives asynchronously).

        ``args``: ``{"modelConfig": ..., "inferenceArgs": ..., "inputRecordSchema": [...]}``.
        """
        self.bus.declare_queue(self.model_input_queue(modelID), durable=True)
        return self.submitRequests(modelID, (ModelCommand(commandID, "defineModel", args),))

    def startModel(
        self,
        modelID: str,
        args: dict,
        commandID: Any,
        backlog: Sequence[ModelInputRow],
        chunkSize: int,
    ) -> None:
        """Give the model a fresh start: ``deleteModel`` (no checkpoint a lost delete left behind
        is reused), ``defineModel`` and the backlog in batches of at most `chunkSize` rows, all
        enqueued in ONE broker transaction (nothing can slip between them), then ping the scheduler.

        The runner deletes an input queue that is empty after a deleteModel
        (`cleanUpAfterModelDeletion`), so the queue declared here can vanish before the publish
        (``monitor --force`` right after an unmonitor); nothing was enqueued then, and the queue is
        declared and the publish repeated. Raises ModelNotFound if that keeps happening.

        The deleteModel's commandID is `commandID` + `START_RESET_SUFFIX` (`is_start_reset`), so
        that its result can be told from an application's deleteModel.
        """
        if chunkSize < 1:
            raise ValueError(f"chunkSize must be >= 1, got {chunkSize}")
        bodies = [
            encode_request_message(
                new_batch_id(), [ModelCommand(f"{commandID}{START_RESET_SUFFIX}", "deleteModel")]
            ),
            encode_request_message(new_batch_id(), [ModelCommand(commandID, "defineModel", args)]),
        ]
        bodies.extend(
            encode_request_message(new_batch_id(), backlog[start : start + chunkSize])
            for start in range(0, len(backlog), chunkSize)
        )
        queue = self.model_input_queue(modelID)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.bus.declare_queue(queue, durable=True)
            try:
                self.bus.publish_many(queue, bodies, persistent=True)
                break
            except MessageQueueNotFound as exc:
                _log.info(
                    "input queue %s vanished before the model start (attempt %d)", queue, attempt
                )
                if attempt == _START_ATTEMPTS:
                    raise ModelNotFound(
                        f"input queue {queue} of model {modelID} kept vanishing; start not submitted"
                    ) from exc
        self.notifyScheduler(modelID)

    def cloneModel(self, modelID: str, newModelID: str, commandID: Any) -> str:
        """Create the new model's input queue and ask the source model to copy itself there.

        Raises ModelNotFound if the source model's input queue does not exist.
        """
        self.bus.declare_queue(self.model_input_queue(newModelID), durable=True)
        command = ModelCommand(commandID, "cloneModel", {"modelID": newModelID})
        return self.submitRequests(modelID, (command,))

    def deleteModel(self, modelID: str, commandID: Any) -> None:
        """Purge the model's pending input and submit ``deleteModel``; idempotent."""
        queue = self.model_input_queue(modelID)
        try:
            self.bus.purge_queue(queue)
            self.submitRequests(modelID, (ModelCommand(commandID, "deleteModel"),))
        except (MessageQueueNotFound, ModelNotFound):
            _log.info(
                "deleteModel: input queue %s is gone; model %s already deleted", queue, modelID
            )

    def submitRequests(self, modelID: str, requests: Sequence[RequestItem]) -> str:
        """Publish one request batch to the model's queue and ping the scheduler; returns the batch id.

        Raises ModelNotFound when the model's input queue does not exist (deleted or never defined).
        """
        batch_id = new_batch_id()
        body = encode_request_message(batch_id, requests)
        queue = self.model_input_queue(modelID)
        try:
            self.bus.publish(queue, body, persistent=True)
        except MessageQueueNotFound as exc:
            raise ModelNotFound(
                f"input queue {queue} of model {modelID} does not exist (model deleted or "
                f"never defined); {len(requests)} request(s) not submitted"
            ) from exc
        self.notifyScheduler(modelID)
        return batch_id

    def notifyScheduler(self, modelID: str) -> None:
        """Tell the model scheduler that the model has input (lost if the scheduler is not up yet;
        it discovers backlogs at start-up)."""
        try:
            self.bus.publish(
                self.scheduler_notification_queue,
                json.dumps(modelID).encode("utf-8"),
                persistent=False,
            )
        except MessageQueueNotFound:
            _log.warning(
                "scheduler notification queue %s not found (model scheduler not started yet?)",
                self.scheduler_notification_queue,
            )

    def modelInputPending(self, modelID: str) -> bool:
        """True if the model's input queue exists and holds messages (ready ones; unacked don't count)."""
        try:
            return self.bus.declare_queue(self.model_input_queue(modelID), passive=True) > 0
        except MessageQueueNotFound:
            return False

    def cleanUpAfterModelDeletion(self, modelID: str) -> bool:
        """Delete the model's input queue unless requests wait in it; True if it is gone.

        The runner calls it after deleting the model. Requests published after the delete (a new
        defineModel, say) keep the queue, atomically, and the runner serves them.
        """
        return self.bus.delete_queue(self.model_input_queue(modelID), if_empty=True) is not None

    # --- runner side ------------------------------------------------------------------------------

    def consumeRequests(
        self, modelID: str, blocking: bool = True, *, prefetch: int = 50
    ) -> _Consumer:
        """Iterate over the model's request batches (RequestBatch, in queue order).

        Non-blocking: polls with basic.get and ends when the queue is empty. Raises ModelNotFound if
        the input queue does not exist.
        """
        queue = self.model_input_queue(modelID)
        try:
            self.bus.declare_queue(queue, passive=True)
        except MessageQueueNotFound as exc:
            raise ModelNotFound(f"input queue {queue} of model {modelID} does not exist") from exc
        if blocking:
            messages = self.bus.consume(queue, prefetch=prefetch)
        else:
            messages = _polling_messages(self.bus, queue)
        return _Consumer(messages, _request_batch_from_message, stop_on_idle=not blocking)

    def submitResults(self, modelID: str, results: Sequence[ResultItem]) -> None:
        """Publish one persistent result batch (declaring the results queue if it is missing)."""
        body = encode_result_message(modelID, results)
        try:
            self.bus.publish(self.results_queue, body, persistent=True)
        except MessageQueueNotFound:
            _log.info("results queue %s did not exist; declaring it", self.results_queue)
            self.bus.declare_queue(self.results_queue, durable=True)
            self.bus.publish(self.results_queue, body, persistent=True)

    # --- anomaly service side ---------------------------------------------------------------------

    def consumeResults(
        self, *, prefetch: int = 50, inactivity_timeout: float | None = None
    ) -> _Consumer:
        """Iterate over result batches (ResultBatch) forever; ``None`` on inactivity if a timeout
        is given."""
        self.bus.declare_queue(self.results_queue, durable=True)
        messages = self.bus.consume(
            self.results_queue, prefetch=prefetch, inactivity_timeout=inactivity_timeout
        )
        return _Consumer(messages, _result_batch_from_message, stop_on_idle=False)

    # --- scheduler side ---------------------------------------------------------------------------

    def initSchedulerNotification(self) -> None:
        """Declare the (non-durable) scheduler notification queue."""
        self.bus.declare_queue(self.scheduler_notification_queue, durable=False)

    def consumeModelSchedulerNotifications(
        self, *, prefetch: int = 50, inactivity_timeout: float | None = None
    ) -> _Consumer:
        """Iterate over scheduler notifications (SchedulerNotification); ``None`` on inactivity."""
        self.initSchedulerNotification()
        messages = self.bus.consume(
            self.scheduler_notification_queue,
            prefetch=prefetch,
            inactivity_timeout=inactivity_timeout,
        )
        return _Consumer(messages, _notification_from_message, stop_on_idle=False)

    # snake_case aliases for new code
    define_model = defineModel
    clone_model = cloneModel
    delete_model = deleteModel
    submit_requests = submitRequests
    submit_results = submitResults
    notify_scheduler = notifyScheduler
    model_input_pending = modelInputPending
    clean_up_after_model_deletion = cleanUpAfterModelDeletion
    consume_requests = consumeRequests
    consume_results = consumeResults
    consume_model_scheduler_notifications = consumeModelSchedulerNotifications
    init_scheduler_notification = initSchedulerNotification


def _request_batch_from_message(message: Any) -> RequestBatch:
    batch_id, items = decode_request_message(message.body)
    return RequestBatch(
        batch_id,
        items,
        ack=message.ack,
        nack=message.nack,
        redelivered=bool(getattr(message, "redelivered", False)),
    )


def _result_batch_from_message(message: Any) -> ResultBatch:
    model_id, items = decode_result_message(message.body)
    return ResultBatch(
        model_id,
        items,
        ack=message.ack,
        nack=message.nack,
        redelivered=bool(getattr(message, "redelivered", False)),
    )


def _notification_from_message(message: Any) -> SchedulerNotification:
    try:
        model_id = json.loads(message.body)
    except ValueError as exc:
        raise WireFormatError(f"scheduler notification is not JSON: {message.body[:80]!r}") from exc
    if not isinstance(model_id, str):
        raise WireFormatError(f"scheduler notification must be a JSON string, got {model_id!r}")
    return SchedulerNotification(model_id, ack=message.ack)
