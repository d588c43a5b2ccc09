"""Listener batching: size/time bounds, the bounded hand-off buffer, TCP framing, message bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htmengine.protocol.data_queue import encode_data_message
from htmengine.runtime.metric_listener import (
    MIN_LINE_BYTES,
    READ_BYTES,
    OutboundBuffer,
    PlaintextLineReceiver,
    read_headroom,
)
from htmengine.runtime.plaintext_protocol import (
    LINE_OVERHEAD_BYTES,
    LineBatcher,
    held_bytes,
    max_body_bytes,
    split_by_bytes,
)


def test_full_batches_leave_at_once_and_the_rest_waits() -> None:
    batcher = LineBatcher(max_lines=3, max_delay=0.05)
    assert batcher.add([b"a", b"b"], now=0.0) == []
    assert batcher.deadline == pytest.approx(0.05)
    assert batcher.add([b"c", b"d", b"e", b"f", b"g"], now=0.01) == [
        [b"a", b"b", b"c"],
        [b"d", b"e", b"f"],
    ]
    assert len(batcher) == 1
    # The leftover arrived at 0.01, so its deadline is 0.06, not the first line's 0.05.
    assert batcher.deadline == pytest.approx(0.06)
    assert batcher.take_due(0.059) == []
    assert batcher.take_due(0.0601) == [[b"g"]]
    assert batcher.deadline is None
    assert batcher.take_due(10.0) == []


def test_a_late_add_also_returns_the_overdue_batch() -> None:
    batcher = LineBatcher(max_lines=10, max_delay=0.05)
    batcher.add([b"a"], now=0.0)
    assert batcher.add([b"b"], now=0.2) == [[b"a", b"b"]]
    assert batcher.add([], now=0.3) == []


def test_flush_empties_the_batcher() -> None:
    batcher = LineBatcher(max_lines=10, max_delay=1.0)
    batcher.add([b"a", b"b"], now=0.0)
    assert batcher.flush() == [b"a", b"b"]
    assert batcher.flush() == []
    assert batcher.deadline is None


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        LineBatcher(max_lines=0, max_delay=0.05)
    with pytest.raises(ValueError):
        LineBatcher(max_lines=1, max_delay=-1)


@given(
    st.integers(min_value=1, max_value=7),
    st.lists(st.lists(st.integers(), max_size=20), max_size=20),
)
def test_batches_keep_order_and_respect_the_size_bound(size: int, adds: list[list[int]]) -> None:
    batcher = LineBatcher(max_lines=size, max_delay=1.0)
    out: list[list[int]] = []
    now = 0.0
    for lines in adds:
        now += 0.3
        out.extend(batcher.add(lines, now))
    out.append(batcher.flush())
    assert all(0 < len(batch) <= size for batch in out[:-1])
    assert [x for batch in out for x in batch] == [x for lines in adds for x in lines]


def test_buffer_is_bounded_in_bytes_and_calls_back_when_half_drained() -> None:
    drained = threading.Event()
    weight = 5 + LINE_OVERHEAD_BYTES  # held_bytes of one b"m 1 1"
    buffer = OutboundBuffer(max_bytes=12 * weight, headroom=2 * weight, on_drained=drained.set)
    assert buffer.admit(4, 4 * weight) is False
    assert buffer.admit(6, 6 * weight) is False  # exactly at the high-water mark
    assert buffer.admit(1, weight) is True
    assert buffer.full and buffer.bytes == 11 * weight and buffer.lines == 11
    buffer.done(5, 5 * weight)
    assert not drained.is_set()  # 6 lines left > half of the high-water mark (10 lines)
    buffer.done(1, weight)
    assert drained.is_set()
    buffer.done(5, 5 * weight)
    assert buffer.bytes == 0 and buffer.lines == 0


def test_lines_stay_counted_until_the_broker_confirms_them() -> None:
    """Taking a batch does not free room: only the broker's confirm does."""
    buffer = OutboundBuffer(max_bytes=10_000)
    batch = [b"x" * 5000, b"y" * 4000]
    assert buffer.admit(len(batch), held_bytes(batch)) is False
    buffer.put(batch)
    assert buffer.get(timeout=0) == batch
    assert buffer.get(timeout=0) is None
    assert buffer.bytes == held_bytes(batch)
    assert buffer.admit(1, held_bytes([b"z" * 1000])) is True  # long lines weigh more


def test_the_headroom_must_leave_room() -> None:
    with pytest.raises(ValueError):
        OutboundBuffer(max_bytes=100, headroom=100)


