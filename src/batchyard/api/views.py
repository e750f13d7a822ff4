"""Turning stored rows into the API's response shapes."""

from __future__ import annotations

from batchyard.api import schemas
from batchyard.api.strict_json import shown
from batchyard.domain.jobs import settings_from_dict
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.schedules import schedule_summary
from batchyard.services.accounts import describe_database_url
from batchyard.services.executions import ExecutionDetail, JobToday
from batchyard.services.secrets import SecretBox
from batchyard.store.models import Account, ApiKey, CodeVersion, Job, User


def account(row: Account, secrets: SecretBox) -> schemas.AccountOut:
    return schemas.AccountOut(
        id=row.id, name=row.name, timezone=row.timezone,
        batch_jobs_enabled=row.batch_jobs_enabled, super_admin_only=row.super_admin_only,
        budget_mode=row.budget_mode, plan=plan_from_dict(row.plan).as_dict(),
        databases={name: describe_database_url(secrets.decrypt(value)) if value else None
                   for name, value in (("main", row.db_main), ("etl", row.db_etl))})


def user(row: User) -> schemas.UserOut:
    return schemas.UserOut(id=row.id, email=row.email, role=row.role)


def api_key(row: ApiKey) -> schemas.ApiKeyOut:
    return schemas.ApiKeyOut(id=row.id, name=row.name, prefix=row.prefix, user_id=row.user_id,
                             created_at=row.created_at, last_used_at=row.last_used_at,
                             revoked_at=row.revoked_at)


def settings(data: dict[str, object]) -> schemas.SettingsOut:
    return schemas.SettingsOut.model_validate(settings_from_dict(data).public_dict())


def job(row: Job) -> schemas.JobOut:
    return schemas.JobOut(
        id=row.id, name=row.name, description=row.description, status=row.status,
        revision=row.revision, settings=settings(row.settings), schedule=row.schedule,
        schedule_summary=schedule_summary(row.schedule), code_version=row.code_version,
        created_at=row.created_at, modified_at=row.modified_at,
        deleted=row.deleted_at is not None)


def job_item(row: Job, today: JobToday) -> schemas.JobListItem:
    last = today.last_execution
    return schemas.JobListItem(
        id=row.id, name=row.name, status=row.status,
        schedule_summary=schedule_summary(row.schedule),
        last_execution=schemas.LastExecution(
            id=last.id, status=last.status, at=last.ended_at or last.started_at
            or last.created_at) if last else None,
        today=schemas.Today(succeeded=today.succeeded, failed=today.failed,
                            runtime_seconds=today.runtime_seconds),
        modified_at=row.modified_at)


def code_version(row: CodeVersion) -> schemas.CodeVersionOut:
    return schemas.CodeVersionOut(version=row.version, sha256=row.sha256, size=row.size,
                                  created_by=row.created_by, created_at=row.created_at,
                                  has_requirements=row.requirements is not None)


def execution(detail: ExecutionDetail) -> schemas.ExecutionOut:
    row = detail.execution
    return schemas.ExecutionOut(
        id=row.id, job_id=row.job_id, job_name=row.job_name, revision=row.revision,
        source=row.source, scheduled_for=row.scheduled_for, status=row.status,
        reason=row.reason, message=row.message, params=shown(row.params),
        attempts=[schemas.AttemptOut(
            number=a.number, status=a.status, started_at=a.started_at, ended_at=a.ended_at,
            runtime_seconds=a.runtime_seconds, deadline_seconds=a.deadline_seconds,
            exit_code=a.exit_code, error=a.error, worker=a.worker,
            cpu_seconds=a.cpu_seconds, peak_memory_bytes=a.peak_memory_bytes)
            for a in detail.attempts],
        cancel_requested=row.cancel_requested, created_at=row.created_at,
        started_at=row.started_at, ended_at=row.ended_at,
        runtime_seconds=row.runtime_seconds)
