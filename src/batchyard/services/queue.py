"""The worker side of the queue: claim, heartbeat, log, finish, sweep.

Executions are the queue. A worker claims one with a lease; the attempt number
and the lease owner fence late writes of a worker that lost its lease.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from batchyard.domain.admission import account_day
from batchyard.domain.executions import AttemptOutcome, ExecutionStatus, after_attempt
from batchyard.domain.plans import plan_from_dict
from batchyard.services import notifications
from batchyard.services.context import Platform
from batchyard.store import usage
from batchyard.store.models import Account, Artifact, Attempt, Execution, LogLine, UTCDateTime


@dataclass(frozen=True)
class ClaimedAttempt:
    """Everything a supervisor needs to run one attempt, read in the claim's transaction."""

    execution_id: str
    account_id: str
    job_id: str
    job_name: str
    number: int
    worker: str
    revision: int
    code: bytes
    main_parameters: int
    requirements: str | None
    variables: dict[str, str]
    secret_values: tuple[str, ...]
    deadline_seconds: float
    timeout_seconds: float
    params: dict[str, Any]
    source: str
    database_access: bool
    log_seq: int
    log_bytes: int
    log_truncated: bool


@dataclass(frozen=True)
class LogRecord:
    at: datetime
    stream: str
    message: str
    level: str | None = None
    data: Any = None


@dataclass(frozen=True)
class OutputFile:
    name: str
    content: bytes
    sha256: str


@dataclass(frozen=True)
class LogBatch:
    """Log records not yet stored, with the execution's log counters after them."""

    records: tuple[LogRecord, ...]
    first_seq: int
    used_bytes: int
    truncated: bool


@dataclass(frozen=True)
class AttemptResult:
    outcome: AttemptOutcome
    runtime_seconds: float
    exit_code: int | None
    error: str | None
    ended_at: datetime
    artifacts: tuple[OutputFile, ...] = field(default=())
    # The attempt's last log records, stored in the same transaction as its end.
    logs: LogBatch | None = None
    # A failure no retry would mend (domain.executions.DEPENDENCY_INSTALL_FAILED): it ends
    # the execution and becomes its reason.
    final_failure: str | None = None


@functools.cache
def _heads_statement() -> Any:
    """The oldest due execution of each account, least busy account first.

    Fair across tenants: an account with fewer running executions goes first, so
    one tenant's backlog cannot starve another's single invocation. The busy count
    is computed once per account with work, not once per queued row. A disabled
    account runs nothing: its queued executions wait until it is enabled.
    """
    queued = (select(_EXECUTION.c.account_id, func.min(_EXECUTION.c.id).label("head"))
              .where(_EXECUTION.c.status == "queued",
                     _EXECUTION.c.next_attempt_at <= bindparam("now", type_=UTCDateTime()))
              .group_by(_EXECUTION.c.account_id).subquery())
    running = aliased(Execution)
    busy = (select(func.count()).select_from(running)
            .where(running.account_id == queued.c.account_id, running.status == "running")
            .scalar_subquery())
    return (select(queued.c.head)
            .join(Account, Account.id == queued.c.account_id)
            .where(Account.batch_jobs_enabled.is_(True))
            .order_by(busy, queued.c.head).limit(bindparam("heads")))


def _candidates(session: Session, now: datetime) -> list[str]:
    return list(session.connection().execute(_heads_statement(),
                                             {"now": now, "heads": 4}).scalars())


def claim_next_execution(platform: Platform, worker: str, lease_seconds: float) -> \
        ClaimedAttempt | None:
    now = platform.clock.now()
    with platform.db.write() as session:
        # The conditional UPDATE is the claim: of two workers that pick the same head,
        # one updates it and the other (on PostgreSQL, after waiting for the first to
        # commit) updates nothing and tries the next head.
        for execution_id in _candidates(session, now):
            row = session.connection().execute(_claim_statement(), {
                "eid": execution_id, "p_worker": worker, "p_now": now,
                "p_until": now + timedelta(seconds=lease_seconds)}).first()
            if row is not None:
                return _start_attempt(platform, session, row._mapping, worker, now)
        return None


