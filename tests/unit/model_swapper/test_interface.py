"""ModelSwapperInterface against an in-memory stand-in of the MessageBus contract."""

from __future__ import annotations

import json

import pytest

from htmengine.config import Config
from htmengine.exceptions import ModelNotFound
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommand,
    ModelInferenceResult,
    ModelInputRow,
    ModelSwapperInterface,
    decode_request_message,
    encode_request_message,
)
from tests.unit.model_swapper.fakes import FakeBus, FakeMessage


@pytest.fixture
def swapper(tmp_path) -> ModelSwapperInterface:
    (tmp_path / "model-swapper.conf").write_text(
        "[interface_bus]\nresults_queue = app.results\n"
        "model_input_queue_prefix = app.input.\nscheduler_notification_queue = app.notify\n"
    )
    return ModelSwapperInterface(bus=FakeBus(), config=Config("model-swapper.conf", str(tmp_path)))


def test_define_model_declares_queue_submits_command_and_notifies(swapper) -> None:
    swapper.initSchedulerNotification()
    batch_id = swapper.defineModel("m1", {"modelConfig": {}}, "cmd")
    queue, body, persistent = swapper.bus.published[0]
    assert (queue, persistent) == ("app.input.m1", True)
    assert decode_request_message(body) == (
        batch_id,
        (ModelCommand("cmd", "defineModel", {"modelConfig": {}}),),
    )
    assert swapper.bus.published[1] == ("app.notify", json.dumps("m1").encode(), False)


def test_submit_requests_to_missing_queue_raises_model_not_found(swapper) -> None:
    with pytest.raises(ModelNotFound):
        swapper.submitRequests("nope", [ModelInputRow(1, [1.0])])


def test_submit_requests_without_scheduler_queue_still_succeeds(swapper) -> None:
    swapper.bus.declare_queue("app.input.m1")
    swapper.submitRequests("m1", [ModelInputRow(1, [1.0])])
    assert swapper.modelInputPending("m1")
    assert not swapper.modelInputPending("other")


def test_delete_model_purges_then_submits_and_is_idempotent(swapper) -> None:
    swapper.bus.declare_queue("app.input.m1")
    swapper.submitRequests("m1", [ModelInputRow(1, [1.0])])
    swapper.deleteModel("m1", "del")
    (message,) = swapper.bus.queues["app.input.m1"]
    assert decode_request_message(message.body)[1] == (ModelCommand("del", "deleteModel"),)
    swapper.cleanUpAfterModelDeletion("m1")
    swapper.deleteModel("m1", "del")  # queue gone: no error


def test_clean_up_keeps_an_input_queue_that_got_requests_after_the_delete(swapper) -> None:
    swapper.bus.declare_queue("app.input.m1")
    swapper.submitRequests("m1", [ModelInputRow(1, [1.0])])
    assert not swapper.cleanUpAfterModelDeletion("m1")
    assert swapper.modelInputPending("m1")
    swapper.bus.queues["app.input.m1"].clear()
    assert swapper.cleanUpAfterModelDeletion("m1")
    assert "app.input.m1" not in swapper.bus.queues


def test_results_queue_is_declared_on_first_submit(swapper) -> None:
    swapper.submitResults("m1", [ModelInferenceResult(1, 0, 0.5)])
    assert len(swapper.bus.queues["app.results"]) == 1


def test_non_blocking_request_consumer_drains_and_dead_letters_garbage(swapper) -> None:
    bus = swapper.bus
    bus.declare_queue("app.input.m1")
    poison = [
        b"garbage without header",
        b"b1\n" + b"[" * 100_000,
        b"b1\n\xff\xfe",
        b'b1\n[["i", "7", [[0, 0], 1.5], [0]]]',
        b"b1\n[" + b"9" * 5000 + b"]",
    ]
    for body in poison:
        bus.queues["app.input.m1"].append(FakeMessage(body))
    bus.queues["app.input.m1"].append(
        FakeMessage(encode_request_message("b2", [ModelInputRow(5, [2.0])]))
    )
    rejected = list(bus.queues["app.input.m1"][: len(poison)])
    with swapper.consumeRequests("m1", blocking=False) as consumer:
        batches = list(consumer)
    assert [b.batchID for b in batches] == ["b2"]
    assert [m.dead_lettered[0][1] for m in rejected] == [
        "bad_shape",
        "too_deep",
        "not_utf8",
        "bad_shape",
        "number_too_long",
    ]
    assert all(m.acked for m in rejected)
    assert consumer.guard.rejected == {
        "bad_shape": 2,
        "too_deep": 1,
        "not_utf8": 1,
        "number_too_long": 1,
    }
    batches[0].ack()
    with pytest.raises(ModelNotFound):
        swapper.consumeRequests("missing", blocking=False)
