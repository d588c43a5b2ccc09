"""A slot: one long-lived worker process that swaps models in and out of memory.

The original started a new Python process for every model run; here a worker process lives as long
as the scheduler and serves one model at a time (load checkpoint, run batches, checkpoint, ack,
unload), so a swap costs a checkpoint load, not an interpreter start and a Numba cache load.

Worker protocol (two one-way pipes, so sender and receiver threads never share a connection):

* controller -> worker: ``("run", seq, model_id)``, ``("preempt", seq)`` (leave after the current
  run), ``("halt", seq)`` (leave after the current batch), ``("exit",)``;
* worker -> agent: ``("ready", pid)``, ``("done", seq, report_dict)``, ``("failed", seq, model_id,
  error)``.

A halt or exit is noticed between batches, a preempt between runs: the runner finishes the batch
(or run), checkpoints, acks and reports done. The worker exits when told to or when the scheduler's end of the command pipe
closes (the scheduler died): it finishes its current run first, so an orphaned worker never leaves a
half-written checkpoint, and the model lock keeps a new scheduler's worker away until it is done.
SIGINT is ignored in workers (a terminal's Ctrl-C reaches the whole process group; the scheduler
decides); SIGTERM makes a worker stop after its current batch.

A SlotAgent (a thread in the scheduler) watches its worker: reports go to the controller's event
callback; if the worker dies, the agent reports it (with the model it was serving) and starts a new
one, with a growing delay if workers keep dying at start-up.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger("htmengine.model_swapper.slot_agent")

# Worker start method: a fresh interpreter, so no broker sockets, DB pools or Numba state are
# inherited from the scheduler.
START_METHOD = "spawn"

# Seconds a worker gets to finish its batch and exit on close before it is killed.
WORKER_STOP_TIMEOUT_SEC = 240.0

# Restart delays after a worker died: doubles per consecutive early death, capped.
_RESTART_DELAY_MIN_SEC = 0.5
_RESTART_DELAY_MAX_SEC = 30.0
# A worker that lived at least this long resets the restart delay.
_HEALTHY_LIFETIME_SEC = 30.0


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs beyond the config files (read from APPLICATION_CONFIG_PATH)."""

    target_requests_per_checkpoint: int
    full_checkpoint_rows: int
    log_level: str | None = None


class _StopRequests:
    """Reads the command pipe while a model is served: preempt or halt of the current run, exit,
    SIGTERM, or the scheduler gone."""

    def __init__(self, commands: multiprocessing.connection.Connection) -> None:
        self.commands = commands
        self.current_seq: int | None = None
        self.preempted = False
        self.halted = False
        self.exiting = False
        self.orphaned = False
        self.terminated = False

    def start_run(self, seq: int) -> None:
        self.current_seq, self.preempted, self.halted = seq, False, False

    def _read(self) -> None:
        while not (self.exiting or self.orphaned):
            try:
                if not self.commands.poll():
                    break
                command = self.commands.recv()
            except (EOFError, OSError):
                self.orphaned = True
                break
            self._handle(command)

    def should_stop(self) -> bool:
        """Stop after the current batch."""
        self._read()
        return self.halted or self.exiting or self.orphaned or self.terminated

    def should_yield(self) -> bool:
        """Leave the slot after the current run."""
        return self.should_stop() or self.preempted

    def _handle(self, command: tuple) -> None:
        if command[0] in ("preempt", "halt"):
            if command[1] == self.current_seq:
                if command[0] == "preempt":
                    self.preempted = True
                else:
                    self.halted = True
        elif command[0] == "exit":
            self.exiting = True
        else:
            _log.error("unexpected command while serving a model: %r", command)


def worker_main(
    slot_index: int,
    commands: multiprocessing.connection.Connection,
    reports: multiprocessing.connection.Connection,
    settings: WorkerSettings,
) -> None:
    """Entry point of a slot worker process."""
    from htmengine.logging_support import setup_logging
    from htmengine.model_swapper.checkpoint_mgr import CheckpointManager
    from htmengine.model_swapper.model_runner import ModelRunner
    from htmengine.model_swapper.model_swapper_interface import ModelSwapperInterface

    log = setup_logging(f"model_scheduler.slot{slot_index}", settings.log_level)
    stop = _StopRequests(commands)

    def on_sigterm(_signum: int, _frame: Any) -> None:
        stop.terminated = True
        if stop.current_seq is None:
            raise SystemExit(0)  # idle: nothing to finish

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)

    swapper = ModelSwapperInterface()
    runner = ModelRunner(
        swapper,
        CheckpointManager(),
        target_requests_per_checkpoint=settings.target_requests_per_checkpoint,
        full_checkpoint_rows=settings.full_checkpoint_rows,
    )
    # Build the model class now (Numba cache load), not on the first swap.
    runner.model_class  # noqa: B018
    reports.send(("ready", os.getpid()))
    try:
        while not (stop.exiting or stop.orphaned or stop.terminated):
            try:
                command = commands.recv()
            except (EOFError, OSError):
                break
            if command[0] == "exit":
                break
            if command[0] != "run":
                continue  # a preempt or halt that arrived after its run ended
            _, seq, model_id = command
            stop.start_run(seq)
            try:
                report = runner.serve(model_id, stop.should_stop, stop.should_yield)
            except Exception as exc:
                log.exception("serving model %s failed", model_id)
                reports.send(("failed", seq, model_id, repr(exc)))
                raise SystemExit(1) from exc
            finally:
                stop.current_seq = None
            reports.send(("done", seq, report.to_dict()))
    except (BrokenPipeError, EOFError):
        log.warning("the scheduler went away; slot worker exits")
    finally:
        swapper.close()
    log.info("slot worker %d exits", slot_index)