@functools.cache
def _claim_statement() -> Any:
    # The status condition makes the claim exclusive even without SKIP LOCKED.
    columns = ("id", "account_id", "job_id", "job_name", "revision", "attempt_count",
               "reserved_seconds", "account_day", "params", "source", "log_seq", "log_bytes",
               "log_truncated")
    return (update(_EXECUTION)
            .where(_EXECUTION.c.id == bindparam("eid"), _EXECUTION.c.status == "queued")
            .values(status="running", attempt_count=_EXECUTION.c.attempt_count + 1,
                    lease_owner=bindparam("p_worker"), lease_expires_at=bindparam("p_until"),
                    started_at=func.coalesce(_EXECUTION.c.started_at, bindparam("p_now")))
            .returning(*(_EXECUTION.c[name] for name in columns)))


def _start_attempt(platform: Platform, session: Session, execution: Any, worker: str,
                   now: datetime) -> ClaimedAttempt:
    connection = session.connection()
    plan_data, timezone = connection.execute(_ACCOUNT_PLAN,
                                             {"aid": execution["account_id"]}).one()
    revision = platform.revisions.get(session, execution["account_id"], execution["job_id"],
                                      execution["revision"])
    settings = revision.settings
    code = platform.revisions.code(session, revision)
    plan = plan_from_dict(plan_data)
    day = account_day(now, timezone).isoformat()
    _, runtime, reserved = usage.account_day_row(session, execution["account_id"], day)
    # In strict mode this execution's own reservation is part of `reserved` when it was
    # admitted today; admitted before midnight, it sits on that day's row, not today's.
    own = execution["reserved_seconds"] if execution["account_day"] == day else 0.0
    others_reserved = reserved - own
    remaining = plan.daily_runtime_budget_seconds - runtime - others_reserved
    deadline = max(0.0, min(settings.timeout_seconds, remaining))
    number = execution["attempt_count"]
    connection.execute(_INSERT_ATTEMPT, {
        "account_id": execution["account_id"], "execution_id": execution["id"],
        "number": number, "status": "running", "account_day": day, "started_at": now,
        "deadline_seconds": deadline, "worker": worker})
    variables: dict[str, str] = {}
    secret_values: list[str] = []
    for item in revision.variables:
        value = platform.secrets.decrypt(item["value"]) if item["secret"] else item["value"]
        variables[item["key"]] = value
        if item["secret"] and value:
            secret_values.append(value)
    return ClaimedAttempt(
        execution_id=execution["id"], account_id=execution["account_id"],
        job_id=execution["job_id"], job_name=execution["job_name"], number=number,
        worker=worker, revision=revision.number, code=code.content,
        main_parameters=code.main_parameters, requirements=code.requirements,
        variables=variables, secret_values=tuple(secret_values), deadline_seconds=deadline,
        timeout_seconds=settings.timeout_seconds, params=dict(execution["params"]),
        source=execution["source"], database_access=plan.database_access,
        log_seq=execution["log_seq"], log_bytes=execution["log_bytes"],
        log_truncated=execution["log_truncated"])


_EXECUTION: Table = Execution.__table__  # type: ignore[assignment]
_ATTEMPT: Table = Attempt.__table__  # type: ignore[assignment]
_LOG: Table = LogLine.__table__  # type: ignore[assignment]
_ARTIFACT: Table = Artifact.__table__  # type: ignore[assignment]
_ACCOUNT: Table = Account.__table__  # type: ignore[assignment]

# Statements of the per-attempt path are built once, with bound parameters:
# constructing them anew each time cost more than executing them.
_OWNED = and_(_EXECUTION.c.id == bindparam("eid"), _EXECUTION.c.status == "running",
              _EXECUTION.c.attempt_count == bindparam("num"),
              _EXECUTION.c.lease_owner == bindparam("worker"))
_RENEW = update(_EXECUTION).where(_OWNED).values(lease_expires_at=bindparam("p_until")) \
    .returning(_EXECUTION.c.cancel_requested)
_LOG_COUNTERS = update(_EXECUTION).where(_OWNED).values(
    log_seq=bindparam("p_seq"), log_bytes=bindparam("p_bytes"),
    log_truncated=bindparam("p_truncated")).returning(_EXECUTION.c.id)
_RELEASE = update(_EXECUTION).where(_OWNED).values(lease_owner=None) \
    .returning(_EXECUTION.c.id)
_END_ATTEMPT = update(_ATTEMPT).where(
    _ATTEMPT.c.execution_id == bindparam("eid"), _ATTEMPT.c.number == bindparam("num")
).values(status=bindparam("p_status"), ended_at=bindparam("p_ended"),
         runtime_seconds=bindparam("p_runtime"), exit_code=bindparam("p_exit"),
         error=bindparam("p_error")).returning(_ATTEMPT.c.account_day)
