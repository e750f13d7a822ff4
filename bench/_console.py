"""Shared plumbing of the console benches: a seeded SQLite database, the console mounted
on an app of its own (no workers, no scheduler: only the page's work is timed), a signed-in
client, and a counter of SQL statements."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import Fernet
from fastapi import FastAPI

with warnings.catch_warnings():
    # Starlette's test client announces a future change of its HTTP library.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from sqlalchemy import event, insert

from batchyard.api.errors import install_error_handlers
from batchyard.domain.clock import FixedClock
from batchyard.domain.jobs import settings_from_dict
from batchyard.services import accounts, sessions
from batchyard.services.context import Platform
from batchyard.services.secrets import SecretBox
from batchyard.store.db import Database
from batchyard.store.models import Account
from batchyard.web.auth import COOKIE
from batchyard.web.console import install_console

NOW = datetime(2026, 6, 1, 15, 0, tzinfo=UTC)
SETTINGS = settings_from_dict(None).as_dict()


def platform_at(path: str) -> Platform:
    db = Database(f"sqlite:///{path}")
    db.migrate()
    return Platform(db=db, clock=FixedClock(NOW), secrets=SecretBox(Fernet.generate_key()))


def seed_account(platform: Platform, plan: dict[str, Any]) -> str:
    with platform.db.write() as session:
        session.execute(insert(Account), [{
            "id": "acc_bench", "name": "bench", "timezone": "UTC", "batch_jobs_enabled": True,
            "super_admin_only": False, "budget_mode": "recorded", "plan": plan,
            "created_at": NOW}])
    return "acc_bench"


def signed_in_client(platform: Platform, account_id: str) -> TestClient:
    user, _key = accounts.create_user(platform, account_id, {
        "email": "bench@example.com", "role": "admin", "password": "bench password"})
    new = sessions.sign_in(platform, user.email, "bench password", "bench")
    app = FastAPI()
    app.state.platform = platform
    app.state.operator_token = "bench"
    install_error_handlers(app)
    install_console(app, "http://bench")
    client = TestClient(app)
    client.cookies.set(COOKIE, new.secret)
    return client


@contextmanager
def counting_statements(platform: Platform) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(platform.db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(platform.db.engine, "before_cursor_execute", count)


def timed(load: Callable[[], Any], runs: int) -> tuple[float, float]:
    """(p50, p95) in milliseconds of ``runs`` calls after one warm-up call."""
    load()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        load()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]
