"""Invocation: admission decided atomically with the recording of the execution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select
from sqlalchemy.orm import Session

from batchyard.domain.admission import (
    Admission,
    BlockReason,
    Usage,
    account_day,
    decide_admission,
)
from batchyard.domain.jobs import Concurrency, settings_from_dict
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.roles import Permission, check
from batchyard.errors import BatchyardError, NotFound
from batchyard.services.context import Actor, Platform
from batchyard.services.ids import new_id
from batchyard.store import usage
from batchyard.store.models import Account, Execution, Job, JobUsageDay, execution_row

ACTIVE = ("queued", "running")


class Blocked(BatchyardError):
    """The invocation was blocked by a plan limit."""

    status = 429

    def __init__(self, admission: Admission, execution_id: str) -> None:
        assert admission.reason is not None
        super().__init__(admission.message, execution_id=execution_id)
        self.code = admission.reason.value
        if admission.reason is BlockReason.NOT_PUBLISHED:
            self.status = 409
        elif admission.reason is BlockReason.FEATURE_DISABLED:
            self.status = 403


@dataclass(frozen=True)
class Invocation:
    job_id: str
    source: str
    params: dict[str, Any]
    scheduled_for: datetime | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Recorded:
    """The execution an invocation became: queued, or blocked with a reason."""

    id: str
    status: str
    reason: str | None
    job_id: str
    job_name: str
    revision: int | None
    source: str
    params: dict[str, Any]
    account_day: str


_EXECUTION: Table = Execution.__table__  # type: ignore[assignment]
# Built once (bound parameters): admission runs for every invocation.
# FOR NO KEY UPDATE: it excludes other admissions and claims of the account as FOR UPDATE
# did, but not the FOR KEY SHARE that every insert referencing the account takes (a
# finish's deliveries, artifacts, audit): with FOR UPDATE, a finish holding the day's
# usage row and inserting such a row waited for the lock holder, which waited for that
# usage row (a deadlock PostgreSQL broke by failing one of them).
_LOCK_ACCOUNT = select(Account.timezone, Account.plan, Account.batch_jobs_enabled,
                       Account.budget_mode).where(Account.id == bindparam("aid")) \
    .with_for_update(key_share=True)
# No settings column: a job never published is refused before its settings matter, and a
# published one is decided on its revision's settings (cached, never decoded per call).
_JOBS = select(Job.id, Job.name, Job.status, Job.revision).where(
    Job.account_id == bindparam("aid"), Job.id.in_(bindparam("jids", expanding=True)),
    Job.deleted_at.is_(None))
_JOB_EXECUTIONS = select(JobUsageDay.job_id, JobUsageDay.executions).where(
    JobUsageDay.job_id.in_(bindparam("jids", expanding=True)),
    JobUsageDay.day == bindparam("day"))
_ACTIVE = select(_EXECUTION.c.job_id, func.count()).where(
    _EXECUTION.c.account_id == bindparam("aid"),
    _EXECUTION.c.job_id.in_(bindparam("jids", expanding=True)),
    _EXECUTION.c.status.in_(ACTIVE)).group_by(_EXECUTION.c.job_id)
_INSERT_EXECUTION = insert(_EXECUTION)
_UNPUBLISHED_SETTINGS = settings_from_dict(None)


def admit(platform: Platform, session: Session, account_id: str, invocation: Invocation,
          now: datetime) -> tuple[Recorded, Admission]:
    """Record one invocation as a queued or a blocked execution, in the caller's transaction."""
    return admit_many(platform, session, account_id, [invocation], now)[0]