_CHARGE = update(_EXECUTION).where(_EXECUTION.c.id == bindparam("eid")).values(
    runtime_seconds=_EXECUTION.c.runtime_seconds + bindparam("p_runtime"),
    lease_owner=None, lease_expires_at=None,
).returning(_EXECUTION.c.account_id, _EXECUTION.c.job_id, _EXECUTION.c.revision,
            _EXECUTION.c.cancel_requested, _EXECUTION.c.reserved_seconds,
            _EXECUTION.c.account_day)
_ACCOUNT_PLAN = select(_ACCOUNT.c.plan, _ACCOUNT.c.timezone) \
    .where(_ACCOUNT.c.id == bindparam("aid"))
_REQUEUE = update(_EXECUTION).where(_EXECUTION.c.id == bindparam("eid")).values(
    status=ExecutionStatus.QUEUED.value, next_attempt_at=bindparam("p_at"))
_CLOSE = update(_EXECUTION).where(_EXECUTION.c.id == bindparam("eid")).values(
    status=bindparam("p_status"), reason=bindparam("p_reason"),
    message=bindparam("p_message"), ended_at=bindparam("p_ended"), next_attempt_at=None,
    reserved_seconds=0.0)
_INSERT_LOG = insert(_LOG)
_INSERT_ATTEMPT = insert(_ATTEMPT)
_DELETE_ARTIFACT = delete(_ARTIFACT).where(
    _ARTIFACT.c.account_id == bindparam("aid"), _ARTIFACT.c.execution_id == bindparam("eid"),
    _ARTIFACT.c.name == bindparam("p_name"))
_INSERT_ARTIFACT = insert(_ARTIFACT)


def _owner(attempt: ClaimedAttempt) -> dict[str, Any]:
    return {"eid": attempt.execution_id, "num": attempt.number, "worker": attempt.worker}


def renew_lease(platform: Platform, attempt: ClaimedAttempt, lease_seconds: float) -> \
        tuple[bool, bool]:
    """Extend the lease. Returns (still ours, cancel requested)."""
    now = platform.clock.now()
    with platform.db.write() as session:
        row = session.connection().execute(_RENEW, {
            **_owner(attempt), "p_until": now + timedelta(seconds=lease_seconds)}).first()
    if row is None:
        return False, True
    return True, bool(row[0])


def append_logs(platform: Platform, attempt: ClaimedAttempt, records: list[LogRecord],
                first_seq: int, log_bytes: int, truncated: bool) -> bool:
    """Store a batch of log records; False when the attempt is no longer ours (fenced)."""
    with platform.db.write() as session:
        return _store_logs(session, attempt, LogBatch(tuple(records), first_seq, log_bytes,
                                                      truncated))


def _store_logs(session: Session, attempt: ClaimedAttempt, batch: LogBatch) -> bool:
    connection = session.connection()
    owned = connection.execute(_LOG_COUNTERS, {
        **_owner(attempt), "p_seq": batch.first_seq + len(batch.records),
        "p_bytes": batch.used_bytes, "p_truncated": batch.truncated}).first()
    if owned is None:
        return False
    if batch.records:
        connection.execute(_INSERT_LOG, [
            {"account_id": attempt.account_id, "execution_id": attempt.execution_id,
             "seq": batch.first_seq + index, "attempt": attempt.number, "at": record.at,
             "stream": record.stream, "level": record.level, "message": record.message,
             "data": record.data}
            for index, record in enumerate(batch.records)])
    return True


def finish_attempt(platform: Platform, attempt: ClaimedAttempt, result: AttemptResult) -> \
        Execution | None:
    """Record the attempt's end, charge its run time, then retry or close the execution.

    Returns None when a sweeper already took the attempt away (the late write is dropped).
    """
    with platform.db.write() as session:
        if result.logs is not None and not _store_logs(session, attempt, result.logs):
            return None
        connection = session.connection()
        if connection.execute(_RELEASE, _owner(attempt)).first() is None:
            return None
        _close_attempt(platform, session, attempt.execution_id, attempt.number, result)
        for output in result.artifacts:
            connection.execute(_DELETE_ARTIFACT, {"aid": attempt.account_id,
                                                  "eid": attempt.execution_id,
                                                  "p_name": output.name})
            connection.execute(_INSERT_ARTIFACT, {
                "account_id": attempt.account_id, "execution_id": attempt.execution_id,
                "attempt": attempt.number, "name": output.name, "size": len(output.content),
                "sha256": output.sha256, "created_at": result.ended_at,
                "content": output.content})
        execution = session.get_one(Execution, attempt.execution_id)
    if execution.status == ExecutionStatus.QUEUED:
        platform.on_queued()
    return execution


