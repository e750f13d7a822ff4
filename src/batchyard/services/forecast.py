"""The account's quota forecast: its published schedules (or one being edited) projected
over the coming days against its plan (domain/forecast.py decides)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from batchyard.domain import forecast as projection
from batchyard.domain.admission import account_day
from batchyard.domain.jobs import settings_from_dict
from batchyard.domain.plans import plan_from_dict
from batchyard.domain.roles import Permission
from batchyard.domain.schedules import validate_schedule
from batchyard.errors import InvalidInput
from batchyard.services.context import Actor, Platform
from batchyard.store import scoped, usage
from batchyard.store.models import Execution, Job, JobUsageDay

HISTORY_RUNS = 20
_ENDED = ("succeeded", "failed", "timed_out")


def account_forecast(platform: Platform, actor: Actor, days: int = 30, *,
                     job_id: str | None = None,
                     schedule: dict[str, Any] | None = None) -> projection.Forecast:
    """Project the published jobs; with ``job_id`` and ``schedule``, that job as if it were
    published with that schedule and its working settings (a schedule being edited)."""
    actor.require(Permission.READ)
    if not 1 <= days <= projection.MAX_DAYS:
        raise InvalidInput(f"days must be 1 to {projection.MAX_DAYS}", field="days")
    if schedule is not None and job_id is None:
        raise InvalidInput("a schedule to try needs its job", field="job")
    now = platform.clock.now()
    with platform.db.read() as session:
        account = scoped.account(session, actor.account_id)
        plan = plan_from_dict(account.plan)
        day = account_day(now, account.timezone).isoformat()
        published = list(session.execute(
            select(Job.id, Job.name, Job.revision).where(
                Job.account_id == actor.account_id, Job.deleted_at.is_(None),
                Job.status == "published", Job.revision.is_not(None))))
        revisions = platform.revisions.load(session, [
            (actor.account_id, row.id, row.revision) for row in published])
        entries: dict[str, projection.ForecastJob] = {}
        for row in published:
            revision = revisions[(actor.account_id, row.id, row.revision)]
            if revision.schedule.get("type") != "none":
                entries[row.id] = projection.ForecastJob(row.id, row.name, revision.schedule,
                                                        revision.settings)
        if job_id is not None and schedule is not None:
            job = scoped.job(session, actor.account_id, job_id)
            tried = validate_schedule(schedule, account.timezone)
            entries.pop(job.id, None)
            if tried["type"] != "none":
                entries[job.id] = projection.ForecastJob(job.id, job.name, tried,
                                                        settings_from_dict(job.settings))
        history = _recent_runtimes(session, actor.account_id, list(entries))
        executions, runtime, reserved = usage.account_day_row(session, actor.account_id, day)
        per_job = {row.job_id: row.executions for row in session.execute(
            select(JobUsageDay.job_id, JobUsageDay.executions).where(
                JobUsageDay.account_id == actor.account_id, JobUsageDay.day == day))}
    jobs = [projection.ForecastJob(entry.job_id, entry.name, entry.schedule, entry.settings,
                                   projection.median(history.get(entry.job_id, [])))
            for entry in entries.values()]
    return projection.forecast(
        jobs, plan, timezone=account.timezone, budget_mode=account.budget_mode, start=now,
        days=days, today=projection.TodayUsage(executions, runtime, reserved, per_job))


def _recent_runtimes(session: Any, account_id: str, job_ids: list[str]) -> dict[str, list[float]]:
    """The run times of each job's last ``HISTORY_RUNS`` ended executions, in one query."""
    if not job_ids:
        return {}
    ranked = select(Execution.job_id, Execution.runtime_seconds, func.row_number().over(
        partition_by=Execution.job_id, order_by=Execution.id.desc()).label("n")).where(
        Execution.account_id == account_id, Execution.job_id.in_(job_ids),
        Execution.status.in_(_ENDED)).subquery()
    out: dict[str, list[float]] = {}
    for job, seconds in session.execute(select(ranked.c.job_id, ranked.c.runtime_seconds)
                                        .where(ranked.c.n <= HISTORY_RUNS)):
        out.setdefault(job, []).append(float(seconds))
    return out
