"""Job use cases: create, edit, code, settings, variables, schedule, publish, delete."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from batchyard.domain import codezip
from batchyard.domain.admission import exceeds_plan
from batchyard.domain.executions import JOB_DELETED, JOB_UNPUBLISHED
from batchyard.domain.jobs import (
    JobStatus,
    apply_settings_changes,
    next_status_on_publish,
    next_status_on_unpublish,
    settings_from_dict,
    validate_description,
    validate_name,
    validate_variables,
)
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.roles import Permission
from batchyard.domain.schedules import validate_schedule
from batchyard.errors import Conflict, InvalidInput, LimitExceeded, NotPublishable
from batchyard.services import audit, scheduler
from batchyard.services.context import Actor, Platform
from batchyard.services.executions import _release_reservation
from batchyard.services.ids import new_id
from batchyard.services.scheduler import FireReport
from batchyard.store import scoped
from batchyard.store.models import CodeVersion, Execution, Job, Revision, Variable


class MaxJobsExceeded(LimitExceeded):
    """The account already has as many jobs as its plan allows."""

    code = "max_jobs_exceeded"


@dataclass(frozen=True)
class VariableView:
    key: str
    value: str | None
    secret: bool
    # SecretBox.value_digest of the value: lets a client compare a secret it holds.
    digest: str


def _touch(job: Job, platform: Platform) -> None:
    job.modified_at = platform.clock.now()


def create_job(platform: Platform, actor: Actor, data: dict[str, Any]) -> Job:
    actor.require(Permission.WRITE)
    name = validate_name(data.get("name"))
    description = validate_description(data.get("description", ""))
    now = platform.clock.now()
    with platform.db.write() as session:
        # The account row lock serialises concurrent creates on PostgreSQL
        # (SQLite's BEGIN IMMEDIATE already does), so max_jobs cannot be overshot.
        account = scoped.account(session, actor.account_id, lock=True)
        plan = plan_from_dict(account.plan)
        if scoped.live_job_count(session, actor.account_id) >= plan.max_jobs:
            raise MaxJobsExceeded(
                f"The account already has {plan.max_jobs} jobs, the most its plan allows; "
                "delete one or ask the operator for a larger plan.",
                limit=plan.max_jobs)
        _ensure_name_free(session, actor.account_id, name)
        job = Job(id=new_id("job"), account_id=actor.account_id, name=name,
                  description=description, status=JobStatus.DRAFT.value,
                  settings=settings_from_dict(None).as_dict(), schedule=None,
                  created_at=now, modified_at=now)
        session.add(job)
        session.flush()
        audit.record_by(session, actor, now, "job.create", job.id, job_id=job.id,
                        after={"name": name, "description": description})
        return job


def _ensure_name_free(session: Session, account_id: str, name: str,
                      except_id: str | None = None) -> None:
    other = scoped.job_by_name(session, account_id, name)
    if other is not None and other.id != except_id:
        raise Conflict(f"A job named {name!r} already exists in this account.",
                       field="name")


def get_job(platform: Platform, actor: Actor, job_id: str) -> Job:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        return scoped.job(session, actor.account_id, job_id)


def list_jobs(platform: Platform, actor: Actor) -> list[Job]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        return list(scoped.jobs(session, actor.account_id))


def update_job(platform: Platform, actor: Actor, job_id: str, data: dict[str, Any]) -> Job:
    actor.require(Permission.WRITE)
    unknown = set(data) - {"name", "description"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}",
                           field=sorted(unknown)[0])
    now = platform.clock.now()
    with platform.db.write() as session:
        # Job row first, then the account: the scheduler locks in that order too
        # (PostgreSQL would otherwise deadlock a rename against a fire).
        job = scoped.job(session, actor.account_id, job_id, lock=True)
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        if "name" in data:
            name = validate_name(data["name"])
            if name != job.name:
                # Serialise with creates and other renames of the account (PostgreSQL).
                scoped.account(session, actor.account_id, lock=True)
                _ensure_name_free(session, actor.account_id, name, job.id)
                before["name"], after["name"] = job.name, name
                job.name = name
        if "description" in data:
            description = validate_description(data["description"])
            if description != job.description:
                before["description"], after["description"] = job.description, description
                job.description = description
        if after:
            _touch(job, platform)
            action = "job.rename" if "name" in after else "job.update"
            audit.record_by(session, actor, now, action, job.id, job_id=job.id,
                            before=before, after=after)
        return job


def delete_job(platform: Platform, actor: Actor, job_id: str) -> Job:
    """Soft delete: executions, logs and audit entries stay readable."""
    actor.require(Permission.PUBLISH)
    now = platform.clock.now()
    with platform.db.write() as session:
        job = _take_out_of_service(session, actor.account_id, job_id, now, JOB_DELETED,
                                   "The job was deleted before this execution started.")
        job.deleted_at = now
        before_status = job.status
        job.status = JobStatus.UNPUBLISHED.value if job.status != "draft" else job.status
        session.execute(update(Execution).where(
            Execution.account_id == actor.account_id, Execution.job_id == job.id,
            Execution.status == "running").values(cancel_requested=True))
        audit.record_by(session, actor, now, "job.delete", job.id, job_id=job.id,
                        before={"name": job.name, "status": before_status})
        return job


def _take_out_of_service(session: Session, account_id: str, job_id: str, now: datetime,
                         reason: str, message: str) -> Job:
    """Lock the job, then its account, and cancel its queued executions (SPEC §3: only a
    published job runs; running ones finish).

    The account lock is admission's (services/invoke.py): an invocation that read the job
    as published either committed before this point, and its execution is cancelled here,
    or waits and then finds the job out of service. Job before account, as the scheduler
    takes them, so the two never deadlock.
    """
    job = scoped.job(session, account_id, job_id, lock=True)
    scoped.account(session, account_id, lock=True)
    job.next_fire_at = None
    # Strict budget mode: the queued executions cancelled below give back their reservation.
    for queued in session.scalars(select(Execution).where(
            Execution.account_id == account_id, Execution.job_id == job.id,
            Execution.status == "queued", Execution.reserved_seconds > 0)):
        _release_reservation(session, queued)
    session.execute(update(Execution).where(
        Execution.account_id == account_id, Execution.job_id == job.id,
        Execution.status == "queued").values(
        status="cancelled", reason=reason, ended_at=now, next_attempt_at=None,
        message=message))
    return job


def code_size_limit(platform: Platform, actor: Actor, job_id: str) -> int:
    """The plan's largest zip, checked before an upload's body is read past it."""
    actor.require(Permission.WRITE)
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id)
        return plan_from_dict(scoped.account(session, actor.account_id).plan).max_code_size_bytes


def upload_code(platform: Platform, actor: Actor, job_id: str, data: bytes) -> CodeVersion:
    actor.require(Permission.WRITE)
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id)
        plan = plan_from_dict(scoped.account(session, actor.account_id).plan)
    manifest = codezip.inspect_code_zip(data, plan.max_code_size_bytes)
    now = platform.clock.now()
    with platform.db.write() as session:
        # The job row lock numbers concurrent uploads one after the other (PostgreSQL).
        job = scoped.job(session, actor.account_id, job_id, lock=True)
        latest = session.scalar(select(func.max(CodeVersion.version)).where(
            CodeVersion.account_id == actor.account_id, CodeVersion.job_id == job.id)) or 0
        version = CodeVersion(
            id=new_id("code"), account_id=actor.account_id, job_id=job.id, version=latest + 1,
            sha256=hashlib.sha256(data).hexdigest(), size=len(data),
            main_parameters=manifest.main_parameters, requirements=manifest.requirements,
            created_by=actor.email, created_at=now, content=data)
        session.add(version)
        before = job.code_version
        job.code_version = version.version
        _touch(job, platform)
        audit.record_by(session, actor, now, "job.code_upload", job.id, job_id=job.id,
                        before={"code_version": before},
                        after={"code_version": version.version, "sha256": version.sha256,
                               "size": version.size})
        return version


def list_code_versions(platform: Platform, actor: Actor, job_id: str) -> list[CodeVersion]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        # A deleted job is gone for its tenant, sub-resources included (SPEC 2); its
        # executions stay readable as history.
        scoped.job(session, actor.account_id, job_id)
        return list(scoped.code_versions(session, actor.account_id, job_id))


def code_version_content(platform: Platform, actor: Actor, job_id: str,
                         version: int) -> tuple[CodeVersion, bytes]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id)
        row = scoped.code_version(session, actor.account_id, job_id, version)
        return row, row.content


def update_settings(platform: Platform, actor: Actor, job_id: str,
                    data: dict[str, Any]) -> Job:
    actor.require(Permission.WRITE)
    now = platform.clock.now()
    with platform.db.write() as session:
        job = scoped.job(session, actor.account_id, job_id)
        plan = plan_from_dict(scoped.account(session, actor.account_id).plan)
        current = settings_from_dict(job.settings)
        new = apply_settings_changes(current, data, plan, seal=platform.secrets.encrypt)
        if new != current:
            job.settings = new.as_dict()
            _touch(job, platform)
            # The audit trail shows whether a webhook secret is set, never its token.
            audit.record_by(session, actor, now, "job.settings", job.id, job_id=job.id,
                            before=current.public_dict(), after=new.public_dict())
        return job


def list_variables(platform: Platform, actor: Actor, job_id: str) -> list[VariableView]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        scoped.job(session, actor.account_id, job_id)
        return [_view(platform, v, platform.secrets.decrypt(v.value) if v.secret else v.value)
                for v in scoped.variables(session, actor.account_id, job_id)]


def _view(platform: Platform, variable: Variable, plain: str) -> VariableView:
    return VariableView(variable.key, None if variable.secret else variable.value,
                        variable.secret, platform.secrets.value_digest(
                            variable.account_id, variable.job_id, variable.key, plain))


def _audit_value(variable: Variable) -> dict[str, Any]:
    # Secret values never enter the audit trail; a changed secret shows as "(changed)".
    return {"key": variable.key, "secret": variable.secret,
            "value": "***" if variable.secret else variable.value}


def replace_variables(platform: Platform, actor: Actor, job_id: str,
                      items: object) -> list[VariableView]:
    actor.require(Permission.WRITE)
    variables = validate_variables(items)
    now = platform.clock.now()
    with platform.db.write() as session:
        job = scoped.job(session, actor.account_id, job_id)
        old = list(scoped.variables(session, actor.account_id, job_id))
        old_plain = {v.key: (platform.secrets.decrypt(v.value) if v.secret else v.value, v.secret)
                     for v in old}
        for row in old:
            session.delete(row)
        session.flush()
        new_rows = []
        views = []
        for position, variable in enumerate(variables):
            stored = platform.secrets.encrypt(variable.value) if variable.secret \
                else variable.value
            row = Variable(job_id=job.id, key=variable.key, account_id=actor.account_id,
                           value=stored, secret=variable.secret, position=position)
            session.add(row)
            new_rows.append(row)
            views.append(_view(platform, row, variable.value))
        new_plain = {v.key: (v.value, v.secret) for v in variables}
        if new_plain != old_plain:
            changed_secrets = sorted(k for k, (value, secret) in new_plain.items()
                                     if secret and old_plain.get(k) != (value, secret))
            _touch(job, platform)
            audit.record_by(session, actor, now, "job.variables", job.id, job_id=job.id,
                            before=[_audit_value(v) for v in old],
                            after={"variables": [_audit_value(v) for v in new_rows],
                                   "secrets_changed": changed_secrets})
        return views


def set_schedule(platform: Platform, actor: Actor, job_id: str, data: object) -> Job:
    actor.require(Permission.WRITE)
    now = platform.clock.now()
    with platform.db.write() as session:
        job = scoped.job(session, actor.account_id, job_id)
        account = scoped.account(session, actor.account_id)
        plan = plan_from_dict(account.plan)
        schedule = validate_schedule(data, account.timezone,
                                     min_gap_minutes=plan.min_schedule_gap_minutes, now=now)
        if schedule != job.schedule:
            audit.record_by(session, actor, now, "job.schedule", job.id, job_id=job.id,
                            before=job.schedule, after=schedule)
            job.schedule = schedule
            _touch(job, platform)
        return job


def publish(platform: Platform, actor: Actor, job_id: str) -> Job:
    """Snapshot code, settings, variables and schedule as a new immutable revision."""
    actor.require(Permission.PUBLISH)
    now = platform.clock.now()
    with platform.db.write() as session:
        job = scoped.job(session, actor.account_id, job_id, lock=True)
        account = scoped.account(session, actor.account_id, lock=True)
        status = next_status_on_publish(JobStatus(job.status), job.code_version is not None,
                                        job.schedule is not None)
        plan = plan_from_dict(account.plan)
        if exceeds_plan(plan, settings_from_dict(job.settings)):
            raise NotPublishable(
                f"The job's settings ask for more than the plan allows (timeout at most "
                f"{plan.max_execution_timeout_minutes:g} minutes, retries at most "
                f"{plan.max_retries}): change them, then publish.")
        fired = FireReport()
        if job.status == "published" and job.next_fire_at is not None \
                and job.next_fire_at <= now:
            # An instant that came due under the revision in force is fired (or recorded
            # missed) with it now: publishing must never drop it (SPEC §4).
            fired = scheduler.fire_rows(platform, session, [job], now)
        number = (session.scalar(select(func.max(Revision.number)).where(
            Revision.account_id == actor.account_id, Revision.job_id == job.id)) or 0) + 1
        assert job.code_version is not None and job.schedule is not None
        variables = [{"key": v.key, "value": v.value, "secret": v.secret}
                     for v in scoped.variables(session, actor.account_id, job.id)]
        session.add(Revision(id=new_id("rev"), account_id=actor.account_id, job_id=job.id,
                             number=number, code_version=job.code_version,
                             settings=job.settings, variables=variables,
                             schedule=job.schedule, created_by=actor.email, created_at=now))
        before = {"status": job.status, "revision": job.revision}
        job.status = status.value
        job.revision = number
        job.next_fire_at = scheduler.first_fire(job.schedule, now)
        _touch(job, platform)
        audit.record_by(session, actor, now, "job.publish", job.id, job_id=job.id,
                        before=before, after={"status": job.status, "revision": number,
                                              "code_version": job.code_version})
    if fired.queued:
        platform.on_queued()
    platform.on_schedule_change()
    return job


def unpublish(platform: Platform, actor: Actor, job_id: str) -> Job:
    actor.require(Permission.PUBLISH)
    now = platform.clock.now()
    with platform.db.write() as session:
        job = _take_out_of_service(session, actor.account_id, job_id, now, JOB_UNPUBLISHED,
                                   "The job was unpublished before this execution started.")
        job.status = next_status_on_unpublish(JobStatus(job.status)).value
        _touch(job, platform)
        audit.record_by(session, actor, now, "job.unpublish", job.id, job_id=job.id,
                        before={"status": "published"}, after={"status": job.status})
        return job