def test_buffer_get_wakes_up_on_put() -> None:
    buffer = OutboundBuffer(max_bytes=1000)
    got: list = []
    consumer = threading.Thread(target=lambda: got.append(buffer.get(timeout=5)))
    consumer.start()
    buffer.put([b"a"])
    consumer.join(timeout=5)
    assert got == [[b"a"]]


def test_encode_data_message_uses_the_original_body() -> None:
    body = encode_data_message([b"cpu 1 2", b'we"ird\\name 3 4', "caf\u00e9 5 6".encode()])
    assert json.loads(body) == {
        "protocol": "plain",
        "data": ["cpu 1 2", 'we"ird\\name 3 4', "caf\u00e9 5 6"],
    }


class RecordingIngest:
    """Stands in for the listener's Ingest: records what framing hands over."""

    def __init__(self, max_line_bytes: int) -> None:
        self.settings = SimpleNamespace(max_line_bytes=max_line_bytes)
        self.loop = asyncio.new_event_loop()
        self.lines: list[bytes] = []
        self.overlong: list[bytes] = []

    def accept(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)

    def reject_overlong(self, head: bytes) -> None:
        self.overlong.append(head)

    def register(self, receiver) -> bool:
        return True

    def unregister(self, receiver) -> None:
        pass


def _feed(chunks: list[bytes], max_line_bytes: int = 16) -> RecordingIngest:
    ingest = RecordingIngest(max_line_bytes)
    receiver = PlaintextLineReceiver(ingest)  # type: ignore[arg-type]
    receiver.connection_made(SimpleNamespace(close=lambda: None))  # type: ignore[arg-type]
    for chunk in chunks:
        receiver.data_received(chunk)
    receiver.eof_received()
    receiver.connection_lost(None)
    ingest.loop.close()
    return ingest


def test_framing_joins_lines_split_across_chunks_and_keeps_the_last_unterminated_line() -> None:
    ingest = _feed([b"a 1 2\nb 3", b" 4\nc", b" 5 6\nlast 7 8"])
    assert ingest.lines == [b"a 1 2", b"b 3 4", b"c 5 6", b"last 7 8"]
    assert ingest.overlong == []


def test_framing_skips_an_overlong_line_up_to_the_next_newline() -> None:
    ingest = _feed([b"ok 1 2\n" + b"x" * 20, b"y" * 30, b"zz\nnext 3 4\n"])
    assert ingest.lines == [b"ok 1 2", b"next 3 4"]
    assert len(ingest.overlong) == 1


def test_framing_does_not_deliver_an_overlong_tail_at_eof() -> None:
    ingest = _feed([b"ok 1 2\n" + b"x" * 40])
    assert ingest.lines == [b"ok 1 2"]
    assert len(ingest.overlong) == 1


