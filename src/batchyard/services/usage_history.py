"""The usage page's history: run time and executions per day over the last days, and the
invocations the plan blocked, by reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import func, select

from batchyard.domain.admission import account_day
from batchyard.domain.roles import Permission
from batchyard.services.context import Actor, Platform
from batchyard.store import scoped
from batchyard.store.models import Execution, UsageDay


@dataclass(frozen=True)
class DayUsage:
    day: date
    executions: int
    runtime_seconds: float


@dataclass(frozen=True)
class UsageHistory:
    days: tuple[DayUsage, ...]
    blocked: tuple[tuple[str, int], ...]


def history(platform: Platform, actor: Actor, days: int = 30) -> UsageHistory:
    actor.require(Permission.READ)
    with platform.db.read() as session:
        account = scoped.account(session, actor.account_id)
        today = account_day(platform.clock.now(), account.timezone)
        first = today - timedelta(days=days - 1)
        rows = {row.day: row for row in session.execute(
            select(UsageDay.day, UsageDay.executions, UsageDay.runtime_seconds).where(
                UsageDay.account_id == actor.account_id, UsageDay.day >= first.isoformat(),
                UsageDay.day <= today.isoformat()))}
        blocked = session.execute(
            select(Execution.reason, func.count()).where(
                Execution.account_id == actor.account_id, Execution.status == "blocked",
                Execution.account_day >= first.isoformat())
            .group_by(Execution.reason).order_by(func.count().desc())).tuples().all()
    out = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = rows.get(day.isoformat())
        out.append(DayUsage(day, int(row.executions) if row else 0,
                            float(row.runtime_seconds) if row else 0.0))
    return UsageHistory(tuple(out), tuple((str(reason), int(count))
                                          for reason, count in blocked))
