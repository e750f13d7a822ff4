"""The worker side of the queue: claim, heartbeat, log, finish, sweep.

Executions are the queue. A worker claims one with a lease; the attempt number
and the lease owner fence late writes of a worker that lost its lease.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from batchyard.domain.admission import account_day
from batchyard.domain.attempts import (
    AttemptResult,
    ClaimedAttempt,
    LogBatch,
    LogRecord,
)
from batchyard.domain.executions import (
    JOB_DELETED,
    JOB_UNPUBLISHED,
    RUNTIME_BUDGET_EXHAUSTED,
    SETUP_FAILED,
    AttemptOutcome,
    ExecutionStatus,
    after_attempt,
    may_retry,
)
from batchyard.domain.jobs import JobSettings, label_sets
from batchyard.domain.plans import plan_from_dict
from batchyard.errors import internal_error_message, new_reference
from batchyard.services import metrics, notifications
from batchyard.services.context import Platform
from batchyard.services.revisions import PublishedCode, PublishedRevision
from batchyard.services.secrets import SecretUndecryptable
from batchyard.store import usage
from batchyard.store.models import (
    Account,
    Artifact,
    Attempt,
    Execution,
    Job,
    LogLine,
    UTCDateTime,
)

log = logging.getLogger("batchyard.queue")


@functools.cache
def _heads_statement() -> Any:
    """The oldest due execution of each account, least busy account first.

    Fair across tenants: an account with fewer running executions goes first, so
    one tenant's backlog cannot starve another's single invocation. The busy count
    is computed once per account with work, not once per queued row. A disabled
    account runs nothing: its queued executions wait until it is enabled.
    """
    queued = (select(_EXECUTION.c.account_id, func.min(_EXECUTION.c.id).label("head"),
                     func.count().label("due"))
              .where(*_due(_EXECUTION, "now")).group_by(_EXECUTION.c.account_id).subquery())
    busy = _busy(queued.c.account_id)
    return (select(queued.c.due, queued.c.account_id, busy, Account.plan)
            .join(Account, Account.id == queued.c.account_id)
            .where(Account.batch_jobs_enabled.is_(True))
            .order_by(busy, queued.c.head)
            .limit(bindparam("heads")).offset(bindparam("skip")))


def _due(table: Any, now: str) -> tuple[Any, ...]:
    """Queued, due, and asking for no label this worker lacks (domain.jobs.label_sets)."""
    return (table.c.status == "queued",
            table.c.next_attempt_at <= bindparam(now, type_=UTCDateTime()),
            table.c.worker_labels.in_(bindparam("label_sets", expanding=True)))


def _busy(account_id: Any) -> Any:
    running = aliased(Execution)
    return (select(func.count()).select_from(running)
            .where(running.account_id == account_id, running.status == "running")
            .scalar_subquery())


@functools.cache
def _account_slots_statement(skip_locked: bool) -> Any:
    # The account's row locked, then its running attempts counted: two workers claiming
    # for one account at once cannot both take its last slot (SQLite's writers are serial).
    # FOR NO KEY UPDATE, as admission's lock (services/invoke.py): inserts that reference
    # the account (a finish's deliveries, artifacts) neither wait for it nor make it skip.
    # The account's other figures an attempt's start needs come with the lock: every
    # statement while it is held delays the account's other claims and admissions (with
    # 128 slots on one account they queued for it ~130 ms, admissions behind them).
    return (select(Account.plan, _busy(Account.id), Account.timezone, Account.budget_mode)
            .where(Account.id == bindparam("aid"))
            .with_for_update(of=Account, skip_locked=skip_locked, key_share=True))


_HEADS_PAGE = 16


def _candidates(session: Session, now: datetime, sets: list[str]) -> \
        Iterator[tuple[str, int]]:
    """Accounts with due work below their plan's max_concurrent_executions, least busy
    first (then oldest head); accounts at their limit are passed over (theirs wait).
    Each comes with how many executions such accounts of its page had due (a hint)."""
    connection = session.connection()
    for page in itertools.count():
        rows = connection.execute(_heads_statement(), {
            "now": now, "heads": _HEADS_PAGE, "skip": page * _HEADS_PAGE,
            "label_sets": sets}).all()
        open_rows = [(account_id, int(due)) for due, account_id, busy, plan in rows
                     if busy < plan_from_dict(plan).max_concurrent_executions]
        due_here = sum(due for _, due in open_rows)
        if len(rows) == _HEADS_PAGE:
            due_here += 1  # more pages: more may be due
        for account_id, _ in open_rows:
            yield account_id, due_here
        if len(rows) < _HEADS_PAGE:
            return


@dataclass(frozen=True)
class _LockedAccount:
    """An account whose row this transaction holds: what a claim in it needs."""
    limit: int | None  # its max_concurrent_executions; None when it is full already
    plan: Any
    timezone: str
    budget_mode: str


def _lock_account(session: Session, account_id: str, wait: bool) -> _LockedAccount | None:
    """Lock the account: its free-slot limit, timezone and budget mode. None when it does
    not exist or, without ``wait``, when another transaction holds it.

    The count read here may be older than the lock (PostgreSQL evaluates the statement's
    subquery in the snapshot it took before waiting): it only passes over a full account
    early. The claim statement counts again, in a snapshot taken after the lock.
    """
    row = session.connection().execute(_account_slots_statement(not wait),
                                       {"aid": account_id}).first()
    if row is None:
        return None
    plan, busy, timezone, budget_mode = row
    limit = plan_from_dict(plan).max_concurrent_executions
    return _LockedAccount(limit if int(busy) < limit else None, plan, timezone, budget_mode)


# Claims rounds: each round either starts an attempt, ends a queued execution that cannot
# run, or finds heads another worker took; bounded so a claim always returns.
_CLAIM_ROUNDS = 8


class _Ended:
    """The head claimed ended without an attempt (see _start_attempt)."""


_ENDED = _Ended()


def _claim_in(platform: Platform, session: Session, account_id: str,
              account: _LockedAccount | None, due: int, worker: str, now: datetime,
              lease_seconds: float, sets: list[str]) -> ClaimedAttempt | _Ended | None:
    """Under the account's lock: its head, claimed and started; None when it has none due
    (or no free slot), ``_ENDED`` when the head ended without an attempt."""
    if account is None or account.limit is None:
        return None
    # The head is picked now, under the lock, so a worker that waited for another's claim
    # of this account takes the next head at once instead of failing on the one just
    # taken and asking for heads again.
    connection = session.connection()
    with_state = not platform.db.is_sqlite
    day = account_day(now, account.timezone).isoformat()
    row = connection.execute(_claim_statement(with_state), {
        "aid": account_id, "p_worker": worker, "p_now": now,
        "p_until": now + timedelta(seconds=lease_seconds),
        "label_sets": sets, "p_limit": account.limit, "p_day": day}).first()
    if row is None:
        return None
    execution: Any = row._mapping
    if not with_state:
        execution = {**execution, **connection.execute(_CLAIMED_STATE, {
            "aid": account_id, "jid": execution["job_id"], "p_day": day}).one()._mapping}
    claimed = _start_attempt(platform, session, execution, account, worker, now)
    return _ENDED if claimed is None else replace(claimed, due_seen=due)


def claim_next_execution(platform: Platform, worker: str, lease_seconds: float,
                         labels: tuple[str, ...] = ()) -> ClaimedAttempt | None:
    """The next attempt for ``worker``, whose advertised ``labels`` must include every
    label the execution's job asks for (its worker_labels setting)."""
    now = platform.clock.now()
    sets = label_sets(labels)
    with platform.db.write() as session:
        # The claim is a conditional UPDATE under the account's lock (the slot count and
        # max_concurrent_executions are exact). A head that cannot run (its job left
        # service, no budget, an attempt that cannot be prepared) is ended in this
        # transaction and the heads are read again: one bad row never wedges the queue.
        # Accounts are tried without waiting for a lock another claim (or an admission)
        # holds: concurrent claims spread over the accounts with work instead of queueing
        # on the first, and a claim holding one account's lock never waits for another's
        # (waiting while holding, each claim in its own heads' order, deadlocked). Only a
        # claim that found every open account locked, and so holds none, waits: for the
        # first of them.
        holding = False  # an account's lock is held by this transaction
        for _ in range(_CLAIM_ROUNDS):
            progressed = False
            locked: list[tuple[str, int]] = []
            for account_id, due in _candidates(session, now, sets):
                held = _lock_account(session, account_id, wait=False)
                if held is None:
                    locked.append((account_id, due))
                    continue
                holding = True
                outcome = _claim_in(platform, session, account_id, held, due, worker, now,
                                    lease_seconds, sets)
                if outcome is None:
                    continue  # nothing of this account is due any more, or it is full
                if not isinstance(outcome, _Ended):
                    return outcome
                progressed = True  # it ended without an attempt: look at the heads again
                break
            if not progressed and locked and not holding:
                account_id, due = locked[0]
                held = _lock_account(session, account_id, wait=True)
                holding = True
                outcome = _claim_in(platform, session, account_id, held, due, worker, now,
                                    lease_seconds, sets)
                if outcome is None:
                    return None
                if not isinstance(outcome, _Ended):
                    return outcome
                progressed = True
            if not progressed:
                return None
        return None


