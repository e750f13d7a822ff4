"""Tenant-scoped lookups: every read of a tenant's row names its account.

A row of another account is indistinguishable from a missing one (NotFound),
so no account can detect another's jobs or executions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from batchyard.errors import NotFound
from batchyard.store.models import (
    Account,
    ApiKey,
    Artifact,
    CodeVersion,
    Execution,
    Job,
    Revision,
    User,
    Variable,
)

T = TypeVar("T")


def account(session: Session, account_id: str, *, lock: bool = False) -> Account:
    stmt = select(Account).where(Account.id == account_id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).one_or_none()
    if row is None:
        raise NotFound(f"Account {account_id} not found.")
    return row


def job(session: Session, account_id: str, job_id: str, *, include_deleted: bool = False,
        lock: bool = False) -> Job:
    stmt = select(Job).where(Job.account_id == account_id, Job.id == job_id)
    if not include_deleted:
        stmt = stmt.where(Job.deleted_at.is_(None))
    if lock:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).one_or_none()
    if row is None:
        raise NotFound(f"Job {job_id} not found.")
    return row


def live_job_count(session: Session, account_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.account_id == account_id, Job.deleted_at.is_(None))) or 0


def job_by_name(session: Session, account_id: str, name: str) -> Job | None:
    return session.scalars(select(Job).where(
        Job.account_id == account_id, Job.name == name, Job.deleted_at.is_(None))).one_or_none()


def jobs(session: Session, account_id: str) -> Sequence[Job]:
    return session.scalars(select(Job).where(
        Job.account_id == account_id, Job.deleted_at.is_(None)).order_by(Job.name)).all()


def variables(session: Session, account_id: str, job_id: str) -> Sequence[Variable]:
    return session.scalars(select(Variable).where(
        Variable.account_id == account_id, Variable.job_id == job_id)
        .order_by(Variable.position)).all()


def code_version(session: Session, account_id: str, job_id: str, version: int) -> CodeVersion:
    row = session.scalars(select(CodeVersion).where(
        CodeVersion.account_id == account_id, CodeVersion.job_id == job_id,
        CodeVersion.version == version)).one_or_none()
    if row is None:
        raise NotFound(f"Code version {version} not found.")
    return row


def code_versions(session: Session, account_id: str, job_id: str) -> Sequence[CodeVersion]:
    return session.scalars(select(CodeVersion).where(
        CodeVersion.account_id == account_id, CodeVersion.job_id == job_id)
        .order_by(CodeVersion.version.desc())).all()


def revision(session: Session, account_id: str, job_id: str, number: int) -> Revision:
    row = session.scalars(select(Revision).where(
        Revision.account_id == account_id, Revision.job_id == job_id,
        Revision.number == number)).one_or_none()
    if row is None:
        raise NotFound(f"Revision {number} not found.")
    return row


def execution(session: Session, account_id: str, execution_id: str, *,
              lock: bool = False) -> Execution:
    stmt = select(Execution).where(Execution.account_id == account_id,
                                   Execution.id == execution_id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).one_or_none()
    if row is None:
        raise NotFound(f"Execution {execution_id} not found.")
    return row


def artifact(session: Session, account_id: str, execution_id: str, name: str) -> Artifact:
    row = session.scalars(select(Artifact).where(
        Artifact.account_id == account_id, Artifact.execution_id == execution_id,
        Artifact.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"Artifact {name!r} not found.")
    return row


def user(session: Session, account_id: str, user_id: str) -> User:
    row = session.scalars(select(User).where(
        User.account_id == account_id, User.id == user_id)).one_or_none()
    if row is None:
        raise NotFound(f"User {user_id} not found.")
    return row


def api_key(session: Session, account_id: str, key_id: str) -> ApiKey:
    row = session.scalars(select(ApiKey).where(
        ApiKey.account_id == account_id, ApiKey.id == key_id)).one_or_none()
    if row is None:
        raise NotFound(f"API key {key_id} not found.")
    return row


def page(session: Session, stmt: Select[T], id_column: Any, limit: int,
         cursor: str | None) -> tuple[list[T], str | None]:
    """Newest-first keyset pagination over a time-ordered id column."""
    if cursor:
        stmt = stmt.where(id_column < cursor)
    rows = list(session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(getattr(rows[-1], id_column.key)) if more and rows else None
    return rows, next_cursor


__all__ = ["account", "api_key", "artifact", "code_version", "code_versions",
           "execution", "job", "job_by_name", "jobs", "live_job_count", "page", "revision",
           "user", "variables"]
