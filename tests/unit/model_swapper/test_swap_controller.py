"""SwapController scheduling decisions, driven event by event with recording slots."""

from __future__ import annotations

import threading

from htmengine.model_swapper.model_scheduler_service import default_concurrency
from htmengine.model_swapper.swap_controller import (
    RETRY_DELAY_MAX_SEC,
    SlotState,
    SwapController,
    discover_backlog,
)


class RecordingSlot:
    def __init__(self, index: int, on_event) -> None:
        self.index = index
        self.on_event = on_event
        self.calls: list[tuple] = []

    def start(self) -> None:
        self.calls.append(("start",))

    def run_model(self, seq: int, model_id: str) -> bool:
        self.calls.append(("run", seq, model_id))
        return True

    def preempt(self, seq: int) -> None:
        self.calls.append(("preempt", seq))

    def halt(self, seq: int) -> None:
        self.calls.append(("halt", seq))

    def close(self, timeout: float = 0) -> None:
        self.calls.append(("close",))


def make(concurrency: int = 2, pending: bool = False) -> SwapController:
    controller = SwapController(
        concurrency, slot_factory=RecordingSlot, input_pending=lambda _m: pending, retry_delay=0.01
    )
    for index in range(concurrency):
        controller._on_ready(index, 100 + index)
    return controller


def runs(controller: SwapController) -> list[tuple]:
    return [c for slot in controller.slots for c in slot.calls if c[0] == "run"]


def done(controller: SwapController, model_id: str, **report) -> None:
    slot = controller.running_slot[model_id]
    seq = controller.running[slot].seq
    controller._on_done(slot, seq, {"model_id": model_id, "drained": True, **report})


def test_models_take_free_slots_then_wait_in_fifo_order() -> None:
    controller = make()
    for model_id in "abcd":
        controller._on_input(model_id)
    assert set(controller.running_slot) == {"a", "b"}
    assert list(controller.waiting) == ["c", "d"]
    done(controller, "a")
    assert set(controller.running_slot) == {"b", "c"}
    assert list(controller.waiting) == ["d"]


def test_input_for_a_running_or_waiting_model_does_not_duplicate_it() -> None:
    controller = make(concurrency=1)
    for model_id in ("a", "a", "b", "b"):
        controller._on_input(model_id)
    assert list(controller.running_slot) == ["a"] and list(controller.waiting) == ["b"]


def test_lru_running_model_is_preempted_when_models_wait() -> None:
    controller = make()
    controller._on_input("a")
    controller._on_input("b")
    controller._on_input("a")  # a is busier: b is least recently active
    controller._on_input("c")
    preempts = [(s.index, c) for s in controller.slots for c in s.calls if c[0] == "preempt"]
    b_slot = controller.running_slot["b"]
    assert preempts == [(b_slot, ("preempt", controller.running[b_slot].seq))]
    controller._on_input("d")  # second waiter: a is preempted too
    assert controller.running[controller.running_slot["a"]].preempting
    assert controller.stats.preemptions == 2


def test_preempted_model_that_was_not_drained_waits_again() -> None:
    controller = make(concurrency=1)
    controller._on_input("a")
    controller._on_input("b")
    done(controller, "a", drained=False)
    assert list(controller.running_slot) == ["b"] and list(controller.waiting) == ["a"]


def test_input_during_a_run_is_rechecked_when_the_model_leaves() -> None:
    controller = make(concurrency=1, pending=True)
    controller._on_input("a")
    controller._on_input("a")
    done(controller, "a")
    assert list(controller.running_slot) == ["a"]  # ran again: its queue is not empty
    quiet = make(concurrency=1, pending=False)
    quiet._on_input("a")
    quiet._on_input("a")
    done(quiet, "a")
    assert not quiet.running and not quiet.waiting


def test_deleted_model_is_not_rescheduled() -> None:
    controller = make(concurrency=1, pending=True)
    controller._on_input("a")
    controller._on_input("a")
    done(controller, "a", deleted=True, drained=False)
    assert not controller.running and not controller.waiting


