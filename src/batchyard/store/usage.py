"""Per-day usage counters, updated in place with single statements.

``add_*`` are upserts (``INSERT … ON CONFLICT DO UPDATE``, on SQLite and
PostgreSQL alike): a row for a day nobody used yet appears without a
read-then-write race. The statements are built once per dialect: they run for
every invocation and attempt, and building them cost more than running them.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Insert, Table, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from batchyard.store.models import JobUsageDay, UsageDay

USAGE: Table = UsageDay.__table__  # type: ignore[assignment]
JOB_USAGE: Table = JobUsageDay.__table__  # type: ignore[assignment]
_COUNTERS = ("executions", "runtime_seconds", "reserved_seconds")


@functools.cache
def _upsert(dialect: str, table_name: str) -> Insert:
    table = USAGE if table_name == USAGE.name else JOB_USAGE
    keys = [c.name for c in table.primary_key.columns]
    counters = [name for name in _COUNTERS if name in table.c]
    others = [c.name for c in table.c if c.name not in counters]
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = dialect_insert(table).values(
        {name: bindparam(f"p_{name}") for name in [*others, *counters]})
    return stmt.on_conflict_do_update(
        index_elements=keys,
        set_={name: table.c[name] + stmt.excluded[name] for name in counters})


def _add(session: Session, table: Table, values: dict[str, Any],
         increments: dict[str, float]) -> None:
    unknown = set(increments) - set(_COUNTERS)
    if unknown:
        raise ValueError(f"unknown usage counter(s): {sorted(unknown)}")
    connection = session.connection()
    params = {f"p_{name}": value for name, value in values.items()}
    for name in _COUNTERS:
        if name in table.c:
            params[f"p_{name}"] = increments.get(name, 0)
    connection.execute(_upsert(connection.dialect.name, table.name), params)


def add_account(session: Session, account_id: str, day: str, **increments: float) -> None:
    _add(session, USAGE, {"account_id": account_id, "day": day}, increments)


def add_job(session: Session, account_id: str, job_id: str, day: str,
            **increments: float) -> None:
    _add(session, JOB_USAGE, {"job_id": job_id, "day": day, "account_id": account_id},
         increments)


def add_jobs(session: Session, account_id: str, day: str,
             executions_per_job: dict[str, int]) -> None:
    """Count admitted executions for several jobs in one statement."""
    connection = session.connection()
    connection.execute(_upsert(connection.dialect.name, JOB_USAGE.name), [
        {"p_job_id": job_id, "p_day": day, "p_account_id": account_id, "p_executions": count,
         "p_runtime_seconds": 0.0}
        for job_id, count in sorted(executions_per_job.items())])


_DAY_ROW = select(USAGE.c.executions, USAGE.c.runtime_seconds, USAGE.c.reserved_seconds) \
    .where(USAGE.c.account_id == bindparam("account_id"), USAGE.c.day == bindparam("day"))


def day_figures(account_id: Any, day: Any) -> list[Any]:
    """The account's run time and reservations on ``day`` (zeros when unused) as columns
    of another statement (the claim's): ``day_runtime``, ``day_reserved``."""
    return [func.coalesce(select(USAGE.c[name]).where(USAGE.c.account_id == account_id,
                                                      USAGE.c.day == day)
                          .scalar_subquery(), 0.0).label(label)
            for name, label in (("runtime_seconds", "day_runtime"),
                                ("reserved_seconds", "day_reserved"))]


def account_day_row(session: Session, account_id: str, day: str) -> tuple[int, float, float]:
    """(executions, runtime_seconds, reserved_seconds) of that day; zeros when unused."""
    row = session.connection().execute(_DAY_ROW, {"account_id": account_id, "day": day}).first()
    return (int(row[0]), float(row[1]), float(row[2])) if row else (0, 0.0, 0.0)
