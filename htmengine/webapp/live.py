"""Live scores: one consumer of the results exchange, fanned out to every browser by SSE.

``ResultsFollower`` (a thread) binds the webapp's own queue to the results fanout exchange:
exclusive and auto-deleted, so nothing piles up while the webapp is down (the pages reload from
MySQL when their stream reconnects). Each message is decoded once, turned into server-sent-event
bytes once, and handed to the event loop, where ``Hub`` copies the bytes to the subscribers that
follow that metric. A browser that reads too slowly overflows its bounded buffer and is
disconnected (its EventSource reconnects and the page reloads its rows), so one stuck client
never holds memory or slows the others. Pages that follow every metric (the list) get the newest
row of each metric coalesced into one event per second.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from htmengine.bus import MessageBus
from htmengine.config import Config
from htmengine.exceptions import MessageQueueNotFound
from htmengine.runtime.anomaly_likelihood_helper import rescale_for_display
from htmengine.runtime.anomaly_service import deserialize_model_result

LOGGER = logging.getLogger("htmengine.webapp.live")

COMMAND_RESULT_TYPE = "model-cmd-result"
# Seconds between the coalesced events of pages that follow every metric.
COALESCE_SEC = 1.0
# Seconds between keep-alive comments (they also reveal closed connections).
KEEPALIVE_SEC = 15.0
RECONNECT_FIRST_SEC = 0.5
RECONNECT_MAX_SEC = 10.0

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
# Column order of a data row, in the API and in live events (the first four are HTM-IT's).
ROW_NAMES = ("timestamp", "value", "anomaly_score", "rowid", "raw_anomaly_score", "display_value")


def format_timestamp(value: datetime.datetime) -> str:
    return value.strftime(TIMESTAMP_FORMAT)


def sse_event(event: str, data: Any) -> bytes:
    """One server-sent event (JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def rows_of_result(payload: dict[str, Any]) -> list[list[Any]]:
    """The scored rows of an inference message, as API data rows (ROW_NAMES)."""
    rows = []
    for result in payload.get("results", []):
        anomaly = result.get("anomaly")
        ts = datetime.datetime.fromtimestamp(result["ts"], datetime.UTC)
        rows.append(
            [
                ts.strftime(TIMESTAMP_FORMAT),
                result.get("value"),
                anomaly,
                result.get("rowid"),
                result.get("rawAnomaly"),
                None if anomaly is None else rescale_for_display(anomaly),
            ]
        )
    return rows


class Subscriber:
    """One browser's stream: pending event bytes, bounded in bytes."""

    def __init__(self, uid: str | None, max_bytes: int) -> None:
        self.uid = uid
        self.max_bytes = max_bytes
        self.pending: collections.deque[bytes] = collections.deque()
        self.pending_bytes = 0
        self.overflowed = False
        self.wakeup = asyncio.Event()

    def push(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        if self.pending_bytes + len(chunk) > self.max_bytes:
            self.overflowed = True
            self.pending.clear()
            self.pending_bytes = 0
        else:
            self.pending.append(chunk)
            self.pending_bytes += len(chunk)
        self.wakeup.set()

    def take(self) -> bytes:
        chunk = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.wakeup.clear()
        return chunk


class Hub:
    """Fans decoded results out to subscribers; lives on the event loop (not thread-safe)."""

    def __init__(self, client_buffer_bytes: int, on_scores: Callable[[], None] = lambda: None):
        self.client_buffer_bytes = client_buffer_bytes
        self.on_scores = on_scores
        self.by_uid: dict[str, set[Subscriber]] = collections.defaultdict(set)
        self.followers_of_all: set[Subscriber] = set()
        self._latest: dict[str, list[Any]] = {}
        self.messages = 0
        self.overflows = 0

    @property
    def subscriber_count(self) -> int:
        return len(self.followers_of_all) + sum(len(s) for s in self.by_uid.values())

    def subscribe(self, uid: str | None) -> Subscriber:
        subscriber = Subscriber(uid, self.client_buffer_bytes)
        if uid is None:
            self.followers_of_all.add(subscriber)
        else:
            self.by_uid[uid].add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber.uid is None:
            self.followers_of_all.discard(subscriber)
            return
        followers = self.by_uid.get(subscriber.uid)
        if followers is not None:
            followers.discard(subscriber)
            if not followers:
                del self.by_uid[subscriber.uid]

    def _send(self, subscribers: set[Subscriber], chunk: bytes) -> None:
        for subscriber in subscribers:
            subscriber.push(chunk)
            if subscriber.overflowed:
                self.overflows += 1

    def publish(self, payload: dict[str, Any], headers: dict[str, Any]) -> None:
        """One decoded results-exchange message."""
        self.messages += 1
        if headers.get("dataType") == COMMAND_RESULT_TYPE:
            uid = payload.get("modelId")
            event = {
                "uid": uid,
                "method": payload.get("method"),
                "status": payload.get("status"),
                "error": payload.get("errorMessage"),
            }
            chunk = sse_event("model", event)
            self._send(self.by_uid.get(uid, set()), chunk)
            self._send(self.followers_of_all, chunk)
            return
        uid = (payload.get("metric") or {}).get("uid")
        rows = rows_of_result(payload)
        if not uid or not rows:
            return
        self.on_scores()
        followers = self.by_uid.get(uid)
        if followers:
            self._send(followers, sse_event("rows", {"uid": uid, "rows": rows}))
        if self.followers_of_all:
            self._latest[uid] = rows[-1]

    def flush_latest(self) -> None:
        """Send the newest row of each metric that changed to the pages following every metric."""
        if not self._latest:
            return
        latest, self._latest = self._latest, {}
        if self.followers_of_all:
            self._send(self.followers_of_all, sse_event("latest", latest))

    def broadcast(self, event: str, data: Any) -> None:
        """An event for the pages that follow every metric (e.g. a new ranking)."""
        self._send(self.followers_of_all, sse_event(event, data))

    async def run_coalescer(self) -> None:
        while True:
            await asyncio.sleep(COALESCE_SEC)
            self.flush_latest()

    async def stream(self, subscriber: Subscriber, first: bytes = b""):
        """The bytes of one SSE response; ends when the subscriber overflowed."""
        try:
            yield first + b"retry: 2000\n\n"
            while True:
                try:
                    await asyncio.wait_for(subscriber.wakeup.wait(), KEEPALIVE_SEC)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if subscriber.overflowed:
                    LOGGER.info("a live client read too slowly and was disconnected")
                    return
                yield subscriber.take()
        finally:
            self.unsubscribe(subscriber)


class ResultsFollower(threading.Thread):
    """Consumes the webapp's queue on the results exchange and hands messages to `deliver`."""

    def __init__(
        self,
        rabbitmq_config: Config,
        exchange: str,
        queue: str,
        deliver: Callable[[dict[str, Any], dict[str, Any]], None],
    ) -> None:
        super().__init__(name="results-follower", daemon=True)
        self.rabbitmq_config = rabbitmq_config
        self.exchange = exchange
        self.queue = queue
        self.deliver = deliver
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.undecodable = 0

    def run(self) -> None:
        delay = RECONNECT_FIRST_SEC
        while not self.stopping.is_set():
            try:
                self._follow()
                delay = RECONNECT_FIRST_SEC
            except Exception as exc:
                self.connected.clear()
                LOGGER.warning(
                    "following %s failed (%r); retrying in %.1fs", self.exchange, exc, delay
                )
                if self.stopping.wait(delay):
                    break
                delay = min(delay * 2, RECONNECT_MAX_SEC)
        self.connected.clear()

    def _follow(self) -> None:
        with MessageBus(self.rabbitmq_config, reconnect_timeout=RECONNECT_MAX_SEC) as bus:
            bus.declare_exchange(self.exchange, "fanout", durable=True)
            bus.declare_queue(self.queue, durable=False, exclusive=True, auto_delete=True)
            bus.bind_queue(self.queue, self.exchange)
            self.connected.set()
            LOGGER.info("following %s through queue %s", self.exchange, self.queue)
            try:
                for message in bus.consume(self.queue, prefetch=200, inactivity_timeout=1.0):
                    if self.stopping.is_set():
                        return
                    if message is None:
                        continue
                    message.ack()
                    try:
                        payload = deserialize_model_result(message.body)
                        if not isinstance(payload, dict):
                            raise ValueError("not a JSON object")
                    except Exception as exc:
                        self.undecodable += 1
                        LOGGER.warning("skipping an undecodable results message (%r)", exc)
                        continue
                    self.deliver(payload, dict(message.headers or {}))
            except MessageQueueNotFound:
                # The exclusive queue went with a lost connection: bind a new one.
                pass
            raise ConnectionError("the results queue was lost")

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.join(timeout)
