"""The parts one webapp process is built of, shared by its routes: settings, database engine,
adapter, line publisher, live fan-out, anomaly ranking and counters."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from htmengine.adapters.datasource import CustomDatasourceAdapter, createDatasourceAdapter
from htmengine.bus import MessageBus
from htmengine.config import Config
from htmengine.instrumentation import ListenerMetrics
from htmengine.logging_support import RateLimitedLogger
from htmengine.protocol.data_queue import encode_data_message
from htmengine.runtime.metric_listener import split_by_bytes
from htmengine.runtime.plaintext_protocol import normalize_lines, timestamp_limit
from htmengine.webapp.auth import check_request
from htmengine.webapp.errors import ApiError
from htmengine.webapp.live import Hub, ResultsFollower
from htmengine.webapp.ranking import AnomalyRanking
from htmengine.webapp.settings import WebappSettings

LOGGER = logging.getLogger("htmengine.webapp")

# Bad lines a refused POST names in its message.
MAX_LINE_ERRORS_SHOWN = 10
# Seconds one publish of posted lines may spend reconnecting before the request fails (503).
PUBLISH_RECONNECT_SEC = 10.0


class WebappMetrics:
    """webapp: live clients and what the results follower saw (beside the listener's counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.live_clients = Gauge(
            "htmengine_webapp_live_clients", "Open live-score streams (SSE)", registry=r
        )
        self.results_followed = Counter(
            "htmengine_webapp_results_followed",
            "Messages received from the results exchange",
            registry=r,
        )
        self.live_overflows = Counter(
            "htmengine_webapp_live_overflows",
            "Live streams closed because the client read too slowly",
            registry=r,
        )


class LinePublisher:
    """Publishes posted lines to the data queue, all of one request in one AMQP transaction."""

    def __init__(self, rabbitmq_config: Config, queue: str) -> None:
        self.rabbitmq_config = rabbitmq_config
        self.queue = queue
        self._bus: MessageBus | None = None
        self._lock = threading.Lock()

    def publish(self, bodies: list[bytes]) -> None:
        with self._lock:
            try:
                if self._bus is None:
                    self._bus = MessageBus(
                        self.rabbitmq_config, reconnect_timeout=PUBLISH_RECONNECT_SEC
                    )
                    self._bus.declare_queue(self.queue)
                self._bus.publish_many(self.queue, bodies)
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            try:
                bus.close()
            except Exception as exc:
                LOGGER.debug("closing the publisher's connection: %r", exc)


class WebappContext:
    """Everything the routes use; `start`/`stop` run the background parts."""

    def __init__(
        self, settings: WebappSettings, engine: sa.Engine, rabbitmq_config: Config
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.rabbitmq_config = rabbitmq_config
        self.metrics = WebappMetrics()
        self.listener_metrics = ListenerMetrics()
        self.bad_line_log = RateLimitedLogger(LOGGER, interval=10.0)
        self.publisher = LinePublisher(rabbitmq_config, settings.data_queue)
        self.ranking = AnomalyRanking(engine, settings.rank_refresh_sec, self._on_ranking)
        self.hub = Hub(settings.client_buffer_bytes, on_scores=self.ranking.mark_dirty)
        self.follower = ResultsFollower(
            rabbitmq_config,
            settings.results_exchange,
            f"{settings.results_exchange}.webapp.{os.getpid()}",
            self._deliver,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._adapter: CustomDatasourceAdapter | None = None
        self._tasks: list[asyncio.Task] = []
        self.auth_dependency = Depends(self.authorize)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self.hub.run_coalescer()))
        self.ranking.start()
        self.follower.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.to_thread(self.follower.stop)
        await asyncio.to_thread(self.ranking.stop)
        self.publisher.close()

    def _deliver(self, payload: dict[str, Any], headers: dict[str, Any]) -> None:
        """From the follower thread: hand a message to the hub on the event loop."""
        self.metrics.results_followed.inc()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.hub.publish, payload, headers)

    def _on_ranking(self, period: int, version: int) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(
                self.hub.broadcast, "ranking", {"period": period, "version": version}
            )

    # -- for the routes ---------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        check_request(request, self.settings.api_key, self.settings.open_reads)

    def adapter(self) -> CustomDatasourceAdapter:
        if self._adapter is None:
            self._adapter = createDatasourceAdapter("custom")
        return self._adapter

    def ingest_lines(self, body: bytes) -> dict[str, Any]:
        """Validate posted lines as the listener does (same counters) and publish them, or
        refuse them all when any is bad."""
        lines = body.split(b"\n")
        limit = timestamp_limit(time.time(), self.settings.max_future_seconds)
        parsed = normalize_lines(lines, self.settings.max_line_bytes, limit=limit)
        counters = self.listener_metrics
        counters.lines_received.inc(len(parsed.good) + parsed.bad_count)
        for reason, count in parsed.bad_by_reason.items():
            counters.lines_rejected.labels(reason).inc(count)
        if parsed.bad_count:
            self.bad_line_log.warning(
                "bad-line",
                "refused a POST with %d bad line(s); e.g. %s",
                parsed.bad_count,
                parsed.bad_example,
            )
            raise ApiError(
                400, self._describe_bad_lines(lines, parsed.bad_count, len(lines), limit)
            )
        if not parsed.good:
            raise ApiError(400, "no lines: send 'name value epoch-seconds' lines as the body")
        # Messages as the listener cuts them: at most batch_max_lines and batch_max_bytes each.
        size = self.settings.batch_max_lines
        batches = []
        for start in range(0, len(parsed.good), size):
            batches.extend(
                split_by_bytes(parsed.good[start : start + size], self.settings.batch_max_bytes)
            )
        self.publisher.publish([encode_data_message(batch) for batch in batches])
        counters.lines_published.inc(len(parsed.good))
        counters.batches_published.inc(len(batches))
        return {"result": "success", "accepted": len(parsed.good)}

    def _describe_bad_lines(
        self, lines: list[bytes], bad_count: int, total: int, limit: int
    ) -> str:
        shown = []
        for number, line in enumerate(lines, start=1):
            single = normalize_lines([line], self.settings.max_line_bytes, limit=limit)
            if single.bad_example is not None:
                shown.append(f"line {number}: {single.bad_example}")
                if len(shown) == MAX_LINE_ERRORS_SHOWN:
                    break
        return (
            f"{bad_count} of {total} lines are invalid, so none was stored "
            "(a line is 'name value epoch-seconds'): " + "; ".join(shown)
        )

    def stream(self, uid: str | None) -> StreamingResponse:
        subscriber = self.hub.subscribe(uid)
        self.metrics.live_clients.set(self.hub.subscriber_count)

        async def body():
            try:
                async for chunk in self.hub.stream(subscriber):
                    yield chunk
            finally:
                if subscriber.overflowed:
                    self.metrics.live_overflows.inc()
                self.metrics.live_clients.set(self.hub.subscriber_count)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def prometheus_text(self) -> bytes:
        return generate_latest(self.metrics.registry) + generate_latest(
            self.listener_metrics.registry
        )