class SlotAgent:
    """Owns one worker process and the thread that relays its reports to the controller.

    `on_event` receives ``("ready", slot, pid)``, ``("done", slot, seq, report_dict)``,
    ``("failed", slot, seq, model_id, error)`` and ``("died", slot, exitcode)``; it must be
    thread-safe (the controller's event queue).
    """

    def __init__(
        self, index: int, settings: WorkerSettings, on_event: Callable[[tuple], None]
    ) -> None:
        self.index = index
        self.settings = settings
        self.on_event = on_event
        self._context = multiprocessing.get_context(START_METHOD)
        self._lock = threading.Lock()
        self._process: Any = None
        self._commands: multiprocessing.connection.Connection | None = None
        self._reports: multiprocessing.connection.Connection | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._watch, name=f"slot-agent-{index}", daemon=True)
        self._restart_delay = _RESTART_DELAY_MIN_SEC
        self._started_at = 0.0

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        command_reader, command_writer = self._context.Pipe(duplex=False)
        report_reader, report_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self.index, command_reader, report_writer, self.settings),
            name=f"model-slot-{self.index}",
        )
        process.start()
        command_reader.close()
        report_writer.close()
        with self._lock:
            self._process, self._commands, self._reports = process, command_writer, report_reader
        self._started_at = time.monotonic()
        _log.info("slot %d: started worker pid %d", self.index, process.pid)

    def _send(self, command: tuple) -> bool:
        with self._lock:
            commands = self._commands
            if commands is None:
                return False
            try:
                commands.send(command)
                return True
            except (BrokenPipeError, OSError):
                return False  # the worker died; the watcher reports it

    def run_model(self, seq: int, model_id: str) -> bool:
        """Ask the worker to serve `model_id`; False if the worker is gone (a "died" follows)."""
        return self._send(("run", seq, model_id))

    def preempt(self, seq: int) -> None:
        """Ask the worker to leave run `seq` at the end of its current run."""
        self._send(("preempt", seq))

    def halt(self, seq: int) -> None:
        """Ask the worker to leave run `seq` after its current batch (graceful shutdown)."""
        self._send(("halt", seq))

    def _watch(self) -> None:
        while True:
            process, reports = self._process, self._reports
            try:
                ready = multiprocessing.connection.wait([reports, process.sentinel])
            except OSError:
                ready = [process.sentinel]
            if reports in ready:
                try:
                    message = reports.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    self.on_event((message[0], self.index, *message[1:]))
                    continue
            process.join()
            if self._closing:
                return
            exitcode = process.exitcode
            _log.error(
                "slot %d: worker pid %d died (exit code %s)", self.index, process.pid, exitcode
            )
            with self._lock:
                self._commands.close()
                reports.close()
                self._commands = None
            self.on_event(("died", self.index, exitcode))
            if time.monotonic() - self._started_at >= _HEALTHY_LIFETIME_SEC:
                self._restart_delay = _RESTART_DELAY_MIN_SEC
            time.sleep(self._restart_delay)
            self._restart_delay = min(self._restart_delay * 2, _RESTART_DELAY_MAX_SEC)
            if self._closing:
                return
            self._spawn()

    def close(self, timeout: float = WORKER_STOP_TIMEOUT_SEC) -> None:
        """Tell the worker to exit (after its current batch) and wait; kill it if it hangs.

        Only the watcher thread reaps the worker (two threads joining one child race for its
        exit status), so this waits for the watcher to end.
        """
        self._closing = True
        self._send(("exit",))
        if not self._thread.is_alive():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            process = self._process
            _log.error("slot %d: worker pid %d did not exit; killing it", self.index, process.pid)
            process.kill()
            self._thread.join(10)
