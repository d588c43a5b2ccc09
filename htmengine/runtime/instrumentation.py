"""Counters of what crosses each ingestion service's edges, served as Prometheus metrics.

Each service builds its own set in its own registry (so tests can build several in one process)
and serves it on its configured ``metrics_port`` at ``/metrics``.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> bool:
    """Serve `registry` at http://host:port/metrics from a daemon thread (port 0: don't serve).

    Returns False when the port is taken: with several processes of one program (supervisord
    numprocs) the first one serves its counters and the others run without.
    """
    if not port:
        return False
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        logging.getLogger(__name__).warning("not serving /metrics on port %d: %s", port, exc)
        return False
    return True


class ListenerMetrics:
    """metric_listener: lines in, lines rejected at the edge, lines and batches published."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lines_received = Counter(
            "htmengine_listener_lines_received", "Non-blank lines received", registry=r
        )
        self.lines_rejected = Counter(
            "htmengine_listener_lines_rejected",
            "Lines rejected by validation (never forwarded)",
            ["reason"],
            registry=r,
        )
        self.lines_dropped = Counter(
            "htmengine_listener_lines_dropped",
            "Valid UDP lines dropped because the outgoing buffer was full",
            registry=r,
        )
        self.lines_published = Counter(
            "htmengine_listener_lines_published", "Lines confirmed by the broker", registry=r
        )
        self.batches_published = Counter(
            "htmengine_listener_batches_published", "Messages confirmed by the broker", registry=r
        )
        self.publish_failures = Counter(
            "htmengine_listener_publish_failures",
            "Failed publish attempts (each is retried)",
            registry=r,
        )
        self.connections_open = Gauge(
            "htmengine_listener_connections_open", "Open TCP connections", registry=r
        )
        self.connections_refused = Counter(
            "htmengine_listener_connections_refused",
            "TCP connections closed at once because max_connections were open",
            registry=r,
        )
        self.connections_timed_out = Counter(
            "htmengine_listener_connections_timed_out",
            "TCP connections closed after idle_timeout_sec without data",
            registry=r,
        )
        self.buffered_lines = Gauge(
            "htmengine_listener_buffered_lines",
            "Valid lines accepted but not yet confirmed by the broker",
            registry=r,
        )
        self.reading_paused = Gauge(
            "htmengine_listener_reading_paused",
            "1 while reading is paused because the outgoing buffer is full",
            registry=r,
        )


class StorerMetrics:
    """metric_storer: messages in, dead-lettered, lines bad, samples stored or dropped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "htmengine_storer_messages_received", "Messages consumed", registry=r
        )
        self.messages_rejected = Counter(
            "htmengine_storer_messages_rejected",
            "Messages moved to the dead-letter queue",
            ["reason"],
            registry=r,
        )
        self.lines_bad = Counter(
            "htmengine_storer_lines_bad",
            "Lines inside good messages that failed to parse (skipped)",
            registry=r,
        )
        self.samples_stored = Counter(
            "htmengine_storer_samples_stored", "Rows committed to metric_data", registry=r
        )
        self.samples_dropped = Counter(
            "htmengine_storer_samples_dropped",
            "Samples not stored: out_of_order, duplicate, metric_error",
            ["reason"],
            registry=r,
        )
        self.metrics_created = Counter(
            "htmengine_storer_metrics_created", "Custom metrics created", registry=r
        )
        self.transaction_seconds = Histogram(
            "htmengine_storer_transaction_seconds",
            "Duration of one storing transaction (many messages)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
