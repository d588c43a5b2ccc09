"""The model swapper's queues and API: how apps talk to models and how models answer.

Shared by the storer's forwarding and the datasource adapter (they submit requests), the model runner
(it consumes requests and submits results) and the anomaly service (it consumes results). The wire
format (the original's byte layout: ``<batchID or modelID>\\n<JSON array of item states>``)
lives in `htmengine.protocol.model_swapper` and is re-exported here, so old imports keep working.

Queues (names from model-swapper.conf ``[interface_bus]``): one durable input queue per model,
``<model_input_queue_prefix><modelID>``; one durable results queue; one non-durable scheduler
notification queue that carries a JSON string model id per submitted batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from htmengine.bus import PoisonGuard
from htmengine.config import Config, get_model_swapper_config
from htmengine.exceptions import MessageQueueNotFound, ModelNotFound
from htmengine.protocol.model_swapper import (
    ModelCommand,
    ModelCommandResult,
    ModelInferenceResult,
    ModelInputRow,
    RequestItem,
    ResultItem,
    WireFormatError,
    decode_batch,
    decode_datetime,
    decode_notification,
    decode_request_message,
    decode_result_message,
    encode_batch,
    encode_datetime,
    encode_notification,
    encode_request_message,
    encode_result_message,
    new_batch_id,
)

__all__ = [
    "DecodingConsumer",
    "ModelCommand",
    "ModelCommandResult",
    "ModelInferenceResult",
    "ModelInputRow",
    "ModelNotFound",
    "ModelSwapperInterface",
    "RequestBatch",
    "RequestItem",
    "ResultBatch",
    "ResultItem",
    "SchedulerNotification",
    "WireFormatError",
    "decode_batch",
    "decode_datetime",
    "decode_notification",
    "decode_request_message",
    "decode_result_message",
    "encode_batch",
    "encode_datetime",
    "encode_notification",
    "encode_request_message",
    "encode_result_message",
    "new_batch_id",
]

_log = logging.getLogger("htmengine.model_swapper.interface")

# Publishes of a model start tried on a freshly declared input queue (see `startModel`).
_START_ATTEMPTS = 5

# commandID suffix of the deleteModel that begins a model start (see `startModel`).
START_RESET_SUFFIX = ".reset"


def is_start_reset(command_id: Any) -> bool:
    """True for the commandID of the deleteModel that `ModelSwapperInterface.startModel` puts
    before a defineModel (not an application's deleteModel)."""
    return isinstance(command_id, str) and command_id.endswith(START_RESET_SUFFIX)


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
    """A consumed result message; call ``ack()`` once its effect is durable (committed).

    `message` is the bus message it came from (for `PoisonGuard.reject` when it cannot be
    processed).
    """

    modelID: str
    objects: tuple[ResultItem, ...]
    ack: Callable[[], None] = field(default=_no_ack, repr=False, compare=False)
    nack: Callable[..., None] = field(default=_no_ack, repr=False, compare=False)
    redelivered: bool = False
    message: Any = field(default=None, repr=False, compare=False)


@dataclass
class SchedulerNotification:
    """A "model M has new input" ping for the model scheduler."""

    modelID: str
    ack: Callable[[], None] = field(default=_no_ack, repr=False, compare=False)


class DecodingConsumer:
    """An iterator over decoded messages of one queue; a context manager that closes the consumer.

    Blocking consumers run until closed; with ``inactivity_timeout`` they yield ``None`` whenever
    nothing arrived for that many seconds, so the caller can check a stop flag. Non-blocking
    consumers (``blocking=False``) end when the queue is empty. Every message is decoded inside
    `guard` (the bus's poison policy): one that cannot be decoded is dead-lettered and skipped
    (`guard.rejected` counts them).
    """

    def __init__(
        self,
        messages: Iterator[Any],
        decode: Callable[[Any], Any],
        *,
        stop_on_idle: bool,
        guard: PoisonGuard | None = None,
    ) -> None:
        self._messages = messages
        self._decode = decode
        self._stop_on_idle = stop_on_idle
        self._closed = False
        self.guard = guard if guard is not None else PoisonGuard(_log)

    def __iter__(self) -> DecodingConsumer:
        return self

    def __next__(self) -> Any:
        while not self._closed:
            message = next(self._messages)
            if message is None:
                if self._stop_on_idle:
                    self.close()
                    break
                return None
            decoded = self.guard.decode(message, lambda _body, m=message: self._decode(m))
            if decoded is not None:
                return decoded
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._messages, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> DecodingConsumer:
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
    working.
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
                self.scheduler_notification_queue, encode_notification(modelID), persistent=False
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
        self,
        modelID: str,
        blocking: bool = True,
        *,
        prefetch: int = 50,
        guard: PoisonGuard | None = None,
    ) -> DecodingConsumer:
        """Iterate over the model's request batches (RequestBatch, in queue order).

        Non-blocking: polls with basic.get and ends when the queue is empty. Raises ModelNotFound if
        the input queue does not exist. Undecodable messages are dead-lettered by `guard`.
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
        return DecodingConsumer(
            messages, _request_batch_from_message, stop_on_idle=not blocking, guard=guard
        )

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
        self,
        *,
        prefetch: int = 50,
        inactivity_timeout: float | None = None,
        guard: PoisonGuard | None = None,
    ) -> DecodingConsumer:
        """Iterate over result batches (ResultBatch) forever; ``None`` on inactivity if a timeout
        is given. Undecodable messages are dead-lettered by `guard`."""
        self.bus.declare_queue(self.results_queue, durable=True)
        messages = self.bus.consume(
            self.results_queue, prefetch=prefetch, inactivity_timeout=inactivity_timeout
        )
        return DecodingConsumer(
            messages, _result_batch_from_message, stop_on_idle=False, guard=guard
        )

    # --- scheduler side ---------------------------------------------------------------------------

    def initSchedulerNotification(self) -> None:
        """Declare the (non-durable) scheduler notification queue."""
        self.bus.declare_queue(self.scheduler_notification_queue, durable=False)

    def consumeModelSchedulerNotifications(
        self,
        *,
        prefetch: int = 50,
        inactivity_timeout: float | None = None,
        guard: PoisonGuard | None = None,
    ) -> DecodingConsumer:
        """Iterate over scheduler notifications (SchedulerNotification); ``None`` on inactivity.
        Undecodable messages are dead-lettered by `guard`."""
        self.initSchedulerNotification()
        messages = self.bus.consume(
            self.scheduler_notification_queue,
            prefetch=prefetch,
            inactivity_timeout=inactivity_timeout,
        )
        return DecodingConsumer(
            messages, _notification_from_message, stop_on_idle=False, guard=guard
        )


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
        message=message,
    )


def _notification_from_message(message: Any) -> SchedulerNotification:
    return SchedulerNotification(decode_notification(message.body), ack=message.ack)
