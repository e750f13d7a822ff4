"""Mounting the console on the application: its pages, its static files, and HTML error
pages for its paths (the API under /api keeps its JSON errors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchyard.errors import BatchyardError, InvalidInput, NotFound
from batchyard.web import pages_jobs, pages_people, pages_runs
from batchyard.web.auth import SignInNeeded, redirect
from batchyard.web.render import STATIC, error_page


def install_console(app: FastAPI, public_url: str) -> None:
    app.state.public_url = public_url
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for router in (pages_people.router, pages_jobs.router, pages_runs.router):
        app.include_router(router)
    api_handler: Any = app.exception_handlers[BatchyardError]

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BatchyardError)
        path = request.url.path
        if _is_api(path):
            response: Response = await api_handler(request, exc)
            return response
        if isinstance(exc, SignInNeeded) and request.method == "GET":
            wanted = "/operator/sign-in" if path.startswith("/operator") else "/sign-in"
            return redirect(wanted)
        return error_page(request, exc)

    app.add_exception_handler(BatchyardError, handler)
    _html_for_pages(app, RequestValidationError,
                    lambda exc: InvalidInput(f"The address is not valid: {_first(exc)}"))
    _html_for_pages(app, StarletteHTTPException, lambda exc: _http_error(exc))


def _is_api(path: str) -> bool:
    return path.startswith(("/api/", "/docs")) or path == "/metrics"


def _first(exc: Any) -> str:
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return "invalid request"
    where = ".".join(str(part) for part in errors[0].get("loc", ())[1:])
    return f"{where}: {errors[0].get('msg', 'invalid')}" if where else str(errors[0])


def _http_error(exc: Any) -> BatchyardError:
    if getattr(exc, "status_code", 500) == 404:
        return NotFound("There is no such page.")
    error = BatchyardError(str(getattr(exc, "detail", "")) or None)
    error.status = int(getattr(exc, "status_code", 500))
    return error


def _html_for_pages(app: FastAPI, kind: type[Exception],
                    convert: Callable[[Any], BatchyardError]) -> None:
    """Pages answer their errors as pages; the API keeps its JSON handler for its paths."""
    api_handler: Any = app.exception_handlers[kind]

    async def handler(request: Request, exc: Exception) -> Response:
        if _is_api(request.url.path):
            response: Response = await api_handler(request, exc)
            return response
        page = error_page(request, convert(exc))
        # Headers the refusal carries (Connection: close for a body cut off unread, Allow).
        page.headers.update(getattr(exc, "headers", None) or {})
        return page

    app.add_exception_handler(kind, handler)
