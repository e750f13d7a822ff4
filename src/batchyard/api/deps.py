"""Authentication dependencies and shared request helpers."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from batchyard.api.strict_json import parse_json
from batchyard.errors import InvalidInput, NotAuthenticated
from batchyard.services import accounts
from batchyard.services.context import Actor, Platform


# Dependencies are ``async def`` even when they never await: FastAPI runs a plain ``def``
# dependency on the thread pool, a hop that cost every request more than its own work.
async def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("Send an API key as 'Authorization: Bearer <key>'.")
    return token.strip()


async def current_actor(request: Request, platform: PlatformDep) -> Actor:
    """A key seen in the last second is answered from memory, on the event loop;
    otherwise the database read runs in a worker thread."""
    secret = bearer(request)
    actor = accounts.cached_actor(platform, secret)
    if actor is not None:
        return actor
    return await run_in_threadpool(accounts.authenticate, platform, secret)


async def api_key_valid(platform: Platform, secret: str) -> bool:
    """Whether ``secret`` is a live API key (the request guard's early check)."""
    if accounts.cached_actor(platform, secret) is not None:
        return True
    try:
        await run_in_threadpool(accounts.authenticate, platform, secret)
    except NotAuthenticated:
        return False
    return True


async def operator(request: Request) -> None:
    token = bearer(request)
    expected: str = request.app.state.operator_token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise NotAuthenticated("This endpoint needs the operator token.")


def is_operator(request: Request) -> bool:
    """Whether the request carries the operator token (never an error: for answers that
    only add detail for the operator)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected: str = request.app.state.operator_token
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              expected.encode())


CurrentActor = Annotated[Actor, Depends(current_actor)]
Operator = Annotated[None, Depends(operator)]


async def json_object(request: Request, *, required: bool = True) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise InvalidInput("The request body must be a JSON object.")
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.")
    return data
