"""The quota forecast of 5 jobs over 30 days: the pure projection, and the whole
GET /api/v1/usage/forecast service call on SQLite (target < 50 ms)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _console import NOW, platform_at, seed_account, timed

from batchyard.domain import forecast as projection
from batchyard.domain.jobs import JobSettings
from batchyard.domain.plans import Plan
from batchyard.services import accounts, jobs
from batchyard.services import forecast as forecasts

SCHEDULES = [
    {"type": "daily", "times": ["01:00", "05:00", "09:00", "13:00"], "timezone": "UTC"},
    {"type": "weekly", "days_of_week": ["mon", "wed", "fri"], "times": ["02:30"],
     "timezone": "Europe/Berlin"},
    {"type": "monthly", "days_of_month": [1, 15, "last"], "times": ["03:00", "23:30"],
     "timezone": "America/New_York"},
    {"type": "cron", "cron": "15 */3 * * *", "timezone": "UTC"},
    {"type": "daily", "times": ["12:00", "18:00"], "timezone": "Asia/Kolkata"},
]


def main() -> None:
    items = [projection.ForecastJob(f"job_{n}", f"job {n}", schedule,
                                    JobSettings(timeout_minutes=30))
             for n, schedule in enumerate(SCHEDULES)]
    result = projection.forecast(items, Plan(), timezone="UTC", budget_mode="recorded",
                                 start=NOW, days=30)
    fires = sum(len(day.fires) for day in result.days)
    blocked = sum(len(day.blocked) for day in result.days)
    p50, _ = timed(lambda: projection.forecast(items, Plan(), timezone="UTC",
                                               budget_mode="recorded", start=NOW, days=30), 50)
    print(f"forecast, pure: 5 jobs x 30 days ({fires} fires, {blocked} blocked): "
          f"p50 {p50:.2f} ms")
    with tempfile.TemporaryDirectory() as folder:
        platform = platform_at(f"{folder}/bench.sqlite3")
        account = seed_account(platform, {"min_schedule_gap_minutes": 30})
        user, key = accounts.create_user(platform, account, {
            "email": "bench@example.com", "role": "admin"})
        actor = accounts.authenticate(platform, key)
        for n, schedule in enumerate(SCHEDULES):
            job = jobs.create_job(platform, actor, {"name": f"job {n}"})
            jobs.upload_code(platform, actor, job.id, _zip())
            jobs.update_settings(platform, actor, job.id, {"timeout_minutes": 30})
            jobs.set_schedule(platform, actor, job.id, schedule)
            jobs.publish(platform, actor, job.id)
        p50, p95 = timed(lambda: forecasts.account_forecast(platform, actor, 30), 50)
        print(f"forecast service (SQLite, history and today's usage read): 5 jobs x 30 days: "
              f"p50 {p50:.1f} ms, p95 {p95:.1f} ms (target < 50 ms)")
        platform.db.dispose()
        del user


def _zip() -> bytes:
    from _harness import code_zip

    return code_zip("def main():\n    pass\n")


if __name__ == "__main__":
    main()
