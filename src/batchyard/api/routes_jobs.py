"""Job endpoints: CRUD, code, settings, variables, schedule, publish, invoke."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from batchyard.api import schemas, views
from batchyard.api.deps import CurrentActor, PlatformDep
from batchyard.domain import schedules
from batchyard.errors import CodeTooLarge, InvalidCode, InvalidInput
from batchyard.services import executions, invoke, jobs
from batchyard.services.context import Platform
from batchyard.services.invoke_batcher import InvocationBatcher

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.get("", response_model=schemas.JobList)
def list_jobs(actor: CurrentActor, platform: PlatformDep) -> schemas.JobList:
    rows = jobs.list_jobs(platform, actor)
    today = executions.jobs_today(platform, actor, rows)
    return schemas.JobList(items=[views.job_item(row, today[row.id]) for row in rows])


@router.post("", status_code=201, response_model=schemas.JobOut)
def create_job(body: schemas.JobCreate, actor: CurrentActor,
               platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.create_job(platform, actor, body.model_dump(exclude_none=True)))


@router.get("/{job_id}", response_model=schemas.JobOut)
def get_job(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.get_job(platform, actor, job_id))


@router.patch("/{job_id}", response_model=schemas.JobOut)
def update_job(job_id: str, body: schemas.JobUpdate, actor: CurrentActor,
               platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.update_job(platform, actor, job_id,
                                     body.model_dump(exclude_unset=True)))


@router.delete("/{job_id}", response_model=schemas.JobOut)
def delete_job(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.delete_job(platform, actor, job_id))


async def _read_upload(request: Request, limit: int) -> bytes:
    """Read the zip, raw or as the multipart field ``file``, refusing early past the limit."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=5)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidCode("Send the zip as the multipart field 'file' or as the raw body.")
        data = await upload.read(limit + 1)
        await form.close()
    else:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise CodeTooLarge(f"The upload is {int(declared)} bytes; the plan allows at most "
                               f"{limit} bytes.", size=int(declared), limit=limit)
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise CodeTooLarge(f"The upload is larger than the plan's {limit} bytes.",
                                   limit=limit)
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise CodeTooLarge(f"The upload is larger than the plan's {limit} bytes.", limit=limit)
    if not data:
        raise InvalidCode("The upload is empty; send a zip file holding main.py.")
    return data


@router.put("/{job_id}/code", status_code=201, response_model=schemas.CodeVersionOut,
            openapi_extra={"requestBody": {"content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "string", "format": "binary"}}}}}}})
async def upload_code(job_id: str, request: Request, actor: CurrentActor,
                      platform: PlatformDep) -> schemas.CodeVersionOut:
    limit = await run_in_threadpool(jobs.code_size_limit, platform, actor, job_id)
    data = await _read_upload(request, limit)
    version = await run_in_threadpool(jobs.upload_code, platform, actor, job_id, data)
    return views.code_version(version)


@router.get("/{job_id}/code/versions", response_model=schemas.CodeVersionList)
def list_code_versions(job_id: str, actor: CurrentActor,
                       platform: PlatformDep) -> schemas.CodeVersionList:
    return schemas.CodeVersionList(items=[
        views.code_version(row) for row in jobs.list_code_versions(platform, actor, job_id)])


@router.get("/{job_id}/code/versions/{version}", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def download_code_version(job_id: str, version: int, actor: CurrentActor,
                          platform: PlatformDep) -> Response:
    row, content = jobs.code_version_content(platform, actor, job_id, version)
    return Response(content, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{job_id}-v{row.version}.zip"',
        "X-Checksum-Sha256": row.sha256})


@router.get("/{job_id}/settings", response_model=schemas.SettingsOut)
def get_settings(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.SettingsOut:
    return views.settings(jobs.get_job(platform, actor, job_id).settings)


@router.put("/{job_id}/settings", response_model=schemas.SettingsOut)
def put_settings(job_id: str, body: schemas.SettingsIn, actor: CurrentActor,
                 platform: PlatformDep) -> schemas.SettingsOut:
    data = body.model_dump(exclude_unset=True)
    if body.notify is not None:
        data["notify"] = body.notify.model_dump(exclude_unset=True)
    if body.webhook is not None:
        data["webhook"] = body.webhook.model_dump(exclude_unset=True)
    if body.alerts is not None:
        data["alerts"] = body.alerts.model_dump(exclude_unset=True)
    return views.settings(jobs.update_settings(platform, actor, job_id, data).settings)


@router.get("/{job_id}/variables", response_model=schemas.VariableList)
def get_variables(job_id: str, actor: CurrentActor,
                  platform: PlatformDep) -> schemas.VariableList:
    return schemas.VariableList(variables=[
        schemas.VariableOut(key=v.key, value=v.value, secret=v.secret)
        for v in jobs.list_variables(platform, actor, job_id)])


@router.put("/{job_id}/variables", response_model=schemas.VariableList)
def put_variables(job_id: str, body: schemas.VariablesIn, actor: CurrentActor,
                  platform: PlatformDep) -> schemas.VariableList:
    items = [v.model_dump() for v in body.variables]
    return schemas.VariableList(variables=[
        schemas.VariableOut(key=v.key, value=v.value, secret=v.secret)
        for v in jobs.replace_variables(platform, actor, job_id, items)])


def _schedule_out(platform: Platform, job_schedule: dict[str, Any] | None) -> \
        schemas.ScheduleOut:
    """The working copy's schedule with its next five instants (UTC and local)."""
    data = dict(job_schedule or {"type": "none", "timezone": "UTC"})
    runs = [schemas.NextRun(**run) for run in schedules.describe_next_runs(
        data, platform.clock.now())] if data["type"] != "none" else []
    return schemas.ScheduleOut(**data, summary=schedules.schedule_summary(data),
                               next_runs=runs)


@router.get("/{job_id}/schedule", response_model=schemas.ScheduleOut)
def get_schedule(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.ScheduleOut:
    return _schedule_out(platform, jobs.get_job(platform, actor, job_id).schedule)


@router.put("/{job_id}/schedule", response_model=schemas.ScheduleOut)
def put_schedule(job_id: str, body: schemas.ScheduleIn, actor: CurrentActor,
                 platform: PlatformDep) -> schemas.ScheduleOut:
    job = jobs.set_schedule(platform, actor, job_id, body.model_dump(exclude_none=True))
    return _schedule_out(platform, job.schedule)


@router.post("/{job_id}/publish", response_model=schemas.JobOut)
def publish(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.publish(platform, actor, job_id))


@router.post("/{job_id}/unpublish", response_model=schemas.JobOut)
def unpublish(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.unpublish(platform, actor, job_id))


@router.post("/{job_id}/invoke", status_code=202, response_model=schemas.Queued,
             openapi_extra={"requestBody": {"required": False, "content": {
                 "application/json": {"schema": {}}}}})
async def invoke_job(job_id: str, request: Request, actor: CurrentActor,
                     platform: PlatformDep) -> schemas.Queued:
    raw = await request.body()
    if len(raw) > 256 * 1024:
        raise InvalidInput("The invocation body may be at most 256 KiB.", field="body")
    body: Any = {}
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"The body is not valid JSON: {exc}", field="body") from exc
    invocation = invoke.api_invocation(actor, job_id, body, dict(request.query_params))
    # Group commit: the invocations of concurrent requests share one transaction.
    batcher: InvocationBatcher = request.app.state.invocations
    recorded, admission = await asyncio.wrap_future(
        batcher.submit(actor.account_id, invocation))
    execution = invoke.answer(recorded, admission)
    return schemas.Queued(execution_id=execution.id, status=execution.status)
