"""The caller's own identity and API keys; usage, audit and health."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query, Request

from batchyard import __version__
from batchyard.api import schemas, views
from batchyard.api.deps import CurrentActor, PlatformDep, is_operator
from batchyard.api.params import MAX_PAGE
from batchyard.api.strict_json import StrictJsonRoute, shown
from batchyard.domain.roles import Permission
from batchyard.errors import InvalidInput
from batchyard.services import accounts, audit, executions, nodes

router = APIRouter(prefix="/api/v1", tags=["account"], route_class=StrictJsonRoute)


@router.get("/me", response_model=schemas.Me)
def me(actor: CurrentActor, platform: PlatformDep) -> schemas.Me:
    user, account = accounts.account_of(platform, actor)
    return schemas.Me(user=views.user(user), account=views.account(account, platform.secrets))


@router.post("/api-keys", status_code=201, response_model=schemas.ApiKeyCreated)
def create_api_key(actor: CurrentActor, platform: PlatformDep,
                   body: schemas.ApiKeyCreate | None = None) -> schemas.ApiKeyCreated:
    new = accounts.create_api_key(platform, actor, body.name if body else None)
    return schemas.ApiKeyCreated(**views.api_key(new.key).model_dump(), key=new.secret)


@router.get("/api-keys", response_model=list[schemas.ApiKeyOut])
def list_api_keys(actor: CurrentActor, platform: PlatformDep) -> list[schemas.ApiKeyOut]:
    return [views.api_key(row) for row in accounts.list_api_keys(platform, actor)]


@router.delete("/api-keys/{key_id}", response_model=schemas.ApiKeyOut)
def revoke_api_key(key_id: str, actor: CurrentActor,
                   platform: PlatformDep) -> schemas.ApiKeyOut:
    return views.api_key(accounts.revoke_api_key(platform, actor, key_id))


@router.get("/usage")
def usage(actor: CurrentActor, platform: PlatformDep,
          date_: str | None = Query(default=None, alias="date")) -> dict[str, object]:
    day = None
    if date_:
        try:
            day = date.fromisoformat(date_)
        except ValueError as exc:
            raise InvalidInput("date must be YYYY-MM-DD", field="date") from exc
    return executions.usage(platform, actor, day)


@router.get("/audit", response_model=schemas.AuditList)
def audit_trail(actor: CurrentActor, platform: PlatformDep, job_id: str | None = None,
                limit: int = Query(default=100, ge=1, le=MAX_PAGE),
                cursor: str | None = None) -> schemas.AuditList:
    actor.require(Permission.READ)
    if cursor is not None and not (cursor.isdecimal() and cursor.isascii()
                                   and int(cursor) <= 2**63 - 1):
        raise InvalidInput("cursor is not valid", field="cursor")
    rows, next_cursor = audit.list_entries(platform, actor, job_id, limit, cursor)
    return schemas.AuditList(items=[schemas.AuditOut(
        at=r.at, actor=r.actor, action=r.action, target=r.target, job_id=r.job_id,
        before=shown(r.before), after=shown(r.after)) for r in rows], next_cursor=next_cursor)


@router.get("/health", response_model=schemas.Health, tags=["operator"])
def health(request: Request, platform: PlatformDep) -> schemas.Health:
    """Open to anyone (a readiness probe); with the operator token it adds the sandbox's
    details: whether jobs run here, and if not, why and what to change."""
    sandbox = roles = live = None
    if is_operator(request):
        sandbox = schemas.SandboxHealth(**request.app.state.sandbox_report)
        server = request.app.state.server
        roles = sorted(server.roles)
        live = [schemas.NodeHealth(id=n.id, roles=list(n.roles), capacity=n.capacity,
                                   running=n.running, labels=list(n.labels), remote=n.remote,
                                   version=n.version, started_at=n.started_at,
                                   heartbeat_at=n.heartbeat_at)
                for n in nodes.live_nodes(platform, server.live_nodes_within())]
    return schemas.Health(status="ok", version=__version__,
                          database="sqlite" if platform.db.is_sqlite else "postgresql",
                          isolation=request.app.state.isolation,
                          workers=request.app.state.workers, sandbox=sandbox, roles=roles,
                          nodes=live)
