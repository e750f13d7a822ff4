"""The audit trail: who changed what, when, with before and after values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from batchyard.services.context import Actor, Platform
from batchyard.store.models import AuditEntry


def record(session: Session, *, account_id: str, actor: str, at: datetime, action: str,
           target: str, job_id: str | None = None, before: Any = None,
           after: Any = None) -> None:
    session.add(AuditEntry(account_id=account_id, actor=actor, at=at, action=action,
                           target=target, job_id=job_id, before=before, after=after))


def record_by(session: Session, actor: Actor, at: datetime, action: str, target: str,
              **kwargs: Any) -> None:
    record(session, account_id=actor.account_id, actor=actor.email, at=at, action=action,
           target=target, **kwargs)


def list_entries(platform: Platform, actor: Actor, job_id: str | None, limit: int,
                 cursor: str | None) -> tuple[list[AuditEntry], str | None]:
    with platform.db.read() as session:
        stmt = select(AuditEntry).where(AuditEntry.account_id == actor.account_id)
        if job_id:
            stmt = stmt.where(AuditEntry.job_id == job_id)
        if cursor:
            stmt = stmt.where(AuditEntry.id < int(cursor))
        rows = list(session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (str(rows[-1].id) if more and rows else None)

