"""The model scheduler service: many models, few long-lived slot workers.

Run as ``python -m htmengine.model_swapper.model_scheduler_service [--concurrency N]`` (supervisord
program ``model_scheduler``, stopsignal INT).

Threads of the scheduler process:

* main: signal handling through a self-pipe; SIGINT/SIGTERM stop gracefully (running models finish
  their current batch, checkpoint and ack; workers exit), SIGHUP stops and starts again in-process;
* controller: the SwapController's event loop (and one SlotAgent thread per slot);
* notifications: consumes the scheduler notification queue (its own broker connection);
* backlog discovery (at start, and again when the broker lost the notification queue): every model
  that may have input waiting -- the ACTIVE/CREATE_PENDING metrics of the database and every model
  of the checkpoint archive (an unmonitored metric's model still has its deleteModel to run) --
  whose input queue holds messages (passive declare) is scheduled; no RabbitMQ management API is
  needed.

An unexpected error in the controller ends the process with exit code 1 (supervisord restarts it).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
from collections.abc import Callable

import psutil

from htmengine.boot import ServiceBoot, run_service
from htmengine.bus import PoisonGuard, connection_parameters
from htmengine.config import get_model_swapper_config
from htmengine.instrumentation import SchedulerMetrics
from htmengine.logging_support import service_logger
from htmengine.model_swapper.checkpoint_mgr import CheckpointManager, checkpoint_root
from htmengine.model_swapper.model_swapper_interface import ModelSwapperInterface
from htmengine.model_swapper.slot_agent import WorkerSettings
from htmengine.model_swapper.swap_controller import (
    SwapController,
    discover_backlog,
    read_notifications,
)
from htmengine.repository import build_url

SERVICE_NAME = "model_scheduler"
_log = service_logger(SERVICE_NAME)

_GIB = 1 << 30
# Seconds the notification reader gets to declare its queue before backlog discovery starts.
_NOTIFICATION_READY_TIMEOUT_SEC = 5.0
# Seconds to wait for the controller to stop (supervisord's stopwaitsecs should exceed it).
_STOP_TIMEOUT_SEC = 300.0
# Notification reader: seconds between checks of the stop flag.
_POLL_SEC = 1.0


def default_concurrency(cpu_count: int | None = None, total_memory: int | None = None) -> int:
    """The original's rule: max(min(cores - 1, (RAM - 1 GiB) // 2 GiB), 2)."""
    cpu_count = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    total_memory = total_memory if total_memory is not None else psutil.virtual_memory().total
    return max(min(cpu_count - 1, (total_memory - _GIB) // (2 * _GIB)), 2)


def configured_concurrency(cli_value: int | None) -> int:
    """--concurrency, else model-swapper.conf [model_scheduler] concurrency, where 0 = default."""
    if cli_value:
        return cli_value
    value = get_model_swapper_config().getint("model_scheduler", "concurrency")
    return value if value > 0 else default_concurrency()


def monitored_model_ids() -> list[str]:
    """Uids of the metrics whose models should be running (ACTIVE or CREATE_PENDING)."""
    from htmengine.repository import MetricStatus, get_engine, queries

    with get_engine().begin() as conn:
        rows = queries.get_metrics_by_status(
            conn, [MetricStatus.ACTIVE, MetricStatus.CREATE_PENDING], fields=["uid"]
        )
    return [row.uid for row in rows]


def backlog_candidate_ids() -> list[str]:
    """Models that may have input waiting: the monitored metrics' and every archived model.

    The archive matters for models whose metric is no longer monitored: their deleteModel waits
    in their input queue, and its scheduler notification is lost with a broker restart.
    """
    archived = CheckpointManager().model_ids()
    monitored = monitored_model_ids()
    return monitored + sorted(set(archived) - set(monitored))


class _ThreadLocalSwapper:
    """A ModelSwapperInterface per calling thread (a MessageBus must not cross threads)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[ModelSwapperInterface] = []
        self._lock = threading.Lock()

    def get(self) -> ModelSwapperInterface:
        swapper = getattr(self._local, "swapper", None)
        if swapper is None:
            swapper = ModelSwapperInterface()
            self._local.swapper = swapper
            with self._lock:
                self._all.append(swapper)
        return swapper

    def model_input_pending(self, model_id: str) -> bool:
        return self.get().modelInputPending(model_id)

    def release(self) -> None:
        """Close the calling thread's swapper (a helper thread that is about to end)."""
        swapper = getattr(self._local, "swapper", None)
        if swapper is not None:
            self._local.swapper = None
            with self._lock:
                self._all.remove(swapper)
            swapper.close()

    def close_all(self) -> None:
        with self._lock:
            for swapper in self._all:
                swapper.close()
            self._all.clear()


class ModelSchedulerService:
    """Builds the controller and its helper threads; `run()` returns after a stop."""

    def __init__(
        self,
        concurrency: int,
        *,
        metrics: SchedulerMetrics | None = None,
        model_ids: Callable[[], list[str]] = backlog_candidate_ids,
    ) -> None:
        config = get_model_swapper_config()
        self.concurrency = concurrency
        self.settings = WorkerSettings(
            target_requests_per_checkpoint=config.getint(
                "model_runner", "target_requests_per_checkpoint"
            ),
            full_checkpoint_rows=config.getint("model_runner", "full_checkpoint_rows"),
            log_level=os.environ.get("HTMENGINE_LOG_LEVEL"),
        )
        self.metrics = metrics
        self.model_ids = model_ids
        self.swappers = _ThreadLocalSwapper()
        self.shutdown = threading.Event()
        self.controller = SwapController(
            concurrency,
            settings=self.settings,
            input_pending=self.swappers.model_input_pending,
            metrics=metrics,
        )
        self.error: BaseException | None = None

    def request_stop(self) -> None:
        self.shutdown.set()
        self.controller.request_stop()

    def run(self) -> None:
        CheckpointManager().clean_scratch()
        ready = threading.Event()
        reader = threading.Thread(
            target=self._guard,
            args=(self._read_notifications, ready),
            name="scheduler-notifications",
            daemon=True,
        )
        reader.start()
        if not ready.wait(_NOTIFICATION_READY_TIMEOUT_SEC):
            _log.warning(
                "notification queue not ready after %.0f s", _NOTIFICATION_READY_TIMEOUT_SEC
            )
        self._start_discovery()
        _log.info(
            "model scheduler running with %d slots (full checkpoint every %d rows)",
            self.concurrency,
            self.settings.full_checkpoint_rows,
        )
        try:
            self.controller.run()
        finally:
            self.shutdown.set()
            reader.join(timeout=_POLL_SEC * 5)
            self.swappers.close_all()

    def _guard(self, target: Callable[..., None], *args: object) -> None:
        """Run a helper thread; an unexpected error stops the service (exit code 1)."""
        try:
            target(*args)
        except Exception as exc:
            if not self.shutdown.is_set():
                _log.exception("%s failed; stopping the scheduler", threading.current_thread().name)
                self.error = exc
                self.request_stop()

    def _read_notifications(self, ready: threading.Event) -> None:
        swapper = self.swappers.get()
        guard = PoisonGuard(_log, self._count_rejected)
        read_notifications(
            lambda: swapper.consumeModelSchedulerNotifications(
                inactivity_timeout=_POLL_SEC, guard=guard
            ),
            self.controller.notify_input,
            self.shutdown.is_set,
            ready,
            on_queue_lost=self._start_discovery,
        )

    def _count_rejected(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.messages_rejected.labels(kind).inc()

    def _start_discovery(self) -> None:
        """Backlog discovery in its own thread (at start-up and after the broker lost our queue)."""
        threading.Thread(
            target=self._guard, args=(self._discover,), name="scheduler-backlog", daemon=True
        ).start()

    def _discover(self) -> None:
        try:
            discover_backlog(
                self.model_ids,
                self.swappers.model_input_pending,
                self.controller.notify_input,
                self.shutdown.is_set,
            )
        finally:
            self.swappers.release()


def _serve_until_signalled(service: ModelSchedulerService) -> int | None:
    """Run the service in a thread; return the signal that stopped it (None: it stopped itself)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd)
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    thread = threading.Thread(target=service._guard, args=(service.run,), name="swap-controller")
    thread.start()
    received: int | None = None
    try:
        while thread.is_alive():
            readable, _, _ = select.select([read_fd], [], [], _POLL_SEC)
            if readable:
                data = os.read(read_fd, 64)
                if data and received is None:
                    received = data[-1]
                    _log.info("received %s; stopping", signal.Signals(received).name)
                    service.request_stop()
        thread.join(_STOP_TIMEOUT_SEC)
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(read_fd)
        os.close(write_fd)
    return received


def run_process(boot: ServiceBoot, concurrency_option: int | None = None) -> int:
    """Run the scheduler until SIGINT/SIGTERM; SIGHUP restarts it in-process."""
    concurrency = configured_concurrency(concurrency_option)
    # Every file the threads read later, now: a broken one is a config error, not a crash.
    build_url()
    connection_parameters()
    checkpoint_root()
    metrics = SchedulerMetrics()
    boot.serve_metrics(metrics.registry)
    while True:
        service = ModelSchedulerService(concurrency, metrics=metrics)
        received = _serve_until_signalled(service)
        if service.error is not None:
            boot.log.error("model scheduler failed: %r", service.error)
            return 1
        if received != signal.SIGHUP:
            boot.log.info("model scheduler stopped")
            return 0
        boot.log.info("SIGHUP: restarting the model scheduler in-process")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency", type=int, default=None, help="number of slot worker processes"
    )
    args = parser.parse_args(argv)
    return run_service(SERVICE_NAME, lambda boot: run_process(boot, args.concurrency))


if __name__ == "__main__":
    sys.exit(main())
