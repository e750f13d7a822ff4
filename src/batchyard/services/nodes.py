"""The node registry: every process (API, scheduler, worker) and every remote worker
heartbeats a row; the operator's health view lists the live ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from batchyard import __version__
from batchyard.services.context import Platform
from batchyard.store import nodes

ROLES = ("api", "scheduler", "worker")
# Rows silent this long are deleted at the next heartbeat of any node.
FORGET_AFTER = timedelta(days=1)


def parse_roles(text: str) -> frozenset[str]:
    """``api,scheduler,worker`` (any non-empty subset); ValueError naming what is wrong."""
    roles = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        raise ValueError(f"--role takes a comma-separated subset of {', '.join(ROLES)}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return roles


@dataclass(frozen=True)
class NodeBeat:
    id: str
    roles: frozenset[str]
    capacity: int
    running: int
    labels: tuple[str, ...]
    remote: bool
    started_at: datetime


@dataclass(frozen=True)
class LiveNode:
    id: str
    roles: tuple[str, ...]
    capacity: int
    running: int
    labels: tuple[str, ...]
    remote: bool
    version: str
    started_at: datetime
    heartbeat_at: datetime


def heartbeat(platform: Platform, node: NodeBeat, version: str = __version__) -> None:
    now = platform.clock.now()
    with platform.db.write() as session:
        nodes.beat(session, {
            "id": node.id, "roles": ",".join(r for r in ROLES if r in node.roles),
            "capacity": node.capacity, "running": node.running, "labels": list(node.labels),
            "remote": node.remote, "version": version[:40], "started_at": node.started_at,
            "heartbeat_at": now})
        nodes.forget_before(session, now - FORGET_AFTER)


def live_nodes(platform: Platform, within_seconds: float) -> list[LiveNode]:
    """Nodes heard from in the last ``within_seconds``."""
    since = platform.clock.now() - timedelta(seconds=within_seconds)
    with platform.db.read() as session:
        return [LiveNode(row.id, tuple(row.roles.split(",")) if row.roles else (),
                         row.capacity, row.running, tuple(row.labels), row.remote,
                         row.version, row.started_at, row.heartbeat_at)
                for row in nodes.live(session, since)]
