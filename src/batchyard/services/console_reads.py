"""Reads of the console's execution page: the end of a long log, and the whole log as text
in pages (never all of it in memory)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select

from batchyard.domain.executions import ExecutionStatus
from batchyard.domain.roles import Permission
from batchyard.errors import InvalidInput
from batchyard.services.context import Actor, Platform
from batchyard.services.executions import LOG_LEVELS
from batchyard.store import scoped
from batchyard.store.models import Execution, LogLine

SOURCES = ("api", "scheduler")

_PAGE = 5000


def log_tail(platform: Platform, actor: Actor, execution_id: str, count: int = 200,
             level: str | None = None) -> tuple[list[LogLine], int]:
    """The last ``count`` lines (at or above ``level``) in order, and the highest seq."""
    actor.require(Permission.READ)
    with platform.db.read() as session:
        execution = scoped.execution(session, actor.account_id, execution_id)
        stmt = select(LogLine).where(LogLine.account_id == actor.account_id,
                                     LogLine.execution_id == execution.id)
        if level in LOG_LEVELS:
            stmt = stmt.where(LogLine.level.in_(LOG_LEVELS[LOG_LEVELS.index(level):]))
        rows = list(session.scalars(stmt.order_by(LogLine.seq.desc()).limit(count)))
        rows.reverse()
        return rows, execution.log_seq


def log_text(platform: Platform, actor: Actor, execution_id: str) -> Iterator[str]:
    """The whole log as text, read page by page (the caller checks the execution is
    the account's before iterating: a generator runs only once the answer has begun)."""
    actor.require(Permission.READ)
    after = -1
    while True:
        with platform.db.read() as session:
            rows = list(session.execute(
                select(LogLine.seq, LogLine.at, LogLine.stream, LogLine.level, LogLine.message)
                .where(LogLine.account_id == actor.account_id,
                       LogLine.execution_id == execution_id, LogLine.seq > after)
                .order_by(LogLine.seq).limit(_PAGE)))
        if not rows:
            return
        # One chunk per page: a streamed answer pays a thread hop per chunk.
        yield "".join(f"{row.at.isoformat()} {row.stream}"
                      f"{' ' + row.level.upper() if row.level else ''} {row.message}\n"
                      for row in rows)
        after = rows[-1].seq


def execution_page(platform: Platform, actor: Actor, *, job_id: str | None,
                   status: str | None, source: str | None, cursor: str | None,
                   limit: int = 50) -> tuple[list[Execution], str | None]:
    """The console's list: newest first, filtered by job, status and source."""
    actor.require(Permission.READ)
    if status is not None and status not in {s.value for s in ExecutionStatus}:
        raise InvalidInput("unknown status", field="status")
    if source is not None and source not in SOURCES:
        raise InvalidInput(f"source must be one of {', '.join(SOURCES)}", field="source")
    with platform.db.read() as session:
        stmt = select(Execution).where(Execution.account_id == actor.account_id)
        if job_id:
            stmt = stmt.where(Execution.job_id == job_id)
        if status:
            stmt = stmt.where(Execution.status == status)
        if source:
            stmt = stmt.where(Execution.source == source)
        return scoped.page(session, stmt, Execution.id, limit, cursor)
