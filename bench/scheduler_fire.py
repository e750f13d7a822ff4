"""10,000 published jobs due at the same instant: time until every execution exists.

Target (issue 3): < 3 s on SQLite (admission included), none lost at 30,000. Rows are
inserted in bulk (publishing 10,000 jobs one by one would take longer than the fire);
the fire itself is the real `fire_due`. PostgreSQL runs too when
BATCHYARD_TEST_POSTGRES_URL is set (in a throwaway schema).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import func, insert, select, text

sys.path.insert(0, str(Path(__file__).parent))
from _harness import code_zip

from batchyard.config import normalise_database_url
from batchyard.domain.clock import FixedClock
from batchyard.domain.jobs import settings_from_dict
from batchyard.services import scheduler
from batchyard.services.context import Platform
from batchyard.services.secrets import SecretBox
from batchyard.store.db import Database
from batchyard.store.models import Account, CodeVersion, Execution, Job, Revision

DUE = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SCHEDULE = {"type": "daily", "times": ["12:00"], "timezone": "UTC"}


def seed(db: Database, jobs: int) -> None:
    created = datetime(2026, 5, 1, tzinfo=UTC)
    zipped = code_zip("def main():\n    pass\n")
    plan = {"max_jobs": jobs, "max_executions_per_day": jobs,
            "max_invocations_per_job_per_day": 10, "daily_runtime_budget_minutes": 10_000_000}
    settings = {**settings_from_dict(None).as_dict(), "timeout_minutes": 1,
                "concurrency": os.environ.get("BENCH_CONCURRENCY", "allow")}
    with db.write() as session:
        session.execute(insert(Account), [{
            "id": "acc_bench", "name": "bench", "timezone": "UTC", "batch_jobs_enabled": True,
            "super_admin_only": False, "budget_mode": "recorded", "plan": plan,
            "created_at": created}])
        ids = [f"job_bench{n:06d}" for n in range(jobs)]
        session.execute(insert(Job), [{
            "id": job_id, "account_id": "acc_bench", "name": f"bench {n}", "description": "",
            "status": "published", "settings": settings, "schedule": SCHEDULE,
            "code_version": 1, "revision": 1, "next_fire_at": DUE, "created_at": created,
            "modified_at": created} for n, job_id in enumerate(ids)])
        session.execute(insert(CodeVersion), [{
            "id": f"code_{job_id}", "account_id": "acc_bench", "job_id": job_id, "version": 1,
            "sha256": "0" * 64, "size": len(zipped), "main_parameters": 0,
            "requirements": None, "created_by": "bench", "created_at": created,
            "content": zipped} for job_id in ids])
        session.execute(insert(Revision), [{
            "id": f"rev_{job_id}", "account_id": "acc_bench", "job_id": job_id, "number": 1,
            "code_version": 1, "settings": settings, "variables": [], "schedule": SCHEDULE,
            "created_by": "bench", "created_at": created} for job_id in ids])


def measure(label: str, db: Database, jobs: int) -> None:
    db.migrate()
    seed(db, jobs)
    platform = Platform(db=db, clock=FixedClock(DUE), secrets=SecretBox(Fernet.generate_key()))
    started = time.perf_counter()
    report = scheduler.fire_due(platform, DUE)
    elapsed = time.perf_counter() - started
    with db.read() as session:
        made = session.scalar(select(func.count()).select_from(Execution))
    print(f"{label}: {jobs} jobs due at one instant -> {made} executions "
          f"({report.queued} queued, {report.blocked} blocked) in {elapsed:.2f} s "
          f"({jobs / elapsed:.0f} jobs/s; target < 3 s for 10,000 on SQLite)")


def main() -> None:
    for jobs in (10_000, 30_000):
        with tempfile.TemporaryDirectory() as folder:
            measure("SQLite", Database(f"sqlite:///{folder}/bench.sqlite3"), jobs)
    url = os.environ.get("BATCHYARD_TEST_POSTGRES_URL")
    if url:
        schema = f"bench_{secrets.token_hex(4)}"
        base = Database(normalise_database_url(url))
        with base.engine.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            measure("PostgreSQL", Database(
                normalise_database_url(url) + f"?options=-csearch_path%3D{schema}"), 10_000)
        finally:
            with base.engine.begin() as connection:
                connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    else:
        print("PostgreSQL: skipped (set BATCHYARD_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    main()
