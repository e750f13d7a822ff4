"""Per-day usage counters, updated in place with single statements.

``add`` is an upsert (``INSERT … ON CONFLICT DO UPDATE``, on SQLite and PostgreSQL
alike): a row for a day nobody used yet appears without a read-then-write race.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from batchyard.store.models import JobUsageDay, UsageDay

USAGE: Table = UsageDay.__table__  # type: ignore[assignment]
JOB_USAGE: Table = JobUsageDay.__table__  # type: ignore[assignment]


def _upsert(session: Session, table: Table, keys: dict[str, Any],
            increments: dict[str, float], extra: dict[str, Any] | None = None) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    zero = {"executions": 0, "runtime_seconds": 0.0, "reserved_seconds": 0.0}
    values = {column: zero[column] for column in zero if column in table.c}
    values.update(keys)
    values.update(extra or {})
    for column, amount in increments.items():
        values[column] = values.get(column, 0) + amount
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={column: table.c[column] + amount for column, amount in increments.items()})
    session.execute(stmt)


def add_account(session: Session, account_id: str, day: str, **increments: float) -> None:
    _upsert(session, USAGE, {"account_id": account_id, "day": day}, increments)


def add_job(session: Session, account_id: str, job_id: str, day: str,
            **increments: float) -> None:
    _upsert(session, JOB_USAGE, {"job_id": job_id, "day": day}, increments,
            {"account_id": account_id})


def account_day_row(session: Session, account_id: str, day: str) -> tuple[int, float, float]:
    """(executions, runtime_seconds, reserved_seconds) of that day; zeros when unused."""
    row = session.execute(select(USAGE.c.executions, USAGE.c.runtime_seconds,
                                 USAGE.c.reserved_seconds)
                          .where(USAGE.c.account_id == account_id, USAGE.c.day == day)).first()
    return (int(row[0]), float(row[1]), float(row[2])) if row else (0, 0.0, 0.0)
