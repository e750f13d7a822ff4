"""Operator endpoints: accounts, plans, users."""

from __future__ import annotations

from fastapi import APIRouter, Request

from batchyard.api import schemas, views
from batchyard.api.deps import Operator, PlatformDep
from batchyard.api.strict_json import StrictJsonRoute
from batchyard.services import accounts, sessions

router = APIRouter(prefix="/api/v1/admin", tags=["operator"], route_class=StrictJsonRoute,
                   responses=schemas.errors(401, 422))


@router.post("/accounts", status_code=201, response_model=schemas.AccountOut)
def create_account(body: schemas.AccountCreate, _op: Operator,
                   platform: PlatformDep) -> schemas.AccountOut:
    row = accounts.create_account(platform, body.model_dump(exclude_none=True))
    return views.account(row, platform.secrets)


@router.get("/accounts/{account_id}", response_model=schemas.AccountOut,
            responses=schemas.errors(404))
def get_account(account_id: str, _op: Operator, platform: PlatformDep) -> schemas.AccountOut:
    return views.account(accounts.get_account(platform, account_id), platform.secrets)


@router.patch("/accounts/{account_id}", response_model=schemas.AccountOut,
              responses=schemas.errors(404))
def update_account(account_id: str, body: schemas.AccountUpdate, _op: Operator,
                   platform: PlatformDep) -> schemas.AccountOut:
    data = body.model_dump(exclude_unset=True)
    if "databases" in data and body.databases is not None:
        data["databases"] = body.databases.model_dump(exclude_unset=True)
    row = accounts.update_account(platform, account_id, data)
    return views.account(row, platform.secrets)


@router.post("/accounts/{account_id}/users", status_code=201, responses=schemas.errors(404, 409),
             response_model=schemas.UserCreated)
def create_user(account_id: str, body: schemas.UserCreate, _op: Operator,
                platform: PlatformDep, request: Request) -> schemas.UserCreated:
    user, key = accounts.create_user(platform, account_id, body.model_dump(exclude_none=True))
    token = sessions.create_invite(platform, account_id, user.id)
    return schemas.UserCreated(id=user.id, email=user.email, role=user.role, api_key=key,
                               invite_url=invite_url(request, token))


def invite_url(request: Request, token: str) -> str:
    base: str = getattr(request.app.state, "public_url", "") or str(request.base_url)
    return f"{base.rstrip('/')}/invite/{token}"