@functools.cache
def _claim_statement(with_state: bool) -> Any:
    # The status condition makes the claim exclusive even without SKIP LOCKED.
    columns = ("id", "account_id", "job_id", "job_name", "revision", "attempt_count",
               "reserved_seconds", "account_day", "params", "source", "log_seq", "log_bytes",
               "log_truncated", "created_at")
    queued = _EXECUTION.alias("queued")
    head = (select(func.min(queued.c.id))
            .where(queued.c.account_id == bindparam("aid"), *_due(queued, "p_now"))
            .scalar_subquery())
    # On PostgreSQL the claimed job's state and the account's usage on the attempt's start
    # day come back with the claim (read in its snapshot, under the account's lock, as a
    # statement of their own after it would): two round trips fewer while the lock is
    # held. SQLite names no table in RETURNING, so a subquery there could not refer to the
    # claimed row: _CLAIMED_STATE reads them after it (one writer: no other claim waits).
    state = [*_claimed_state(_EXECUTION.c.account_id, _EXECUTION.c.job_id),
             *usage.day_figures(_EXECUTION.c.account_id, bindparam("p_day"))] \
        if with_state else []
    return (update(_EXECUTION)
            .where(_EXECUTION.c.id == head, _EXECUTION.c.status == "queued",
                   _busy(bindparam("aid")) < bindparam("p_limit"))
            .values(status="running", attempt_count=_EXECUTION.c.attempt_count + 1,
                    lease_owner=bindparam("p_worker"), lease_expires_at=bindparam("p_until"),
                    started_at=func.coalesce(_EXECUTION.c.started_at, bindparam("p_now")))
            .returning(*(_EXECUTION.c[name] for name in columns), *state))


