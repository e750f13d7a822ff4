"""Rows of the node registry and of remote workers' tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from batchyard.store.models import Node, WorkerToken


def beat(session: Session, values: dict[str, Any]) -> None:
    """Record a heartbeat of node ``values["id"]``, creating its row the first time."""
    changed = session.execute(update(Node).where(Node.id == values["id"]).values(
        {k: v for k, v in values.items() if k not in ("id", "started_at")}))
    if changed.rowcount == 0:  # type: ignore[attr-defined]
        session.add(Node(**values))


def live(session: Session, since: datetime) -> list[Node]:
    return list(session.scalars(select(Node).where(Node.heartbeat_at >= since)
                                .order_by(Node.id)))


def forget_before(session: Session, before: datetime) -> None:
    for node in session.scalars(select(Node).where(Node.heartbeat_at < before)):
        session.delete(node)


def token_by_hash(session: Session, token_hash: str) -> WorkerToken | None:
    return session.scalars(select(WorkerToken).where(WorkerToken.token_hash == token_hash)
                           ).one_or_none()


def tokens(session: Session) -> list[WorkerToken]:
    return list(session.scalars(select(WorkerToken).order_by(WorkerToken.created_at)))
