"""The JSON API, on HTM-IT's custom-metric paths where it had one.

=========================================  ===================================================
``GET    /_metrics/custom``                custom metrics with status and newest row
``POST   /_metrics/custom``                create a metric ``{"name": ...}``
``DELETE /_metrics/custom/{name}``         delete a metric, its data and its model
``POST   /_metrics/custom/data``           graphite plaintext lines, as sent to port 2003
``GET    /_models``                        monitored metrics
``POST   /_models``                        monitor (a model spec, or a list), or import (with data)
``GET    /_models/export``                 export every monitored metric
``GET    /_models/{uid}``                  one metric
``DELETE /_models/{uid}``                  unmonitor
``GET    /_models/{uid}/data``             rows over a time window, paged
``GET    /_models/{uid}/export``           export one metric (spec + 14 days of data)
``GET    /_anomalies``                     the periods (hours) the ranking is offered for
``GET    /_anomalies/period/{hours}``      metrics sorted by anomaly over the last hours
``GET    /_stream``, ``/_models/{uid}/stream``  live scores (server-sent events)
=========================================  ===================================================

Blocking work (SQL, the adapter, the broker) runs in the thread pool; engine exceptions become
JSON errors with their status code (errors.py).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from htmengine.adapters.datasource.custom import export_file_data
from htmengine.adapters.datasource.model_spec import (
    validate_custom_metric_spec,
    validate_model_spec,
)
from htmengine.exceptions import MetricNotFound
from htmengine.repository import MetricStatus, queries
from htmengine.repository.schema import metric_data
from htmengine.runtime.plaintext_protocol import parse_samples
from htmengine.webapp.context import WebappContext
from htmengine.webapp.errors import ApiError, api_error_for
from htmengine.webapp.live import ROW_NAMES, format_timestamp
from htmengine.webapp.ranking import sort_by_anomaly

T = TypeVar("T")

# The periods HTM-IT's UI offered (2 hours, a day, 8 days).
ANOMALY_PERIODS = (2, 24, 192)
MAX_PERIOD_HOURS = 24 * 366
DEFAULT_DATA_LIMIT = 1000
MAX_DATA_LIMIT = 100_000
# Bad lines named in the message of a refused POST of lines.
MAX_LINE_ERRORS_SHOWN = 10

_DATA_FIELDS = (
    metric_data.c.timestamp,
    metric_data.c.metric_value,
    metric_data.c.anomaly_score,
    metric_data.c.rowid,
    metric_data.c.raw_anomaly_score,
    metric_data.c.display_value,
)


async def blocking(function: Callable[..., T], *args: Any) -> T:
    """Run `function` in the thread pool; engine exceptions become ApiErrors."""
    try:
        return await run_in_threadpool(function, *args)
    except Exception as exc:
        error = api_error_for(exc)
        if error is None:
            raise
        raise error from exc


def metric_dict(row: Any) -> dict[str, Any]:
    """A metric row as JSON: timestamps as text, parameters parsed, status also by name."""
    item = dict(row._mapping)
    for key, value in item.items():
        if isinstance(value, datetime.datetime):
            item[key] = format_timestamp(value)
    if item.get("parameters"):
        try:
            item["parameters"] = json.loads(item["parameters"])
        except ValueError:
            pass
    status = item.get("status") or 0
    try:
        item["status_name"] = MetricStatus(status).name
    except ValueError:
        item["status_name"] = str(status)
    item["display_name"] = item.get("name")
    return item


def parse_time(text: str, what: str) -> datetime.datetime:
    """'YYYY-MM-DD HH:MM:SS', ISO 8601 (a zone is converted to UTC) or epoch seconds -> naive UTC."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or not 0 <= seconds < 4102444800:
            raise ApiError(400, f"{what}: {text!r} is not epoch seconds in 1970..2099")
        return datetime.datetime.fromtimestamp(int(seconds), datetime.UTC).replace(tzinfo=None)
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400,
            f"{what}: {text!r} is not a time ('YYYY-MM-DD HH:MM:SS', ISO 8601 or epoch seconds)",
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    if not body.strip():
        raise ApiError(400, "the request body is empty: send a JSON document")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def check_metric_name(name: Any) -> str:
    """A metric name that graphite lines can carry (the listener's own grammar decides)."""
    if not isinstance(name, str) or not name:
        raise ApiError(400, "name must be a non-empty string")
    if any(ch.isspace() for ch in name):
        raise ApiError(400, f"name {name!r} contains whitespace")
    parsed = parse_samples([f"{name} 0 0"])
    if parsed.bad_example is not None:
        raise ApiError(400, f"name {name!r} is not valid: {parsed.bad_example.reason}")
    return name


