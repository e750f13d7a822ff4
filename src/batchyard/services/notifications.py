"""Notifications of ended executions (the outbox) and the e-mail quota of job code.

When an execution reaches its final state, the transaction that records it also
writes the deliveries it owes (summary e-mail, webhook call): nothing is lost if
the process dies right after, nothing is sent for an end that was rolled back, and
the worker never waits on an SMTP or HTTP server. The delivery loop
(runtime/loops/delivery_loop.py) claims due rows, sends them and records the outcome.
Every statement names the row's account.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, event, func, insert, select, update
from sqlalchemy.orm import Session

from batchyard.domain.jobs import JobSettings
from batchyard.domain.notifications import (
    WEBHOOK_STATUSES,
    Audience,
    ExecutionSummary,
    audience_of,
    log_tail,
    recipients,
    summary_audience,
    webhook_event,
)
from batchyard.domain.roles import Permission
from batchyard.errors import BatchyardError
from batchyard.services.context import Actor, Platform
from batchyard.services.ids import new_id
from batchyard.store import scoped
from batchyard.store.models import Attempt, Delivery, Execution, LogLine, UTCDateTime

EMAIL = "email"
WEBHOOK = "webhook"
PENDING = "pending"
SENT = "sent"
FAILED = "failed"

_DELIVERY: Table = Delivery.__table__  # type: ignore[assignment]
_EXECUTION: Table = Execution.__table__  # type: ignore[assignment]


class EmailRefused(BatchyardError):
    """The e-mail was not sent."""

    code = "email_refused"
    status = 422


class TooManyEmails(EmailRefused):
    """This execution has sent all the notification e-mails it may."""

    code = "too_many_requests"
    status = 429


class NoRecipients(EmailRefused):
    """The job has no notification recipients for this type of e-mail."""

    code = "no_recipients"


# --- the outbox: writing ---------------------------------------------------------------
def enqueue_execution_end(platform: Platform, session: Session, account_id: str,
                          execution_id: str, status: str | None = None,
                          settings: JobSettings | None = None) -> int:
    """Write the deliveries an execution that just ended owes; return how many.

    Called inside the transaction that set the final state, so the state read here
    is that transaction's own. A caller that knows the final status and the revision's
    settings passes them: most executions owe nothing, and then no query is made.
    """
    if status is not None and settings is not None and not _owes_anything(status, settings):
        return 0
    row = session.execute(select(
        Execution.account_id, Execution.job_id, Execution.job_name, Execution.revision,
        Execution.status, Execution.reason, Execution.message, Execution.source,
        Execution.attempt_count, Execution.created_at, Execution.started_at,
        Execution.ended_at, Execution.runtime_seconds).where(
            Execution.account_id == account_id, Execution.id == execution_id)).one_or_none()
    if row is None or row.revision is None:
        return 0
    settings = platform.revisions.get(session, row.account_id, row.job_id,
                                      row.revision).settings
    if not _owes_anything(row.status, settings):
        return 0
    audience = summary_audience(row.status)
    mail_to = recipients(audience, settings.notify) if audience is not None else ()
    webhook = settings.webhook if row.status in WEBHOOK_STATUSES else None
    tail = list(session.scalars(
        select(LogLine.message).where(LogLine.account_id == row.account_id,
                                      LogLine.execution_id == execution_id)
        .order_by(LogLine.seq.desc()).limit(20)))
    # Resource figures: the last attempt's, as it is the one the status is about.
    figures = session.execute(
        select(Attempt.cpu_seconds, Attempt.peak_memory_bytes)
        .where(Attempt.account_id == row.account_id, Attempt.execution_id == execution_id)
        .order_by(Attempt.number.desc()).limit(1)).first()
    summary = ExecutionSummary(
        execution_id=execution_id, job_id=row.job_id, job_name=row.job_name,
        status=row.status, reason=row.reason, message=row.message, source=row.source,
        attempts=row.attempt_count, created_at=row.created_at.isoformat(),
        started_at=row.started_at.isoformat() if row.started_at else None,
        ended_at=row.ended_at.isoformat() if row.ended_at else None,
        runtime_seconds=float(row.runtime_seconds or 0.0),
        log_tail=log_tail(reversed(tail)),
        cpu_seconds=figures.cpu_seconds if figures else None,
        peak_memory_bytes=figures.peak_memory_bytes if figures else None).as_dict()
    now = platform.clock.now()
    base = {"account_id": row.account_id, "execution_id": execution_id,
            "event": webhook_event(row.status), "status": PENDING, "attempts": 0,
            "next_attempt_at": now, "last_error": None, "created_at": now, "sent_at": None}
    rows: list[dict[str, Any]] = []
    if mail_to:
        rows.append({**base, "id": new_id("dlv"), "kind": EMAIL,
                     "payload": {"to": list(mail_to), "summary": summary}})
    if webhook is not None:
        # The secret stays sealed in the outbox as it is in the settings.
        rows.append({**base, "id": new_id("dlv"), "kind": WEBHOOK,
                     "payload": {"url": webhook.url, "secret": webhook.secret,
                                 "summary": summary}})
    session.execute(insert(_DELIVERY), rows)
    # Wake the delivery loop once the rows are visible; before the commit it would
    # find nothing, after a rollback there is nothing to find.
    event.listen(session, "after_commit", lambda _session: platform.on_delivery(), once=True)
    return len(rows)


def _owes_anything(status: str, settings: JobSettings) -> bool:
    audience = summary_audience(status)
    mails = audience is not None and bool(recipients(audience, settings.notify))
    return mails or (settings.webhook is not None and status in WEBHOOK_STATUSES)


# --- the outbox: delivering ------------------------------------------------------------
@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    account_id: str
    execution_id: str | None
    kind: str
    event: str
    payload: dict[str, Any]
    # Tries made so far, this one included.
    attempts: int


@functools.cache
def _claim_statement() -> Any:
    # Claimed rows move their next_attempt_at to the lease's end: no other loop takes
    # them meanwhile, and a loop that dies mid-send leaves them due again afterwards.
    return (update(_DELIVERY)
            .where(_DELIVERY.c.id == bindparam("did"), _DELIVERY.c.status == PENDING,
                   _DELIVERY.c.next_attempt_at <= bindparam("p_now", type_=UTCDateTime()))
            .values(attempts=_DELIVERY.c.attempts + 1,
                    next_attempt_at=bindparam("p_until", type_=UTCDateTime()))
            .returning(_DELIVERY.c.account_id, _DELIVERY.c.execution_id, _DELIVERY.c.kind,
                       _DELIVERY.c.event, _DELIVERY.c.payload, _DELIVERY.c.attempts))


def claim_due(platform: Platform, lease_seconds: float, limit: int) -> list[ClaimedDelivery]:
    now = platform.clock.now()
    claimed: list[ClaimedDelivery] = []
    with platform.db.write() as session:
        due = list(session.scalars(
            select(Delivery.id).where(Delivery.status == PENDING, Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at).limit(limit)))
        connection = session.connection()
        for delivery_id in due:
            # The conditional UPDATE is the claim: a row another loop took is skipped.
            won = connection.execute(_claim_statement(), {
                "did": delivery_id, "p_now": now,
                "p_until": now + timedelta(seconds=lease_seconds)}).first()
            if won is not None:
                claimed.append(ClaimedDelivery(delivery_id, won.account_id, won.execution_id,
                                               won.kind, won.event, dict(won.payload),
                                               won.attempts))
    return claimed


def next_due(platform: Platform) -> datetime | None:
    with platform.db.read() as session:
        return session.scalar(select(func.min(Delivery.next_attempt_at))
                              .where(Delivery.status == PENDING))


def _finish(platform: Platform, delivery: ClaimedDelivery, values: dict[str, Any]) -> bool:
    """Record a try's outcome, unless the row was re-claimed since (its lease ran out)."""
    with platform.db.write() as session:
        done = session.execute(
            update(Delivery).where(Delivery.id == delivery.id,
                                   Delivery.account_id == delivery.account_id,
                                   Delivery.status == PENDING,
                                   Delivery.attempts == delivery.attempts)
            .values(**values).returning(Delivery.id)).first()
    return done is not None


