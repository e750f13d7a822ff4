"""Integration tier: the services against a real database, SQLite and PostgreSQL.

Every test that uses ``platform`` runs once per backend. The PostgreSQL run needs
``BATCHYARD_TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``)
and gets a fresh schema of its own, dropped afterwards.
"""

from __future__ import annotations

import io
import itertools
import os
import secrets
import shutil
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from batchyard.config import normalise_database_url
from batchyard.domain.attempts import AttemptResult, OutputFile
from batchyard.domain.clock import FixedClock
from batchyard.domain.executions import AttemptOutcome
from batchyard.services import accounts, jobs
from batchyard.services.context import Actor, Platform
from batchyard.services.secrets import SecretBox
from batchyard.store.db import Database
from batchyard.store.models import Account, Job

POSTGRES_ENV = "BATCHYARD_TEST_POSTGRES_URL"
# A Monday noon in UTC, far from any day boundary of the zones the tests use.
START = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
MAIN_PY = "def main(event):\n    return event\n"

_serial = itertools.count(1)


def build_code_zip(main: str = MAIN_PY, **extra: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("main.py", main)
        for name, content in extra.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def attempt_result(clock: FixedClock, outcome: AttemptOutcome = AttemptOutcome.SUCCEEDED,
                   runtime_seconds: float = 1.0, *, exit_code: int | None = None,
                   error: str | None = None,
                   artifacts: tuple[OutputFile, ...] = ()) -> AttemptResult:
    if exit_code is None:
        exit_code = 0 if outcome is AttemptOutcome.SUCCEEDED else 1
    return AttemptResult(outcome, runtime_seconds, exit_code, error, clock.now(), artifacts)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def code_zip() -> Callable[..., bytes]:
    """Build a job zip: ``main.py`` (overridable) plus any extra files."""
    return build_code_zip


@pytest.fixture
def result(clock: FixedClock) -> Callable[..., AttemptResult]:
    """Build an AttemptResult that ends at the clock's now."""

    def make(outcome: AttemptOutcome = AttemptOutcome.SUCCEEDED, runtime_seconds: float = 1.0,
             **kwargs: Any) -> AttemptResult:
        return attempt_result(clock, outcome, runtime_seconds, **kwargs)

    return make


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test: migrating takes longer than copying."""
    path = tmp_path_factory.mktemp("template") / "batchyard.sqlite3"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.dispose()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "batchyard.sqlite3"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        db = Database(f"sqlite:///{path}")
        yield db
        db.dispose()
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"set {POSTGRES_ENV} to run against PostgreSQL")
    url = normalise_database_url(base)
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in url else "?"
        db = Database(f"{url}{separator}options=-csearch_path%3D{schema}")
        try:
            db.migrate()
            yield db
        finally:
            db.dispose()
            with admin.connect() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def platform(database: Database, clock: FixedClock) -> Platform:
    return Platform(db=database, clock=clock, secrets=SecretBox(Fernet.generate_key()))


@pytest.fixture
def make_account(platform: Platform) -> Callable[..., Account]:
    def make(plan: dict[str, Any] | None = None, enabled: bool = True,
             timezone: str = "UTC", name: str | None = None) -> Account:
        return accounts.create_account(platform, {
            "name": name or f"Account {next(_serial)}", "timezone": timezone,
            "batch_jobs_enabled": enabled, "plan": plan or {}})

    return make


@pytest.fixture
def make_actor(platform: Platform) -> Callable[..., Actor]:
    def make(account: Account, role: str = "admin") -> Actor:
        _user, key = accounts.create_user(platform, account.id, {
            "email": f"user{next(_serial)}@example.com", "role": role})
        return accounts.authenticate(platform, key)

    return make


@pytest.fixture
def make_job(platform: Platform) -> Callable[..., Job]:
    def make(actor: Actor, name: str | None = None, description: str = "") -> Job:
        return jobs.create_job(platform, actor, {
            "name": name or f"job {next(_serial)}", "description": description})

    return make


@pytest.fixture
def make_published_job(platform: Platform, make_job: Callable[..., Job]) -> Callable[..., Job]:
    """Create, upload, configure and publish a job; returns it as published (revision 1)."""

    def make(actor: Actor, code: bytes | None = None, settings: dict[str, Any] | None = None,
             variables: list[dict[str, Any]] | None = None, name: str | None = None,
             schedule: dict[str, Any] | None = None) -> Job:
        job = make_job(actor, name=name)
        jobs.upload_code(platform, actor, job.id, code or build_code_zip())
        if settings:
            jobs.update_settings(platform, actor, job.id, settings)
        if variables:
            jobs.replace_variables(platform, actor, job.id, variables)
        jobs.set_schedule(platform, actor, job.id, schedule or {"type": "none"})
        return jobs.publish(platform, actor, job.id)

    return make
