"""Quiet-schedule and duration alerts (domain/alerts.py): incidents and their outbox rows.

``check_alerts`` looks at every published job whose published revision sets ``alerts``
and, per job in one transaction, opens or recovers incidents and writes the deliveries
each change owes (an e-mail to the job's ``on_failure`` list, a call of its webhook):
one per incident, one per recovery. The unique (job, kind, subject) key makes a second
process checking at the same moment fail its transaction instead of notifying twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from batchyard.domain.alerts import (
    DURATION,
    LATE,
    AlertNotice,
    expected_instant,
    is_late,
    is_overdue,
    late_recovered,
)
from batchyard.domain.jobs import JobSettings
from batchyard.domain.notifications import Audience, recipients
from batchyard.domain.schedules import next_fire_of
from batchyard.services.context import Platform
from batchyard.services.ids import new_id
from batchyard.services.notifications import EMAIL, PENDING, WEBHOOK
from batchyard.store.models import AlertIncident, Delivery, Execution, Job, Revision

log = logging.getLogger("batchyard.alerts")


@dataclass(frozen=True)
class AlertReport:
    opened: int
    recovered: int


def check_alerts(platform: Platform) -> AlertReport:
    now = platform.clock.now()
    with platform.db.read() as session:
        published = session.execute(
            select(Job.account_id, Job.id, Job.name, Job.revision)
            .where(Job.status == "published", Job.deleted_at.is_(None),
                   Job.revision.is_not(None))).all()
        # Revisions are immutable and cached: a fleet's are read in chunks, not per job.
        revisions = {}
        keys = [(account_id, job_id, int(number or 0))
                for account_id, job_id, _, number in published]
        for start in range(0, len(keys), 1000):
            revisions.update(platform.revisions.load(session, keys[start:start + 1000]))
    opened = recovered = 0
    for account_id, job_id, job_name, number in published:
        revision = revisions[(account_id, job_id, int(number or 0))]
        if revision.settings.alerts is None:
            continue
        try:
            with platform.db.write() as session:
                changes = _check_job(platform, session, account_id, job_id, job_name,
                                     revision.number, revision.settings,
                                     revision.parsed_schedule, now)
        except IntegrityError:  # another process recorded the same change first
            continue
        opened += changes.opened
        recovered += changes.recovered
    return AlertReport(opened, recovered)


def _check_job(platform: Platform, session: Session, account_id: str, job_id: str,
               job_name: str, number: int, settings: JobSettings, schedule: Any,
               now: datetime) -> AlertReport:
    alerts = settings.alerts
    assert alerts is not None
    open_incidents = list(session.scalars(select(AlertIncident).where(
        AlertIncident.account_id == account_id, AlertIncident.job_id == job_id,
        AlertIncident.recovered_at.is_(None))))
    notices: list[AlertNotice] = []
    last_success = session.scalar(select(func.max(Execution.ended_at)).where(
        Execution.account_id == account_id, Execution.job_id == job_id,
        Execution.status == "succeeded"))
    late_open = [i for i in open_incidents if i.kind == LATE]
    for incident in late_open:
        if late_recovered(datetime.fromisoformat(incident.subject), last_success):
            notices.append(_close(session, incident, job_name, now,
                                  f"The job succeeded again (at {last_success.isoformat()})."
                                  if last_success else "The job succeeded again."))
    if alerts.late_after_minutes is not None and not late_open:
        since = session.scalar(select(Revision.created_at).where(
            Revision.account_id == account_id, Revision.job_id == job_id,
            Revision.number == number))
        expected = expected_instant(lambda after: next_fire_of(schedule, after),
                                    since or now, now,
                                    timedelta(minutes=alerts.late_after_minutes))
        if is_late(expected, last_success):
            assert expected is not None
            notices.append(_open(
                session, account_id, job_id, job_name, LATE, expected.isoformat(), now,
                f"The run scheduled for {expected.isoformat()} has not succeeded within "
                f"{alerts.late_after_minutes:g} minutes (missed, blocked, failed, still "
                f"running, or the scheduler was down)."))
    running = dict(session.execute(select(Execution.id, Execution.started_at).where(
        Execution.account_id == account_id, Execution.job_id == job_id,
        Execution.status == "running")).all())
    for incident in open_incidents:
        if incident.kind == DURATION and incident.subject not in running:
            notices.append(_close(session, incident, job_name, now,
                                  f"Execution {incident.subject} has ended."))
    if alerts.max_duration_minutes is not None:
        known = {i.subject for i in open_incidents if i.kind == DURATION}
        limit = timedelta(minutes=alerts.max_duration_minutes)
        for execution_id, started_at in running.items():
            if execution_id not in known and started_at is not None and \
                    is_overdue(started_at, now, limit):
                # A recovered incident of this execution is not opened again.
                if session.scalar(select(AlertIncident.id).where(
                        AlertIncident.job_id == job_id, AlertIncident.kind == DURATION,
                        AlertIncident.subject == execution_id)) is not None:
                    continue
                notices.append(_open(
                    session, account_id, job_id, job_name, DURATION, execution_id, now,
                    f"Execution {execution_id} has run longer than "
                    f"{alerts.max_duration_minutes:g} minutes (started "
                    f"{started_at.isoformat()})."))
    for notice in notices:
        _enqueue(platform, session, account_id, settings, notice, now)
    return AlertReport(sum(not n.recovered for n in notices),
                       sum(n.recovered for n in notices))


def _open(session: Session, account_id: str, job_id: str, job_name: str, kind: str,
          subject: str, now: datetime, detail: str) -> AlertNotice:
    session.execute(insert(AlertIncident).values(
        id=new_id("alr"), account_id=account_id, job_id=job_id, kind=kind, subject=subject,
        opened_at=now, recovered_at=None))
    log.warning("alert %s of job %s: %s", kind, job_id, detail)
    return AlertNotice(f"alert.{kind}", job_id, job_name, kind, subject, now.isoformat(),
                       now.isoformat(), detail)


def _close(session: Session, incident: AlertIncident, job_name: str, now: datetime,
           detail: str) -> AlertNotice:
    session.execute(update(AlertIncident).where(
        AlertIncident.id == incident.id, AlertIncident.recovered_at.is_(None)).values(
            recovered_at=now))
    log.info("alert %s of job %s recovered: %s", incident.kind, incident.job_id, detail)
    return AlertNotice(f"alert.{incident.kind}.recovered", incident.job_id, job_name,
                       incident.kind, incident.subject, incident.opened_at.isoformat(),
                       now.isoformat(), detail)


def _enqueue(platform: Platform, session: Session, account_id: str, settings: JobSettings,
             notice: AlertNotice, now: datetime) -> None:
    base = {"account_id": account_id, "execution_id": None, "event": notice.event,
            "status": PENDING, "attempts": 0, "next_attempt_at": now, "last_error": None,
            "created_at": now, "sent_at": None}
    rows: list[dict[str, Any]] = []
    mail_to = recipients(Audience.FAILURE, settings.notify)
    if mail_to:
        rows.append({**base, "id": new_id("dlv"), "kind": EMAIL,
                     "payload": {"to": list(mail_to), "alert": notice.as_dict()}})
    if settings.webhook is not None:
        rows.append({**base, "id": new_id("dlv"), "kind": WEBHOOK,
                     "payload": {"url": settings.webhook.url, "secret": settings.webhook.secret,
                                 "alert": notice.as_dict()}})
    if rows:
        session.execute(insert(Delivery), rows)
        event.listen(session, "after_commit", lambda _session: platform.on_delivery(),
                     once=True)
