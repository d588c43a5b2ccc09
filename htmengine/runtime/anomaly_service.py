"""Anomaly service: model results in, anomaly scores written to metric_data and published.

Consumes the model swapper's results queue (``model-swapper.conf [interface_bus] results_queue``).

* Command results: a successful ``defineModel`` of the pending start moves a metric
  CREATE_PENDING -> ACTIVE; a failure that proves the model unusable moves it to ERROR with the
  error text in ``metric.message`` (the transitions and the result-code contract are
  `htmengine.engine.lifecycle`'s). Every command result is then published to the results exchange
  with the header ``dataType: model-cmd-result``.
* Inference results of an ACTIVE metric are matched to metric_data rows by rowid. Rows that already
  have a raw score are skipped, so a redelivered batch never counts twice. The raw scores go
  through the likelihood helper (state in ``metric.model_params["anomalyLikelihoodParams"]``) and
  raw_anomaly_score, anomaly_score, display_value and multi_step_best_predictions are written with
  multi-row statements in the same transaction as the new likelihood state. A failed row is
  reported and left unscored; only a model that is missing or unusable (a status in
  exceptions.PERMANENT_FAILURES) puts the metric into ERROR.
* Between batches (every ``[reconciler] interval_sec``) the reconciler repairs what a crash
  between a commit and its publish left behind (`htmengine.engine.reconciler`): this service runs
  it because it already applies the lifecycle's model-side transitions, is one process, and holds
  the database engine and a broker connection; a pass between batches never races its own
  activations.
* After the commit the scored rows are published, zlib-compressed JSON, to the durable fanout
  exchange ``application.conf [metric_streamer] results_exchange_name``; then the batch is acked.
  A batch redelivered after a crash between commit and ack publishes its rows again (at-least-once
  on the exchange, as everywhere else).

Payloads: `htmengine.protocol.results` (facts §4.3); applications decode them with
`deserializeModelResult` from there (also ``AnomalyService.deserializeModelResult``, as in the
original, and `deserialize_model_result` here).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pika.exceptions import AMQPError
from sqlalchemy.engine import Connection, Row

from htmengine import exceptions
from htmengine.boot import ServiceBoot, run_service
from htmengine.bus import MessageBus, MessageBusError, PoisonGuard
from htmengine.config import get_app_config
from htmengine.engine import lifecycle
from htmengine.engine.model_input import configured_chunk_size
from htmengine.engine.reconciler import Reconciler
from htmengine.htm.params import DEFAULT_VERSION
from htmengine.instrumentation import AnomalyServiceMetrics
from htmengine.logging_support import RateLimitedLogger, service_logger
from htmengine.model_swapper.model_swapper_interface import (
    ModelCommandResult,
    ModelInferenceResult,
    ModelSwapperInterface,
    ResultBatch,
    is_start_reset,
)
from htmengine.protocol.errors import PROCESSING_FAILED, UndecodableMessage
from htmengine.protocol.results import (
    COMMAND_RESULT_HEADERS,
    deserialize_model_result,
    inference_message,
    result_row,
    serialize_model_result,
)
from htmengine.repository import MetricStatus, get_engine, queries
from htmengine.repository.retry import retry_on_transient_db_errors
from htmengine.repository.schema import metric_data
from htmengine.runtime.anomaly_likelihood_helper import (
    AnomalyLikelihoodHelper,
    ScoredRow,
    rescale_for_display,
)
from htmengine.runtime.likelihood_profiles import profile_from_config

__all__ = ["AnomalyService", "deserialize_model_result", "main", "serialize_model_result"]

SERVICE_NAME = "anomaly_service"
LOGGER = service_logger(SERVICE_NAME)

# Key of the likelihood state inside metric.model_params.
LIKELIHOOD_PARAMS_KEY = "anomalyLikelihoodParams"

# Result batches taken from the broker ahead of processing.
PREFETCH = 20

# Seconds the consumer waits for a batch before checking whether it was asked to stop.
IDLE_CHECK_SEC = 1.0


class AnomalyService:
    """Processes result batches; `run` consumes them until `stop` is called."""

    # The original's names for the results exchange's body.
    serializeModelResult = staticmethod(serialize_model_result)
    deserializeModelResult = staticmethod(deserialize_model_result)

    def __init__(
        self,
        bus: MessageBus,
        swapper: ModelSwapperInterface,
        results_exchange: str,
        helper: AnomalyLikelihoodHelper,
        chunk_size: int,
        engine: sa.Engine | None = None,
        metrics: AnomalyServiceMetrics | None = None,
        reconciler: Reconciler | None = None,
    ) -> None:
        self.bus = bus
        self.swapper = swapper
        self.results_exchange = results_exchange
        self.helper = helper
        self.chunk_size = chunk_size
        self.metrics = metrics if metrics is not None else AnomalyServiceMetrics()
        self.engine = engine if engine is not None else get_engine()
        self.reconciler = reconciler
        self._stop = threading.Event()
        self._failures = RateLimitedLogger(LOGGER)
        self.guard = PoisonGuard(
            LOGGER, lambda kind: self.metrics.messages_rejected.labels(kind).inc()
        )

    # -- consuming -------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume result batches until stopped; each is acked after its effects are durable."""
        self.bus.declare_exchange(self.results_exchange, exchange_type="fanout", durable=True)
        LOGGER.info(
            "consuming %s, publishing to exchange %s",
            self.swapper.results_queue,
            self.results_exchange,
        )
        with self.swapper.consumeResults(
            prefetch=PREFETCH, inactivity_timeout=IDLE_CHECK_SEC, guard=self.guard
        ) as consumer:
            for batch in consumer:
                if batch is not None:
                    self.handle_batch(batch)
                if self.reconciler is not None:
                    self.reconciler.maybe_run()
                if self._stop.is_set():
                    break
        LOGGER.info("stopped")

    def stop(self) -> None:
        self._stop.set()

    def handle_batch(self, batch: ResultBatch) -> None:
        """Process one result batch, publish what it produced, then ack it.

        A batch that fails for a reason other than the database or the broker (a bug, a value it
        cannot handle) is moved to ``<results_queue>.rejected`` by the poison guard, so it cannot
        block the queue; database and broker errors are retried and, if they persist, end the
        process (supervisord restarts it and the broker redelivers the batch).
        """
        started = time.monotonic()
        self.metrics.batches_received.inc()
        try:
            publications = self.process_batch(batch.modelID, batch.objects, batch.redelivered)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, MessageBusError, AMQPError):
            raise
        except Exception as exc:
            LOGGER.exception("result batch of model %s cannot be processed", batch.modelID)
            reason = f"cannot be processed: {type(exc).__name__}: {str(exc)[:500]}"
            self.guard.reject(batch.message, UndecodableMessage(reason, PROCESSING_FAILED))
            return
        for body, headers in publications:
            self.bus.publish_exchange(self.results_exchange, body, headers=headers)
            self.metrics.results_published.inc()
        batch.ack()
        self.metrics.scoring_seconds.observe(time.monotonic() - started)

    # -- processing ------------------------------------------------------------------------------

    def process_batch(
        self, model_id: str, results: Sequence[Any], redelivered: bool = False
    ) -> list[tuple[bytes, dict | None]]:
        """Apply one result batch to the database; returns the (body, headers) to publish.

        Command results are applied one by one, in order; the inference results of the batch
        are applied together, in one transaction.
        """
        publications: list[tuple[bytes, dict | None]] = []
        inference_results: list[ModelInferenceResult] = []
        for result in results:
            if isinstance(result, ModelCommandResult):
                notice = self._apply_command_result(model_id, result)
                outcome = "ok" if result.status == exceptions.SUCCESS else "error"
                self.metrics.command_results.labels(result.method, outcome).inc()
                if notice is not None:
                    publications.append((serialize_model_result(notice), COMMAND_RESULT_HEADERS))
            elif isinstance(result, ModelInferenceResult):
                inference_results.append(result)
            else:
                raise TypeError(f"unexpected item {result!r} in a result batch")
        if inference_results:
            message = self._apply_inference_results(model_id, inference_results, redelivered)
            if message is not None:
                publications.append((serialize_model_result(message), None))
        return publications

    @retry_on_transient_db_errors
    def _apply_command_result(self, model_id: str, result: ModelCommandResult) -> dict | None:
        notice: dict[str, Any] = {
            "method": result.method,
            "modelId": model_id,
            "commandId": result.commandID,
            "status": result.status,
            "errorMessage": result.errorMessage,
        }
        if result.method == "deleteModel":
            LOGGER.info("model %s deleted (status %s)", model_id, result.status)
            # A model start's own reset is no news for applications: they asked for a model.
            return None if is_start_reset(result.commandID) else notice
        with self.engine.begin() as conn:
            try:
                # Waits for an adapter transaction that is still writing this metric.
                row = queries.get_metric(
                    conn,
                    model_id,
                    ("uid", "name", "server", "status", "parameters"),
                    for_update=True,
                )
            except exceptions.MetricNotFound:
                LOGGER.warning("%s result for unknown model %s (deleted?)", result.method, model_id)
                return None
            if result.status != exceptions.SUCCESS:
                LOGGER.error(
                    "%s failed for model %s (%s): %s",
                    result.method,
                    model_id,
                    row.name,
                    result.errorMessage,
                )
                if exceptions.is_permanent_failure(result.status):
                    lifecycle.model_unusable(
                        conn, model_id, result.errorMessage, command_id=result.commandID
                    )
                return notice
            if result.method == "defineModel":
                lifecycle.confirm_model(
                    conn, model_id, result.commandID, self.swapper, self.chunk_size
                )
                if not row.parameters:
                    return None
                notice["modelInfo"] = {
                    "metricName": row.name,
                    "resource": row.server,
                    "modelSpec": json.loads(row.parameters),
                }
        return notice

    @retry_on_transient_db_errors
    def _apply_inference_results(
        self, model_id: str, results: Sequence[ModelInferenceResult], redelivered: bool
    ) -> dict | None:
        """Score the batch's rows in one transaction; returns the message to publish (or None)."""
        with self.engine.begin() as conn:
            try:
                metric_row = queries.get_metric(conn, model_id, for_update=True)
            except exceptions.MetricNotFound:
                LOGGER.warning("inference results for unknown model %s (deleted?)", model_id)
                self.metrics.batches_rejected.labels("metric_missing").inc()
                return None
            if metric_row.status != MetricStatus.ACTIVE:
                LOGGER.warning(
                    "dropping %d inference results of model %s in status %s",
                    len(results),
                    model_id,
                    metric_row.status,
                )
                self.metrics.batches_rejected.labels("not_active").inc()
                return None

            rowids = [result.rowID for result in results]
            stored = {
                row.rowid: row
                for row in queries.get_metric_data(
                    conn,
                    model_id,
                    _DATA_FIELDS,
                    start_rowid=min(rowids),
                    stop_rowid=max(rowids),
                )
            }
            new_rows, predictions, rescored, unusable = self._match(model_id, results, stored)
            if unusable is not None:
                lifecycle.model_unusable(conn, model_id, unusable)
                self.metrics.batches_rejected.labels("model_error").inc()
                return None
            if new_rows:
                model_params = json.loads(metric_row.model_params or "{}")
                state = self.helper.update_scores(
                    new_rows,
                    model_params.get(LIKELIHOOD_PARAMS_KEY),
                    lambda limit: _scored_history(conn, model_id, limit),
                    version=model_params.get("modelConfig", {}).get(
                        "nupicVersion", DEFAULT_VERSION
                    ),
                )
                queries.update_metric_data_scores(
                    conn,
                    model_id,
                    [
                        queries.ScoreUpdate(
                            row.rowid,
                            row.raw_anomaly_score,
                            row.anomaly_score,
                            rescale_for_display(row.anomaly_score),
                            json.dumps(predictions[row.rowid]),
                        )
                        for row in new_rows
                    ],
                )
                if state is None:
                    model_params.pop(LIKELIHOOD_PARAMS_KEY, None)
                else:
                    model_params[LIKELIHOOD_PARAMS_KEY] = state
                queries.update_metric_columns(
                    conn, model_id, {"model_params": json.dumps(model_params)}
                )
                self.metrics.rows_scored.inc(len(new_rows))

        # The message carries the predictions themselves (null or a dict), the column their JSON.
        published = [
            result_row(
                row.rowid,
                row.timestamp,
                row.value,
                row.raw_anomaly_score,
                row.anomaly_score,
                predictions[row.rowid],
            )
            for row in new_rows
        ]
        if redelivered:
            # The previous delivery may have committed without publishing: publish again.
            published.extend(
                result_row(
                    row.rowid,
                    row.timestamp,
                    row.metric_value,
                    row.raw_anomaly_score,
                    row.anomaly_score,
                    json.loads(row.multi_step_best_predictions or "null"),
                )
                for row in rescored
            )
            published.sort(key=lambda item: item["rowid"])
        if not published:
            return None
        return inference_message(_published_metric(metric_row), published)

    def _match(
        self,
        model_id: str,
        results: Sequence[ModelInferenceResult],
        stored: dict[int, Row],
    ) -> tuple[list[ScoredRow], dict[int, Any], list[Row], str | None]:
        """Pair results with stored rows: (rows to score, their predictions, rows already scored,
        None); or ([], {}, [], reason) when a result proves the model unusable.

        Rows already scored (a redelivery) are skipped; results without a row are dropped; failed
        results are reported and their rows left unscored.
        """
        new_rows: dict[int, ScoredRow] = {}
        predictions: dict[int, Any] = {}
        rescored: dict[int, Row] = {}
        for result in results:
            row = stored.get(result.rowID)
            if row is None:
                self._failures.warning(
                    f"no_row:{model_id}",
                    "model %s: result for rowid %s has no metric_data row",
                    model_id,
                    result.rowID,
                )
                continue
            if row.raw_anomaly_score is not None:
                rescored[row.rowid] = row
                continue
            if result.status != exceptions.SUCCESS:
                self._failures.warning(
                    f"failed:{model_id}",
                    "model %s: row %s not scored (status %s): %s",
                    model_id,
                    result.rowID,
                    result.status,
                    result.errorMessage,
                )
                if exceptions.is_permanent_failure(result.status):
                    return [], {}, [], result.errorMessage
                continue
            new_rows[row.rowid] = ScoredRow(
                rowid=row.rowid,
                timestamp=row.timestamp,
                value=row.metric_value,
                raw_anomaly_score=float(result.anomalyScore),
            )
            predictions[row.rowid] = result.multiStepBestPredictions
        ordered = [new_rows[rowid] for rowid in sorted(new_rows)]
        return ordered, predictions, [rescored[rowid] for rowid in sorted(rescored)], None


