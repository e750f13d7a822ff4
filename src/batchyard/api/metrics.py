"""``GET /metrics`` (Prometheus text format, operator token) and HTTP request counting.

The request counter's labels are the route's template (``/api/v1/jobs/{job_id}``, never
the path itself), the method and the status: bounded by the application's routes; a
path no route matched counts as ``unmatched``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.routing import Match

from batchyard.api.deps import Operator
from batchyard.services.metrics import PROCESS

REQUESTS = Counter("batchyard_http_requests", "HTTP requests by route template and status",
                   ["route", "method", "status"], registry=PROCESS)
router = APIRouter(tags=["operator"])


@router.get("/metrics", include_in_schema=False)
def metrics(_op: Operator, request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install_request_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def count(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        REQUESTS.labels(_template(app, request), request.method,
                        str(response.status_code)).inc()
        return response


def _template(app: FastAPI, request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for candidate in app.router.routes:  # the error handlers answered before routing
        match, _ = candidate.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", "unmatched"))
    return "unmatched"
