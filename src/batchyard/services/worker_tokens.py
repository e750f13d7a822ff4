"""Remote workers' tokens: the operator creates (shown once), lists and revokes them.

A token opens ``/api/v1/worker/*`` and nothing else (tenant and operator routes know
only API keys and the operator token). It is looked up on every call, not cached, so
a revoked token is refused at its next call.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from batchyard.errors import InvalidInput, NotAuthenticated, NotFound
from batchyard.services.context import Platform
from batchyard.services.ids import new_id
from batchyard.store import nodes
from batchyard.store.models import WorkerToken

TOKEN_PREFIX = "byw_"


@dataclass(frozen=True)
class WorkerTokenInfo:
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class WorkerIdentity:
    """Who calls the worker protocol: attempts it runs are leased to ``<id>:...`` owners."""

    id: str
    name: str

    @property
    def owner_prefix(self) -> str:
        return f"{self.id}:"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: WorkerToken) -> WorkerTokenInfo:
    return WorkerTokenInfo(row.id, row.name, row.prefix, row.created_at, row.last_seen_at,
                           row.revoked_at)


def create(platform: Platform, name: str) -> tuple[WorkerTokenInfo, str]:
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("name must be 1 to 100 characters", field="name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = WorkerToken(id=new_id("wkr"), name=name, prefix=secret[:12], token_hash=_hash(secret),
                      created_at=platform.clock.now())
    with platform.db.write() as session:
        session.add(row)
    return _info(row), secret


def list_tokens(platform: Platform) -> list[WorkerTokenInfo]:
    with platform.db.read() as session:
        return [_info(row) for row in nodes.tokens(session)]


def revoke(platform: Platform, token_id: str) -> WorkerTokenInfo:
    with platform.db.write() as session:
        row = session.get(WorkerToken, token_id)
        if row is None:
            raise NotFound(f"Worker token {token_id} not found.")
        if row.revoked_at is None:
            row.revoked_at = platform.clock.now()
        return _info(row)


def authenticate(platform: Platform, secret: str) -> WorkerIdentity:
    if not secret.startswith(TOKEN_PREFIX):
        raise NotAuthenticated("Unknown or revoked worker token.")
    with platform.db.read() as session:
        row = nodes.token_by_hash(session, _hash(secret))
        if row is None or row.revoked_at is not None:
            raise NotAuthenticated("Unknown or revoked worker token.")
        return WorkerIdentity(row.id, row.name)


def seen(platform: Platform, token_id: str) -> None:
    with platform.db.write() as session:
        row = session.get(WorkerToken, token_id)
        if row is not None:
            row.last_seen_at = platform.clock.now()
