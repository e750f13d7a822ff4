"""The checker of a scale-out run: what the store says after the chaos."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg


@dataclass
class ChaosReport:
    executions: int
    non_final: int
    duplicate_fires: int
    accounts_over_limit: list[str]
    interrupted_attempts: int
    interrupted_unaccounted: int
    endings: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"executions: {self.executions}",
                f"non-final executions: {self.non_final}",
                f"(job, instant) pairs with two executions: {self.duplicate_fires}",
                f"accounts over a limit: {len(self.accounts_over_limit)} "
                f"{self.accounts_over_limit or ''}".rstrip(),
                f"interrupted attempts: {self.interrupted_attempts} "
                f"(not retried and not ended interrupted/worker_lost: "
                f"{self.interrupted_unaccounted})",
                "endings: " + ", ".join(f"{k}={v}" for k, v in sorted(self.endings.items()))]


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] +
                    [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def check(url: str, plans: dict[str, dict[str, Any]]) -> ChaosReport:
    """``plans``: account id → the plan it was given (max_concurrent_executions,
    max_executions_per_day, daily_runtime_budget_minutes)."""
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT status, coalesce(reason, '') FROM executions "
                                  "WHERE account_id = ANY(%s)", (list(plans),)).fetchall()
        endings: dict[str, int] = {}
        for status, reason in rows:
            key = f"{status}/{reason}" if reason else status
            endings[key] = endings.get(key, 0) + 1
        non_final = sum(1 for status, _ in rows if status in ("queued", "running"))
        duplicates = connection.execute(
            "SELECT count(*) FROM (SELECT job_id, scheduled_for FROM executions "
            "WHERE scheduled_for IS NOT NULL AND account_id = ANY(%s) "
            "GROUP BY job_id, scheduled_for HAVING count(*) > 1) d",
            (list(plans),)).fetchone()
        over: list[str] = []
        for account_id, plan in plans.items():
            intervals = [(start, end) for start, end in connection.execute(
                "SELECT started_at, ended_at FROM attempts WHERE account_id = %s "
                "AND ended_at IS NOT NULL", (account_id,)).fetchall()]
            if _max_overlap(intervals) > plan.get("max_concurrent_executions", 2):
                over.append(f"{account_id}: concurrency {_max_overlap(intervals)}")
            for day, count, runtime in connection.execute(
                    "SELECT account_day, count(*), sum(runtime_seconds) FROM executions "
                    "WHERE account_id = %s AND status <> 'blocked' GROUP BY account_day",
                    (account_id,)).fetchall():
                if count > plan.get("max_executions_per_day", 24):
                    over.append(f"{account_id}: {count} executions on {day}")
                if runtime / 60 > plan.get("daily_runtime_budget_minutes", 240):
                    over.append(f"{account_id}: {runtime:.0f} s run on {day}")
        interrupted = connection.execute(
            "SELECT a.execution_id, a.number, e.attempt_count, e.status, e.reason "
            "FROM attempts a JOIN executions e ON e.id = a.execution_id "
            "WHERE a.status = 'interrupted' AND a.account_id = ANY(%s)",
            (list(plans),)).fetchall()
        unaccounted = sum(1 for _, number, count, status, reason in interrupted
                          if not (count > number or reason in ("interrupted", "worker_lost")))
    return ChaosReport(len(rows), non_final, int(duplicates[0]) if duplicates else 0, over,
                       len(interrupted), unaccounted, endings)
