"""Plan limits of an account, with the seed's default plan."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from batchyard.errors import InvalidInput

MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    max_jobs: int = 5
    max_executions_per_day: int = 24
    # Minutes may be fractional (0.1 = 6 s) so tests and demos can use short durations.
    daily_runtime_budget_minutes: float = 240
    max_invocations_per_job_per_day: int = 10
    max_retries: int = 1
    min_schedule_gap_minutes: float = 60
    max_code_size_bytes: int = 4 * MIB
    max_execution_timeout_minutes: float = 1440
    database_access: bool = False
    # Beyond the seed: attempts of the account running at once; further executions wait
    # queued (not blocked), so one account cannot hold every worker slot.
    max_concurrent_executions: int = 2
    # Executions (with their attempts, logs, artifacts and deliveries) older than this
    # many days are deleted by the retention loop (runtime/retention_loop.py).
    retention_days: int = 30

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def daily_runtime_budget_seconds(self) -> float:
        return self.daily_runtime_budget_minutes * 60


_INT_FIELDS = {"max_jobs", "max_executions_per_day", "max_invocations_per_job_per_day",
               "max_retries", "max_code_size_bytes", "max_concurrent_executions",
               "retention_days"}
_FLOAT_FIELDS = {"daily_runtime_budget_minutes", "min_schedule_gap_minutes",
                 "max_execution_timeout_minutes"}
PLAN_FIELDS = tuple(f.name for f in fields(Plan))


def plan_from_dict(data: dict[str, Any] | None) -> Plan:
    """Build a plan from stored JSON, tolerating fields added or removed since it was stored."""
    known = {k: v for k, v in (data or {}).items() if k in PLAN_FIELDS}
    return replace(Plan(), **known)


def apply_plan_changes(plan: Plan, changes: dict[str, Any]) -> Plan:
    """Validate an operator's partial plan change and return the new plan."""
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in PLAN_FIELDS:
            raise InvalidInput(f"Unknown plan limit {key!r}; known: {', '.join(PLAN_FIELDS)}",
                               field=f"plan.{key}")
        if key == "database_access":
            if not isinstance(value, bool):
                raise InvalidInput("plan.database_access must be true or false",
                                   field="plan.database_access")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"plan.{key} must be a number", field=f"plan.{key}")
        elif not math.isfinite(value):
            # JSON parsers accept NaN and Infinity; a NaN budget would admit everything.
            raise InvalidInput(f"plan.{key} must be a finite number", field=f"plan.{key}")
        elif key in _INT_FIELDS and value != int(value):
            raise InvalidInput(f"plan.{key} must be a whole number", field=f"plan.{key}")
        elif value < 0 or (key in _FLOAT_FIELDS and value > 10_000_000):
            raise InvalidInput(f"plan.{key} is out of range", field=f"plan.{key}")
        if key == "max_concurrent_executions" and value < 1:
            # 0 would leave every execution of the account queued for ever.
            raise InvalidInput("plan.max_concurrent_executions must be at least 1",
                               field=f"plan.{key}")
        if key == "retention_days" and not 1 <= value <= 36500:
            # 0 would delete every execution as soon as it ends.
            raise InvalidInput("plan.retention_days must be between 1 and 36500",
                               field=f"plan.{key}")
        if key in _INT_FIELDS:
            value = int(value)
        elif key in _FLOAT_FIELDS:
            value = float(value)
        updates[key] = value
    return replace(plan, **updates)
