"""The grid of jobs and the job page: code, settings, variables, schedule, publish."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from batchyard.api.deps import PlatformDep
from batchyard.api.guard import set_body_limit
from batchyard.api.strict_json import RequestRefused
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.roles import Permission, Role
from batchyard.domain.schedules import describe_next_runs, schedule_summary
from batchyard.errors import BatchyardError, CodeTooLarge, InvalidCode, InvalidInput
from batchyard.services import accounts, grid, invoke, job_review, jobs
from batchyard.services.context import Actor
from batchyard.web import forms
from batchyard.web.auth import Person, redirect
from batchyard.web.highlight import highlight
from batchyard.web.render import page

router = APIRouter(include_in_schema=False)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def can(actor: Actor, permission: Permission) -> bool:
    if permission is Permission.READ:
        return True
    if permission is Permission.PUBLISH:
        return actor.role in (Role.ADMIN, Role.SUPER_ADMIN)
    return actor.role is not Role.VIEWER


def base_url(request: Request) -> str:
    configured: str = getattr(request.app.state, "public_url", "") or ""
    return (configured or str(request.base_url)).rstrip("/")


@router.get("/")
def home(request: Request) -> Response:
    return redirect("/jobs" if request.cookies.get("batchyard_session") else "/sign-in")


@router.get("/jobs")
def grid_page(request: Request, actor: Person, platform: PlatformDep, sort: str = "name",
              order: str = "asc", status: str = "", q: str = "", page_number: int = 1
              ) -> Response:
    result = grid.grid(platform, actor, sort=sort, descending=order == "desc",
                       status=status or None, text=q or None, page=page_number)
    return page(request, "jobs.html", title="Manage Batch Jobs", grid=result, sort=sort,
                order=order, status=status, q=q, sorts=grid.SORTS, base=base_url(request),
                can_write=can(actor, Permission.WRITE),
                can_publish=can(actor, Permission.PUBLISH),
                message=request.query_params.get("message"))


@router.post("/jobs")
async def create_job(request: Request, actor: Person, platform: PlatformDep) -> Response:
    form = await request.form()
    job = await run_in_threadpool(jobs.create_job, platform, actor, {
        "name": forms.text(form, "name"), "description": forms.text(form, "description")})
    return redirect(f"/jobs/{job.id}")


@router.post("/jobs/{job_id}/publish")
async def publish(job_id: str, actor: Person, platform: PlatformDep) -> Response:
    await run_in_threadpool(jobs.publish, platform, actor, job_id)
    return back(job_id, "top", message="Published.")


@router.post("/jobs/{job_id}/unpublish")
async def unpublish(job_id: str, actor: Person, platform: PlatformDep) -> Response:
    await run_in_threadpool(jobs.unpublish, platform, actor, job_id)
    return redirect("/jobs?" + urlencode({"message": "Unpublished."}))


@router.post("/jobs/{job_id}/delete")
async def delete(job_id: str, actor: Person, platform: PlatformDep) -> Response:
    job = await run_in_threadpool(jobs.delete_job, platform, actor, job_id)
    return redirect("/jobs?" + urlencode({"message": f"Deleted {job.name}."}))


@router.post("/jobs/{job_id}/invoke")
async def invoke_now(job_id: str, request: Request, actor: Person,
                     platform: PlatformDep) -> Response:
    form = await request.form()
    raw = forms.text(form, "body")
    body: Any = {}
    if raw:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"The body is not valid JSON: {exc}", field="body") from exc
    recorded = await run_in_threadpool(invoke.invoke, platform, actor, job_id, body, {})
    return redirect(f"/executions/{recorded.id}")


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, actor: Person, platform: PlatformDep,
             version: int | None = None) -> HTMLResponse:
    job = jobs.get_job(platform, actor, job_id)
    versions = jobs.list_code_versions(platform, actor, job_id)
    shown = version or job.code_version
    files = job_review.code_files(platform, actor, job_id, shown) if shown else None
    _user, account = accounts.account_of(platform, actor)
    plan = plan_from_dict(account.plan)
    schedule = job.schedule or {"type": "none", "timezone": account.timezone}
    runs = describe_next_runs(schedule, platform.clock.now()) \
        if schedule["type"] != "none" else []
    return page(request, "job.html", title=job.name, job=job, versions=versions, files=files,
                source=highlight(files.main_source) if files and files.main_source else None,
                settings=jobs.get_job(platform, actor, job_id).settings,
                variables=jobs.list_variables(platform, actor, job_id), plan=plan,
                schedule=schedule, summary=schedule_summary(job.schedule), next_runs=runs,
                weekdays=WEEKDAYS, timezone=account.timezone,
                can_write=can(actor, Permission.WRITE),
                can_publish=can(actor, Permission.PUBLISH),
                message=request.query_params.get("message"),
                # A refused edit is shown in its own section, next to the form.
                section_error=request.query_params.get("error"),
                section=request.query_params.get("section", "top"))


def back(job_id: str, section: str, *, message: str | None = None,
         error: str | None = None) -> Response:
    """Back to the job page's section, with what happened shown there."""
    query = urlencode({"message": message} if message else
                      {"error": error or "", "section": section})
    return redirect(f"/jobs/{job_id}?{query}#{section}")