def _claimed_state(account_id: Any, job_id: Any) -> list[Any]:
    """The claimed job's status and deletion, as columns of another statement."""
    job = _JOB.alias("claimed_job")
    return [select(job.c[name]).where(job.c.id == job_id, job.c.account_id == account_id)
            .scalar_subquery().label(label)
            for name, label in (("status", "job_status"), ("deleted_at", "job_deleted_at"))]


class _Unstartable(Exception):
    """The claimed execution ends here, without an attempt: (status, reason, message)."""

    def __init__(self, status: ExecutionStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _start_attempt(platform: Platform, session: Session, execution: Any,
                   account: _LockedAccount, worker: str,
                   now: datetime) -> ClaimedAttempt | None:
    """Prepare the claimed attempt (``execution``: the claim statement's row); None when
    the execution was ended instead."""
    connection = session.connection()
    # In strict mode a queued execution holds a reservation on the day it was admitted; an
    # attempt holds its deadline on the day it starts (SPEC §3), so the reservation moves.
    if execution["reserved_seconds"]:
        usage.add_account(session, execution["account_id"], execution["account_day"],
                          reserved_seconds=-execution["reserved_seconds"])
    settings = None
    try:
        if execution["job_deleted_at"] is not None:
            raise _Unstartable(ExecutionStatus.CANCELLED, JOB_DELETED,
                               "The job was deleted before this execution started.")
        if execution["job_status"] != "published":
            raise _Unstartable(ExecutionStatus.CANCELLED, JOB_UNPUBLISHED,
                               "The job was unpublished before this execution started.")
        revision, code, variables, secret_values = _prepare(platform, session, execution)
        settings = revision.settings
        plan = plan_from_dict(account.plan)
        day = account_day(now, account.timezone).isoformat()
        if execution["reserved_seconds"]:  # moved just now: read the day after the move
            _, runtime, reserved = usage.account_day_row(session, execution["account_id"], day)
        else:
            runtime, reserved = float(execution["day_runtime"]), float(execution["day_reserved"])
        remaining = plan.daily_runtime_budget_seconds - runtime - reserved
        deadline = min(settings.timeout_seconds, remaining)
        if deadline <= 0:
            raise _Unstartable(ExecutionStatus.FAILED, RUNTIME_BUDGET_EXHAUSTED,
                               "No run time was left in today's budget when this attempt "
                               "was to start; nothing was run.")
    except _Unstartable as stop:
        _end_unstarted(platform, session, execution, now, stop, settings)
        return None
    if account.budget_mode == "strict":
        usage.add_account(session, execution["account_id"], day, reserved_seconds=deadline)
    reserved = deadline if account.budget_mode == "strict" else 0.0
    if reserved != execution["reserved_seconds"]:
        connection.execute(_SET_RESERVED, {"eid": execution["id"], "p_reserved": reserved})
    number = execution["attempt_count"]
    connection.execute(_INSERT_ATTEMPT, {
        "account_id": execution["account_id"], "execution_id": execution["id"],
        "number": number, "status": "running", "account_day": day, "started_at": now,
        "deadline_seconds": deadline, "worker": worker})
    if number == 1:
        metrics.observe_start((now - execution["created_at"]).total_seconds())
    return ClaimedAttempt(
        execution_id=execution["id"], account_id=execution["account_id"],
        job_id=execution["job_id"], job_name=execution["job_name"], number=number,
        worker=worker, revision=revision.number, code=code.content,
        main_parameters=code.main_parameters, requirements=code.requirements,
        variables=variables, secret_values=secret_values, deadline_seconds=deadline,
        timeout_seconds=settings.timeout_seconds, params=dict(execution["params"]),
        source=execution["source"], database_access=plan.database_access,
        log_seq=execution["log_seq"], log_bytes=execution["log_bytes"],
        log_truncated=execution["log_truncated"])


def _prepare(platform: Platform, session: Session, execution: Any) -> \
        tuple[PublishedRevision, PublishedCode, dict[str, str], tuple[str, ...]]:
    """The revision, its code and its variables in clear; _Unstartable when they cannot be had.

    Database errors pass through (the claim rolls back and is tried again): they are the
    store's, not this execution's. Anything else is this execution's and ends it.
    """
    try:
        revision = platform.revisions.get(session, execution["account_id"],
                                          execution["job_id"], execution["revision"])
        code = platform.revisions.code(session, revision)
        variables: dict[str, str] = {}
        secret_values: list[str] = []
        for item in revision.variables:
            value = platform.secrets.decrypt(item["value"]) if item["secret"] else item["value"]
            variables[item["key"]] = value
            if item["secret"] and value:
                secret_values.append(value)
    except DBAPIError:
        raise
    except SecretUndecryptable:
        raise _Unstartable(ExecutionStatus.FAILED, SETUP_FAILED,
                           "The attempt could not be prepared: a secret variable of the "
                           "published revision cannot be decrypted with the server's key "
                           "(was the key changed?). Set the variable again and re-publish."
                           ) from None
    except Exception:
        reference = new_reference()
        log.exception("preparing execution %s failed (reference %s)", execution["id"],
                      reference)
        raise _Unstartable(ExecutionStatus.FAILED, SETUP_FAILED,
                           f"The attempt could not be prepared. "
                           f"{internal_error_message(reference)}") from None
    return revision, code, variables, tuple(secret_values)


def _end_unstarted(platform: Platform, session: Session, execution: Any, now: datetime,
                   stop: _Unstartable, settings: JobSettings | None) -> None:
    """End a claimed execution without running anything; its reason goes to its log too."""
    connection = session.connection()
    connection.execute(_END_UNSTARTED, {
        "eid": execution["id"], "p_status": stop.status.value, "p_reason": stop.reason,
        "p_message": stop.message, "p_ended": now,
        "p_bytes": len(stop.message.encode())})
    connection.execute(_INSERT_LOG, {
        "account_id": execution["account_id"], "execution_id": execution["id"],
        "seq": execution["log_seq"], "attempt": execution["attempt_count"], "at": now,
        "stream": "log", "level": "error", "message": stop.message, "data": None})
    if settings is not None or stop.reason != SETUP_FAILED:
        notifications.enqueue_execution_end(platform, session, execution["account_id"],
                                            execution["id"], stop.status.value, settings)


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
# Every running attempt of a worker process renewed in one statement (each still fenced
# by its own number and owner): a transaction per attempt every heartbeat was ~30 a
# second for a worker running 64 long jobs.
_RENEW_MANY = update(_EXECUTION).where(
    tuple_(_EXECUTION.c.id, _EXECUTION.c.attempt_count, _EXECUTION.c.lease_owner).in_(
        bindparam("keys", expanding=True)),
    _EXECUTION.c.status == "running",
).values(lease_expires_at=bindparam("p_until")).returning(
    _EXECUTION.c.id, _EXECUTION.c.attempt_count, _EXECUTION.c.cancel_requested)
_LOG_COUNTERS = update(_EXECUTION).where(_OWNED).values(
    log_seq=bindparam("p_seq"), log_bytes=bindparam("p_bytes"),
    log_truncated=bindparam("p_truncated")).returning(_EXECUTION.c.id)
_RELEASE = update(_EXECUTION).where(_OWNED).values(lease_owner=None) \
    .returning(_EXECUTION.c.id)
# The end's last log batch and the release of the lease in one fenced statement.
_RELEASE_WITH_LOGS = _LOG_COUNTERS.values(lease_owner=None)
# An attempt is charged at most its deadline (SPEC §3): the time between starting the clock
# and the spawn, the kill's latency and its grace are not the customer's.
_END_ATTEMPT = update(_ATTEMPT).where(
    _ATTEMPT.c.execution_id == bindparam("eid"), _ATTEMPT.c.number == bindparam("num")
).values(status=bindparam("p_status"), ended_at=bindparam("p_ended"),
         runtime_seconds=case(
             (bindparam("p_runtime") > _ATTEMPT.c.deadline_seconds, _ATTEMPT.c.deadline_seconds),
             else_=bindparam("p_runtime")),
         exit_code=bindparam("p_exit"), cpu_seconds=bindparam("p_cpu"),
         peak_memory_bytes=bindparam("p_memory"),
         error=bindparam("p_error")).returning(_ATTEMPT.c.account_day, _ATTEMPT.c.runtime_seconds)
_CHARGE = update(_EXECUTION).where(_EXECUTION.c.id == bindparam("eid")).values(
    runtime_seconds=_EXECUTION.c.runtime_seconds + bindparam("p_runtime"),
    lease_owner=None, lease_expires_at=None,
).returning(_EXECUTION.c.account_id, _EXECUTION.c.job_id, _EXECUTION.c.revision,
            _EXECUTION.c.cancel_requested, _EXECUTION.c.reserved_seconds)
_ACCOUNT_PLAN = select(_ACCOUNT.c.plan, _ACCOUNT.c.timezone) \
    .where(_ACCOUNT.c.id == bindparam("aid"))
_JOB: Table = Job.__table__  # type: ignore[assignment]
_CLAIMED_STATE = select(*_claimed_state(bindparam("aid"), bindparam("jid")),
                        *usage.day_figures(bindparam("aid"), bindparam("p_day")))
_SET_RESERVED = update(_EXECUTION).where(_EXECUTION.c.id == bindparam("eid")).values(
    reserved_seconds=bindparam("p_reserved"))
# A claimed execution that ends before any attempt: the claim's count and start are undone.
_END_UNSTARTED = update(_EXECUTION).where(_EXECUTION.c.id == bindparam("eid")).values(
    status=bindparam("p_status"), reason=bindparam("p_reason"),
    message=bindparam("p_message"), ended_at=bindparam("p_ended"), next_attempt_at=None,
    lease_owner=None, lease_expires_at=None, reserved_seconds=0.0,
    attempt_count=_EXECUTION.c.attempt_count - 1,
    started_at=case((_EXECUTION.c.attempt_count == 1, null()),
                    else_=_EXECUTION.c.started_at),
    log_seq=_EXECUTION.c.log_seq + 1, log_bytes=_EXECUTION.c.log_bytes + bindparam("p_bytes"))
_REQUEUE = update(_EXECUTION).where(_EXECUTION.c.id == bindparam("eid")).values(
    status=ExecutionStatus.QUEUED.value, next_attempt_at=bindparam("p_at"),
    reserved_seconds=0.0)
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


_OWNED_ATTEMPT = select(_EXECUTION.c.account_id, _EXECUTION.c.job_id, _EXECUTION.c.job_name,
                        _EXECUTION.c.revision, _EXECUTION.c.source, _ACCOUNT.c.plan) \
    .join(_ACCOUNT, _ACCOUNT.c.id == _EXECUTION.c.account_id).where(_OWNED)


def owned_attempt(platform: Platform, execution_id: str, number: int, worker: str) -> \
        ClaimedAttempt | None:
    """The running attempt ``number`` of an execution while ``worker`` holds its lease, as
    far as a remote worker's later calls need it (no code, variables or params: those went
    with the claim); None once it is not that worker's (fenced)."""
    with platform.db.read() as session:
        row = session.connection().execute(_OWNED_ATTEMPT, {
            "eid": execution_id, "num": number, "worker": worker}).first()
    if row is None:
        return None
    return ClaimedAttempt(
        execution_id=execution_id, account_id=row.account_id, job_id=row.job_id,
        job_name=row.job_name, number=number, worker=worker, revision=row.revision, code=b"",
        main_parameters=0, requirements=None, variables={}, secret_values=(),
        deadline_seconds=0.0, timeout_seconds=0.0, params={}, source=row.source,
        database_access=plan_from_dict(row.plan).database_access, log_seq=0, log_bytes=0,
        log_truncated=False)


def attempt_code(platform: Platform, attempt: ClaimedAttempt) -> bytes:
    """The code zip of an attempt's revision (a remote worker fetches it once per digest)."""
    with platform.db.read() as session:
        revision = platform.revisions.get(session, attempt.account_id, attempt.job_id,
                                          attempt.revision)
        return platform.revisions.code(session, revision).content


def _owner(attempt: ClaimedAttempt) -> dict[str, Any]:
    return {"eid": attempt.execution_id, "num": attempt.number, "worker": attempt.worker}


def renew_lease(platform: Platform, attempt: ClaimedAttempt, lease_seconds: float) -> \
        tuple[bool, bool]:
    """Extend the lease. Returns (still ours, cancel requested)."""
    return renew_leases(platform, [attempt], lease_seconds)[0]


def renew_leases(platform: Platform, attempts: list[ClaimedAttempt],
                 lease_seconds: float) -> list[tuple[bool, bool]]:
    """``renew_lease`` for many attempts in one statement, in their order."""
    if not attempts:
        return []
    now = platform.clock.now()
    with platform.db.write() as session:
        rows = session.connection().execute(_RENEW_MANY, {
            "keys": [(a.execution_id, a.number, a.worker) for a in attempts],
            "p_until": now + timedelta(seconds=lease_seconds)}).all()
    cancels = {(row.id, row.attempt_count): bool(row.cancel_requested) for row in rows}
    return [(True, cancels[key]) if key in cancels else (False, True)
            for key in ((a.execution_id, a.number) for a in attempts)]


def append_logs(platform: Platform, attempt: ClaimedAttempt, records: list[LogRecord],
                first_seq: int, log_bytes: int, truncated: bool) -> bool:
    """Store a batch of log records; False when the attempt is no longer ours (fenced)."""
    with platform.db.write() as session:
        return _store_logs(session, attempt, LogBatch(tuple(records), first_seq, log_bytes,
                                                      truncated))


def _store_logs(session: Session, attempt: ClaimedAttempt, batch: LogBatch,
                fence: Any = _LOG_COUNTERS) -> bool:
    """The batch's counters through ``fence`` (a statement fenced by the owner), then its
    records; False, with nothing written, when the attempt is no longer ours."""
    connection = session.connection()
    owned = connection.execute(fence, {
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
        ExecutionStatus | None:
    """Record the attempt's end, charge its run time, then retry or close the execution.

    Returns the execution's status after it (queued: a retry), or None when a sweeper
    already took the attempt away (the late write is dropped).
    """
    with platform.db.write() as session:
        connection = session.connection()
        if result.logs is not None:
            if not _store_logs(session, attempt, result.logs, fence=_RELEASE_WITH_LOGS):
                return None
        elif connection.execute(_RELEASE, _owner(attempt)).first() is None:
            return None
        status = _close_attempt(platform, session, attempt.execution_id, attempt.number,
                                result)
        for output in result.artifacts:
            connection.execute(_DELETE_ARTIFACT, {"aid": attempt.account_id,
                                                  "eid": attempt.execution_id,
                                                  "p_name": output.name})
            connection.execute(_INSERT_ARTIFACT, {
                "account_id": attempt.account_id, "execution_id": attempt.execution_id,
                "attempt": attempt.number, "name": output.name, "size": len(output.content),
                "sha256": output.sha256, "created_at": result.ended_at,
                "content": output.content})
    if status is ExecutionStatus.QUEUED:
        platform.on_queued()
    return status


def _close_attempt(platform: Platform, session: Session, execution_id: str, number: int,
                   result: AttemptResult, worker_lost: bool = False) -> ExecutionStatus:
    """End the attempt's row, charge it, then requeue or close the execution: its status."""
    connection = session.connection()
    day, charged = connection.execute(_END_ATTEMPT, {
        "eid": execution_id, "num": number, "p_status": result.outcome.value,
        "p_ended": result.ended_at, "p_runtime": result.runtime_seconds,
        "p_exit": result.exit_code, "p_error": result.error,
        "p_cpu": result.cpu_seconds, "p_memory": result.peak_memory_bytes}).one()
    metrics.observe_run(charged)
    account_id, job_id, revision, cancel_requested, reserved = connection.execute(
        _CHARGE, {"eid": execution_id, "p_runtime": charged}).one()
    # Run time is charged, and the attempt's reservation (strict mode) given back, on the
    # day on which the attempt started (SPEC §3).
    usage.add_account(session, account_id, day, runtime_seconds=charged,
                      reserved_seconds=-reserved)
    usage.add_job(session, account_id, job_id, day, runtime_seconds=charged)
    settings = platform.revisions.get(session, account_id, job_id, revision).settings
    cancelled = cancel_requested and result.outcome is not AttemptOutcome.SUCCEEDED
    outcome = AttemptOutcome.CANCELLED if cancelled else result.outcome
    budget_left = None
    if may_retry(outcome, number, settings.retries, result.final_failure):
        # A retry starts only while today's budget has some left (SPEC §3).
        plan_data, timezone = connection.execute(_ACCOUNT_PLAN, {"aid": account_id}).one()
        today = account_day(result.ended_at, timezone).isoformat()
        _, used, reserved_today = usage.account_day_row(session, account_id, today)
        budget_left = (plan_from_dict(plan_data).daily_runtime_budget_seconds - used
                       - reserved_today)
    decision = after_attempt(outcome, number, settings.retries, budget_left,
                             result.final_failure, worker_lost)
    if decision.retry:
        connection.execute(_REQUEUE, {"eid": execution_id, "p_at": result.ended_at})
        return ExecutionStatus.QUEUED
    connection.execute(_CLOSE, {"eid": execution_id, "p_status": decision.status.value,
                                "p_reason": decision.reason, "p_message": result.error,
                                "p_ended": result.ended_at})
    # The outbox rows commit (or roll back) with the final state itself.
    notifications.enqueue_execution_end(platform, session, account_id, execution_id,
                                        decision.status.value, settings)
    return decision.status


def clock_offset_seconds(platform: Platform) -> float | None:
    """How far the database's clock is ahead of this process's (None: the same clock)."""
    return platform.db.clock_offset(platform.clock.now)


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
            # A node taking back its previous life's attempts knows they were interrupted;
            # an expired lease says only that the worker stopped renewing it.
            _close_attempt(platform, session, execution.id, attempt.number, AttemptResult(
                AttemptOutcome.INTERRUPTED, runtime, None,
                "The node running this attempt stopped (it restarted since)."
                if owner_prefix else
                "The worker running this attempt stopped renewing its lease (worker lost).",
                now), worker_lost=not owner_prefix)
            swept += 1
            if owner_prefix is None:
                metrics.LEASE_EXPIRIES.inc()
    if swept:
        platform.on_queued()
    return swept
