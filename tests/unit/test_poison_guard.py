"""The bus's one dead-letter policy: decode inside the guard, and a bad message never stops you."""

from __future__ import annotations

import logging

from htmengine.bus import PoisonGuard
from htmengine.protocol.data_queue import decode_data_message
from htmengine.protocol.errors import UndecodableMessage
from tests.unit.model_swapper.fakes import FakeMessage


def test_a_good_message_is_decoded_and_left_to_the_consumer() -> None:
    guard = PoisonGuard()
    message = FakeMessage(b'{"protocol": "plain", "data": ["m 1 2"]}')
    assert guard.decode(message, decode_data_message) == ["m 1 2"]
    assert not message.acked and not message.dead_lettered
    assert not guard.rejected


def test_undecodable_messages_are_dead_lettered_acked_and_counted_by_kind() -> None:
    counted: list[str] = []
    guard = PoisonGuard(count=counted.append, dead_letter_queue="q.rejected")
    bodies = [b"\xff", b"[" * 100_000, b"1" * 5000, b"[]", b"nope"]
    messages = [FakeMessage(body) for body in bodies]
    assert [guard.decode(m, decode_data_message) for m in messages] == [None] * 5
    kinds = ["not_utf8", "too_deep", "number_too_long", "bad_shape", "not_json"]
    assert counted == kinds
    assert [m.dead_lettered for m in messages] == [
        [(reason, kind, "q.rejected")]
        for reason, kind in zip(
            [
                "not UTF-8",
                "JSON nested too deep",
                "number too long",
                "not a JSON object",
                "not JSON",
            ],
            kinds,
            strict=True,
        )
    ]
    assert all(m.acked for m in messages)
    assert guard.rejected == dict.fromkeys(kinds, 1)


def test_any_error_of_a_decoder_counts_as_undecodable() -> None:
    guard = PoisonGuard()

    def broken(body: bytes) -> None:
        raise KeyError("surprise")

    message = FakeMessage(b"x")
    assert guard.decode(message, broken) is None
    ((reason, kind, queue),) = message.dead_lettered
    assert (kind, queue) == ("undecodable", None)
    assert reason.startswith("KeyError")


def test_rejections_are_logged_at_most_once_per_interval_per_kind(caplog) -> None:
    guard = PoisonGuard(logging.getLogger("test.guard"), log_interval=3600)
    with caplog.at_level(logging.WARNING, logger="test.guard"):
        for _ in range(100):
            guard.decode(FakeMessage(b"nope"), decode_data_message)
        guard.reject(FakeMessage(b"x"), UndecodableMessage("later failure", "processing_failed"))
    assert len(caplog.records) == 2
    assert guard.rejected == {"not_json": 100, "processing_failed": 1}
