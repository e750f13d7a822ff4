"""The scheduler's use cases: fire what is due, exactly once, and say when to look next.

``fire_due(now)`` takes published jobs whose ``next_fire_at`` has come (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so any number of schedulers share the work), records one
execution per (job, instant) under a unique idempotency key, applies the misfire
rule, and advances ``next_fire_at`` from the last *scheduled* instant, never from
the clock, so a slow tick neither skips nor repeats an instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select
from sqlalchemy.orm import Session

from batchyard.domain import schedules
from batchyard.domain.admission import account_day
from batchyard.services.context import Platform
from batchyard.services.ids import new_id
from batchyard.services.invoke import Invocation, admit
from batchyard.store.models import Account, Execution, Job

# Bounds one job's catch-up per tick: a server down for months must not build a
# transaction of thousands of rows; the next tick continues where this one stopped.
MAX_INSTANTS_PER_JOB = 500
JOBS_PER_TRANSACTION = 200

_EXECUTION: Table = Execution.__table__  # type: ignore[assignment]
_INSERT_MISSED = insert(_EXECUTION)
_KEY_TAKEN = select(_EXECUTION.c.id).where(_EXECUTION.c.idempotency_key == bindparam("key"))


@dataclass(frozen=True)
class FireReport:
    jobs: int = 0
    queued: int = 0
    blocked: int = 0
    missed: int = 0
    coalesced: int = 0

    def __add__(self, other: FireReport) -> FireReport:
        return FireReport(self.jobs + other.jobs, self.queued + other.queued,
                          self.blocked + other.blocked, self.missed + other.missed,
                          self.coalesced + other.coalesced)


def idempotency_key(job_id: str, instant: datetime) -> str:
    return f"{job_id}@{instant.isoformat()}"


def first_fire(schedule: dict[str, Any] | None, now: datetime) -> datetime | None:
    """The first instant after publishing: from now, so a re-publish never replays the past."""
    if not schedule or schedule.get("type") == "none":
        return None
    return schedules.next_fire(schedule, now)


def next_due(platform: Platform) -> datetime | None:
    """The earliest instant any published job is due: the scheduler sleeps until then."""
    with platform.db.read() as session:
        return session.scalar(select(func.min(Job.next_fire_at)).where(
            Job.status == "published", Job.deleted_at.is_(None),
            Job.next_fire_at.is_not(None)))


def fire_due(platform: Platform, now: datetime | None = None) -> FireReport:
    """Fire every instant due at ``now``; returns what was recorded."""
    now = now or platform.clock.now()
    report = FireReport()
    while True:
        batch = _fire_batch(platform, now)
        report = report + batch
        if batch.jobs < JOBS_PER_TRANSACTION:
            break
    if report.queued:
        platform.on_queued()
    return report


def _fire_batch(platform: Platform, now: datetime) -> FireReport:
    report = FireReport()
    with platform.db.write() as session:
        stmt = (select(Job).where(Job.status == "published", Job.deleted_at.is_(None),
                                  Job.next_fire_at <= now)
                .order_by(Job.next_fire_at).limit(JOBS_PER_TRANSACTION))
        if not platform.db.is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        jobs = list(session.scalars(stmt))
        for job in jobs:
            report = report + _fire_job(platform, session, job, now)
    return report


def _fire_job(platform: Platform, session: Session, job: Job, now: datetime) -> FireReport:
    assert job.revision is not None and job.next_fire_at is not None
    revision = platform.revisions.get(session, job.account_id, job.id, job.revision)
    schedule = revision.schedule
    grace = timedelta(minutes=revision.settings.misfire_grace_minutes)
    due: list[datetime] = []
    instant: datetime | None = job.next_fire_at
    while instant is not None and instant <= now and len(due) < MAX_INSTANTS_PER_JOB:
        due.append(instant)
        instant = schedules.next_fire(schedule, instant)
    late = [at for at in due if now - at > grace]
    on_time = [at for at in due if now - at <= grace]
    report = FireReport(jobs=1)
    timezone = session.scalar(select(Account.timezone).where(Account.id == job.account_id))
    assert timezone is not None
    for at in late:
        if _record_missed(session, job, at, now, account_day(at, timezone).isoformat()):
            report = report + FireReport(missed=1)
    if on_time:
        # Several instants missed within the grace run once, for the latest of them.
        latest = on_time[-1]
        key = idempotency_key(job.id, latest)
        if session.connection().execute(_KEY_TAKEN, {"key": key}).first() is None:
            _, admission = admit(platform, session, job.account_id, Invocation(
                job_id=job.id, source="scheduler",
                params={"body": {}, "query_string_parameters": {},
                        "coalesced": [at.isoformat() for at in on_time[:-1]]},
                scheduled_for=latest, idempotency_key=key), now)
            report = report + FireReport(queued=int(admission.admitted),
                                         blocked=int(not admission.admitted),
                                         coalesced=len(on_time) - 1)
    job.next_fire_at = instant
    return report


def _record_missed(session: Session, job: Job, at: datetime, now: datetime,
                   day: str) -> bool:
    """A fire older than the grace: recorded, never silently dropped, never run."""
    key = idempotency_key(job.id, at)
    connection = session.connection()
    if connection.execute(_KEY_TAKEN, {"key": key}).first() is not None:
        return False
    connection.execute(_INSERT_MISSED, dict(
        id=new_id("exe"), account_id=job.account_id, job_id=job.id, job_name=job.name,
        revision=job.revision, source="scheduler", scheduled_for=at, idempotency_key=key,
        status="missed", reason="misfire",
        message=f"The scheduler could not fire this instant within the job's misfire grace "
                f"(it looked at {now.isoformat()}).",
        params={"body": {}, "query_string_parameters": {}}, account_day=day, created_at=now,
        started_at=None, ended_at=now, runtime_seconds=0.0, reserved_seconds=0.0,
        attempt_count=0, next_attempt_at=None, lease_owner=None, lease_expires_at=None,
        cancel_requested=False, log_bytes=0, log_seq=0, log_truncated=False))
    return True
