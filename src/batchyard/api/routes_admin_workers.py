"""Operator endpoints for remote workers' tokens: create (shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from batchyard.api import schemas
from batchyard.api.deps import Operator, PlatformDep
from batchyard.api.strict_json import StrictJsonRoute
from batchyard.services import worker_tokens
from batchyard.services.worker_tokens import WorkerTokenInfo

router = APIRouter(prefix="/api/v1/admin/workers", tags=["operator"],
                   route_class=StrictJsonRoute, responses=schemas.errors(401, 404, 422))


class WorkerTokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class WorkerTokenOut(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None


class WorkerTokenCreated(WorkerTokenOut):
    # Shown once: only its SHA-256 is kept.
    token: str


class WorkerTokenList(BaseModel):
    items: list[WorkerTokenOut]


def _out(info: WorkerTokenInfo) -> WorkerTokenOut:
    return WorkerTokenOut(id=info.id, name=info.name, prefix=info.prefix,
                          created_at=info.created_at, last_seen_at=info.last_seen_at,
                          revoked_at=info.revoked_at)


@router.post("", status_code=201, response_model=WorkerTokenCreated)
def create_worker_token(body: WorkerTokenCreate, _op: Operator,
                        platform: PlatformDep) -> WorkerTokenCreated:
    info, secret = worker_tokens.create(platform, body.name)
    return WorkerTokenCreated(**_out(info).model_dump(), token=secret)


@router.get("", response_model=WorkerTokenList)
def list_worker_tokens(_op: Operator, platform: PlatformDep) -> WorkerTokenList:
    return WorkerTokenList(items=[_out(info) for info in worker_tokens.list_tokens(platform)])


@router.delete("/{token_id}", response_model=WorkerTokenOut)
def revoke_worker_token(token_id: str, _op: Operator, platform: PlatformDep) -> WorkerTokenOut:
    return _out(worker_tokens.revoke(platform, token_id))
