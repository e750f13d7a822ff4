"""``GET /metrics`` (Prometheus text format, operator token), HTTP request counting and
the request id of every request (``X-Request-Id``, in the server's log lines).

The request counter's labels are the route's template (``/api/v1/jobs/{job_id}``, never
the path itself), the method and the status: bounded by the application's routes; a
path no route matched counts as ``unmatched``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.routing import Match

from batchyard.api.deps import Operator
from batchyard.logs import REQUEST_ID, request_id_from
from batchyard.services.metrics import PROCESS

REQUESTS = Counter("batchyard_http_requests", "HTTP requests by route template and status",
                   ["route", "method", "status"], registry=PROCESS)
router = APIRouter(tags=["operator"])
access = logging.getLogger("batchyard.http")


@router.get("/metrics", include_in_schema=False)
def metrics(_op: Operator, request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install_request_metrics(app: FastAPI, access_log: bool = False) -> None:
    """Count requests; with ``access_log`` (JSON logs) log one line per request too."""
    @app.middleware("http")
    async def count(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # The request id: on every server log line of this request (logs.py), and echoed.
        started = time.perf_counter()
        request_id = request_id_from(request.headers.get("x-request-id"))
        token = REQUEST_ID.set(request_id)
        try:
            response = await call_next(request)
        finally:
            REQUEST_ID.reset(token)
        response.headers["X-Request-Id"] = request_id
        route = _template(app, request)
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        if access_log:
            access.info("%s %s %d %.1f ms", request.method, route, response.status_code,
                        (time.perf_counter() - started) * 1000,
                        extra={"request_id": request_id})
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
