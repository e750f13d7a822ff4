"""Bounds on what a request may make the server read, decided before any route runs.

An ASGI middleware in front of ``/api/v1``:

* A body is bounded per route (``body_limit``), refused at once when its
  ``Content-Length`` says it is too large and cut off while it streams otherwise
  (chunked bodies too). A route may lower or set its own bound while it runs
  (code uploads set the plan's size): ``set_body_limit``.
* A stranger costs at most ``UNAUTHENTICATED_BODY_BYTES``: a body that may be
  larger (declared larger, or chunked) is only read once its credentials have
  been checked; without valid ones the answer is 401 and the body is never read.
  Routes still check credentials themselves, as before: this only decides early.
* A NUL character in the path or the query is refused (404, 422): no lookup of
  ours can match it, and PostgreSQL refuses it as a parameter.

The console (paths outside ``/api/v1``) is bounded too: its forms to
``CONSOLE_FORM_BYTES``; its code upload to what the route sets once the person's session
is known (the session dependency runs before the body is read). ``/api/v1/worker/*``
(worker tokens) is left to its own routes.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchyard.api.strict_json import RequestRefused

KIB = 1024
UNAUTHENTICATED_BODY_BYTES = 64 * KIB
JSON_BODY_BYTES = 1024 * KIB
INVOKE_BODY_BYTES = 256 * KIB
CONSOLE_FORM_BYTES = 64 * KIB
_LIMIT_KEY = "batchyard.body_limit"
_INVOKE = re.compile(r"^/api/v1/jobs/[^/]+/invoke$")
_CODE = re.compile(r"^/api/v1/jobs/[^/]+/code$")
_CONSOLE_CODE = re.compile(r"^/jobs/[^/]+/code$")

# True when the request's headers carry credentials the server knows (app.py: the
# operator token or a live API key; a console session would be checked here too).
CredentialCheck = Callable[[Headers], Awaitable[bool]]


def body_limit(method: str, path: str) -> int | None:
    """The most bytes a body of this route may have; None: the route sets it."""
    if method == "PUT" and _CODE.match(path):
        return None  # the plan's code size, known once the job's account is known
    if method == "POST" and _INVOKE.match(path):
        return INVOKE_BODY_BYTES
    return JSON_BODY_BYTES


def set_body_limit(scope: Scope, limit: int) -> None:
    """Bound the body of the request being handled (before the route reads it)."""
    scope[_LIMIT_KEY] = limit


def _too_large(limit: int, path: str) -> RequestRefused:
    # The rest of the body is never read: only closing the connection stops the sender.
    close = {"Connection": "close"}
    if _INVOKE.match(path):
        return RequestRefused(422, "invalid_input", f"The invocation body may be at most "
                              f"{limit // KIB} KiB.", headers=close, field="body", limit=limit)
    if _CODE.match(path) or _CONSOLE_CODE.match(path):
        return RequestRefused(413, "code_too_large", f"The upload is larger than the plan's "
                              f"{limit} bytes.", headers=close, limit=limit)
    return RequestRefused(422, "invalid_input", f"The request body may be at most "
                          f"{limit // KIB} KiB.", headers=close, field="body", limit=limit)


class RequestGuard:
    def __init__(self, app: ASGIApp, credentials_valid: CredentialCheck) -> None:
        self.app = app
        self.credentials_valid = credentials_valid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/api/v1/worker/"):
            await self.app(scope, receive, send)
            return
        if not path.startswith("/api/v1/"):
            await self._console(scope, receive, send, path)
            return
        if "\x00" in path:
            await _answer(send, 404, "not_found", "Not Found")
            return
        if b"%00" in scope.get("query_string", b""):
            await _answer(send, 422, "invalid_input", "The query string holds a NUL "
                          "character.")
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if declared is not None and not declared.isdigit():
            await _answer(send, 400, "invalid_input", "Content-Length is not a number.")
            return
        size = int(declared) if declared is not None else 0
        if (chunked or size > UNAUTHENTICATED_BODY_BYTES) \
                and not await self.credentials_valid(headers):
            # The body is never read; closing the connection is what stops the sender.
            await _answer(send, 401, "not_authenticated", "Send valid credentials as "
                          "'Authorization: Bearer <key>' before a body of this size.",
                          close=True, extra_headers=[(b"www-authenticate", b"Bearer")])
            return
        limit = body_limit(scope["method"], path)
        if limit is not None:
            scope[_LIMIT_KEY] = limit
            if size > limit:
                refused = _too_large(limit, path)
                await _answer(send, refused.status_code, refused.code, refused.message,
                              close=True, **refused.extra)
                return
        await self.app(scope, _bounded(scope, receive, path), send)


    async def _console(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Console pages: a session cookie, not a bearer token, says who asks, and each
        route checks it before it reads a body; so bodies are only bounded here."""
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            await _answer(send, 400, "invalid_input", "Content-Length is not a number.")
            return
        upload = scope["method"] == "POST" and _CONSOLE_CODE.match(path) is not None
        limit = None if upload else CONSOLE_FORM_BYTES
        if limit is not None:
            scope[_LIMIT_KEY] = limit
            if declared is not None and int(declared) > limit:
                refused = _too_large(limit, path)
                await _answer(send, refused.status_code, refused.code, refused.message,
                              close=True, **refused.extra)
                return
        await self.app(scope, _bounded(scope, receive, path), send)


def _bounded(scope: Scope, receive: Receive, path: str) -> Receive:
    """``receive`` that refuses the body once it passes the request's current limit."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            limit: int | None = scope.get(_LIMIT_KEY)
            if limit is not None and seen > limit:
                raise _too_large(limit, path)
        return message

    return bounded


def _bearer(headers: Headers) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def operator_or_key(operator_token: str,
                    key_valid: Callable[[str], Awaitable[bool]]) -> CredentialCheck:
    async def check(headers: Headers) -> bool:
        token = _bearer(headers)
        if not token:
            return False
        if hmac.compare_digest(token.encode(), operator_token.encode()):
            return True
        return await key_valid(token)
    return check


async def _answer(send: Send, status: int, code: str, message: str, *, close: bool = False,
                  extra_headers: list[tuple[bytes, bytes]] | None = None,
                  **extra: Any) -> None:
    body = json.dumps({"error": {"code": code, "message": message, **extra}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra_headers or [])]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
