"""Execution endpoints: list, detail, logs (with live tail), cancel, artifacts,
notification deliveries."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from batchyard.api import schemas, views
from batchyard.api.deps import CurrentActor, PlatformDep
from batchyard.api.params import MAX_NUMBER, MAX_PAGE, IsoTime
from batchyard.api.strict_json import StrictJsonRoute, shown
from batchyard.services import executions, notifications
from batchyard.services.context import Actor, Platform
from batchyard.store.models import LogLine

router = APIRouter(prefix="/api/v1/executions", tags=["executions"],
                   route_class=StrictJsonRoute, responses=schemas.errors(401, 403, 404, 422))
TAIL_POLL_SECONDS = 0.25


@router.get("", response_model=schemas.ExecutionList)
def list_executions(actor: CurrentActor, platform: PlatformDep, job_id: str | None = None,
                    status: str | None = None, since: IsoTime | None = None,
                    until: IsoTime | None = None,
                    limit: int = Query(default=50, ge=1, le=MAX_PAGE),
                    cursor: str | None = None) -> schemas.ExecutionList:
    rows, next_cursor = executions.list_executions(
        platform, actor, job_id=job_id, status=status, since=since, until=until, limit=limit,
        cursor=cursor)
    return schemas.ExecutionList(items=[views.execution(row) for row in rows],
                                 next_cursor=next_cursor)


@router.get("/{execution_id}", response_model=schemas.ExecutionOut)
def get_execution(execution_id: str, actor: CurrentActor,
                  platform: PlatformDep) -> schemas.ExecutionOut:
    return views.execution(executions.get_execution(platform, actor, execution_id))


def _line(row: LogLine) -> schemas.LogLineOut:
    return schemas.LogLineOut(seq=row.seq, at=row.at, attempt=row.attempt, stream=row.stream,
                              level=row.level, message=row.message, data=shown(row.data))


@router.get("/{execution_id}/logs", response_model=schemas.LogsOut,
            responses={200: {"content": {"text/event-stream": {}}}})
def logs(execution_id: str, request: Request, actor: CurrentActor, platform: PlatformDep,
         level: str | None = None,
         after: int | None = Query(default=None, ge=-1, le=MAX_NUMBER),
         limit: int = Query(default=1000, ge=1, le=10000)) -> Response | schemas.LogsOut:
    page = executions.read_logs(platform, actor, execution_id, level=level, after=after,
                                limit=limit)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_tail(platform, actor, execution_id, level, after),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return schemas.LogsOut(items=[_line(row) for row in page.items], truncated=page.truncated,
                           finished=page.finished)


def _tail(platform: Platform, actor: Actor, execution_id: str, level: str | None,
          after: int | None) -> Iterator[str]:
    """Server-sent events over the stored rows until the execution has ended."""
    last = after if after is not None else -1
    while True:
        page = executions.read_logs(platform, actor, execution_id, level=level, after=last)
        for row in page.items:
            last = row.seq
            yield f"id: {row.seq}\nevent: log\ndata: {_line(row).model_dump_json()}\n\n"
        if page.finished and not page.items:
            detail = executions.get_execution(platform, actor, execution_id).execution
            yield f"event: end\ndata: {json.dumps({'status': detail.status})}\n\n"
            return
        if not page.items:
            yield ": keep-alive\n\n"
            time.sleep(TAIL_POLL_SECONDS)


@router.post("/{execution_id}/cancel", response_model=schemas.ExecutionOut,
             responses=schemas.errors(409))
def cancel(execution_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.ExecutionOut:
    return views.execution(executions.cancel(platform, actor, execution_id))


@router.get("/{execution_id}/artifacts", response_model=schemas.ArtifactList)
def list_artifacts(execution_id: str, actor: CurrentActor,
                   platform: PlatformDep) -> schemas.ArtifactList:
    return schemas.ArtifactList(items=[
        schemas.ArtifactOut(name=a.name, size=a.size, sha256=a.sha256, attempt=a.attempt)
        for a in executions.list_artifacts(platform, actor, execution_id)])


@router.get("/{execution_id}/deliveries", response_model=schemas.DeliveryList)
def list_deliveries(execution_id: str, actor: CurrentActor,
                    platform: PlatformDep) -> schemas.DeliveryList:
    """Summary e-mails and webhook calls owed for the execution's end, and how they went."""
    return schemas.DeliveryList(items=[
        schemas.DeliveryOut.model_validate(row, from_attributes=True)
        for row in notifications.list_deliveries(platform, actor, execution_id)])


@router.get("/{execution_id}/artifacts/{name:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def download_artifact(execution_id: str, name: str, actor: CurrentActor,
                      platform: PlatformDep) -> Response:
    row, content = executions.artifact_content(platform, actor, execution_id, name)
    filename = quote(row.name.rsplit("/", 1)[-1])
    return Response(content, media_type="application/octet-stream", headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
        "X-Checksum-Sha256": row.sha256})
