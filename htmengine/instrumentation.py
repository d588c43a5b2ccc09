"""Prometheus metrics of every htmengine service, in one place.

Each service counts what crosses its edges (lines in and rejected, rows stored, models swapped, rows
scored) in its own ``CollectorRegistry`` (so tests can build several sets in one process) and serves
it on ``http://127.0.0.1:<metrics_port>/metrics``, the port named in its config section
(`METRICS_PORT_KEYS`). ``htmengine status`` scrapes those endpoints.

The ingestion services' sets (`ListenerMetrics`, `StorerMetrics`) live beside them in
``htmengine.runtime.instrumentation`` and are re-exported here; the model scheduler's and the
anomaly service's sets are defined below.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from htmengine.config import Config, get_app_config, get_model_swapper_config
from htmengine.runtime.instrumentation import ListenerMetrics, StorerMetrics, serve_metrics

__all__ = [
    "METRICS_PORT_KEYS",
    "AnomalyServiceMetrics",
    "ListenerMetrics",
    "MetricsPortKey",
    "SchedulerMetrics",
    "StorerMetrics",
    "metrics_port",
    "start_metrics_server",
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


def start_metrics_server(port: int, registry: CollectorRegistry) -> None:
    """Serve `registry` at http://127.0.0.1:`port`/metrics from a daemon thread (port 0: don't)."""
    serve_metrics(registry, port, METRICS_HOST)


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
            "Inference result batches dropped: metric_missing, not_active, rowid_mismatch, "
            "model_error, undecodable",
            ["reason"],
            registry=r,
        )
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
        self.scoring_seconds = Histogram(
            "htmengine_anomaly_scoring_seconds",
            "Time to score and store one inference result batch",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )
