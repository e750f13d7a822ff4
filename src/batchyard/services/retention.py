"""Retention (issue 13): old executions and audit entries are deleted in small batches.

An execution older than its account's plan ``retention_days`` (by creation) that has
ended is deleted with everything hanging from it: attempts, log lines, artifacts and
deliveries. Each batch is its own short write transaction, so invocations and workers
wait at most one batch for the write lock (SQLite has one writer). Code versions stay
while their job exists (SPEC §2). The audit trail has its own retention, and alert
notifications and recovered alert incidents follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Table, delete, select

from batchyard.domain.plans import plan_from_dict
from batchyard.services.context import Platform
from batchyard.store.models import (
    Account,
    AlertIncident,
    Artifact,
    Attempt,
    AuditEntry,
    Delivery,
    Execution,
    LogLine,
)

_ACTIVE = ("queued", "running")
# Everything that refers to an execution, children first.
_CHILDREN: tuple[Table, ...] = tuple(
    model.__table__ for model in (LogLine, Artifact, Attempt, Delivery))  # type: ignore[misc]


@dataclass(frozen=True)
class Purged:
    executions: int
    audit_entries: int

    @property
    def total(self) -> int:
        return self.executions + self.audit_entries


def purge_batch(platform: Platform, batch_size: int, audit_retention_days: int) -> Purged:
    """Delete at most ``batch_size`` expired executions and as many audit entries."""
    now = platform.clock.now()
    expired: list[str] = []
    with platform.db.read() as session:
        for account_id, plan in session.execute(select(Account.id, Account.plan)).all():
            cutoff = now - timedelta(days=plan_from_dict(plan).retention_days)
            expired += session.scalars(
                select(Execution.id)
                .where(Execution.account_id == account_id, Execution.created_at < cutoff,
                       Execution.status.not_in(_ACTIVE))
                .order_by(Execution.created_at).limit(batch_size - len(expired)))
            if len(expired) >= batch_size:
                break
        audit_ids = list(session.scalars(
            select(AuditEntry.id)
            .where(AuditEntry.at < now - timedelta(days=audit_retention_days))
            .order_by(AuditEntry.at).limit(batch_size)))
    executions = 0
    if expired:
        with platform.db.write() as session:
            connection = session.connection()
            # Re-read in the deleting transaction: a row is never taken while active.
            ids = list(connection.scalars(select(Execution.id).where(
                Execution.id.in_(expired), Execution.status.not_in(_ACTIVE))))
            for table in _CHILDREN:
                connection.execute(delete(table).where(table.c.execution_id.in_(ids)))
            executions = connection.execute(
                delete(Execution).where(Execution.id.in_(ids))).rowcount
    audit_entries = 0
    if audit_ids:
        with platform.db.write() as session:
            audit_entries = session.connection().execute(
                delete(AuditEntry).where(AuditEntry.id.in_(audit_ids))).rowcount
    return Purged(executions, audit_entries)


def purge_alerts(platform: Platform, audit_retention_days: int) -> None:
    """Alert notifications (about a job, not a run) and recovered incidents: kept as long
    as the audit trail."""
    cutoff = platform.clock.now() - timedelta(days=audit_retention_days)
    with platform.db.write() as session:
        connection = session.connection()
        connection.execute(delete(Delivery).where(
            Delivery.execution_id.is_(None), Delivery.created_at < cutoff,
            Delivery.status != "pending"))
        connection.execute(delete(AlertIncident).where(AlertIncident.recovered_at < cutoff))