def record_sent(platform: Platform, delivery: ClaimedDelivery) -> bool:
    return _finish(platform, delivery, {"status": SENT, "sent_at": platform.clock.now(),
                                        "next_attempt_at": None, "last_error": None})


def record_failure(platform: Platform, delivery: ClaimedDelivery, error: str,
                   retry_in: float | None) -> bool:
    """Note the error; try again in ``retry_in`` seconds, or (None) give up for good."""
    values: dict[str, Any] = {"last_error": error[:2000]}
    if retry_in is None:
        values.update(status=FAILED, next_attempt_at=None)
    else:
        values["next_attempt_at"] = platform.clock.now() + timedelta(seconds=retry_in)
    return _finish(platform, delivery, values)


def list_deliveries(platform: Platform, actor: Actor, execution_id: str) -> list[Delivery]:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        scoped.execution(session, actor.account_id, execution_id)
        return list(session.scalars(select(Delivery).where(
            Delivery.account_id == actor.account_id, Delivery.execution_id == execution_id)
            .order_by(Delivery.id)))


# --- e-mails sent by job code ----------------------------------------------------------
_TAKE_EMAIL = (update(_EXECUTION)
               .where(_EXECUTION.c.id == bindparam("eid"),
                      _EXECUTION.c.account_id == bindparam("aid"),
                      _EXECUTION.c.emails_sent < bindparam("p_limit"))
               .values(emails_sent=_EXECUTION.c.emails_sent + 1)
               .returning(_EXECUTION.c.emails_sent))