_DATA_FIELDS = (
    metric_data.c.rowid,
    metric_data.c.timestamp,
    metric_data.c.metric_value,
    metric_data.c.raw_anomaly_score,
    metric_data.c.anomaly_score,
    metric_data.c.multi_step_best_predictions,
)


def _scored_history(conn: Connection, uid: str, limit: int) -> list[ScoredRow]:
    """The newest `limit` scored rows of a metric, oldest first (the likelihood's sample window)."""
    rows = queries.get_metric_data(
        conn,
        uid,
        (
            metric_data.c.rowid,
            metric_data.c.timestamp,
            metric_data.c.metric_value,
            metric_data.c.raw_anomaly_score,
        ),
        processed=True,
        sort=metric_data.c.rowid.desc(),
        limit=limit,
    )
    return [
        ScoredRow(row.rowid, row.timestamp, row.metric_value, row.raw_anomaly_score)
        for row in reversed(rows)
    ]


def _published_metric(row: Row) -> dict[str, Any]:
    parameters = json.loads(row.parameters) if row.parameters else {}
    return {
        "uid": row.uid,
        "name": row.name,
        "description": row.description,
        "resource": row.server,
        "location": row.location,
        "datasource": row.datasource,
        "spec": parameters.get("metricSpec"),
    }


def run_process(boot: ServiceBoot) -> None:
    """Score result batches until SIGTERM/SIGINT (the current batch is finished first)."""
    config = get_app_config()
    exchange = config.get("metric_streamer", "results_exchange_name")
    helper = AnomalyLikelihoodHelper.from_config(config)
    chunk_size = configured_chunk_size(config)
    metrics = AnomalyServiceMetrics()
    with MessageBus() as bus, ModelSwapperInterface(bus=bus) as swapper:
        reconciler = Reconciler.from_config(
            get_engine(),
            swapper,
            chunk_size,
            count=lambda repair: metrics.repairs.labels(repair).inc(),
            range_rows=profile_from_config(config).range_rows,
            config=config,
        )
        service = AnomalyService(
            bus, swapper, exchange, helper, chunk_size, metrics=metrics, reconciler=reconciler
        )
        boot.serve_metrics(metrics.registry)
        boot.on_stop(service.stop)
        service.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m htmengine.runtime.anomaly_service``."""
    argparse.ArgumentParser(description="htmengine anomaly service").parse_args(argv)
    return run_service(SERVICE_NAME, run_process)


if __name__ == "__main__":
    sys.exit(main())
