"""SwapController: decides which model runs in which slot (one event loop, one thread).

Events come from a thread-safe queue:

* ``("input", model_id)`` — the model has new input (a scheduler notification or the start-up
  backlog discovery); ignored while the model waits for a retry. A running model only gets its activity time refreshed; a model already
  waiting stays where it is; otherwise the model takes a free slot, or joins the FIFO of waiting
  models and may trigger a preemption.
* ``("ready", slot, pid)`` — a slot's worker is up (at start-up and after a restart): the slot is
  free.
* ``("done", slot, seq, report)`` — the model left the slot: its queue was drained, it was deleted,
  or it was preempted. If it was not drained, or input arrived while it ran and its queue is still
  non-empty, it goes back to the waiting FIFO. If the report has a ``retry`` reason (a transient
  fault outlasted the runner's retries; its run was put back into the queue), the model is retried
  after a delay instead.
* ``("failed", slot, seq, model_id, error)`` / ``("died", slot, exitcode)`` — the worker failed or
  died; its unacked input goes back to the queue when its broker connection closes. The model is
  retried after a delay (so the broker has requeued that input before anyone reads the queue again;
  otherwise a later batch could be run first) and the slot is down until its new worker is ready.

* ``("retry", model_id)`` — a model's retry delay is over: as ``input``.

Retry delays grow per model: ``retry_delay`` doubled for each consecutive failure of the model, up
to RETRY_DELAY_MAX_SEC; a run that ends without one resets it.

Preemption (LRU): while waiting models outnumber pending preemptions and some running model is not
yet being preempted, the running model with the oldest activity is asked to leave at the end of its
current run (a run is up to ``target_requests_per_checkpoint`` requests, so a swap is amortised over
a run, as in the original).

Stop: notifications stop; waiting models are forgotten (their queues are found again at the next
start); running models are halted after their current batch (checkpoint, ack); when no slot is busy,
the workers are closed and the loop ends.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from htmengine.exceptions import MessageQueueNotFound
from htmengine.model_swapper.slot_agent import SlotAgent, WorkerSettings

_log = logging.getLogger("htmengine.model_swapper.swap_controller")

# Delay before retrying a model whose worker failed or died (lets the broker requeue its input),
# or whose run met a transient fault; doubled per consecutive failure of the model, up to the max.
RETRY_DELAY_SEC = 2.0
RETRY_DELAY_MAX_SEC = 60.0
# Notification reader: seconds between checks of the stop flag.
_POLL_SEC = 1.0
# Backlog discovery: retry delay bounds when the database or broker is unreachable.
_DISCOVERY_RETRY_MIN_SEC = 1.0
_DISCOVERY_RETRY_MAX_SEC = 30.0


class Slot(Protocol):
    """What the controller needs of a slot (SlotAgent; tests may substitute their own)."""

    index: int

    def start(self) -> None: ...

    def run_model(self, seq: int, model_id: str) -> bool: ...

    def preempt(self, seq: int) -> None: ...

    def halt(self, seq: int) -> None: ...

    def close(self, timeout: float = ...) -> None: ...


class SlotState(enum.Enum):
    DOWN = "down"
    FREE = "free"
    BUSY = "busy"


@dataclass
class _Running:
    model_id: str
    seq: int
    started: float
    last_activity: float
    input_during_run: bool = False
    preempting: bool = False


@dataclass
class ControllerStats:
    """Counters of this controller's life (also exported through SchedulerMetrics)."""

    swaps: int = 0
    preemptions: int = 0
    worker_deaths: int = 0
    transient_retries: int = 0


