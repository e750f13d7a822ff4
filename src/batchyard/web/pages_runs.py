"""Executions, the execution page with its live log, artifacts, usage and audit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from batchyard.api.deps import PlatformDep
from batchyard.domain import forecast as projection
from batchyard.domain.executions import ExecutionStatus
from batchyard.domain.roles import Permission
from batchyard.services import (
    audit,
    console_reads,
    executions,
    forecast,
    notifications,
    usage_history,
)
from batchyard.services.context import Actor, Platform
from batchyard.web.auth import Person, redirect
from batchyard.web.charts import bars, gauge
from batchyard.web.highlight import stylesheet
from batchyard.web.pages_jobs import can
from batchyard.web.render import page

router = APIRouter(include_in_schema=False)
TAIL_LINES = 200


@router.get("/executions")
def executions_page(request: Request, actor: Person, platform: PlatformDep,
                    job_id: str = "", status: str = "", source: str = "",
                    cursor: str | None = None) -> HTMLResponse:
    rows, next_cursor = console_reads.execution_page(
        platform, actor, job_id=job_id or None, status=status or None, source=source or None,
        cursor=cursor)
    return page(request, "executions.html", title="Executions", rows=rows,
                next_cursor=next_cursor, job_id=job_id, status=status, source=source,
                statuses=[s.value for s in ExecutionStatus], sources=console_reads.SOURCES)


@router.get("/executions/{execution_id}")
def execution_page(execution_id: str, request: Request, actor: Person, platform: PlatformDep,
                   level: str = "") -> HTMLResponse:
    detail = executions.get_execution(platform, actor, execution_id)
    lines, last_seq = console_reads.log_tail(platform, actor, execution_id, TAIL_LINES,
                                             level or None)
    return page(request, "execution.html", title=f"Execution {execution_id}", detail=detail,
                execution=detail.execution, lines=lines, last_seq=last_seq, level=level,
                levels=executions.LOG_LEVELS, shown=TAIL_LINES,
                artifacts=executions.list_artifacts(platform, actor, execution_id),
                deliveries=notifications.list_deliveries(platform, actor, execution_id),
                running=detail.execution.status in ("queued", "running"),
                can_write=can(actor, Permission.WRITE))


@router.get("/executions/{execution_id}/events")
def execution_events(execution_id: str, actor: Person, platform: PlatformDep,
                     after: int = -1, level: str = "") -> StreamingResponse:
    """The live tail as server-sent events (the page's script appends the lines)."""
    executions.get_execution(platform, actor, execution_id)
    return StreamingResponse(_tail(platform, actor, execution_id, after, level or None),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _tail(platform: Platform, actor: Actor, execution_id: str, after: int,
          level: str | None) -> Iterator[str]:
    last = after
    while True:
        found = executions.read_logs(platform, actor, execution_id, level=level, after=last)
        for row in found.items:
            last = row.seq
            data = {"seq": row.seq, "at": row.at.isoformat(), "stream": row.stream,
                    "level": row.level, "message": row.message}
            yield f"id: {row.seq}\nevent: log\ndata: {json.dumps(data)}\n\n"
        if found.finished and not found.items:
            status = executions.get_execution(platform, actor, execution_id).execution.status
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if not found.items:
            yield ": keep-alive\n\n"
            time.sleep(0.25)


@router.get("/executions/{execution_id}/log.txt")
def download_log(execution_id: str, actor: Person, platform: PlatformDep) -> StreamingResponse:
    # Checked before the answer starts: a generator's refusal would come too late.
    executions.get_execution(platform, actor, execution_id)
    return StreamingResponse(console_reads.log_text(platform, actor, execution_id),
                             media_type="text/plain; charset=utf-8", headers={
                                 "Content-Disposition":
                                     f'attachment; filename="{execution_id}.log"'})


@router.get("/executions/{execution_id}/artifacts/{name:path}")
def download_artifact(execution_id: str, name: str, actor: Person,
                      platform: PlatformDep) -> Response:
    row, content = executions.artifact_content(platform, actor, execution_id, name)
    filename = quote(row.name.rsplit("/", 1)[-1])
    return Response(content, media_type="application/octet-stream", headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{filename}"})


@router.post("/executions/{execution_id}/cancel")
async def cancel(execution_id: str, actor: Person, platform: PlatformDep) -> Response:
    await run_in_threadpool(executions.cancel, platform, actor, execution_id)
    return redirect(f"/executions/{execution_id}")


@router.get("/usage")
def usage_page(request: Request, actor: Person, platform: PlatformDep) -> HTMLResponse:
    today = executions.usage(platform, actor, None)
    runtime = today["runtime_seconds"]
    left = max(0.0, runtime["limit"] - runtime["used"] - runtime["reserved"])
    past = usage_history.history(platform, actor, 30)
    labels = [day.day.isoformat() for day in past.days]
    projected = forecast.account_forecast(platform, actor, 30)
    return page(request, "usage.html", title="Usage", today=today, left=left,
                gauge=gauge(runtime["used"], runtime["reserved"], runtime["limit"],
                            f"run time today: {runtime['used']:.0f} s used, "
                            f"{runtime['reserved']:.0f} s reserved, {left:.0f} s left"),
                runtime_chart=bars([d.runtime_seconds / 60 for d in past.days], labels,
                                   "run time per day (minutes)", " min"),
                executions_chart=bars([d.executions for d in past.days], labels,
                                      "executions per day"),
                history=past, forecast=projected,
                forecast_days=projected.blocked_days(),
                forecast_summary=_summary(projected))


def _summary(result: projection.Forecast) -> str:
    return projection.summary(result)


@router.get("/audit")
def audit_page(request: Request, actor: Person, platform: PlatformDep, job_id: str = "",
               cursor: str | None = None) -> HTMLResponse:
    actor.require(Permission.READ)
    rows, next_cursor = audit.list_entries(platform, actor, job_id or None, 100,
                                           cursor if cursor and cursor.isdigit() else None)
    return page(request, "audit.html", title="Audit", rows=rows, next_cursor=next_cursor,
                job_id=job_id, pretty=_pretty, changes=_changes)


def _changes(before: object, after: object) -> list[tuple[str, str, str]]:
    """Field by field, what an entry changed (values as stored in the audit trail, where
    secrets are already masked)."""
    if before is None and isinstance(after, dict):
        before = {}
    if after is None and isinstance(before, dict):
        after = {}
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    return [(key, _pretty(before.get(key)) if key in before else "—",
             _pretty(after.get(key)) if key in after else "—")
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def _pretty(value: object) -> str:
    if value is None:
        return ""
    return json.dumps(value, indent=1, sort_keys=True, default=str)



@router.get("/console/code.css")
def code_stylesheet() -> Response:
    return Response(stylesheet(), media_type="text/css",
                    headers={"Cache-Control": "max-age=3600"})