def admit_many(platform: Platform, session: Session, account_id: str,
               invocations: list[Invocation], now: datetime,
               job_rows: Mapping[str, Any] | None = None) -> list[tuple[Recorded, Admission]]:
    """Record invocations of one account's jobs, in order, in the caller's transaction.

    The account row is locked first (PostgreSQL ``FOR UPDATE``; SQLite holds the
    database write lock from ``BEGIN IMMEDIATE``), so concurrent API servers and
    schedulers see each other's counters and can never over-admit. Usage is read
    once and carried forward in memory from one decision to the next, so a
    scheduler admitting a thousand fires pays a handful of statements, not
    thousands; a single API call takes the same path with a list of one.

    ``job_rows`` (id, name, status, revision by job id) are rows of this account the
    caller already read and locked in this transaction (the scheduler's due jobs).
    """
    connection = session.connection()
    account = connection.execute(_LOCK_ACCOUNT, {"aid": account_id}).one_or_none()
    job_ids = sorted({invocation.job_id for invocation in invocations})
    jobs = dict(job_rows) if job_rows is not None else {
        row.id: row for row in connection.execute(_JOBS, {"aid": account_id, "jids": job_ids})}
    missing = [job_id for job_id in job_ids if job_id not in jobs]
    if account is None or missing:
        raise NotFound(f"Job {missing[0] if missing else job_ids[0]} not found.")
    day = account_day(now, account.timezone).isoformat()
    plan = plan_from_dict(account.plan)
    executions, runtime, reserved = usage.account_day_row(session, account_id, day)
    per_job: dict[str, int] = {job_id: int(count) for job_id, count in connection.execute(
        _JOB_EXECUTIONS, {"jids": job_ids, "day": day})}
    revisions = platform.revisions.load(session, [
        (account_id, job.id, job.revision) for job in jobs.values() if job.revision is not None])
    # Only jobs that forbid overlapping runs need their running executions counted.
    forbidding = sorted(job.id for job in jobs.values() if job.revision is not None and revisions[
        (account_id, job.id, job.revision)].settings.concurrency is Concurrency.FORBID)
    active: dict[str, int] = {job_id: int(count) for job_id, count in connection.execute(
        _ACTIVE, {"aid": account_id, "jids": forbidding})} if forbidding else {}
    results: list[tuple[Recorded, Admission]] = []
    rows: list[dict[str, Any]] = []
    admitted_per_job: dict[str, int] = {}
    added_executions, added_reserved = 0, 0.0
    for invocation in invocations:
        job = jobs[invocation.job_id]
        revision = revisions[(account_id, job.id, job.revision)] \
            if job.revision is not None else None
        settings = revision.settings if revision else _UNPUBLISHED_SETTINGS
        admission = decide_admission(
            enabled=account.batch_jobs_enabled, published=job.status == "published",
            plan=plan, settings=settings,
            usage=Usage(executions=executions + added_executions,
                        job_executions=per_job.get(job.id, 0) + admitted_per_job.get(job.id, 0),
                        runtime_seconds=runtime, reserved_seconds=reserved + added_reserved,
                        job_active=active.get(job.id, 0) + admitted_per_job.get(job.id, 0)))
        strict = admission.admitted and account.budget_mode == "strict"
        recorded = Recorded(new_id("exe"), "queued" if admission.admitted else "blocked",
                            admission.reason.value if admission.reason else None, job.id,
                            job.name, job.revision if revision else None, invocation.source,
                            invocation.params, day)
        rows.append(execution_row(
            id=recorded.id, account_id=account_id, job_id=job.id, job_name=job.name,
            revision=recorded.revision, source=invocation.source,
            scheduled_for=invocation.scheduled_for, idempotency_key=invocation.idempotency_key,
            status=recorded.status, reason=recorded.reason,
            message=None if admission.admitted else admission.message,
            params=invocation.params, account_day=day, created_at=now,
            reserved_seconds=settings.timeout_seconds if strict else 0.0,
            next_attempt_at=now if admission.admitted else None,
            ended_at=None if admission.admitted else now,
            worker_labels=",".join(settings.worker_labels)))
        if admission.admitted:
            added_executions += 1
            added_reserved += settings.timeout_seconds if strict else 0.0
            admitted_per_job[job.id] = admitted_per_job.get(job.id, 0) + 1
        results.append((recorded, admission))
    connection.execute(_INSERT_EXECUTION, rows)
    if added_executions:
        usage.add_account(session, account_id, day, executions=added_executions,
                          reserved_seconds=added_reserved)
        usage.add_jobs(session, account_id, day, admitted_per_job)
    return results


def api_invocation(actor: Actor, job_id: str, body: Any, query: dict[str, str]) -> Invocation:
    """An API call's invocation, once the caller may invoke at all (role checks only)."""
    check(actor.role, Permission.WRITE)
    if actor.super_admin_only:
        actor.require(Permission.WRITE)
    return Invocation(job_id=job_id, source="api",
                      params={"body": body, "query_string_parameters": query})


def answer(recorded: Recorded, admission: Admission) -> Recorded:
    """The API's answer to an admitted invocation; a blocked one is raised (429/409/403)."""
    if not admission.admitted:
        raise Blocked(admission, recorded.id)
    return recorded


def invoke(platform: Platform, actor: Actor, job_id: str, body: Any,
           query: dict[str, str]) -> Recorded:
    """Answer at once: the execution is queued, or recorded as blocked and raised."""
    invocation = api_invocation(actor, job_id, body, query)
    now = platform.clock.now()
    with platform.db.write() as session:
        execution, admission = admit(platform, session, actor.account_id, invocation, now)
    if admission.admitted:
        platform.on_queued()
    return answer(execution, admission)
