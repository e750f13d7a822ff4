"""The caller's own identity and API keys; usage, audit and health."""

from __future__ import annotations

import json
from datetime import date

from fastapi import APIRouter, Query, Request

from batchyard import __version__
from batchyard.api import schemas, views
from batchyard.api.deps import CurrentActor, PlatformDep, is_operator
from batchyard.api.params import MAX_PAGE
from batchyard.api.strict_json import StrictJsonRoute, shown
from batchyard.domain import forecast as projection
from batchyard.domain.roles import Permission
from batchyard.errors import InvalidInput
from batchyard.services import accounts, audit, executions, nodes, sessions
from batchyard.services import forecast as forecasts

router = APIRouter(prefix="/api/v1", tags=["account"], route_class=StrictJsonRoute)
# Every route but the health check needs an account key.
_KEYED = schemas.errors(401, 403, 422)


@router.get("/me", response_model=schemas.Me, responses=_KEYED)
def me(actor: CurrentActor, platform: PlatformDep) -> schemas.Me:
    user, account = accounts.account_of(platform, actor)
    return schemas.Me(user=views.user(user), account=views.account(account, platform.secrets))


@router.post("/me/password", status_code=204, responses=_KEYED)
def change_password(body: schemas.PasswordChange, actor: CurrentActor,
                    platform: PlatformDep) -> None:
    """Set the caller's console password (the current one is needed once one is set);
    every console session of the caller ends."""
    sessions.change_password(platform, actor, body.current_password, body.new_password)


@router.post("/api-keys", status_code=201, response_model=schemas.ApiKeyCreated,
             responses=_KEYED)
def create_api_key(actor: CurrentActor, platform: PlatformDep,
                   body: schemas.ApiKeyCreate | None = None) -> schemas.ApiKeyCreated:
    new = accounts.create_api_key(platform, actor, body.name if body else None)
    return schemas.ApiKeyCreated(**views.api_key(new.key).model_dump(), key=new.secret)


@router.get("/api-keys", response_model=list[schemas.ApiKeyOut], responses=_KEYED)
def list_api_keys(actor: CurrentActor, platform: PlatformDep) -> list[schemas.ApiKeyOut]:
    return [views.api_key(row) for row in accounts.list_api_keys(platform, actor)]


@router.delete("/api-keys/{key_id}", response_model=schemas.ApiKeyOut,
               responses=schemas.errors(401, 403, 404, 422))
def revoke_api_key(key_id: str, actor: CurrentActor,
                   platform: PlatformDep) -> schemas.ApiKeyOut:
    return views.api_key(accounts.revoke_api_key(platform, actor, key_id))


@router.get("/usage", responses=_KEYED)
def usage(actor: CurrentActor, platform: PlatformDep,
          date_: str | None = Query(default=None, alias="date")) -> dict[str, object]:
    day = None
    if date_:
        try:
            day = date.fromisoformat(date_)
        except ValueError as exc:
            raise InvalidInput("date must be YYYY-MM-DD", field="date") from exc
    return executions.usage(platform, actor, day)


@router.get("/usage/forecast", response_model=schemas.ForecastOut,
            responses=schemas.errors(401, 403, 404, 422))
def usage_forecast(actor: CurrentActor, platform: PlatformDep,
                   days: int = Query(default=30, ge=1, le=projection.MAX_DAYS),
                   job: str | None = None, schedule: str | None = None) -> schemas.ForecastOut:
    """Each coming day's scheduled fires of the published jobs (with ``job`` and
    ``schedule``, that job as if published with that schedule), each run lasting its
    timeout, and the fires the plan would block with their reason."""
    tried = None
    if schedule is not None:
        try:
            tried = json.loads(schedule)
        except ValueError as exc:
            raise InvalidInput(f"schedule is not valid JSON: {exc}", field="schedule") from exc
    result = forecasts.account_forecast(platform, actor, days, job_id=job, schedule=tried)
    return forecast_out(result, job)


def forecast_out(result: projection.Forecast, job: str | None = None) -> schemas.ForecastOut:
    def fire(item: projection.PlannedFire) -> schemas.ForecastFireOut:
        return schemas.ForecastFireOut(job_id=item.job_id, job_name=item.job_name, at=item.at,
                                       admitted=item.admitted, reason=item.reason)

    return schemas.ForecastOut(
        start=result.start, timezone=result.timezone, budget_mode=result.budget_mode,
        summary=projection.summary(result, job),
        days=[schemas.ForecastDayOut(
            date=day.day.isoformat(), planned=len(day.fires),
            expected_runtime_seconds=day.expected_runtime_seconds,
            max_runtime_seconds=day.max_runtime_seconds,
            fires=[fire(item) for item in day.fires],
            blocked=[fire(item) for item in day.blocked]) for day in result.days])


@router.get("/audit", response_model=schemas.AuditList, responses=_KEYED)
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
    sandbox = roles = live = warm = None
    if is_operator(request):
        sandbox = schemas.SandboxHealth(**request.app.state.sandbox_report)
        server = request.app.state.server
        roles = sorted(server.roles)
        live = [schemas.NodeHealth(id=n.id, roles=list(n.roles), capacity=n.capacity,
                                   running=n.running, labels=list(n.labels), remote=n.remote,
                                   version=n.version, started_at=n.started_at,
                                   heartbeat_at=n.heartbeat_at)
                for n in nodes.live_nodes(platform, server.live_nodes_within())]
        stats = server.supervisor.warm_stats() if "worker" in server.roles else None
        if stats is not None:
            warm = schemas.WarmStartsHealth(
                size=server.settings.warm_pool_size, ready=stats.ready, keys=stats.keys,
                warm_starts=stats.hits, cold_starts=stats.misses, spawned=stats.spawned,
                spawn_failures=stats.spawn_failures, retired=stats.retired,
                bytes_per_process=stats.bytes_per_process)
    return schemas.Health(status="ok", version=__version__,
                          database="sqlite" if platform.db.is_sqlite else "postgresql",
                          isolation=request.app.state.isolation,
                          workers=request.app.state.workers, sandbox=sandbox, roles=roles,
                          nodes=live, warm_starts=warm)
