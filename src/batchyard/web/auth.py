"""Who a console request is from, and the CSRF check of every request that changes
something: a form field ``csrf`` or the header ``X-CSRF-Token`` equal to the session's
token (a cross-site page can send the cookie, never the token)."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from batchyard.api.deps import PlatformDep
from batchyard.errors import BatchyardError, Forbidden, NotAuthenticated
from batchyard.services import sessions
from batchyard.services.context import Actor

COOKIE = "batchyard_session"
PRE_COOKIE = "batchyard_signin"  # double-submit token of the sign-in forms (no session yet)
SESSION_MAX_AGE = int(sessions.IDLE_LIMIT.total_seconds())


class SignInNeeded(BatchyardError):
    """Please sign in."""

    code = "not_authenticated"
    status = 401


def secure_cookies(request: Request) -> bool:
    base: str = getattr(request.app.state, "public_url", "") or ""
    return base.startswith("https://")


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(COOKIE, secret, max_age=SESSION_MAX_AGE, path="/", httponly=True,
                        samesite="lax", secure=secure_cookies(request))


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _operator_bearer(request: Request) -> sessions.Identity | None:
    """The operator token as a bearer header reaches the operator pages (scripts, curl);
    a browser never sends it on its own, so no CSRF token is needed with it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not request.url.path.startswith("/operator"):
        return None
    expected: str = request.app.state.operator_token
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise NotAuthenticated("That is not the operator token.")
    return sessions.Identity(None, True, "", "operator")


async def identity(request: Request, platform: PlatformDep) -> sessions.Identity:
    bearer = _operator_bearer(request)
    if bearer is not None:
        request.state.identity = bearer
        return bearer
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise SignInNeeded()
    try:
        found = await run_in_threadpool(sessions.identify, platform, secret)
    except NotAuthenticated as exc:
        raise SignInNeeded(exc.message) from exc
    request.state.identity = found
    if request.method not in ("GET", "HEAD"):
        await check_csrf(request, found.csrf_token)
    return found


async def check_csrf(request: Request, expected: str) -> None:
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden("The form's security token is missing or stale; reload the page "
                        "and try again.")


async def person(identity: Annotated[sessions.Identity, Depends(identity)]) -> Actor:
    """A user of an account (the operator has no account pages)."""
    if identity.actor is None:
        raise Forbidden("The operator has no account; use the operator pages.")
    return identity.actor


async def operator(identity: Annotated[sessions.Identity, Depends(identity)]) -> None:
    if not identity.operator:
        raise Forbidden("Only the operator may open this page.")


Person = Annotated[Actor, Depends(person)]
OperatorSession = Annotated[None, Depends(operator)]
Who = Annotated[sessions.Identity, Depends(identity)]


def new_pre_token() -> str:
    return secrets.token_urlsafe(24)


def redirect(url: str) -> RedirectResponse:
    # 303: the browser follows a form post with a GET.
    return RedirectResponse(url, status_code=303)