class SwapController:
    """Schedules models onto slots. `run()` blocks until `request_stop()` has taken effect."""

    def __init__(
        self,
        concurrency: int,
        *,
        settings: WorkerSettings | None = None,
        slot_factory: Callable[[int, Callable[[tuple], None]], Slot] | None = None,
        input_pending: Callable[[str], bool] | None = None,
        on_report: Callable[[dict], None] | None = None,
        metrics: Any | None = None,
        retry_delay: float = RETRY_DELAY_SEC,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if slot_factory is None:
            if settings is None:
                raise ValueError("SwapController needs WorkerSettings or a slot_factory")

            def slot_factory(index: int, on_event: Callable[[tuple], None]) -> Slot:
                return SlotAgent(index, settings, on_event)

        self.events: queue.Queue[tuple] = queue.Queue()
        self.slots = [slot_factory(i, self.events.put) for i in range(concurrency)]
        self.slot_state = [SlotState.DOWN] * concurrency
        self.running: dict[int, _Running] = {}  # slot -> its model
        self.running_slot: dict[str, int] = {}  # model -> its slot
        self.waiting: deque[str] = deque()
        self.waiting_set: set[str] = set()
        self.stats = ControllerStats()
        self._input_pending = input_pending
        self._on_report = on_report
        self._metrics = metrics
        self._retry_delay = retry_delay
        self._seq = 0
        self._stopping = False
        self.stopped = threading.Event()
        self._timers: list[threading.Timer] = []
        self._failures: dict[str, int] = {}  # model -> consecutive failed runs
        self._backing_off: set[str] = set()  # models whose retry delay is running

    # --- API for other threads --------------------------------------------------------------------

    def notify_input(self, model_id: str) -> None:
        self.events.put(("input", model_id))

    def request_stop(self) -> None:
        self.events.put(("stop",))

    @property
    def stopping(self) -> bool:
        return self._stopping

    # --- loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        for slot in self.slots:
            slot.start()
        try:
            while not self._finished():
                event = self.events.get()
                handler = getattr(self, f"_on_{event[0]}")
                handler(*event[1:])
                self._update_gauges()
        finally:
            for timer in self._timers:
                timer.cancel()
            for slot in self.slots:
                slot.close()
            self.stopped.set()
            _log.info("swap controller stopped")

    def _finished(self) -> bool:
        return self._stopping and not self.running

    # --- event handlers ---------------------------------------------------------------------------

    def _on_input(self, model_id: str) -> None:
        if self._stopping or model_id in self._backing_off:
            return  # a model waiting for its retry starts when the delay is over
        now = time.monotonic()
        slot = self.running_slot.get(model_id)
        if slot is not None:
            run = self.running[slot]
            run.last_activity = now
            run.input_during_run = True
            return
        if model_id in self.waiting_set:
            return
        free = self._free_slot()
        if free is not None:
            self._start(free, model_id)
        else:
            self.waiting.append(model_id)
            self.waiting_set.add(model_id)
            self._maybe_preempt()

    def _on_ready(self, slot: int, pid: int) -> None:
        _log.info("slot %d ready (worker pid %d)", slot, pid)
        if self.slot_state[slot] is SlotState.DOWN:
            self.slot_state[slot] = SlotState.FREE
            self._fill_free_slots()

    def _on_done(self, slot: int, seq: int, report: dict) -> None:
        run = self.running.get(slot)
        if run is None or run.seq != seq:
            _log.error("slot %d reported run %d, which it is not running", slot, seq)
            return
        self._release(slot)
        self.slot_state[slot] = SlotState.FREE
        self._count_report(report)
        if self._on_report is not None:
            self._on_report(report)
        model_id = run.model_id
        if report.get("retry"):
            self.stats.transient_retries += 1
            self._retry_later(model_id)
        else:
            self._failures.pop(model_id, None)
            if report.get("deleted"):
                pass
            elif not report.get("drained"):
                self._enqueue(model_id)
            elif run.input_during_run and self._pending(model_id):
                self._enqueue(model_id)
        self._fill_free_slots()

    def _on_failed(self, slot: int, seq: int, model_id: str, error: str) -> None:
        _log.error("slot %d failed serving model %s: %s", slot, model_id, error)
        run = self.running.get(slot)
        if run is not None and run.seq == seq:
            self._release(slot)
            self._retry_later(model_id)
        self.slot_state[slot] = SlotState.DOWN

    def _on_died(self, slot: int, exitcode: int | None) -> None:
        self.stats.worker_deaths += 1
        run = self.running.get(slot)
        if run is not None:
            _log.error(
                "model %s lost its worker (exit code %s); retrying it", run.model_id, exitcode
            )
            self._release(slot)
            self._retry_later(run.model_id)
        self.slot_state[slot] = SlotState.DOWN
        self._maybe_preempt()

    def _on_retry(self, model_id: str) -> None:
        self._backing_off.discard(model_id)
        self._on_input(model_id)

    def _on_stop(self) -> None:
        if self._stopping:
            return
        _log.info(
            "stopping: %d models running, %d waiting (their queues are found again at start-up)",
            len(self.running),
            len(self.waiting),
        )
        self._stopping = True
        self.waiting.clear()
        self.waiting_set.clear()
        for slot, run in self.running.items():
            self.slots[slot].halt(run.seq)

    # --- helpers ----------------------------------------------------------------------------------

    def _free_slot(self) -> int | None:
        for index, state in enumerate(self.slot_state):
            if state is SlotState.FREE:
                return index
        return None

    def _start(self, slot: int, model_id: str) -> None:
        self._seq += 1
        now = time.monotonic()
        self.running[slot] = _Running(model_id, self._seq, now, now)
        self.running_slot[model_id] = slot
        self.slot_state[slot] = SlotState.BUSY
        self.stats.swaps += 1
        if self._metrics is not None:
            self._metrics.swaps.inc()
        if not self.slots[slot].run_model(self._seq, model_id):
            _log.warning("slot %d is down; model %s waits for its restart", slot, model_id)

    def _release(self, slot: int) -> None:
        run = self.running.pop(slot)
        del self.running_slot[run.model_id]

    def _enqueue(self, model_id: str) -> None:
        if self._stopping:
            return
        if model_id not in self.waiting_set and model_id not in self.running_slot:
            self.waiting.append(model_id)
            self.waiting_set.add(model_id)

    def _fill_free_slots(self) -> None:
        while self.waiting and not self._stopping:
            free = self._free_slot()
            if free is None:
                break
            model_id = self.waiting.popleft()
            self.waiting_set.discard(model_id)
            self._start(free, model_id)
        self._maybe_preempt()

    def _maybe_preempt(self) -> None:
        if self._stopping:
            return
        preempting = sum(1 for run in self.running.values() if run.preempting)
        while len(self.waiting) > preempting and preempting < len(self.running):
            slot, run = min(
                ((s, r) for s, r in self.running.items() if not r.preempting),
                key=lambda item: item[1].last_activity,
            )
            run.preempting = True
            preempting += 1
            self.stats.preemptions += 1
            if self._metrics is not None:
                self._metrics.preemptions.inc()
            _log.debug("preempting model %s in slot %d", run.model_id, slot)
            self.slots[slot].preempt(run.seq)

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.models_running.set(len(self.running))
            self._metrics.models_waiting.set(len(self.waiting))
            self._metrics.slots.set(sum(s is not SlotState.DOWN for s in self.slot_state))

    def _count_report(self, report: dict) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.rows_run.inc(report.get("rows", 0))
        metrics.rows_failed.inc(report.get("failed_rows", 0))
        if report.get("loads"):
            metrics.load_seconds.observe(report["load_ms"] / 1000.0 / report["loads"])
        for seconds in report.get("batch_seconds", ()):
            metrics.batch_seconds.observe(seconds)
        metrics.checkpoint_bytes.labels("full").inc(report.get("full_save_bytes", 0))
        metrics.checkpoint_bytes.labels("incremental").inc(report.get("incremental_save_bytes", 0))
        metrics.duplicate_batches.inc(report.get("duplicate_batches", 0))
        if report.get("retry"):
            metrics.transient_retries.inc()
        for kind, count in report.get("rejected", {}).items():
            metrics.messages_rejected.labels(kind).inc(count)

    def _pending(self, model_id: str) -> bool:
        if self._input_pending is None:
            return True
        try:
            return self._input_pending(model_id)
        except Exception:  # the broker is away: assume there is input rather than strand it
            _log.exception("cannot check the input queue of model %s", model_id)
            return True

    def retry_delay(self, model_id: str) -> float:
        """The delay before the next retry of `model_id` (grows with its consecutive failures)."""
        failures = self._failures.get(model_id, 0)
        return min(self._retry_delay * 2 ** max(failures - 1, 0), RETRY_DELAY_MAX_SEC)

    def _retry_later(self, model_id: str) -> None:
        self._failures[model_id] = self._failures.get(model_id, 0) + 1
        delay = self.retry_delay(model_id)
        _log.info("retrying model %s in %.1f s", model_id, delay)
        self._backing_off.add(model_id)
        timer = threading.Timer(delay, self.events.put, args=(("retry", model_id),))
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()


def discover_backlog(
    model_ids: Callable[[], Iterable[str]],
    input_pending: Callable[[str], bool],
    notify: Callable[[str], None],
    should_stop: Callable[[], bool],
) -> int:
    """Notify every model that has input waiting; retries until the listing succeeds.

    `model_ids` lists the candidates (the ACTIVE/CREATE_PENDING metrics of the database and the
    models of the checkpoint archive); `input_pending` is a passive declare of the model's input
    queue (missing queue = no input). Returns the number of models notified.
    """
    delay = _DISCOVERY_RETRY_MIN_SEC
    while not should_stop():
        try:
            candidates = list(model_ids())
            found = 0
            for model_id in candidates:
                if should_stop():
                    break
                if input_pending(model_id):
                    notify(model_id)
                    found += 1
            _log.info("backlog discovery: %d of %d known models have input", found, len(candidates))
            return found
        except Exception as exc:
            _log.warning("backlog discovery failed (%r); retrying in %.0f s", exc, delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not should_stop():
                time.sleep(0.2)
            delay = min(delay * 2, _DISCOVERY_RETRY_MAX_SEC)
    return 0


def read_notifications(
    consumer_factory: Callable[[], Any],
    notify: Callable[[str], None],
    should_stop: Callable[[], bool],
    ready: threading.Event | None = None,
    on_queue_lost: Callable[[], None] | None = None,
) -> None:
    """Forward scheduler notifications to `notify` until `should_stop()`; acks each one.

    The notification queue is not durable: a broker restart deletes it (and the pings in it). The
    consumer then ends or fails with MessageQueueNotFound; the queue is declared again and
    `on_queue_lost` runs (backlog discovery again, to find the input whose pings were lost).
    """
    while not should_stop():
        try:
            consumer = consumer_factory()
            if ready is not None:
                ready.set()
            with consumer:
                for notification in consumer:
                    if notification is not None:
                        notify(notification.modelID)
                        notification.ack()
                    if should_stop():
                        return
        except MessageQueueNotFound:
            pass
        if should_stop():
            return
        _log.warning("scheduler notification queue was lost (broker restart?); declaring it again")
        time.sleep(_POLL_SEC)
        if on_queue_lost is not None:
            on_queue_lost()
