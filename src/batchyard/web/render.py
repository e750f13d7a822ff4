"""Templates, the page response and the console's error pages."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from batchyard.errors import BatchyardError

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _when(value: datetime | None, zone: str = "UTC") -> str:
    if value is None:
        return "—"
    return value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _size(count: int | None) -> str:
    if count is None:
        return "—"
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"


ENV = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True)
ENV.filters["when"] = _when
ENV.filters["duration"] = _duration
ENV.filters["size"] = _size


def page(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    identity = getattr(request.state, "identity", None)
    html = ENV.get_template(template).render(
        request=request, identity=identity, csrf=identity.csrf_token if identity else "",
        now=datetime.now(UTC), **context)
    return HTMLResponse(html, status_code=code, headers={
        "Cache-Control": "no-store",
        # Our own script and styles only; no inline script, no framing.
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "style-src 'self'; script-src 'self'; "
                                   "frame-ancestors 'none'; form-action 'self'",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


def error_page(request: Request, exc: BatchyardError) -> HTMLResponse:
    titles = {401: "Please sign in", 403: "Not allowed", 404: "Not found",
              409: "Not possible now", 413: "Too large", 422: "Please check the input",
              429: "Limit reached"}
    response = page(request, "error.html", code=exc.status,
                    title=titles.get(exc.status, "Something went wrong"), error=exc)
    if exc.status == 429 and "retry_after" in exc.extra:
        response.headers["Retry-After"] = str(int(exc.extra["retry_after"]))
    return response
