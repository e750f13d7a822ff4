"""Mounting the console on the application: its pages, its static files, and HTML error
pages for its paths (the API under /api keeps its JSON errors)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from batchyard.errors import BatchyardError
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
        if path.startswith("/api/") or path == "/metrics":
            response: Response = await api_handler(request, exc)
            return response
        if isinstance(exc, SignInNeeded) and request.method == "GET":
            wanted = "/operator/sign-in" if path.startswith("/operator") else "/sign-in"
            return redirect(wanted)
        return error_page(request, exc)

    app.add_exception_handler(BatchyardError, handler)
