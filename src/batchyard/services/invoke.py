"""Invocation: admission decided atomically with the recording of the execution."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from batchyard.domain.admission import (
    Admission,
    BlockReason,
    Usage,
    account_day,
    decide_admission,
)
from batchyard.domain.jobs import settings_from_dict
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.roles import Permission, check
from batchyard.errors import BatchyardError
from batchyard.services.context import Actor, Platform
from batchyard.services.ids import new_id
from batchyard.store import scoped
from batchyard.store.models import Execution, Job, JobUsageDay, UsageDay

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


def usage_row(session: Session, account_id: str, day: str) -> UsageDay:
    row = session.get(UsageDay, (account_id, day), with_for_update=True)
    if row is None:
        row = UsageDay(account_id=account_id, day=day, executions=0, runtime_seconds=0.0,
                       reserved_seconds=0.0)
        session.add(row)
        session.flush()
    return row


def job_usage_row(session: Session, account_id: str, job_id: str, day: str) -> JobUsageDay:
    row = session.get(JobUsageDay, (job_id, day), with_for_update=True)
    if row is None:
        row = JobUsageDay(job_id=job_id, day=day, account_id=account_id, executions=0,
                          runtime_seconds=0.0)
        session.add(row)
        session.flush()
    return row


def admit(platform: Platform, session: Session, account_id: str, invocation: Invocation,
          now: datetime) -> tuple[Execution, Admission]:
    """Record one invocation as a queued or a blocked execution, in the caller's transaction.

    The account row is locked first (PostgreSQL ``FOR UPDATE``; SQLite holds the
    database write lock from ``BEGIN IMMEDIATE``), so concurrent API servers and
    schedulers see each other's counters and can never over-admit.
    """
    account = scoped.account(session, account_id, lock=True)
    job: Job = scoped.job(session, account_id, invocation.job_id)
    day = account_day(now, account.timezone).isoformat()
    plan = plan_from_dict(account.plan)
    revision = None
    if job.revision is not None:
        revision = platform.revisions.get(session, account_id, job.id, job.revision)
    settings = revision.settings if revision else settings_from_dict(job.settings)
    usage = usage_row(session, account_id, day)
    job_usage = job_usage_row(session, account_id, job.id, day)
    active = session.scalar(select(func.count()).select_from(Execution).where(
        Execution.account_id == account_id, Execution.job_id == job.id,
        Execution.status.in_(ACTIVE))) or 0
    admission = decide_admission(
        enabled=account.batch_jobs_enabled, published=job.status == "published", plan=plan,
        settings=settings,
        usage=Usage(executions=usage.executions, job_executions=job_usage.executions,
                    runtime_seconds=usage.runtime_seconds,
                    reserved_seconds=usage.reserved_seconds, job_active=active))
    execution = Execution(
        id=new_id("exe"), account_id=account_id, job_id=job.id, job_name=job.name,
        revision=job.revision if revision else None, source=invocation.source,
        scheduled_for=invocation.scheduled_for, idempotency_key=invocation.idempotency_key,
        status="queued" if admission.admitted else "blocked",
        reason=admission.reason.value if admission.reason else None,
        message=None if admission.admitted else admission.message,
        params=invocation.params, account_day=day, created_at=now, runtime_seconds=0.0,
        reserved_seconds=0.0, attempt_count=0, next_attempt_at=now, cancel_requested=False,
        log_bytes=0, log_seq=0,
        log_truncated=False)
    if not admission.admitted:
        execution.ended_at = now
        execution.next_attempt_at = None
    else:
        usage.executions += 1
        job_usage.executions += 1
        if account.budget_mode == "strict":
            usage.reserved_seconds += settings.timeout_seconds
            execution.reserved_seconds = settings.timeout_seconds
    session.add(execution)
    return execution, admission


def invoke(platform: Platform, actor: Actor, job_id: str, body: Any,
           query: dict[str, str]) -> Execution:
    """Answer at once: the execution is queued, or recorded as blocked and raised."""
    check(actor.role, Permission.WRITE)
    if actor.super_admin_only:
        actor.require(Permission.WRITE)
    now = platform.clock.now()
    invocation = Invocation(job_id=job_id, source="api",
                            params={"body": body, "query_string_parameters": query})
    with platform.db.write() as session:
        execution, admission = admit(platform, session, actor.account_id, invocation, now)
    if not admission.admitted:
        raise Blocked(admission, execution.id)
    platform.on_queued()
    return execution
