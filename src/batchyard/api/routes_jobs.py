"""Job endpoints: CRUD, code, settings, variables, schedule, publish, invoke."""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as FastApiPath
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchyard.api import schemas, views
from batchyard.api.deps import CurrentActor, PlatformDep
from batchyard.api.guard import set_body_limit
from batchyard.api.params import MAX_NUMBER, MAX_PAGE
from batchyard.api.strict_json import RequestRefused, StrictJsonRoute, parse_json
from batchyard.domain import schedules
from batchyard.errors import CodeTooLarge, InvalidCode, NotFound
from batchyard.services import executions, invoke, jobs
from batchyard.services.context import Platform
from batchyard.services.invoke_batcher import InvocationBatcher

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], route_class=StrictJsonRoute,
                   responses=schemas.errors(401, 403, 422))
_ONE_JOB = schemas.errors(404)
# A change of a job: its name or state may conflict.
_CHANGE = schemas.errors(404, 409)


@router.get("", response_model=schemas.JobList)
def list_jobs(actor: CurrentActor, platform: PlatformDep,
              limit: int = Query(default=MAX_PAGE, ge=1, le=MAX_PAGE),
              cursor: str | None = None) -> schemas.JobList:
    # By name, which is unique among live jobs: the cursor is the last name shown. A
    # plan allows few jobs, so the page is cut here rather than in SQL.
    rows = sorted((row for row in jobs.list_jobs(platform, actor)
                   if cursor is None or row.name > cursor), key=lambda row: row.name)
    page = rows[:limit]
    today = executions.jobs_today(platform, actor, page)
    return schemas.JobList(items=[views.job_item(row, today[row.id]) for row in page],
                           next_cursor=page[-1].name if len(rows) > limit else None)


@router.post("", status_code=201, response_model=schemas.JobOut,
             responses=schemas.errors(409, 429))
def create_job(body: schemas.JobCreate, actor: CurrentActor,
               platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.create_job(platform, actor, body.model_dump(exclude_none=True)))


@router.get("/{job_id}", response_model=schemas.JobOut, responses=_ONE_JOB)
def get_job(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.get_job(platform, actor, job_id))


@router.patch("/{job_id}", response_model=schemas.JobOut, responses=_CHANGE)
def update_job(job_id: str, body: schemas.JobUpdate, actor: CurrentActor,
               platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.update_job(platform, actor, job_id,
                                     body.model_dump(exclude_unset=True)))


@router.delete("/{job_id}", response_model=schemas.JobOut, responses=_CHANGE)
def delete_job(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.delete_job(platform, actor, job_id))


async def _read_upload(request: Request, limit: int) -> bytes:
    """The zip, raw or as the multipart field ``file``, streamed to a temporary file and
    cut off past the plan's limit (the request guard enforces it while it streams)."""
    # Multipart framing around the file: a few hundred bytes, bounded generously.
    set_body_limit(request.scope, limit + 64 * 1024 if _is_multipart(request) else limit)
    declared = request.headers.get("content-length")
    if not _is_multipart(request) and declared and declared.isdigit() \
            and int(declared) > limit:
        raise CodeTooLarge(f"The upload is {int(declared)} bytes; the plan allows at most "
                           f"{limit} bytes.", size=int(declared), limit=limit)
    with tempfile.TemporaryFile() as spool:
        if _is_multipart(request):
            # Starlette spools the part to disk past 1 MiB: never whole in memory either.
            try:
                form = await request.form(max_files=1, max_fields=5)
            except StarletteHTTPException as exc:
                if isinstance(exc, RequestRefused):  # past the limit
                    raise
                # Starlette's 400 for broken multipart framing: a bad upload, like a bad zip.
                raise InvalidCode(f"The multipart body could not be read: {exc.detail}") \
                    from None
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise InvalidCode("Send the zip as the multipart field 'file' or as the "
                                      "raw body.")
                while chunk := await upload.read(64 * 1024):
                    spool.write(chunk)
            finally:
                await form.close()
        else:
            async for chunk in request.stream():
                spool.write(chunk)
        size = spool.tell()
        if size > limit:
            raise CodeTooLarge(f"The upload is larger than the plan's {limit} bytes.",
                               size=size, limit=limit)
        if not size:
            raise InvalidCode("The upload is empty; send a zip file holding main.py.")
        spool.seek(0)
        return spool.read()


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


