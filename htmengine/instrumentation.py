"""Prometheus metrics of every htmengine service, in one place.

Each service counts what crosses its edges (lines in and rejected, rows stored, models swapped, rows
scored) in its own ``CollectorRegistry`` (so tests can build several sets in one process) and serves
it on ``http://127.0.0.1:<metrics_port>/metrics``, the port named in its config section
(`METRICS_PORT_KEYS`). ``htmengine status`` scrapes those endpoints.

"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from htmengine.config import Config, get_app_config, get_model_swapper_config
from htmengine.protocol.errors import REJECT_KINDS

__all__ = [
    "METRICS_PORT_KEYS",
    "AnomalyServiceMetrics",
    "ListenerMetrics",
    "MetricsPortKey",
    "SchedulerMetrics",
    "StorerMetrics",
    "metrics_port",
    "serve_metrics",
]

# Metrics endpoints listen on loopback only: they are for the operator of this machine.
METRICS_HOST = "127.0.0.1"


@dataclass(frozen=True)
class MetricsPortKey:
    """Where a service's metrics port is configured: which config file and section."""

    config_file: str
    section: str


# Service (supervisord program name) -> the config key holding its metrics port.
METRICS_PORT_KEYS: dict[str, MetricsPortKey] = {
    "metric_listener": MetricsPortKey("application.conf", "metric_listener"),
    "metric_storer": MetricsPortKey("application.conf", "metric_storer"),
    "model_scheduler": MetricsPortKey("model-swapper.conf", "model_scheduler"),
    "anomaly_service": MetricsPortKey("application.conf", "anomaly_service"),
}


def metrics_port(service: str) -> int:
    """The configured metrics port of `service` (a key of METRICS_PORT_KEYS)."""
    key = METRICS_PORT_KEYS[service]
    config: Config = (
        get_model_swapper_config() if key.config_file == "model-swapper.conf" else get_app_config()
    )
    return config.getint(key.section, "metrics_port")


def serve_metrics(registry: CollectorRegistry, port: int, host: str = METRICS_HOST) -> bool:
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


# Latency buckets (seconds) for per-batch work: a one-row batch takes milliseconds, a backlog
# batch of 1440 rows several seconds.
_BATCH_SECONDS_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def _rejected_counter(name: str, registry: CollectorRegistry) -> Counter:
    """Messages the poison guard dead-lettered, by reason (htmengine.protocol.errors.REJECT_KINDS)."""
    return Counter(
        name,
        "Messages moved to their dead-letter queue, by reason: " + ", ".join(REJECT_KINDS),
        ["reason"],
        registry=registry,
    )


class SchedulerMetrics:
    """model_scheduler: models in slots and waiting for one, swaps, rows run through models."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.models_running = Gauge(
            "htmengine_scheduler_models_running", "Models loaded in a slot right now", registry=r
        )
        self.models_waiting = Gauge(
            "htmengine_scheduler_models_waiting",
            "Models with pending input that wait for a free slot",
            registry=r,
        )
        self.slots = Gauge("htmengine_scheduler_slots", "Slot worker processes", registry=r)
        self.swaps = Counter(
            "htmengine_scheduler_swaps",
            "Models swapped into a slot (a checkpoint loaded or a model created)",
            registry=r,
        )
        self.preemptions = Counter(
            "htmengine_scheduler_preemptions",
            "Models swapped out of a slot to make room for a waiting one",
            registry=r,
        )
        self.rows_run = Counter(
            "htmengine_scheduler_rows_run", "Input rows run through a model", registry=r
        )
        self.rows_failed = Counter(
            "htmengine_scheduler_rows_failed",
            "Input rows whose inference failed (reported with an error status)",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "htmengine_scheduler_batch_seconds",
            "Time a slot spends on one request batch (load excluded)",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "htmengine_scheduler_load_seconds",
            "Time to swap a model into a slot (checkpoint load)",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.checkpoint_bytes = Counter(
            "htmengine_scheduler_checkpoint_bytes",
            "Bytes of model checkpoints written, by kind (full save or journal append)",
            ["kind"],
            registry=r,
        )
        self.duplicate_batches = Counter(
            "htmengine_scheduler_duplicate_batches",
            "Request batches skipped because their checkpoint already holds them (redeliveries)",
            registry=r,
        )
        self.transient_retries = Counter(
            "htmengine_scheduler_transient_retries",
            "Model runs given back after a disk, I/O or memory fault outlasted the in-place "
            "retries (their input requeued, the model retried later)",
            registry=r,
        )
        # Model input batches (counted by the slot workers) and scheduler notifications.
        self.messages_rejected = _rejected_counter("htmengine_scheduler_messages_rejected", r)


class AnomalyServiceMetrics:
    """anomaly_service: result batches in, rows scored, batches rejected, scoring latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches_received = Counter(
            "htmengine_anomaly_batches_received", "Result batches consumed", registry=r
        )
        self.rows_scored = Counter(
            "htmengine_anomaly_rows_scored",
            "metric_data rows given an anomaly score (committed)",
            registry=r,
        )
        self.batches_rejected = Counter(
            "htmengine_anomaly_batches_rejected",
            "Inference result batches dropped: metric_missing, not_active, model_error",
            ["reason"],
            registry=r,
        )
        self.messages_rejected = _rejected_counter("htmengine_anomaly_messages_rejected", r)
        self.command_results = Counter(
            "htmengine_anomaly_command_results",
            "Model command results handled, by method and outcome (ok, error)",
            ["method", "outcome"],
            registry=r,
        )
        self.results_published = Counter(
            "htmengine_anomaly_results_published",
            "Messages published to the results exchange",
            registry=r,
        )
        self.repairs = Counter(
            "htmengine_reconciler_repairs",
            "Inconsistencies the reconciler repaired: create_pending, pending_data, "
            "orphan_checkpoint, unscored_rows",
            ["repair"],
            registry=r,
        )
        self.scoring_seconds = Histogram(
            "htmengine_anomaly_scoring_seconds",
            "Time to score and store one inference result batch",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )


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
            "Valid UDP lines dropped because the outgoing buffer was full (UDP cannot be paused)",
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
        self.buffered_bytes = Gauge(
            "htmengine_listener_buffered_bytes",
            "Bytes held by lines accepted but not yet confirmed (text and per-line overhead)",
            registry=r,
        )
        self.buffer_limit_bytes = Gauge(
            "htmengine_listener_buffer_limit_bytes",
            "max_buffered_bytes: the outgoing buffer never holds more",
            registry=r,
        )
        self.reading_paused = Gauge(
            "htmengine_listener_reading_paused",
            "1 while reading is paused because the outgoing buffer is full",
            registry=r,
        )

    def set_buffered(self, lines: int, size: int) -> None:
        self.buffered_lines.set(lines)
        self.buffered_bytes.set(size)


class StorerMetrics:
    """metric_storer: messages in, dead-lettered, lines bad, samples stored or dropped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "htmengine_storer_messages_received", "Messages consumed", registry=r
        )
        self.messages_rejected = _rejected_counter("htmengine_storer_messages_rejected", r)
        self.lines_bad = Counter(
            "htmengine_storer_lines_bad",
            "Lines inside good messages that failed to parse or validate (skipped), by reason",
            ["reason"],
            registry=r,
        )
        self.samples_stored = Counter(
            "htmengine_storer_samples_stored", "Rows committed to metric_data", registry=r
        )
        self.samples_dropped = Counter(
            "htmengine_storer_samples_dropped",
            "Samples not stored: out_of_order, duplicate",
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
