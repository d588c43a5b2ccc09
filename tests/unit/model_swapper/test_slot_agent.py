"""The worker side of the slot protocol: which commands stop a run, and when."""

from __future__ import annotations

import multiprocessing

from htmengine.model_swapper.slot_agent import _StopRequests


def pipe():
    reader, writer = multiprocessing.Pipe(duplex=False)
    return _StopRequests(reader), writer


def test_preempt_of_the_current_run_yields_after_the_run_but_does_not_stop_the_batch() -> None:
    stop, commands = pipe()
    stop.start_run(7)
    commands.send(("preempt", 7))
    assert not stop.should_stop()
    assert stop.should_yield()


def test_stale_preempt_and_halt_are_ignored() -> None:
    stop, commands = pipe()
    stop.start_run(8)
    commands.send(("preempt", 7))
    commands.send(("halt", 7))
    assert not stop.should_stop() and not stop.should_yield()


def test_halt_stops_after_the_current_batch() -> None:
    stop, commands = pipe()
    stop.start_run(3)
    commands.send(("halt", 3))
    assert stop.should_stop()
    stop.start_run(4)
    assert not stop.should_stop()


def test_exit_and_a_closed_pipe_stop_the_run() -> None:
    stop, commands = pipe()
    stop.start_run(1)
    commands.send(("exit",))
    assert stop.should_stop() and stop.exiting
    orphan, parent_end = pipe()
    orphan.start_run(1)
    parent_end.close()  # the scheduler died
    assert orphan.should_stop() and orphan.orphaned