@given(st.binary(max_size=200), st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_framing_is_independent_of_chunk_boundaries(data: bytes, cuts: list[int]) -> None:
    chunks, start = [], 0
    for cut in cuts:
        chunks.append(data[start : start + cut])
        start += cut
    chunks.append(data[start:])
    whole = _feed([data], max_line_bytes=1000).lines
    assert _feed(chunks, max_line_bytes=1000).lines == whole
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert whole == expected


class FakeTransport:
    """Records what the listener asks of a TCP transport."""

    def __init__(self) -> None:
        self.paused = False
        self.closed = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


def _settings(**overrides) -> SimpleNamespace:
    values = dict(
        max_line_bytes=16384,
        batch_max_lines=2,
        batch_max_bytes=16384,
        batch_max_delay_sec=0.05,
        max_connections=10,
        idle_timeout_sec=300,
        max_future_seconds=86400,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def _ingest(max_buffered_lines: int, headroom: int = 0, **settings):
    """An Ingest whose buffer is full past `max_buffered_lines` lines of b"m N N" (5 bytes)."""
    from htmengine.instrumentation import ListenerMetrics
    from htmengine.runtime.metric_listener import Ingest

    loop = asyncio.new_event_loop()
    weight = 5 + LINE_OVERHEAD_BYTES
    buffer = OutboundBuffer(max_buffered_lines * weight - 1 + headroom, headroom)
    ingest = Ingest(
        loop, _settings(**settings), buffer, ListenerMetrics(), logging.getLogger("test")
    )  # type: ignore[arg-type]
    return ingest, buffer, loop


def _connect(ingest) -> tuple[PlaintextLineReceiver, FakeTransport]:
    receiver = PlaintextLineReceiver(ingest)
    transport = FakeTransport()
    receiver.connection_made(transport)  # type: ignore[arg-type]
    return receiver, transport


def test_a_full_buffer_pauses_every_connection_until_half_drained() -> None:
    ingest, buffer, loop = _ingest(max_buffered_lines=4)
    try:
        _, first = _connect(ingest)
        receiver, second = _connect(ingest)
        receiver.data_received(b"m 1 1\nm 2 2\nbad\nm 3 3\nm 4 4\n")
        assert buffer.lines == 4 and first.paused and second.paused
        _, late = _connect(ingest)
        assert late.paused, "a connection made while full starts paused"
        batch = buffer.get(timeout=0)
        buffer.done(len(batch), held_bytes(batch))
        assert first.paused, "still above half: no resume yet"
        batch = buffer.get(timeout=0)
        buffer.done(len(batch), held_bytes(batch))
        ingest.resume_all()
        assert not (first.paused or second.paused or late.paused)
        assert ingest.metrics.lines_rejected.labels("expected 3 fields")._value.get() == 1
    finally:
        loop.close()


def test_connections_beyond_the_limit_are_refused_and_idle_ones_closed() -> None:
    ingest, _, loop = _ingest(max_buffered_lines=100, max_connections=2, idle_timeout_sec=10)
    try:
        idle, idle_transport = _connect(ingest)
        busy, busy_transport = _connect(ingest)
        _, refused = _connect(ingest)
        assert refused.closed and len(ingest.receivers) == 2
        idle.last_activity -= 11
        ingest.close_idle()
        assert idle_transport.closed and not busy_transport.closed
    finally:
        loop.close()


def test_pending_lines_leave_when_the_delay_passes() -> None:
    ingest, buffer, loop = _ingest(max_buffered_lines=100)
    try:
        receiver, _ = _connect(ingest)
        receiver.data_received(b"m 1 1\n")
        assert buffer.lines == 1 and buffer.get(timeout=0) is None  # counted, not yet batched
        loop.run_until_complete(asyncio.sleep(0.1))
        assert buffer.get(timeout=0) == [b"m 1 1"]
    finally:
        loop.close()


def test_an_absurd_line_in_a_read_loses_none_of_its_neighbours() -> None:
    """A 5,000-digit timestamp used to raise in data_received: asyncio closed the connection."""
    ingest, buffer, loop = _ingest(max_buffered_lines=100)
    try:
        receiver, transport = _connect(ingest)
        receiver.data_received(
            b"a 1 1370000000\nhuge 1 " + b"9" * 5000 + b"\nfuture 1 4000000000\nb 2 1370000001\n"
        )
        ingest.flush()
        assert buffer.get(timeout=0) == [b"a 1 1370000000", b"b 2 1370000001"]
        assert not transport.closed
        rejected = ingest.metrics.lines_rejected
        assert rejected.labels("timestamp is not epoch seconds in 1970..2099")._value.get() == 1
        assert rejected.labels("timestamp too far in the future")._value.get() == 1
    finally:
        loop.close()


def test_split_by_bytes_cuts_in_order_and_a_long_line_travels_alone() -> None:
    lines = [b"aaaa", b"bbbb", b"cc", b"dddd", b"e" * 12, b"ff"]
    assert split_by_bytes(lines, 10) == [[b"aaaa", b"bbbb", b"cc"], [b"dddd"], [b"e" * 12], [b"ff"]]
    assert split_by_bytes(lines, 1000) == [lines]
    assert split_by_bytes([], 10) == []


@given(st.integers(min_value=1, max_value=30), st.lists(st.binary(max_size=12), max_size=40))
def test_split_by_bytes_keeps_order_and_the_bound(max_bytes: int, lines: list[bytes]) -> None:
    runs = split_by_bytes(lines, max_bytes)
    assert [line for run in runs for line in run] == lines
    assert all(run and (len(run) == 1 or sum(map(len, run)) <= max_bytes) for run in runs)
    # maximal: no run could have taken the next one's first line
    for run, following in zip(runs, runs[1:], strict=False):
        assert sum(map(len, run)) + len(following[0]) > max_bytes


def test_the_largest_body_bound_holds_for_the_worst_lines() -> None:
    lines = ["\U0001f600" * 63 + " 1 1", '"\\' * 100 + " 1 1", "\u00e9" * 127 + " 1 1"]
    for text in lines:
        batch = [text.encode()] * 7
        body = encode_data_message(batch)
        assert len(body) <= max_body_bytes(sum(map(len, batch)), len(batch))


def test_read_bytes_is_what_asyncio_reads_at_once() -> None:
    from asyncio import selector_events

    assert selector_events._SelectorSocketTransport.max_size == READ_BYTES
    assert len(b"a 1 1\n") == MIN_LINE_BYTES


def test_one_read_never_takes_the_buffer_past_its_bound() -> None:
    """Paused at max_buffered_bytes minus the headroom, a read of the shortest lines still fits."""
    settings = _settings(batch_max_lines=1000)
    headroom = read_headroom(settings.max_line_bytes)
    read = b"a 1 1\n" * (READ_BYTES // MIN_LINE_BYTES)
    from htmengine.instrumentation import ListenerMetrics
    from htmengine.runtime.metric_listener import Ingest

    loop = asyncio.new_event_loop()
    try:
        buffer = OutboundBuffer(2 * headroom, headroom)
        ingest = Ingest(loop, settings, buffer, ListenerMetrics(), logging.getLogger("test"))  # type: ignore[arg-type]
        receiver, transport = _connect(ingest)
        reads = 0
        while not transport.paused:
            receiver.data_received(read)
            reads += 1
            assert buffer.bytes <= buffer.max_bytes
        assert reads > 1 and buffer.bytes > buffer.high_water
        # the worst read: an unfinished longest line completed by lines that grow when normalised
        worst = b"m " + b"1" * (settings.max_line_bytes - 4) + b" 1\n"
        worst += b"a 1 1e1\n" * ((READ_BYTES - 8) // 8) + b"a 1 1"
        good = ingest._validate(worst.split(b"\n"))
        assert held_bytes(good) <= headroom
    finally:
        loop.close()


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=60).filter(
                lambda b: b"\n" not in b and not b.lstrip().startswith(b"good.")
            ),
            st.integers(min_value=4000, max_value=6000).map(lambda n: b"m 1 " + b"9" * n),
            st.sampled_from([b"m nan 1", b"m 1 inf", b"m 1 4000000000", b"\xff 1 1", b"m\x00 1 1"]),
        ),
        max_size=20,
    ),
    st.lists(st.integers(min_value=1, max_value=5000), max_size=8),
)
def test_no_read_loses_a_good_line_whatever_its_neighbours(
    junk: list[bytes], cuts: list[int]
) -> None:
    """Good lines interleaved with garbage, cut into reads anywhere: every good line comes out."""
    good = [b"good.%d %d %d" % (i % 3, i, 1_370_000_000 + i) for i in range(len(junk) + 1)]
    stream = b"\n".join(x for pair in zip(good, junk + [b""], strict=True) for x in pair) + b"\n"
    ingest, buffer, loop = _ingest(max_buffered_lines=10_000, batch_max_lines=1000)
    try:
        receiver, transport = _connect(ingest)
        start = 0
        for cut in cuts:
            receiver.data_received(stream[start : start + cut])
            start += cut
        receiver.data_received(stream[start:])
        receiver.connection_lost(None)
        ingest.flush()
        out = [line for batch in iter(lambda: buffer.get(timeout=0), None) for line in batch]
        assert [line for line in out if line.startswith(b"good.")] == good
        assert not transport.closed
    finally:
        loop.close()


