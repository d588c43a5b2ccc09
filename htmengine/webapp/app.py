"""The ASGI application: the JSON API, the dashboard pages and their static files, /metrics."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from htmengine.repository import queries
from htmengine.webapp import api
from htmengine.webapp.context import WebappContext
from htmengine.webapp.errors import ApiError, install_error_handlers
from htmengine.webapp.live import format_timestamp
from htmengine.webapp.ranking import sort_by_anomaly

STATIC_DIR = Path(__file__).resolve().parent / "static"
# What the list page gets of each metric, in this order.
LIST_COLUMNS = (
    "uid",
    "name",
    "status",
    "last_rowid",
    "last_timestamp",
    "last_value",
    "last_anomaly_score",
    "anomaly_rank",
)
# Metrics per sparkline request (a screenful of the list page is ~30).
MAX_SPARKLINES = 200

API_DESCRIPTION = """\
HTTP API of htmengine, on HTM-IT's custom-metric paths where it had one.

Authentication: the API key is the HTTP basic-auth user name (`curl -u KEY: ...`); it is
`[webapp] api_key` of application.conf, or the file `api_key_file` names when that is empty.
Errors are `{"result": "<message>", "status": <code>}`.
"""


def _page(name: str) -> FileResponse:
    # The pages are static; their scripts fetch everything from the API.
    return FileResponse(
        STATIC_DIR / name, media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


def build_dashboard_router(ctx: WebappContext) -> APIRouter:
    router = APIRouter(dependencies=[ctx.auth_dependency], include_in_schema=False)

    @router.get("/")
    async def list_page() -> FileResponse:
        return _page("index.html")

    @router.get("/metric/{uid}")
    async def metric_page(uid: str) -> FileResponse:
        return _page("metric.html")

    @router.get("/_dashboard/metrics")
    async def dashboard_metrics(
        period: Annotated[int, Query(ge=1, le=api.MAX_PERIOD_HOURS)] = 24,
        sparks: Annotated[int, Query(ge=0, le=MAX_SPARKLINES)] = 0,
        points: Annotated[int, Query(ge=2, le=1000)] = 96,
    ):
        """The list page's rows, most anomalous first, as compact arrays (LIST_COLUMNS), and the
        small charts of the first `sparks` of them (saves the first screen a round trip)."""

        def load() -> dict:
            values = ctx.ranking.values(period)
            with ctx.engine.connect() as conn:
                rows = queries.get_metric_list(
                    conn, fields=("uid", "name", "server", "status", "last_rowid")
                )
            metrics = [
                {
                    "uid": r.uid,
                    "name": r.name,
                    "server": r.server,
                    "status": r.status,
                    "last_rowid": r.last_rowid,
                    "last_timestamp": None
                    if r.last_timestamp is None
                    else format_timestamp(r.last_timestamp),
                    "last_value": r.last_value,
                    "last_anomaly_score": r.last_anomaly_score,
                }
                for r in rows
            ]
            ordered = sort_by_anomaly(metrics, values)
            first = {m["uid"]: m["last_rowid"] or 0 for m in ordered[:sparks] if m["last_rowid"]}
            return {
                "columns": list(LIST_COLUMNS),
                "rows": [[m[c] for c in LIST_COLUMNS] for m in ordered],
                "sparks": load_sparks(first, points) if first else {},
            }

        return JSONResponse(await api.blocking(load))

    @router.get("/_dashboard/sparklines")
    async def sparklines(
        m: Annotated[list[str] | None, Query(description="uid:last_rowid of each metric")] = None,
        points: Annotated[int, Query(ge=2, le=1000)] = 96,
    ) -> JSONResponse:
        """The newest `points` values and scores of a few metrics (the list page's small charts)."""
        m = m or []
        if len(m) > MAX_SPARKLINES:
            raise ApiError(400, f"at most {MAX_SPARKLINES} metrics per request")
        last_rowids: dict[str, int] = {}
        for item in m:
            uid, _, last = item.partition(":")
            if not uid or not last.isdigit():
                raise ApiError(400, f"m must be uid:last_rowid, got {item!r}")
            last_rowids[uid] = int(last)

        return JSONResponse(await api.blocking(load_sparks, last_rowids, points))

    def load_sparks(last_rowids: dict[str, int], points: int) -> dict[str, dict]:
        """{uid: {values, scores, lastRowid}} of the newest `points` rows of each metric."""
        after = {uid: max(0, last - points) for uid, last in last_rowids.items()}
        with ctx.engine.connect() as conn:
            rows = queries.get_recent_metric_data(
                conn, after, ("uid", "rowid", "metric_value", "anomaly_score")
            )
        result: dict[str, dict] = {}
        for row in rows:
            spark = result.setdefault(row.uid, {"values": [], "scores": [], "lastRowid": 0})
            spark["values"].append(row.metric_value)
            spark["scores"].append(row.anomaly_score)
            spark["lastRowid"] = row.rowid
        return result

    return router


def create_app(ctx: WebappContext) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await ctx.start()
        try:
            yield
        finally:
            await ctx.stop()

    # No /docs: Swagger UI would load from a CDN, and the dashboard works offline.
    app = FastAPI(
        title="htmengine",
        description=API_DESCRIPTION,
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install_error_handlers(app)
    app.include_router(api.build_router(ctx))
    app.include_router(build_dashboard_router(ctx))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(ctx.prometheus_text(), media_type="text/plain; version=0.0.4")

    @app.get("/_health", tags=["service"], summary="Is the webapp following live results")
    async def health() -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "results_followed": ctx.follower.connected.is_set(),
                "live_clients": ctx.hub.subscriber_count,
            }
        )

    return app
