"""Every error leaves the API in one shape: ``{"error": {code, message, ...}}``."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchyard.api.strict_json import RequestRefused
from batchyard.errors import BatchyardError, internal_error_message, new_reference

log = logging.getLogger("batchyard.api")


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BatchyardError)
    async def _batchyard(_request: Request, exc: BatchyardError) -> JSONResponse:
        headers = {}
        if exc.status in (429, 503) and "retry_after" in exc.extra:
            headers["Retry-After"] = str(int(exc.extra["retry_after"]))
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(error_body(exc.code, exc.message, **exc.extra),
                            status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query",
                                                                             "path")]
        field = ".".join(location) or None
        message = f"{field}: {first.get('msg', 'invalid')}" if field else str(
            first.get("msg", "invalid request"))
        return JSONResponse(error_body("invalid_input", message, field=field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, RequestRefused):
            return JSONResponse(error_body(exc.code, exc.message, **exc.extra),
                                status_code=exc.status_code, headers=exc.headers)
        code = {404: "not_found", 405: "method_not_allowed", 401: "not_authenticated",
                413: "too_large"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(SQLAlchemyTimeout)
    async def _overloaded(_request: Request, exc: SQLAlchemyTimeout) -> JSONResponse:
        # Every database connection of this process is busy: the caller is told to come
        # back (workers and well-behaved clients do) rather than left to time out.
        log.warning("database connections exhausted: answering 503")
        return JSONResponse(error_body("overloaded", "The server is busy; try again "
                                       "shortly.", retry_after=2), status_code=503,
                            headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        reference = new_reference()
        log.error("unhandled error (reference %s)", reference, exc_info=exc)
        return JSONResponse(error_body("internal_error", internal_error_message(reference),
                                       reference=reference), status_code=500)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this path, from the OpenAPI document (Starlette
    names only the first matching route's, and FastAPI makes one route per method)."""
    app = request.app
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(
        app.state, "allowed_methods", None)
    if table is None:
        table = [(re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"),
                  sorted(method.upper() for method in operations))
                 for path, operations in app.openapi().get("paths", {}).items()]
        app.state.allowed_methods = table
    path = request.url.path
    return sorted({method for pattern, methods in table if pattern.match(path)
                   for method in methods})