def test_dead_worker_frees_nothing_until_ready_and_retries_its_model() -> None:
    controller = make(concurrency=1)
    controller._on_input("a")
    controller._on_died(0, -9)
    assert controller.slot_state[0] is SlotState.DOWN and not controller.running
    controller._on_input("a")  # a notification during the retry delay: the broker may not
    assert not controller.waiting  # have requeued the dead worker's input yet
    event = controller.events.get(timeout=5)  # the retry timer
    assert event == ("retry", "a")
    controller._on_retry("a")
    assert list(controller.waiting) == ["a"]
    controller._on_ready(0, 200)
    assert list(controller.running_slot) == ["a"]


def test_stop_halts_running_models_and_ends_when_they_are_done() -> None:
    controller = make()
    controller._on_input("a")
    controller._on_input("b")
    controller._on_input("c")
    controller._on_stop()
    assert not controller.waiting
    halts = [c for s in controller.slots for c in s.calls if c[0] == "halt"]
    assert len(halts) == 2
    controller._on_input("d")
    assert "d" not in controller.waiting_set
    done(controller, "a")
    assert not controller._finished()
    done(controller, "b", drained=False)
    assert controller._finished() and not controller.waiting


def test_run_loop_closes_slots_on_stop() -> None:
    controller = SwapController(1, slot_factory=RecordingSlot)
    thread = threading.Thread(target=controller.run)
    thread.start()
    controller.request_stop()
    thread.join(5)
    assert controller.stopped.is_set()
    assert controller.slots[0].calls[-1] == ("close",)


def test_backlog_discovery_notifies_models_with_input() -> None:
    notified: list[str] = []
    attempts = iter([RuntimeError("db down"), ["a", "b", "c"]])

    def model_ids():
        value = next(attempts)
        if isinstance(value, Exception):
            raise value
        return value

    found = discover_backlog(model_ids, lambda m: m != "b", notified.append, lambda: False)
    assert found == 2 and notified == ["a", "c"]


def test_default_concurrency_follows_the_original_rule() -> None:
    gib = 1 << 30
    assert default_concurrency(2, 23 * gib) == 2
    assert default_concurrency(16, 9 * gib) == 4
    assert default_concurrency(8, 64 * gib) == 7


def test_a_run_given_back_is_retried_after_a_growing_delay_reset_by_success() -> None:
    controller = make(concurrency=1)
    controller._on_input("a")
    delays = []
    for _ in range(3):
        done(controller, "a", drained=False, retry="save checkpoint failed: ENOSPC")
        assert not controller.running and "a" not in controller.waiting_set
        delays.append(controller.retry_delay("a"))
        controller._on_input("a")  # input pings do not cut the delay short
        controller._on_input("b")  # the slot serves others meanwhile
        assert list(controller.running_slot) == ["b"]
        done(controller, "b")
        assert controller.events.get(timeout=5) == ("retry", "a")
        controller._on_retry("a")
        assert list(controller.running_slot) == ["a"]
    assert delays == [0.01, 0.02, 0.04] and controller.stats.transient_retries == 3
    done(controller, "a")
    assert controller.retry_delay("a") == 0.01  # reset


def test_retry_delays_are_capped() -> None:
    controller = make(concurrency=1)
    controller._failures["a"] = 100
    assert controller.retry_delay("a") == RETRY_DELAY_MAX_SEC


def test_runs_given_back_are_counted_in_the_metrics() -> None:
    from htmengine.instrumentation import SchedulerMetrics

    metrics = SchedulerMetrics()
    controller = SwapController(
        1, slot_factory=RecordingSlot, input_pending=lambda _m: False, metrics=metrics
    )
    controller._on_ready(0, 100)
    controller._on_input("a")
    done(controller, "a", drained=False, retry="load checkpoint failed: EIO")
    done_value = metrics.registry.get_sample_value("htmengine_scheduler_transient_retries_total")
    assert done_value == 1.0
    for timer in controller._timers:
        timer.cancel()
