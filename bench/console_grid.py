"""The console's job grid with 1,000 jobs and 200,000 executions (SQLite), 50 rows a page
sorted by name: p50 of the whole page (query, sort, template) over 50 loads, and the SQL
statements one page costs, which must not grow with the rows (target < 100 ms)."""

from __future__ import annotations

import random
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).parent))
from _console import (
    NOW,
    SETTINGS,
    counting_statements,
    platform_at,
    seed_account,
    signed_in_client,
    timed,
)

from batchyard.store.models import Execution, Job, JobUsageDay, UsageDay, execution_row

JOBS, EXECUTIONS = 1_000, 200_000
SCHEDULES = [None, {"type": "none", "timezone": "UTC"},
             {"type": "daily", "times": ["01:00", "13:00"], "timezone": "UTC"},
             {"type": "cron", "cron": "0 */2 * * *", "timezone": "Europe/Berlin"}]


def seed(path: str) -> tuple[object, str]:
    platform = platform_at(path)
    account = seed_account(platform, {"max_jobs": JOBS})
    rng = random.Random(7)
    today = NOW.date().isoformat()
    with platform.db.write() as session:
        session.execute(insert(Job), [{
            "id": f"job_{n:06d}", "account_id": account, "name": f"job {rng.random():.8f}",
            "description": "", "status": rng.choice(["draft", "published", "unpublished"]),
            "settings": SETTINGS, "schedule": rng.choice(SCHEDULES), "created_at": NOW,
            "modified_at": NOW - timedelta(minutes=n)} for n in range(JOBS)])
        rows = []
        for n in range(EXECUTIONS):
            at = NOW - timedelta(seconds=(EXECUTIONS - n) * 10)
            rows.append(execution_row(
                id=f"exe_{n:09d}", account_id=account, job_id=f"job_{rng.randrange(JOBS):06d}",
                job_name="x", revision=1, source="api",
                status=rng.choice(["succeeded", "succeeded", "failed", "blocked"]),
                params={}, account_day=at.date().isoformat(), created_at=at, started_at=at,
                ended_at=at, runtime_seconds=3.0))
            if len(rows) == 20_000:
                session.execute(insert(Execution), rows)
                rows = []
        session.execute(insert(UsageDay), [{"account_id": account, "day": today,
                                            "executions": 100, "runtime_seconds": 300.0,
                                            "reserved_seconds": 0.0}])
        session.execute(insert(JobUsageDay), [{
            "job_id": f"job_{n:06d}", "day": today, "account_id": account, "executions": 1,
            "runtime_seconds": 3.0} for n in range(0, JOBS, 3)])
    return platform, account


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        platform, account = seed(f"{folder}/bench.sqlite3")
        client = signed_in_client(platform, account)  # type: ignore[arg-type]
        for query in ("sort=name", "sort=name&page_number=10", "sort=last_execution&order=desc",
                      "sort=succeeded&order=desc&status=published", "sort=name&q=job 0.1"):
            with counting_statements(platform) as seen:  # type: ignore[arg-type]
                answer = client.get(f"/jobs?{query}")
            assert answer.status_code == 200, answer.text[:500]
            print(f"grid ?{query}: {len(seen)} SQL statements, "
                  f"{answer.text.count('<tr data-job')} rows shown")
        p50, p95 = timed(lambda: client.get("/jobs?sort=name"), 50)
        print(f"grid page, {JOBS} jobs and {EXECUTIONS} executions, 50 rows sorted by name: "
              f"p50 {p50:.1f} ms, p95 {p95:.1f} ms over 50 loads (target p50 < 100 ms)")
        platform.db.dispose()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