_GIVE_BACK_EMAIL = (update(_EXECUTION)
                    .where(_EXECUTION.c.id == bindparam("eid"),
                           _EXECUTION.c.account_id == bindparam("aid"),
                           _EXECUTION.c.emails_sent > 0)
                    .values(emails_sent=_EXECUTION.c.emails_sent - 1))


def job_email_recipients(platform: Platform, account_id: str, job_id: str, revision: int,
                         email_type: object) -> tuple[str, ...]:
    """Who an SDK e-mail of ``email_type`` goes to, from the running revision's settings."""
    with platform.db.read() as session:
        settings = platform.revisions.get(session, account_id, job_id, revision).settings
    found = recipients(audience_of(email_type), settings.notify)
    if not found:
        lists = {Audience.FAILURE: "notify.on_failure", Audience.SUCCESS: "notify.on_success",
                 Audience.BOTH: "notify.on_failure or notify.on_success"}
        raise NoRecipients(f"The job has no recipients for an e-mail of type {email_type!r}: "
                           f"set {lists[audience_of(email_type)]} in its settings.")
    return found


def take_job_email(platform: Platform, account_id: str, execution_id: str, limit: int) -> int:
    """Count one more SDK e-mail against the execution's limit; return the new count.

    One conditional UPDATE: concurrent requests and retries on other workers can never
    together pass the limit.
    """
    with platform.db.write() as session:
        count = session.connection().execute(_TAKE_EMAIL, {
            "eid": execution_id, "aid": account_id, "p_limit": limit}).scalar()
    if count is None:
        raise TooManyEmails(f"At most {limit} notification e-mails may be sent per execution "
                            "(retries included).")
    return int(count)


def give_back_job_email(platform: Platform, account_id: str, execution_id: str) -> None:
    """Undo ``take_job_email`` for an e-mail that could not be sent."""
    with platform.db.write() as session:
        session.connection().execute(_GIVE_BACK_EMAIL, {"eid": execution_id,
                                                        "aid": account_id})
