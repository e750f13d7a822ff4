"""The scheduler's use cases: fire what is due, exactly once, and say when to look next.

``fire_due(now)`` takes published jobs whose ``next_fire_at`` has come (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so any number of schedulers share the work), records one
execution per (job, instant) under a unique idempotency key, applies the misfire
rule, and advances ``next_fire_at`` from the last *scheduled* instant, never from
the clock, so a slow tick neither skips nor repeats an instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from batchyard.domain import schedules
from batchyard.domain.admission import account_day
from batchyard.domain.schedules import Schedule
from batchyard.services.context import Platform
from batchyard.services.ids import new_id
from batchyard.services.invoke import Invocation, admit_many
from batchyard.store.models import Account, Execution, Job, UTCDateTime, execution_row

# Bounds one job's catch-up per tick: a server down for months must not build a
# transaction of thousands of rows; the next tick continues where this one stopped.
MAX_INSTANTS_PER_JOB = 500
JOBS_PER_TRANSACTION = 500
KEYS_PER_STATEMENT = 5000

_EXECUTION: Table = Execution.__table__  # type: ignore[assignment]
_INSERT_MISSED = insert(_EXECUTION)


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


_DUE_JOBS = (select(Job.id, Job.account_id, Job.name, Job.status, Job.revision,
                    Job.next_fire_at)
             .where(Job.status == "published", Job.deleted_at.is_(None),
                    Job.next_fire_at <= bindparam("now", type_=UTCDateTime()))
             .order_by(Job.next_fire_at).limit(JOBS_PER_TRANSACTION))
_TAKEN_KEYS = select(_EXECUTION.c.idempotency_key).where(
    _EXECUTION.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_TIMEZONES = select(Account.id, Account.timezone).where(
    Account.id.in_(bindparam("ids", expanding=True)))
# Jobs due together mostly fire next together too: one statement for each shared next
# instant, and one batch of single-row updates for the instants only one job has.
_ADVANCE_MANY = update(Job).where(Job.id.in_(bindparam("jids", expanding=True))).values(
    next_fire_at=bindparam("p_next", type_=UTCDateTime()))
_ADVANCE_ONE = update(Job).where(Job.id == bindparam("jid")).values(
    next_fire_at=bindparam("p_next", type_=UTCDateTime()))


@dataclass
class _Plan:
    """What one due job gets this tick."""

    job_id: str
    account_id: str
    name: str
    revision: int
    late: list[datetime]
    on_time: list[datetime]
    next_fire_at: datetime | None


def _fire_batch(platform: Platform, now: datetime) -> FireReport:
    """One transaction for up to JOBS_PER_TRANSACTION due jobs, admitted per account in bulk."""
    with platform.db.write() as session:
        stmt = _DUE_JOBS if platform.db.is_sqlite else \
            _DUE_JOBS.with_for_update(skip_locked=True, of=Job)
        due_jobs = list(session.connection().execute(stmt, {"now": now}))
        if not due_jobs:
            return FireReport()
        return fire_rows(platform, session, due_jobs, now)


def fire_rows(platform: Platform, session: Session, due_jobs: Sequence[Any],
              now: datetime) -> FireReport:
    """Fire the due instants of these job rows (id, account_id, name, status, revision,
    next_fire_at), read and locked by the caller in its transaction: the scheduler's due
    batch, or a job about to be re-published whose due instant must not be lost."""
    connection = session.connection()
    platform.revisions.load(session, [(row.account_id, row.id, row.revision)
                                      for row in due_jobs])
    # Jobs sharing a schedule share its next instants: each is computed once a batch.
    next_fires: dict[tuple[Schedule, datetime], datetime | None] = {}
    plans = [_plan(platform, session, row, now, next_fires) for row in due_jobs]
    keys = [idempotency_key(plan.job_id, at) for plan in plans
            for at in [*plan.late, *plan.on_time[-1:]]]
    taken = _taken_keys(session, keys)
    account_ids = sorted({plan.account_id for plan in plans})
    timezones: dict[str, str] = {account_id: timezone for account_id, timezone in
                                 connection.execute(_TIMEZONES, {"ids": account_ids})}
    report = FireReport(jobs=len(plans))
    missed_rows = []
    invocations: dict[str, list[Invocation]] = {}
    for plan in plans:
        for at in plan.late:
            if idempotency_key(plan.job_id, at) not in taken:
                missed_rows.append(_missed_row(plan, at, now, account_day(
                    at, timezones[plan.account_id]).isoformat()))
        if plan.on_time:
            latest = plan.on_time[-1]
            key = idempotency_key(plan.job_id, latest)
            if key not in taken:
                # Several instants missed within the grace run once, for the latest.
                invocations.setdefault(plan.account_id, []).append(Invocation(
                    job_id=plan.job_id, source="scheduler",
                    params={"body": {}, "query_string_parameters": {},
                            "coalesced": [at.isoformat() for at in plan.on_time[:-1]]},
                    scheduled_for=latest, idempotency_key=key))
                report = report + FireReport(coalesced=len(plan.on_time) - 1)
    if missed_rows:
        connection.execute(_INSERT_MISSED, missed_rows)
    report = report + FireReport(missed=len(missed_rows))
    rows_by_id = {row.id: row for row in due_jobs}
    for account_id in sorted(invocations):
        # The due rows are this account's, read and locked above: admission reuses them.
        job_rows = {invocation.job_id: rows_by_id[invocation.job_id]
                    for invocation in invocations[account_id]}
        for _, admission in admit_many(platform, session, account_id,
                                       invocations[account_id], now, job_rows):
            report = report + FireReport(queued=int(admission.admitted),
                                         blocked=int(not admission.admitted))
    advancing: dict[datetime | None, list[str]] = {}
    for plan in plans:
        advancing.setdefault(plan.next_fire_at, []).append(plan.job_id)
    singles = [{"jid": job_ids[0], "p_next": next_fire_at}
               for next_fire_at, job_ids in advancing.items() if len(job_ids) == 1]
    if singles:
        connection.execute(_ADVANCE_ONE, singles)
    for next_fire_at, job_ids in advancing.items():
        if len(job_ids) > 1:
            connection.execute(_ADVANCE_MANY, {"jids": job_ids, "p_next": next_fire_at})
    return report


def _taken_keys(session: Session, keys: list[str]) -> set[str]:
    """The keys already recorded. Asked in chunks: after a long outage a batch has hundreds
    of thousands of instants, and one statement may bind at most 65,535 parameters
    (PostgreSQL); past that it fails and the same batch would be retried forever."""
    connection = session.connection()
    taken: set[str] = set()
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        taken.update(connection.execute(
            _TAKEN_KEYS, {"keys": keys[start:start + KEYS_PER_STATEMENT]}).scalars())
    return taken


def _plan(platform: Platform, session: Session, row: Any, now: datetime,
          next_fires: dict[tuple[Schedule, datetime], datetime | None]) -> _Plan:
    revision = platform.revisions.get(session, row.account_id, row.id, row.revision)
    schedule = revision.parsed_schedule
    grace = timedelta(minutes=revision.settings.misfire_grace_minutes)
    due: list[datetime] = []
    instant: datetime | None = row.next_fire_at
    while instant is not None and instant <= now and len(due) < MAX_INSTANTS_PER_JOB:
        due.append(instant)
        # Advanced from the scheduled instant, never from the clock.
        key = (schedule, instant)
        if key not in next_fires:
            next_fires[key] = schedules.next_fire_of(schedule, instant)
        instant = next_fires[key]
    return _Plan(row.id, row.account_id, row.name, row.revision,
                 late=[at for at in due if schedules.is_late(at, now, grace)],
                 on_time=[at for at in due if not schedules.is_late(at, now, grace)],
                 next_fire_at=instant)


def _missed_row(plan: _Plan, at: datetime, now: datetime, day: str) -> dict[str, Any]:
    """A fire older than the grace: recorded, never silently dropped, never run."""
    return execution_row(
        id=new_id("exe"), account_id=plan.account_id, job_id=plan.job_id, job_name=plan.name,
        revision=plan.revision, source="scheduler", scheduled_for=at,
        idempotency_key=idempotency_key(plan.job_id, at), status="missed", reason="misfire",
        message=f"The scheduler could not fire this instant within the job's misfire grace "
                f"(it looked at {now.isoformat()}).",
        params={"body": {}, "query_string_parameters": {}}, account_day=day, created_at=now,
        ended_at=now)
