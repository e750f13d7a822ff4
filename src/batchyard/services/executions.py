"""Reading executions, their logs and artifacts; cancelling them; today's usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from batchyard.domain.admission import account_day
from batchyard.domain.executions import FINISHED, ExecutionStatus
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.roles import Permission
from batchyard.errors import Conflict, InvalidInput
from batchyard.services import audit, notifications
from batchyard.services.context import Actor, Platform
from batchyard.store import scoped
from batchyard.store.models import (
    Artifact,
    Attempt,
    Execution,
    Job,
    JobUsageDay,
    LogLine,
    UsageDay,
)

LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


@dataclass(frozen=True)
class ExecutionDetail:
    execution: Execution
    attempts: list[Attempt]


@dataclass(frozen=True)
class LogPage:
    items: list[LogLine]
    truncated: bool
    finished: bool


def get_execution(platform: Platform, actor: Actor, execution_id: str) -> ExecutionDetail:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        execution = scoped.execution(session, actor.account_id, execution_id)
        attempts = list(session.scalars(select(Attempt).where(
            Attempt.account_id == actor.account_id, Attempt.execution_id == execution.id)
            .order_by(Attempt.number)))
        return ExecutionDetail(execution, attempts)


def list_executions(platform: Platform, actor: Actor, *, job_id: str | None,
                    status: str | None, since: datetime | None, until: datetime | None,
                    limit: int, cursor: str | None) -> tuple[list[ExecutionDetail], str | None]:
    actor.require(Permission.READ)
    if status is not None and status not in {s.value for s in ExecutionStatus}:
        raise InvalidInput(f"status must be one of {', '.join(s.value for s in ExecutionStatus)}",
                           field="status")
    with platform.db.read() as session:
        stmt = select(Execution).where(Execution.account_id == actor.account_id)
        if job_id:
            stmt = stmt.where(Execution.job_id == job_id)
        if status:
            stmt = stmt.where(Execution.status == status)
        if since:
            stmt = stmt.where(Execution.created_at >= since)
        if until:
            stmt = stmt.where(Execution.created_at < until)
        rows, next_cursor = scoped.page(session, stmt, Execution.id, limit, cursor)
        attempts: dict[str, list[Attempt]] = {row.id: [] for row in rows}
        if rows:
            for attempt in session.scalars(select(Attempt).where(
                    Attempt.account_id == actor.account_id,
                    Attempt.execution_id.in_(list(attempts))).order_by(Attempt.number)):
                attempts[attempt.execution_id].append(attempt)
        return [ExecutionDetail(row, attempts[row.id]) for row in rows], next_cursor


def read_logs(platform: Platform, actor: Actor, execution_id: str, *, level: str | None,
              after: int | None, limit: int = 1000) -> LogPage:
    actor.require(Permission.READ)
    if level is not None and level not in LOG_LEVELS:
        raise InvalidInput(f"level must be one of {', '.join(LOG_LEVELS)}", field="level")
    with platform.db.read() as session:
        execution = scoped.execution(session, actor.account_id, execution_id)
        stmt = select(LogLine).where(LogLine.account_id == actor.account_id,
                                     LogLine.execution_id == execution.id)
        if after is not None:
            stmt = stmt.where(LogLine.seq > after)
        if level is not None:
            # A level filter keeps SDK records at or above it; plain output has no level.
            stmt = stmt.where(LogLine.level.in_(LOG_LEVELS[LOG_LEVELS.index(level):]))
        items = list(session.scalars(stmt.order_by(LogLine.seq).limit(limit)))
        return LogPage(items, execution.log_truncated,
                       ExecutionStatus(execution.status) in FINISHED)


def cancel(platform: Platform, actor: Actor, execution_id: str) -> ExecutionDetail:
    actor.require(Permission.WRITE)
    now = platform.clock.now()
    running = False
    with platform.db.write() as session:
        execution = scoped.execution(session, actor.account_id, execution_id, lock=True)
        if ExecutionStatus(execution.status) in FINISHED:
            raise Conflict(f"The execution has already ended ({execution.status}).",
                           status_now=execution.status)
        before = execution.status
        if execution.status == "queued":
            # No attempt runs: the first attempt, or the retry, is simply not made.
            when = "before it started" if execution.attempt_count == 0 else "before its retry"
            execution.status = "cancelled"
            execution.reason = "cancelled"
            execution.message = f"cancelled by {actor.email} {when}"
            execution.ended_at = now
            execution.next_attempt_at = None
            _release_reservation(session, execution)
            notifications.enqueue_execution_end(platform, session, execution.account_id,
                                                execution.id)
        else:
            execution.cancel_requested = True
            running = True
        audit.record_by(session, actor, now, "execution.cancel", execution.id,
                        job_id=execution.job_id, before={"status": before},
                        after={"status": execution.status,
                               "cancel_requested": execution.cancel_requested})
    if running:
        platform.on_cancel(execution_id)
    return get_execution(platform, actor, execution_id)


def _release_reservation(session: Session, execution: Execution) -> None:
    if execution.reserved_seconds:
        session.execute(update(UsageDay).where(
            UsageDay.account_id == execution.account_id,
            UsageDay.day == execution.account_day).values(
            reserved_seconds=UsageDay.reserved_seconds - execution.reserved_seconds))
        execution.reserved_seconds = 0.0


def list_artifacts(platform: Platform, actor: Actor, execution_id: str) -> list[Artifact]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        scoped.execution(session, actor.account_id, execution_id)
        return list(session.scalars(select(Artifact).where(
            Artifact.account_id == actor.account_id, Artifact.execution_id == execution_id)
            .order_by(Artifact.name)))


def artifact_content(platform: Platform, actor: Actor, execution_id: str,
                     name: str) -> tuple[Artifact, bytes]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        scoped.execution(session, actor.account_id, execution_id)
        row = scoped.artifact(session, actor.account_id, execution_id, name)
        return row, row.content


@dataclass(frozen=True)
class JobToday:
    succeeded: int
    failed: int
    runtime_seconds: float
    last_execution: Execution | None


def jobs_today(platform: Platform, actor: Actor, jobs: list[Job]) -> dict[str, JobToday]:
    with platform.db.read() as session:
        account = scoped.account(session, actor.account_id)
        day = account_day(platform.clock.now(), account.timezone).isoformat()
        counts: dict[tuple[str, str], int] = {}
        for job_id, status, count in session.execute(
                select(Execution.job_id, Execution.status, func.count())
                .where(Execution.account_id == actor.account_id, Execution.account_day == day)
                .group_by(Execution.job_id, Execution.status)):
            counts[(job_id, status)] = count
        runtimes = {job_id: seconds for job_id, seconds in session.execute(
            select(JobUsageDay.job_id, JobUsageDay.runtime_seconds).where(
                JobUsageDay.account_id == actor.account_id, JobUsageDay.day == day))}
        result = {}
        for job in jobs:
            last = session.scalars(select(Execution).where(
                Execution.account_id == actor.account_id, Execution.job_id == job.id)
                .order_by(Execution.id.desc()).limit(1)).first()
            failed = sum(counts.get((job.id, s), 0) for s in ("failed", "timed_out"))
            result[job.id] = JobToday(counts.get((job.id, "succeeded"), 0), failed,
                                      runtimes.get(job.id, 0.0), last)
        return result


def usage(platform: Platform, actor: Actor, day: date | None) -> dict[str, Any]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        account = scoped.account(session, actor.account_id)
        plan = plan_from_dict(account.plan)
        the_day = (day or account_day(platform.clock.now(), account.timezone)).isoformat()
        row = session.get(UsageDay, (actor.account_id, the_day))
        per_job = session.execute(
            select(JobUsageDay, Job.name).join(Job, Job.id == JobUsageDay.job_id)
            .where(JobUsageDay.account_id == actor.account_id, JobUsageDay.day == the_day)
            .order_by(Job.name)).all()
        return {
            "date": the_day, "timezone": account.timezone,
            "jobs": {"used": scoped.live_job_count(session, actor.account_id),
                     "limit": plan.max_jobs},
            "executions": {"used": row.executions if row else 0,
                           "limit": plan.max_executions_per_day},
            "runtime_seconds": {"used": row.runtime_seconds if row else 0.0,
                                "reserved": row.reserved_seconds if row else 0.0,
                                "limit": plan.daily_runtime_budget_seconds},
            "per_job": [{"job_id": usage_row.job_id, "name": name,
                         "executions": usage_row.executions,
                         "runtime_seconds": usage_row.runtime_seconds,
                         "limit": plan.max_invocations_per_job_per_day}
                        for usage_row, name in per_job],
            # Retention in force (SPEC §3): executions older than this are deleted.
            "retention": {"days": plan.retention_days},
        }