@router.put("/{job_id}/code", status_code=201, response_model=schemas.CodeVersionOut,
            responses=schemas.errors(404, 409, 413),
            openapi_extra={"requestBody": {"content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "string", "format": "binary"}}}}}}})
async def upload_code(job_id: str, request: Request, actor: CurrentActor,
                      platform: PlatformDep) -> schemas.CodeVersionOut:
    # Credentials and the job are checked before a byte of the body is read.
    limit = await run_in_threadpool(jobs.code_size_limit, platform, actor, job_id)
    data = await _read_upload(request, limit)
    version = await run_in_threadpool(jobs.upload_code, platform, actor, job_id, data)
    return views.code_version(version)


@router.get("/{job_id}/code/versions", response_model=schemas.CodeVersionList,
            responses=_ONE_JOB)
def list_code_versions(job_id: str, actor: CurrentActor,
                       platform: PlatformDep) -> schemas.CodeVersionList:
    return schemas.CodeVersionList(items=[
        views.code_version(row) for row in jobs.list_code_versions(platform, actor, job_id)])


@router.get("/{job_id}/code/versions/{version}", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}, **_ONE_JOB})
def download_code_version(job_id: str, actor: CurrentActor, platform: PlatformDep,
                          version: int = FastApiPath(ge=1)) -> Response:
    if version > MAX_NUMBER:  # no such version can exist (and the database cannot hold it)
        raise NotFound(f"Code version {version} not found.")
    row, content = jobs.code_version_content(platform, actor, job_id, version)
    return Response(content, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{job_id}-v{row.version}.zip"',
        "X-Checksum-Sha256": row.sha256})


@router.get("/{job_id}/settings", response_model=schemas.SettingsOut, responses=_ONE_JOB)
def get_settings(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.SettingsOut:
    return views.settings(jobs.get_job(platform, actor, job_id).settings)


@router.put("/{job_id}/settings", response_model=schemas.SettingsOut, responses=_CHANGE)
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


@router.get("/{job_id}/variables", response_model=schemas.VariableList,
            responses=_ONE_JOB)
def get_variables(job_id: str, actor: CurrentActor,
                  platform: PlatformDep) -> schemas.VariableList:
    return schemas.VariableList(variables=[
        schemas.VariableOut(key=v.key, value=v.value, secret=v.secret, digest=v.digest)
        for v in jobs.list_variables(platform, actor, job_id)])


@router.put("/{job_id}/variables", response_model=schemas.VariableList,
            responses=_CHANGE)
def put_variables(job_id: str, body: schemas.VariablesIn, actor: CurrentActor,
                  platform: PlatformDep) -> schemas.VariableList:
    items = [v.model_dump() for v in body.variables]
    return schemas.VariableList(variables=[
        schemas.VariableOut(key=v.key, value=v.value, secret=v.secret, digest=v.digest)
        for v in jobs.replace_variables(platform, actor, job_id, items)])


def _schedule_out(platform: Platform, job_schedule: dict[str, Any] | None) -> \
        schemas.ScheduleOut:
    """The working copy's schedule with its next five instants (UTC and local)."""
    data = dict(job_schedule or {"type": "none", "timezone": "UTC"})
    runs = [schemas.NextRun(**run) for run in schedules.describe_next_runs(
        data, platform.clock.now())] if data["type"] != "none" else []
    return schemas.ScheduleOut(**data, summary=schedules.schedule_summary(data),
                               next_runs=runs)


@router.get("/{job_id}/schedule", response_model=schemas.ScheduleOut, responses=_ONE_JOB)
def get_schedule(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.ScheduleOut:
    return _schedule_out(platform, jobs.get_job(platform, actor, job_id).schedule)


@router.put("/{job_id}/schedule", response_model=schemas.ScheduleOut, responses=_CHANGE)
def put_schedule(job_id: str, body: schemas.ScheduleIn, actor: CurrentActor,
                 platform: PlatformDep) -> schemas.ScheduleOut:
    job = jobs.set_schedule(platform, actor, job_id, body.model_dump(exclude_none=True))
    return _schedule_out(platform, job.schedule)


@router.post("/{job_id}/publish", response_model=schemas.JobOut, responses=_CHANGE)
def publish(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.publish(platform, actor, job_id))


@router.post("/{job_id}/unpublish", response_model=schemas.JobOut, responses=_CHANGE)
def unpublish(job_id: str, actor: CurrentActor, platform: PlatformDep) -> schemas.JobOut:
    return views.job(jobs.unpublish(platform, actor, job_id))


@router.post("/{job_id}/invoke", status_code=202, response_model=schemas.Queued,
             responses=schemas.errors(404, 409, 429),
             openapi_extra={"requestBody": {"required": False, "content": {
                 "application/json": {"schema": {}}}}})
async def invoke_job(job_id: str, request: Request, actor: CurrentActor,
                     platform: PlatformDep) -> schemas.Queued:
    # The request guard bounds the body (256 KiB) while it streams.
    raw = await request.body()
    body: Any = parse_json(raw, "The invocation body") if raw.strip() else {}
    invocation = invoke.api_invocation(actor, job_id, body, dict(request.query_params))
    # Group commit: the invocations of concurrent requests share one transaction.
    batcher: InvocationBatcher = request.app.state.invocations
    recorded, admission = await asyncio.wrap_future(
        batcher.submit(actor.account_id, invocation))
    execution = invoke.answer(recorded, admission)
    return schemas.Queued(execution_id=execution.id, status=execution.status)