def _close_attempt(platform: Platform, session: Session, execution_id: str, number: int,
                   result: AttemptResult) -> None:
    connection = session.connection()
    day = connection.execute(_END_ATTEMPT, {
        "eid": execution_id, "num": number, "p_status": result.outcome.value,
        "p_ended": result.ended_at, "p_runtime": result.runtime_seconds,
        "p_exit": result.exit_code, "p_error": result.error}).scalar_one()
    account_id, job_id, revision, cancel_requested, reserved, admitted_day = connection.execute(
        _CHARGE, {"eid": execution_id, "p_runtime": result.runtime_seconds}).one()
    # Run time is charged to the day on which the attempt started (SPEC §3).
    usage.add_account(session, account_id, day, runtime_seconds=result.runtime_seconds)
    usage.add_job(session, account_id, job_id, day, runtime_seconds=result.runtime_seconds)
    plan_data, timezone = connection.execute(_ACCOUNT_PLAN, {"aid": account_id}).one()
    settings = platform.revisions.get(session, account_id, job_id, revision).settings
    today = account_day(result.ended_at, timezone).isoformat()
    _, used, reserved_today = usage.account_day_row(session, account_id, today)
    own = reserved if admitted_day == today else 0.0  # see _start_attempt
    budget_left = (plan_from_dict(plan_data).daily_runtime_budget_seconds - used
                   - (reserved_today - own))
    cancelled = cancel_requested and result.outcome is not AttemptOutcome.SUCCEEDED
    outcome = AttemptOutcome.CANCELLED if cancelled else result.outcome
    decision = after_attempt(outcome, number, settings.retries, budget_left,
                             result.final_failure)
    if decision.retry:
        connection.execute(_REQUEUE, {"eid": execution_id, "p_at": result.ended_at})
        return
    connection.execute(_CLOSE, {"eid": execution_id, "p_status": decision.status.value,
                                "p_reason": decision.reason, "p_message": result.error,
                                "p_ended": result.ended_at})
    # The outbox rows commit (or roll back) with the final state itself.
    notifications.enqueue_execution_end(platform, session, account_id, execution_id,
                                        decision.status.value, settings)
    if reserved:
        usage.add_account(session, account_id, admitted_day, reserved_seconds=-reserved)


def sweep_lost(platform: Platform, lease_seconds: float, owner_prefix: str | None = None) -> int:
    """Fail (or retry) attempts whose worker stopped renewing its lease.

    With ``owner_prefix`` every running attempt of that owner is taken at once:
    a restarted node knows its previous life's attempts are dead.
    """
    now = platform.clock.now()
    with platform.db.read() as session:
        stmt = select(Execution.id).where(Execution.status == "running")
        if owner_prefix:
            stmt = stmt.where(Execution.lease_owner.startswith(owner_prefix))
        else:
            stmt = stmt.where(Execution.lease_expires_at < now)
        candidates = list(session.scalars(stmt.limit(500)))
    swept = 0
    for execution_id in candidates:
        with platform.db.write() as session:
            execution = session.get(Execution, execution_id, with_for_update=True)
            if execution is None or execution.status != "running":
                continue
            if owner_prefix is None and (execution.lease_expires_at is None
                                         or execution.lease_expires_at >= now):
                continue
            if owner_prefix and not (execution.lease_owner or "").startswith(owner_prefix):
                continue
            attempt = session.scalars(select(Attempt).where(
                Attempt.execution_id == execution.id,
                Attempt.number == execution.attempt_count)).one()
            # The last renewal is our best knowledge of when it stopped running.
            last_seen = (execution.lease_expires_at - timedelta(seconds=lease_seconds)
                         if execution.lease_expires_at else now)
            runtime = max(0.0, min((last_seen - attempt.started_at).total_seconds(),
                                   attempt.deadline_seconds))
            _close_attempt(platform, session, execution.id, attempt.number, AttemptResult(
                AttemptOutcome.INTERRUPTED, runtime, None,
                "The worker running this attempt stopped (server restart or lost worker).",
                now))
            swept += 1
    if swept:
        platform.on_queued()
    return swept