def build_router(ctx: WebappContext) -> APIRouter:
    router = APIRouter(dependencies=[ctx.auth_dependency])
    settings = ctx.settings

    # -- metrics --------------------------------------------------------------------------------

    def list_metrics(**kwargs: Any) -> list[dict[str, Any]]:
        with ctx.engine.connect() as conn:
            return [metric_dict(row) for row in queries.get_metric_list(conn, **kwargs)]

    def one_metric(uid: str) -> dict[str, Any]:
        rows = list_metrics(uid=uid, custom_only=False)
        if not rows:
            raise ApiError(404, f"no metric with uid {uid}")
        return rows[0]

    @router.get("/_metrics/custom", tags=["metrics"], summary="Custom metrics")
    async def get_custom_metrics() -> JSONResponse:
        """Every custom metric with its status and newest row (value and scores)."""
        return JSONResponse(await blocking(list_metrics))

    @router.post("/_metrics/custom", status_code=201, tags=["metrics"], summary="Create a metric")
    async def create_metric(request: Request) -> JSONResponse:
        """Body ``{"name": "<metric name>"}``; the metric is created UNMONITORED."""
        body = await read_json(request, settings.max_body_bytes)
        if not isinstance(body, dict) or set(body) != {"name"}:
            raise ApiError(400, 'the body must be {"name": "<metric name>"}')
        name = check_metric_name(body["name"])
        uid = await blocking(ctx.adapter().createMetric, name)
        return JSONResponse(await blocking(one_metric, uid), 201)

    @router.delete("/_metrics/custom/{name:path}", tags=["metrics"], summary="Delete a metric")
    async def delete_metric(name: str) -> JSONResponse:
        """Delete a custom metric by name: its data and its model go with it."""
        await blocking(ctx.adapter().deleteMetricByName, name)
        return JSONResponse({"result": "success"})

    @router.post(
        "/_metrics/custom/data",
        status_code=202,
        tags=["metrics"],
        summary="Send graphite plaintext lines",
    )
    async def post_lines(request: Request) -> JSONResponse:
        """Body: ``name value epoch-seconds`` lines (text/plain), validated as the listener does
        them and put on the same data queue. A body with any bad line is refused whole (400,
        the bad lines named) and nothing of it is stored."""
        body = await read_body(request, settings.max_body_bytes)
        return JSONResponse(await blocking(ctx.ingest_lines, body), 202)

    # -- models ---------------------------------------------------------------------------------

    @router.get("/_models", tags=["models"], summary="Monitored metrics")
    async def get_models() -> JSONResponse:
        return JSONResponse(await blocking(lambda: list_metrics(monitored_only=True)))

    @router.post("/_models", status_code=201, tags=["models"], summary="Monitor or import")
    async def post_models(request: Request) -> JSONResponse:
        """A model spec ``{"datasource": "custom", "metricSpec": {"metric": NAME} or {"uid": UID},
        "modelParams": {"min": .., "max": ..}}`` (or a list of them) starts monitoring; a spec
        with ``data`` (what export returns) is imported. Answers the metrics (a list)."""
        body = await read_json(request, settings.max_body_bytes)
        specs = body if isinstance(body, list) else [body]
        if not specs:
            raise ApiError(400, "no model spec given")
        await blocking(check_specs, specs)
        uids = []
        for spec in specs:
            if "data" in spec:
                uids.append(await blocking(ctx.adapter().importModel, spec))
            else:
                uids.append(await blocking(ctx.adapter().monitorMetric, spec))
        return JSONResponse([await blocking(one_metric, uid) for uid in uids], 201)

    def check_specs(specs: list[Any]) -> None:
        """Every spec valid and its metric monitorable, before any is acted on."""
        seen: set[str] = set()
        for index, spec in enumerate(specs):
            where = f"spec {index}: " if len(specs) > 1 else ""
            if not isinstance(spec, dict):
                raise ApiError(400, f"{where}a model spec must be a JSON object")
            model_spec = {key: value for key, value in spec.items() if key != "data"}
            try:
                model_spec = validate_model_spec(model_spec)
                if model_spec["datasource"] != "custom":
                    raise ValueError(
                        f"datasource must be 'custom', got {model_spec['datasource']!r}"
                    )
                validate_custom_metric_spec(model_spec["metricSpec"])
            except ValueError as exc:
                raise ApiError(400, f"{where}{exc}") from None
            metric_spec = model_spec["metricSpec"]
            key = metric_spec.get("uid") or metric_spec.get("metric")
            if key in seen:
                raise ApiError(400, f"{where}metric {key!r} is named twice")
            seen.add(key)
            with ctx.engine.connect() as conn:
                if "uid" in metric_spec:
                    if "data" in spec:
                        raise ApiError(400, f"{where}an import names its metric by 'metric'")
                    row = queries.get_metric(conn, metric_spec["uid"], ["uid", "status"])
                else:
                    try:
                        row = queries.get_custom_metric_by_name(
                            conn, metric_spec["metric"], ["uid", "status"]
                        )
                    except MetricNotFound:
                        continue  # monitorMetric creates it
            if row.status != MetricStatus.UNMONITORED and "data" not in spec:
                raise ApiError(
                    409,
                    f"{where}metric {key!r} is already monitored "
                    f"(status {MetricStatus(row.status).name}, uid {row.uid})",
                )

    @router.get("/_models/export", tags=["models"], summary="Export every monitored metric")
    async def export_all() -> JSONResponse:
        def export() -> list[dict[str, Any]]:
            with ctx.engine.connect() as conn:
                uids = [row.uid for row in queries.get_all_models(conn, ["uid"])]
            return [export_file_data(ctx.adapter().exportModel(uid)) for uid in uids]

        return JSONResponse(await blocking(export))

    @router.get("/_models/{uid}", tags=["models"], summary="One metric")
    async def get_model(uid: str) -> JSONResponse:
        return JSONResponse(await blocking(one_metric, uid))

    @router.delete("/_models/{uid}", tags=["models"], summary="Unmonitor")
    async def delete_model(uid: str) -> JSONResponse:
        """Stop monitoring: the model is deleted and the scores cleared; the data stays."""
        metric = await blocking(one_metric, uid)
        if metric["status"] == MetricStatus.UNMONITORED:
            raise ApiError(409, f"metric {metric['name']!r} ({uid}) is not monitored")
        await blocking(ctx.adapter().unmonitorMetric, uid)
        return JSONResponse({"result": "success"})

    @router.get("/_models/{uid}/export", tags=["models"], summary="Export one metric")
    async def export_one(uid: str) -> JSONResponse:
        metric = await blocking(one_metric, uid)
        if metric["status"] == MetricStatus.UNMONITORED:
            raise ApiError(409, f"metric {metric['name']!r} is not monitored: nothing to export")
        exported = await blocking(ctx.adapter().exportModel, uid)
        return JSONResponse(export_file_data(exported))

    @router.get("/_models/{uid}/data", tags=["models"], summary="A metric's rows")
    async def get_data(
        request: Request,
        uid: str,
        from_: str | None = Query(None, alias="from", description="first time (UTC), inclusive"),
        to: str | None = Query(None, description="last time (UTC), inclusive"),
        anomaly: float = Query(0.0, ge=0.0, le=1.0, description="minimum anomaly score"),
        limit: int = Query(DEFAULT_DATA_LIMIT, ge=1, le=MAX_DATA_LIMIT),
        order: str | None = Query(
            None, pattern="^(asc|desc)$", description="default: asc with 'from', else desc"
        ),
        after: int | None = Query(None, ge=0, description="page on: rows after this rowid"),
        before: int | None = Query(None, ge=1, description="page on: rows before this rowid"),
    ) -> JSONResponse:
        """Rows as ``{"names": [...], "data": [[timestamp, value, anomaly_score, rowid,
        raw_anomaly_score, display_value], ...], "next": URL or null}`` (HTM-IT's first four
        columns). Newest first unless ``from`` is given; ``next`` fetches the following page."""
        start = parse_time(from_, "from") if from_ is not None else None
        stop = parse_time(to, "to") if to is not None else None
        if start is not None and stop is not None and stop < start:
            raise ApiError(400, "'to' is before 'from'")
        ascending = (order or ("asc" if start is not None else "desc")) == "asc"

        def load() -> list[Any]:
            with ctx.engine.connect() as conn:
                column = metric_data.c.rowid
                rows = queries.get_metric_data(
                    conn,
                    uid,
                    _DATA_FIELDS,
                    from_timestamp=start,
                    to_timestamp=stop,
                    score=anomaly if anomaly > 0 else None,
                    start_rowid=None if after is None else after + 1,
                    stop_rowid=None if before is None else before - 1,
                    limit=limit,
                    sort=column.asc() if ascending else column.desc(),
                )
                if not rows:
                    queries.get_metric(conn, uid, ["uid"])  # MetricNotFound: 404
                return rows

        rows = await blocking(load)
        data = [[format_timestamp(r[0]), r[1], r[2], r[3], r[4], r[5]] for r in rows]
        next_url = None
        if len(rows) == limit:
            cursor = {"after": rows[-1].rowid} if ascending else {"before": rows[-1].rowid}
            params = dict(request.query_params)
            params.pop("after", None)
            params.pop("before", None)
            params.update({key: str(value) for key, value in cursor.items()})
            params["order"] = "asc" if ascending else "desc"
            next_url = str(request.url.replace_query_params(**params))
        return JSONResponse({"names": list(ROW_NAMES), "data": data, "next": next_url})

    # -- anomalies ------------------------------------------------------------------------------

    @router.get("/_anomalies", tags=["anomalies"], summary="Periods of the ranking")
    async def get_periods() -> JSONResponse:
        return JSONResponse(list(ANOMALY_PERIODS))

    @router.get("/_anomalies/period/{hours}", tags=["anomalies"], summary="Sorted by anomaly")
    async def get_sorted(hours: int) -> JSONResponse:
        """Custom metrics, most anomalous first: each metric's sum, over 24 equal buckets of the
        last `hours` (before the newest row), of the bucket's highest display value; metrics
        ordered by their server's highest sum, then server, then name (HTM-IT's order)."""
        if not 1 <= hours <= MAX_PERIOD_HOURS:
            raise ApiError(400, f"period must be 1..{MAX_PERIOD_HOURS} hours, got {hours}")

        def load() -> list[dict[str, Any]]:
            values = ctx.ranking.values(hours)
            return sort_by_anomaly(list_metrics(), values)

        return JSONResponse(await blocking(load))

    # -- live -----------------------------------------------------------------------------------

    @router.get("/_stream", tags=["live"], summary="Live newest rows of every metric (SSE)")
    async def stream_all() -> StreamingResponse:
        """Server-sent events: ``latest`` {uid: row} once a second, ``model`` (command results),
        ``ranking`` (the anomaly order was recomputed)."""
        return ctx.stream(None)

    @router.get("/_models/{uid}/stream", tags=["live"], summary="Live rows of one metric (SSE)")
    async def stream_one(uid: str) -> StreamingResponse:
        """Server-sent events: ``rows`` {uid, rows} as they are scored, ``model`` (command
        results of this model)."""
        await blocking(one_metric, uid)
        return ctx.stream(uid)

    return router
