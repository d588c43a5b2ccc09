"""The custom datasource adapter: metrics that clients push (graphite lines), and their models.

Obtain it with ``createDatasourceAdapter("custom")``. Method names are the original's, so an app
written for htmengine keeps working. Every status change is made by `htmengine.engine.lifecycle`
in its own transaction; the broker is only used after a commit, so a failed publish never undoes
database work.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import sqlalchemy as sa

from htmengine.adapters.datasource.model_spec import (
    validate_custom_metric_spec,
    validate_model_spec,
)
from htmengine.config import get_app_config
from htmengine.engine import lifecycle
from htmengine.engine.model_input import configured_chunk_size
from htmengine.engine.swarm_params import (
    MODEL_CREATION_RECORD_THRESHOLD,
    generate_swarm_params,
    swarm_params_from_complete_model_params,
)
from htmengine.exceptions import MetricAlreadyExists, MetricNotFound
from htmengine.repository import MetricStatus, get_engine, queries
from htmengine.repository.retry import retry_on_transient_db_errors
from htmengine.repository.schema import metric, metric_data
from htmengine.runtime.likelihood_profiles import profile_from_config

LOGGER = logging.getLogger("htmengine.custom_datasource_adapter")

# exportModel includes the rows of this many most recent days.
EXPORT_DATA_DAYS = 14

# Timestamp format of rows in an export file (importModel accepts it as well as datetimes).
EXPORT_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


class CustomDatasourceAdapter:
    """createMetric, monitorMetric, unmonitorMetric, activateModel, export/import, delete."""

    DATASOURCE = "custom"

    def __init__(self, engine: sa.Engine | None = None) -> None:
        self.engine = engine if engine is not None else get_engine()
        config = get_app_config()
        self.chunk_size = configured_chunk_size(config)
        # Rows a model's range comes from ([anomaly_likelihood] profile); None: all stored rows.
        self.range_rows = profile_from_config(config).range_rows

    # -- metrics ---------------------------------------------------------------------------------

    @retry_on_transient_db_errors
    def createMetric(self, metricName: str) -> str:
        """Create an UNMONITORED custom metric; returns its uid.

        Raises MetricAlreadyExists (with `.uid`) when a custom metric of that name exists.
        """
        _check_metric_name(metricName)
        with self.engine.begin() as conn:
            try:
                existing = queries.get_custom_metric_by_name(conn, metricName, [metric.c.uid])
            except MetricNotFound:
                pass
            else:
                raise MetricAlreadyExists(
                    f"custom metric {metricName!r} already exists (uid {existing.uid})",
                    uid=existing.uid,
                )
            uid, _ = queries.create_custom_metric(conn, metricName)
        LOGGER.info("created custom metric %s (%s)", uid, metricName)
        return uid

    def _get_or_create(self, name: str) -> str:
        try:
            return self.createMetric(name)
        except MetricAlreadyExists as exc:
            return exc.uid

    def deleteMetricByName(self, metricName: str) -> None:
        """Delete a custom metric, its data and its model. Raises MetricNotFound."""
        with self.engine.connect() as conn:
            row = queries.get_custom_metric_by_name(
                conn, metricName, [metric.c.uid, metric.c.status]
            )
        if row.status != MetricStatus.UNMONITORED:
            self.unmonitorMetric(row.uid)
        with self.engine.begin() as conn:
            queries.delete_metric(conn, row.uid)
        LOGGER.info("deleted custom metric %s (%s)", row.uid, metricName)

    # -- models ----------------------------------------------------------------------------------

    def monitorMetric(self, modelSpec: dict[str, Any]) -> str:
        """Start monitoring a metric (facts §1.7); returns its uid.

        The spec names the metric by ``metricSpec.metric`` (created if missing) or by
        ``metricSpec.uid`` (must exist; the stored spec is rewritten to the name form). With
        min/max (or complete params, or >= 288 stored rows) the model is created at once
        (CREATE_PENDING, then ACTIVE when the model confirms); otherwise the metric waits in
        PENDING_DATA for its 288th row.

        Raises ValueError (bad spec; nothing is changed), MetricNotFound (unknown uid),
        TypeError (not a custom metric), MetricAlreadyMonitored (with `.uid`).
        """
        spec = validate_model_spec(modelSpec)
        if spec["datasource"] != self.DATASOURCE:
            raise ValueError(
                f"datasource must be {self.DATASOURCE!r} for this adapter, got {spec['datasource']!r}"
            )
        metric_spec = spec["metricSpec"]
        validate_custom_metric_spec(metric_spec)
        if "uid" in metric_spec:
            uid = metric_spec.pop("uid")
            with self.engine.connect() as conn:
                row = queries.get_metric(conn, uid, [metric.c.name, metric.c.datasource])
            if row.datasource != self.DATASOURCE:
                raise TypeError(
                    f"metric {uid} is not a custom metric (datasource {row.datasource})"
                )
            metric_spec["metric"] = row.name
        else:
            uid = self._get_or_create(metric_spec["metric"])

        swarm_params = self._swarm_params(uid, spec)
        lifecycle.start_model(
            self.engine,
            lambda conn: lifecycle.monitor(
                conn, uid, spec, swarm_params, datasource=self.DATASOURCE
            ),
            None,
            self.chunk_size,
        )
        return uid

    def _swarm_params(self, uid: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        if "completeModelParams" in spec:
            return swarm_params_from_complete_model_params(spec["completeModelParams"])
        params = spec.get("modelParams", {})
        low, high = params.get("min"), params.get("max")
        if low is None:
            with self.engine.connect() as conn:
                if queries.get_metric_data_count(conn, uid) >= MODEL_CREATION_RECORD_THRESHOLD:
                    low, high = lifecycle.range_from_data(conn, uid, self.range_rows)
        return generate_swarm_params(
            low, high, params.get("minResolution"), params.get("enableClassifier", False)
        )

    def activateModel(self, metricId: str) -> bool:
        """Create the model of a PENDING_DATA metric from its stored data's range.

        Returns False if the model already exists or is being created. The metric storer does
        the same (`lifecycle.activate_from_data`) when the 288th row arrives.
        """
        with self.engine.connect() as conn:
            row = queries.get_metric(conn, metricId, [metric.c.datasource])
        if row.datasource != self.DATASOURCE:
            raise TypeError(f"metric {metricId} is not a custom metric")
        return lifecycle.activate_from_data(
            self.engine, metricId, None, self.chunk_size, range_rows=self.range_rows
        )

    def unmonitorMetric(self, metricId: str) -> None:
        """Forget a metric's model: UNMONITORED, scores cleared, model deleted.

        Raises MetricNotFound.
        """
        lifecycle.stop_model(self.engine, metricId, None)
        LOGGER.info("unmonitored metric %s", metricId)

    # -- export / import ---------------------------------------------------------------------------

    def exportModel(self, metricId: str) -> dict[str, Any]:
        """The metric's model spec plus ``data``: [[value, naive-UTC datetime], ...] of its last
        14 days, for importModel (the original's layout; `export_file_data` makes it JSON)."""
        with self.engine.connect() as conn:
            row = queries.get_metric(
                conn, metricId, [metric.c.name, metric.c.datasource, metric.c.parameters]
            )
            if row.datasource != self.DATASOURCE:
                raise TypeError(f"metric {metricId} is not a custom metric")
            if not row.parameters:
                raise ValueError(
                    f"metric {metricId} ({row.name}) is not monitored: nothing to export"
                )
            since = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(
                days=EXPORT_DATA_DAYS
            )
            rows = queries.get_metric_data(
                conn,
                metricId,
                (metric_data.c.metric_value, metric_data.c.timestamp),
                from_timestamp=since,
            )
        spec = json.loads(row.parameters)
        spec["data"] = [[r.metric_value, r.timestamp] for r in rows]
        return spec

    def importModel(self, spec: dict[str, Any]) -> str:
        """Recreate an exported metric: create it (or reuse it), load its data if it has none,
        then monitor it with the exported spec. Returns the uid (already monitored: unchanged)."""
        if not isinstance(spec, dict):
            raise ValueError("an exported model spec must be a dict")
        model_spec = {key: value for key, value in spec.items() if key != "data"}
        validate_model_spec(model_spec)
        name = model_spec["metricSpec"].get("metric")
        if name is None:
            raise ValueError("importModel needs metricSpec.metric (the metric's name)")
        data = _parse_exported_data(spec.get("data") or [])
        uid = self._get_or_create(name)
        if not self._load_data(uid, data):
            return uid
        return self.monitorMetric(model_spec)

    @retry_on_transient_db_errors
    def _load_data(self, uid: str, data: list[tuple[datetime.datetime, float]]) -> bool:
        """Insert exported rows into a metric that has none; False if it is already monitored."""
        with self.engine.begin() as conn:
            row = queries.lock_metric_for_update(conn, uid)
            if row.status != MetricStatus.UNMONITORED:
                LOGGER.info("importModel: metric %s is already monitored", uid)
                return False
            if data and queries.get_metric_data_count(conn, uid) == 0:
                queries.add_metric_data(conn, uid, data, last_rowid=row.last_rowid or 0)
        return True

    # -- misc ------------------------------------------------------------------------------------

    def getMatchingResources(self, aggSpec: dict[str, Any]) -> list:
        raise NotImplementedError("custom metrics do not support resource matching")

    def getInstanceNameForModelSpec(self, spec: dict[str, Any]) -> str | None:
        """The resource (server) a spec names, if any."""
        return spec.get("metricSpec", {}).get("resource")


def _check_metric_name(name: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > 255:
        raise ValueError(f"a metric name must be a non-empty string of <= 255 characters: {name!r}")


def export_file_data(exported: dict[str, Any]) -> dict[str, Any]:
    """An exportModel result with its timestamps as text (what an export file holds)."""
    return dict(
        exported,
        data=[
            [value, timestamp.strftime(EXPORT_TIMESTAMP_FORMAT)]
            for value, timestamp in exported.get("data") or []
        ],
    )


def _parse_exported_data(data: Any) -> list[tuple[datetime.datetime, float]]:
    """[[value, timestamp], ...] -> [(timestamp, value)] sorted by time; clear errors otherwise."""
    parsed = []
    for index, item in enumerate(data):
        try:
            value, timestamp = item
            if isinstance(timestamp, str):
                timestamp = datetime.datetime.strptime(timestamp, EXPORT_TIMESTAMP_FORMAT)
            if not isinstance(timestamp, datetime.datetime):
                raise TypeError(f"timestamp {timestamp!r} is not a datetime")
            parsed.append((timestamp, float(value)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data[{index}] is not [value, timestamp]: {item!r} ({exc})") from exc
    parsed.sort(key=lambda pair: pair[0])
    return parsed
