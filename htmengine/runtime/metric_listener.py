"""Graphite plaintext endpoint (TCP and UDP) that validates lines and forwards them to the data queue.

It does no database work, so clients are never held up by MySQL. Structure (after carbon's
receivers): the TCP and UDP receivers only know their framing; they hand lines to one `Ingest`
edge that validates, counts, batches and hands full batches to one publisher thread. The hand-off
buffer is bounded in bytes (``max_buffered_bytes``, counting each line's object overhead too):
when it is full, every TCP receiver stops reading (the kernel's window then pushes back on
clients: their sends block, nothing is dropped) and UDP datagrams, which cannot be paused, are
dropped and counted; reading resumes once the publisher has drained half of it. The publisher
owns the process's only broker connection, publishes each batch as one persistent message
``{"protocol":"plain","data":[lines]}`` with a publisher confirm, and retries a batch
(reconnecting with backoff) until the broker confirms it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pika.exceptions

from htmengine.boot import ServiceBoot, run_service
from htmengine.bus import MessageBus, MessageBusError, connection_parameters
from htmengine.config import Config, ConfigError, get_app_config, get_rabbitmq_config
from htmengine.exceptions import MessageQueueNotFound
from htmengine.instrumentation import ListenerMetrics, serve_metrics
from htmengine.logging_support import RateLimitedLogger
from htmengine.protocol.data_queue import encode_data_message
from htmengine.runtime.plaintext_protocol import (
    LINE_OVERHEAD_BYTES,
    LINE_TOO_LONG,
    LineBatcher,
    ParsedLines,
    held_bytes,
    normalize_lines,
    split_by_bytes,
    timestamp_limit,
)

SERVICE_NAME = "metric_listener"
# Seconds a stopping listener waits for the broker to confirm what it already accepted.
SHUTDOWN_DRAIN_SEC = 20.0
# Reconnect backoff of the publisher: first wait, doubling up to the cap.
RECONNECT_FIRST_SEC = 0.2
RECONNECT_MAX_SEC = 5.0
# How long one publish call retries on its own before the publisher rebuilds the connection.
PUBLISH_RETRY_SEC = 30.0
# asyncio's selector transports read at most this much per data_received (their max_size).
READ_BYTES = 256 * 1024
# The shortest valid line with its newline ("a 1 1\n"): a read holds at most READ_BYTES / 6 lines.
MIN_LINE_BYTES = 6


@dataclass(frozen=True)
class ListenerSettings:
    """Everything the listener reads from application.conf [metric_listener] (and the CLI)."""

    host: str
    tcp_port: int | None
    udp_port: int | None
    queue_name: str
    max_line_bytes: int
    max_connections: int
    idle_timeout_sec: float
    batch_max_lines: int
    batch_max_delay_sec: float
    batch_max_bytes: int
    max_buffered_bytes: int
    max_future_seconds: int
    metrics_port: int

    @classmethod
    def from_config(cls, config: Config, args: argparse.Namespace) -> ListenerSettings:
        section = "metric_listener"
        tcp_port = config.getint(section, "plaintext_port")
        udp_port = config.getint(section, "udp_port")
        if args.port is not None:
            tcp_port = udp_port = args.port
        settings = cls(
            host=args.host or config.get(section, "host"),
            tcp_port=tcp_port if args.transport in ("tcp", "all") else None,
            udp_port=udp_port if args.transport in ("udp", "all") else None,
            queue_name=config.get(section, "queue_name"),
            max_line_bytes=config.getint(section, "max_line_bytes"),
            max_connections=config.getint(section, "max_connections"),
            idle_timeout_sec=config.getfloat(section, "idle_timeout_sec"),
            batch_max_lines=config.getint(section, "batch_max_lines"),
            batch_max_delay_sec=config.getint(section, "batch_max_delay_ms") / 1000.0,
            batch_max_bytes=config.getint(section, "batch_max_bytes"),
            max_buffered_bytes=config.getint(section, "max_buffered_bytes"),
            max_future_seconds=config.getint(section, "max_future_seconds"),
            metrics_port=config.getint(section, "metrics_port"),
        )
        for key in ("max_line_bytes", "max_connections", "batch_max_lines"):
            if getattr(settings, key) < 1:
                raise ConfigError(f"{config.path}: [{section}] {key} must be >= 1")
        if settings.batch_max_bytes < settings.max_line_bytes:
            raise ConfigError(
                f"{config.path}: [{section}] batch_max_bytes must be >= max_line_bytes"
            )
        if config.has_option(section, "max_buffered_lines"):
            logging.getLogger(__name__).warning(
                "%s: [%s] max_buffered_lines is ignored: max_buffered_bytes bounds the buffer",
                config.path,
                section,
            )
        least = 2 * read_headroom(settings.max_line_bytes)
        if settings.max_buffered_bytes < least:
            raise ConfigError(f"{config.path}: [{section}] max_buffered_bytes must be >= {least}")
        if settings.max_future_seconds < 0:
            raise ConfigError(f"{config.path}: [{section}] max_future_seconds must be >= 0")
        return settings


def read_headroom(max_line_bytes: int) -> int:
    """The most one TCP read adds to the outgoing buffer (its lines' `held_bytes`), so pausing
    at `max_buffered_bytes` minus this keeps the buffer within `max_buffered_bytes`.

    A read is at most READ_BYTES plus the unfinished line kept from the previous one; a line
    normalised grows by at most a whole-seconds timestamp (10 digits) replacing its token.
    """
    text = READ_BYTES + max_line_bytes
    return text + (text // MIN_LINE_BYTES + 1) * (LINE_OVERHEAD_BYTES + 10)


class OutboundBuffer:
    """Lines between the event loop and the broker, bounded in bytes (`held_bytes`).

    Lines count from the moment the listener accepts them (`admit`; they wait in the batcher,
    then here as batches) until the broker confirms them (`done`). `admit` never blocks (the
    event loop must not) and never refuses (the lines were read already); it reports whether
    the buffer is full, i.e. holds more than `max_bytes - headroom`, so the caller stops
    reading. `headroom` is the most the caller admits between two such checks, so the buffer
    never holds more than `max_bytes`. When a full buffer drains to half its high-water mark,
    `on_drained` is called (from the publisher thread).
    """

    def __init__(
        self, max_bytes: int, headroom: int = 0, on_drained: Callable[[], None] = lambda: None
    ) -> None:
        if not 0 <= headroom < max_bytes:
            raise ValueError(f"headroom {headroom} must be in [0, max_bytes={max_bytes})")
        self.max_bytes = max_bytes
        self.high_water = max_bytes - headroom
        self.on_drained = on_drained
        self._batches: collections.deque[list[bytes]] = collections.deque()
        self._bytes = 0
        self._lines = 0
        self._was_full = False
        self._cond = threading.Condition()

    @property
    def bytes(self) -> int:
        """Bytes held by lines accepted and not yet confirmed."""
        return self._bytes

    @property
    def lines(self) -> int:
        """Lines accepted and not yet confirmed."""
        return self._lines

    @property
    def full(self) -> bool:
        return self._bytes > self.high_water

    def admit(self, lines: int, size: int) -> bool:
        """Count accepted lines holding `size` bytes; True when the buffer is now full."""
        with self._cond:
            self._bytes += size
            self._lines += lines
            full = self._bytes > self.high_water
            if full:
                self._was_full = True
            return full

    def put(self, batch: list[bytes]) -> None:
        """Queue a batch of admitted lines for the publisher."""
        with self._cond:
            self._batches.append(batch)
            self._cond.notify()

    def get(self, timeout: float) -> list[bytes] | None:
        """The oldest batch (it stays counted until `done`), or None after `timeout` seconds."""
        with self._cond:
            if not self._batches:
                self._cond.wait(timeout)
            return self._batches.popleft() if self._batches else None

    def done(self, lines: int, size: int) -> None:
        """The broker confirmed `lines` lines holding `size` bytes: free their room."""
        with self._cond:
            self._bytes -= size
            self._lines -= lines
            drained = self._was_full and self._bytes <= self.high_water // 2
            if drained:
                self._was_full = False
        if drained:
            self.on_drained()


class BatchPublisher(threading.Thread):
    """The process's one broker connection: publishes batches from the buffer until confirmed."""

    def __init__(
        self,
        buffer: OutboundBuffer,
        queue_name: str,
        connect: Callable[[], MessageBus],
        metrics: ListenerMetrics,
        log: logging.Logger,
        max_body_text: int,
    ) -> None:
        super().__init__(name="publisher", daemon=True)
        self.buffer = buffer
        # batch_max_bytes: the most line text one message carries (bounds the storer's prefetch)
        self.max_body_text = max_body_text
        self.queue_name = queue_name
        self.connect = connect
        self.metrics = metrics
        self.log = log
        self.stopping = threading.Event()
        self._bus: MessageBus | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            batch = self.buffer.get(timeout=0.2)
            if batch is not None:
                self._publish_batch(batch)
        self._close()

    def _publish_batch(self, batch: list[bytes]) -> None:
        """One message per at most batch_max_bytes of the batch's text, each until confirmed."""
        size = held_bytes(batch)
        if size - LINE_OVERHEAD_BYTES * len(batch) <= self.max_body_text:
            parts = [batch]
        else:
            parts = split_by_bytes(batch, self.max_body_text)
        for part in parts:
            if not self._publish_until_confirmed(encode_data_message(part), len(part)):
                return
        self.buffer.done(len(batch), size)
        self.metrics.lines_published.inc(len(batch))
        self.metrics.set_buffered(self.buffer.lines, self.buffer.bytes)

    def _publish_until_confirmed(self, body: bytes, lines: int) -> bool:
        """Publish one message, reconnecting with backoff; False if stopped meanwhile."""
        delay = RECONNECT_FIRST_SEC
        while True:
            try:
                if self._bus is None:
                    self._bus = self.connect()
                    self._bus.declare_queue(self.queue_name)
                    self.log.info("publishing to queue %s", self.queue_name)
                self._bus.publish(self.queue_name, body)
                break
            except (
                pika.exceptions.AMQPError,
                OSError,
                MessageBusError,
                MessageQueueNotFound,
            ) as exc:
                self.metrics.publish_failures.inc()
                self.log.warning(
                    "publish of %d lines failed (%r); retrying in %.1fs "
                    "(%d lines, %d bytes buffered)",
                    lines,
                    exc,
                    delay,
                    self.buffer.lines,
                    self.buffer.bytes,
                )
                self._close()
                if self.stopping.wait(delay):
                    return False
                delay = min(delay * 2, RECONNECT_MAX_SEC)
        self.metrics.batches_published.inc()
        return True

    def _close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            try:
                bus.close()
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.log.debug("closing the broker connection: %r", exc)


class Ingest:
    """The edge every receiver hands lines to: validate, count, batch, pass on; backpressure."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: ListenerSettings,
        buffer: OutboundBuffer,
        metrics: ListenerMetrics,
        log: logging.Logger,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.buffer = buffer
        self.metrics = metrics
        self.log = log
        self.bad_line_log = RateLimitedLogger(log, interval=10.0)
        self.batcher = LineBatcher(settings.batch_max_lines, settings.batch_max_delay_sec)
        self.receivers: set[PlaintextLineReceiver] = set()
        self.paused = False
        self._timer: asyncio.TimerHandle | None = None

    # --- lines ---------------------------------------------------------------------------

    def accept(self, lines: list[bytes]) -> None:
        """Validate wire lines; count the bad ones; batch the good ones.

        Never raises for any content of `lines` (each bad line is rejected alone), so any
        receiver (TCP, UDP, HTTP) can hand it whatever it framed. A receiver hands over at most
        READ_BYTES at a time and takes no more input while `paused` is True, so the outgoing
        buffer stays within max_buffered_bytes.
        """
        good = self._validate(lines)
        if good:
            full = self.buffer.admit(len(good), held_bytes(good))
            self.metrics.set_buffered(self.buffer.lines, self.buffer.bytes)
            for batch in self.batcher.add(good, self.loop.time()):
                self.buffer.put(batch)
            self._arm_timer()
            if full and not self.paused:
                self._pause_all()

    def _validate(self, lines: list[bytes]) -> list[bytes]:
        """The good lines, normalised; the bad ones counted by reason and logged (rate-limited)."""
        parsed = normalize_lines(
            lines,
            self.settings.max_line_bytes,
            limit=timestamp_limit(time.time(), self.settings.max_future_seconds),
        )
        self.metrics.lines_received.inc(len(parsed.good) + parsed.bad_count)
        if parsed.bad_by_reason:
            self._count_rejected(parsed)
        return parsed.good

    def _count_rejected(self, parsed: ParsedLines) -> None:
        for reason, count in parsed.bad_by_reason.items():
            self.metrics.lines_rejected.labels(reason).inc(count)
        self.bad_line_log.warning(
            "bad-line",
            "rejected %d bad line(s); e.g. %s",
            parsed.bad_count,
            parsed.bad_example,
        )

    def reject_overlong(self, head: bytes) -> None:
        """A line passed max_line_bytes before its newline (framing drops the rest)."""
        self.metrics.lines_received.inc()
        self.metrics.lines_rejected.labels(LINE_TOO_LONG).inc()
        self.bad_line_log.warning(
            "long-line",
            "rejected a line longer than %d bytes starting %r",
            self.settings.max_line_bytes,
            head[:80],
        )

    def accept_datagram(self, lines: list[bytes]) -> None:
        """UDP cannot be paused: when the buffer is full, valid lines are dropped and counted."""
        if not self.buffer.full:
            self.accept(lines)
            return
        self.metrics.lines_dropped.inc(len(self._validate(lines)))

    def flush(self) -> None:
        """Hand whatever is pending to the publisher (shutdown)."""
        batch = self.batcher.flush()
        if batch:
            self.buffer.put(batch)

    def _arm_timer(self) -> None:
        deadline = self.batcher.deadline
        if deadline is not None and self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        for batch in self.batcher.take_due(self.loop.time()):
            self.buffer.put(batch)
        self._arm_timer()

    # --- backpressure and connections ----------------------------------------------------

    def _pause_all(self) -> None:
        self.paused = True
        self.metrics.reading_paused.set(1)
        self.log.warning(
            "outgoing buffer full (%d lines, %d bytes): pausing reads on %d connection(s)",
            self.buffer.lines,
            self.buffer.bytes,
            len(self.receivers),
        )
        for receiver in self.receivers:
            receiver.transport.pause_reading()

    def resume_all(self) -> None:
        """Called in the loop once the publisher has drained the buffer to half."""
        if not self.paused or self.buffer.full:
            return
        self.paused = False
        self.metrics.reading_paused.set(0)
        self.log.info("outgoing buffer drained (%d lines): resuming reads", self.buffer.lines)
        now = self.loop.time()
        for receiver in self.receivers:
            receiver.last_activity = now
            receiver.transport.resume_reading()

    def register(self, receiver: PlaintextLineReceiver) -> bool:
        """Admit a new connection unless max_connections are open."""
        if len(self.receivers) >= self.settings.max_connections:
            self.metrics.connections_refused.inc()
            self.bad_line_log.warning(
                "max-connections",
                "refused a connection: %d connections open",
                len(self.receivers),
            )
            return False
        self.receivers.add(receiver)
        self.metrics.connections_open.set(len(self.receivers))
        if self.paused:
            receiver.transport.pause_reading()
        return True

    def unregister(self, receiver: PlaintextLineReceiver) -> None:
        self.receivers.discard(receiver)
        self.metrics.connections_open.set(len(self.receivers))

    def close_idle(self) -> None:
        """Close connections silent for idle_timeout_sec (paused ones are not idle)."""
        if self.paused:
            return
        limit = self.loop.time() - self.settings.idle_timeout_sec
        for receiver in [r for r in self.receivers if r.last_activity < limit]:
            self.metrics.connections_timed_out.inc()
            receiver.transport.close()


class PlaintextLineReceiver(asyncio.Protocol):
    """TCP framing: newline-terminated lines read in big chunks; overlong lines are skipped."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.max_line_bytes = ingest.settings.max_line_bytes
        self.transport: asyncio.Transport | None = None
        self.last_activity = ingest.loop.time()
        self._partial = b""
        self._skipping_overlong = False
        self._registered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._registered = self.ingest.register(self)
        if not self._registered:
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.ingest.loop.time()
        if self._skipping_overlong:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            self._skipping_overlong = False
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        partial = lines.pop()
        if len(partial) > self.max_line_bytes:
            self.ingest.reject_overlong(partial)
            partial = b""
            self._skipping_overlong = True
        self._partial = partial
        if lines:
            self.ingest.accept(lines)

    def eof_received(self) -> bool:
        self._accept_partial()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._accept_partial()
        if self._registered:
            self.ingest.unregister(self)

    def _accept_partial(self) -> None:
        """A final line without newline still counts (as in the original)."""
        partial, self._partial = self._partial, b""
        if partial and not self._skipping_overlong:
            self.ingest.accept([partial])


class PlaintextDatagramReceiver(asyncio.DatagramProtocol):
    """UDP framing: one or more lines per datagram."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.ingest.accept_datagram(data.split(b"\n"))


async def serve(
    settings: ListenerSettings, connect: Callable[[], MessageBus], log: logging.Logger
) -> None:
    """Run the listener until SIGTERM/SIGINT, then publish what was accepted and return."""
    loop = asyncio.get_running_loop()
    metrics = ListenerMetrics()
    buffer = OutboundBuffer(settings.max_buffered_bytes, read_headroom(settings.max_line_bytes))
    metrics.buffer_limit_bytes.set(settings.max_buffered_bytes)
    ingest = Ingest(loop, settings, buffer, metrics, log)
    buffer.on_drained = lambda: loop.call_soon_threadsafe(ingest.resume_all)
    publisher = BatchPublisher(
        buffer, settings.queue_name, connect, metrics, log, settings.batch_max_bytes
    )
    publisher.start()
    serve_metrics(metrics.registry, settings.metrics_port, settings.host)

    servers: list[asyncio.AbstractServer] = []
    udp_transports: list[asyncio.BaseTransport] = []
    if settings.tcp_port is not None:
        server = await loop.create_server(
            lambda: PlaintextLineReceiver(ingest),
            settings.host,
            settings.tcp_port,
            reuse_address=True,
            backlog=512,
        )
        servers.append(server)
        log.info("listening on tcp %s:%d", settings.host, settings.tcp_port)
    if settings.udp_port is not None:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: PlaintextDatagramReceiver(ingest), local_addr=(settings.host, settings.udp_port)
        )
        udp_transports.append(transport)
        log.info("listening on udp %s:%d", settings.host, settings.udp_port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    idle_check = max(1.0, min(settings.idle_timeout_sec / 10, 30.0))
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=idle_check)
        except TimeoutError:
            ingest.close_idle()

    log.info("stopping: closing listeners, publishing %d buffered lines", buffer.lines)
    for server in servers:
        server.close()
    for transport in udp_transports:
        transport.close()
    for receiver in list(ingest.receivers):
        receiver.transport.close()
    await asyncio.sleep(0)
    ingest.flush()
    deadline = loop.time() + SHUTDOWN_DRAIN_SEC
    while buffer.lines and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if buffer.lines:
        log.error("exiting with %d lines the broker did not confirm", buffer.lines)
    publisher.stopping.set()
    await asyncio.to_thread(publisher.join, 5.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m htmengine.runtime.metric_listener",
        description="Graphite plaintext listener: validates lines and forwards them to the "
        "metric data queue.",
    )
    parser.add_argument("--host", help="address to bind (default: [metric_listener] host)")
    parser.add_argument(
        "--port",
        type=int,
        help="port for the selected transports (default: plaintext_port / udp_port)",
    )
    parser.add_argument("--protocol", choices=["plain"], default="plain")
    parser.add_argument(
        "--transport",
        choices=["tcp", "udp", "all"],
        default="all",
        help="serve TCP, UDP or both (default: both)",
    )
    return parser.parse_args(argv)


def run_process(boot: ServiceBoot, args: argparse.Namespace) -> None:
    """Listen until SIGTERM/SIGINT, then publish what was accepted."""
    settings = ListenerSettings.from_config(get_app_config(), args)
    rabbitmq_config = get_rabbitmq_config()
    connection_parameters(rabbitmq_config)  # a bad key is a config error now, not in the publisher

    def connect() -> MessageBus:
        return MessageBus(rabbitmq_config, reconnect_timeout=PUBLISH_RETRY_SEC)

    asyncio.run(serve(settings, connect, boot.log))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_service(SERVICE_NAME, lambda boot: run_process(boot, args))


if __name__ == "__main__":
    sys.exit(main())