class RecordingBus:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def declare_queue(self, name: str) -> None:
        pass

    def publish(self, queue: str, body: bytes) -> None:
        self.bodies.append(body)

    def close(self) -> None:
        pass


def test_the_publisher_sends_at_most_batch_max_bytes_of_text_per_message() -> None:
    from htmengine.instrumentation import ListenerMetrics
    from htmengine.runtime.metric_listener import BatchPublisher

    bus = RecordingBus()
    buffer = OutboundBuffer(max_bytes=1 << 20)
    publisher = BatchPublisher(
        buffer, "q", lambda: bus, ListenerMetrics(), logging.getLogger("test"), max_body_text=100
    )  # type: ignore[arg-type]
    short = [b"m 1 %d" % i for i in range(10)]
    long = [b"long.%s 1 %d" % (b"x" * 30, i) for i in range(10)]
    for batch in (short, long):
        buffer.admit(len(batch), held_bytes(batch))
        buffer.put(batch)
        publisher._publish_batch(buffer.get(timeout=0))
    assert buffer.lines == 0 and buffer.bytes == 0
    data = [json.loads(body)["data"] for body in bus.bodies]
    assert [line for lines in data for line in lines] == [x.decode() for x in short + long]
    assert len(data) == 1 + 5  # the short batch whole; the long one 2 lines (86 bytes) a message
    assert all(sum(map(len, lines)) <= 100 for lines in data)
    assert all(len(body) <= max_body_bytes(100, 2) for body in bus.bodies[1:])