def _job_error(request: Request, job_id: str, exc: BatchyardError) -> Response:
    return back(job_id, "code", error=exc.message)


# Multipart framing and the form's other fields (the CSRF token) around the zip.
UPLOAD_FORM_OVERHEAD = 16 * 1024


@router.post("/jobs/{job_id}/code")
async def upload_code(job_id: str, request: Request, actor: Person,
                      platform: PlatformDep) -> Response:
    limit = await run_in_threadpool(jobs.code_size_limit, platform, actor, job_id)
    # The body is read only now, bounded by the plan (and the form's own few fields).
    set_body_limit(request.scope, limit + UPLOAD_FORM_OVERHEAD)
    try:
        form = await request.form(max_files=1)
    except RequestRefused:  # cut off while it streamed: the connection closes after this
        return _job_error(request, job_id, CodeTooLarge(
            f"The file is larger than the plan's {limit} bytes."))
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        return _job_error(request, job_id, InvalidCode("Choose a zip file to upload."))
    data = await upload.read(limit + 1)
    try:
        if len(data) > limit:
            raise CodeTooLarge(f"The file is larger than the plan's {limit} bytes.")
        if not data:
            raise InvalidCode("The file is empty; upload a zip holding main.py.")
        version = await run_in_threadpool(jobs.upload_code, platform, actor, job_id, data)
    except (InvalidCode, CodeTooLarge) as exc:
        return _job_error(request, job_id, exc)
    return back(job_id, "code", message=f"Uploaded code version {version.version}.")


async def _save(job_id: str, tab: str, saved: str, save: Callable[[], object]) -> Response:
    """Run one of the job page's saves off the event loop; back to its tab, with the refusal
    in place or the message that it was saved."""
    try:
        await run_in_threadpool(save)
    except InvalidInput as exc:
        return back(job_id, tab, error=exc.message)
    return back(job_id, tab, message=saved)


@router.post("/jobs/{job_id}/settings")
async def save_settings(job_id: str, request: Request, actor: Person,
                        platform: PlatformDep) -> Response:
    form = await request.form()
    return await _save(job_id, "settings", "Settings saved.", lambda: jobs.update_settings(
        platform, actor, job_id, forms.settings(form)))


@router.post("/jobs/{job_id}/variables")
async def save_variables(job_id: str, request: Request, actor: Person,
                         platform: PlatformDep) -> Response:
    form = await request.form()
    return await _save(job_id, "variables", "Variables saved.",
                       lambda: job_review.replace_variables_keeping_secrets(
                           platform, actor, job_id, forms.variables(form)))


@router.post("/jobs/{job_id}/schedule")
async def save_schedule(job_id: str, request: Request, actor: Person,
                        platform: PlatformDep) -> Response:
    form = await request.form()
    return await _save(job_id, "schedule", "Schedule saved.", lambda: jobs.set_schedule(
        platform, actor, job_id, forms.schedule(form)))


@router.get("/jobs/{job_id}/schedule/preview")
def schedule_preview(job_id: str, request: Request, actor: Person,
                     platform: PlatformDep) -> JSONResponse:
    """The schedule editor's live preview: next five runs, or the error a save would give."""
    try:
        preview = job_review.schedule_preview(platform, actor, job_id,
                                              forms.schedule(request.query_params))
    except InvalidInput as exc:
        return JSONResponse({"error": exc.message, "field": exc.extra.get("field"),
                             "pair": exc.extra.get("pair")})
    return JSONResponse({"summary": preview.summary, "next_runs": preview.next_runs,
                         "forecast": preview.forecast, "blocked_days": preview.blocked_days})


@router.get("/jobs/{job_id}/publish")
def publish_review(job_id: str, request: Request, actor: Person,
                   platform: PlatformDep) -> HTMLResponse:
    job = jobs.get_job(platform, actor, job_id)
    return page(request, "publish.html", title=f"Publish {job.name}", job=job,
                changes=job_review.publish_diff(platform, actor, job_id),
                can_publish=can(actor, Permission.PUBLISH))


@router.get("/jobs/{job_id}/code/diff")
def code_diff(job_id: str, request: Request, actor: Person, platform: PlatformDep,
              base: int, head: int) -> HTMLResponse:
    return page(request, "code_diff.html", title=f"Code version {base} → {head}",
                job_id=job_id, base=base, head=head,
                changes=job_review.code_diff(platform, actor, job_id, base, head))


@router.get("/jobs/{job_id}/code/{version}")
def download_code(job_id: str, version: int, actor: Person, platform: PlatformDep) -> Response:
    row, content = jobs.code_version_content(platform, actor, job_id, version)
    return Response(content, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{job_id}-v{row.version}.zip"'})
