"""The operator's lists of accounts and of an account's users (with their invites)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from batchyard.services.context import Platform
from batchyard.store import scoped
from batchyard.store.models import Account, Invite, Job, User


@dataclass(frozen=True)
class AccountLine:
    id: str
    name: str
    timezone: str
    batch_jobs_enabled: bool
    jobs: int


@dataclass(frozen=True)
class UserLine:
    id: str
    email: str
    role: str
    has_password: bool
    invite_expires_at: datetime | None
    invite_used: bool


def list_accounts(platform: Platform) -> list[AccountLine]:
    with platform.db.read() as session:
        live = select(Job.account_id, func.count().label("n")).where(
            Job.deleted_at.is_(None)).group_by(Job.account_id).subquery()
        return [AccountLine(row.id, row.name, row.timezone, row.batch_jobs_enabled,
                            int(row.n or 0)) for row in session.execute(
            select(Account.id, Account.name, Account.timezone, Account.batch_jobs_enabled,
                   live.c.n).outerjoin(live, live.c.account_id == Account.id)
            .order_by(Account.name, Account.id))]


def list_users(platform: Platform, account_id: str) -> list[UserLine]:
    with platform.db.read() as session:
        scoped.account(session, account_id)
        latest = select(Invite.user_id, func.max(Invite.expires_at).label("expires"),
                        func.count(Invite.used_at).label("used")).where(
            Invite.account_id == account_id).group_by(Invite.user_id).subquery()
        return [UserLine(row.id, row.email, row.role, row.password_hash is not None,
                         row.expires, bool(row.used)) for row in session.execute(
            select(User.id, User.email, User.role, User.password_hash, latest.c.expires,
                   latest.c.used).outerjoin(latest, latest.c.user_id == User.id)
            .where(User.account_id == account_id).order_by(User.email))]
