"""The quota forecast's rules on hand-made cases (the property test compares it with the
real admission on many random ones)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from batchyard.domain.forecast import ForecastJob, TodayUsage, forecast, median, summary
from batchyard.domain.jobs import Concurrency, JobSettings
from batchyard.domain.plans import Plan

START = datetime(2025, 3, 10, 0, 0, tzinfo=UTC)  # Monday midnight UTC
HOUR = JobSettings(timeout_minutes=60)


def daily(*times: str, zone: str = "UTC") -> dict[str, object]:
    return {"type": "daily", "times": list(times), "timezone": zone}


def reasons(result_days: object) -> list[list[str | None]]:
    return [[fire.reason for fire in day.fires] for day in result_days]  # type: ignore[attr-defined]


def test_the_seeds_scenario_1_blocks_the_second_job_on_budget() -> None:
    # Budget 60 min; job A at 01:00 runs (at most) its hour, job B at 02:00 finds none left.
    plan = Plan(daily_runtime_budget_minutes=60)
    result = forecast([ForecastJob("a", "A", daily("01:00"), HOUR),
                       ForecastJob("b", "B", daily("02:00"), HOUR)], plan,
                      timezone="UTC", budget_mode="recorded", start=START, days=2)
    assert reasons(result.days) == [[None, "runtime_budget_insufficient"]] * 2
    assert summary(result, "b") == ("This schedule would be blocked on 2 of the next 2 "
                                     "days: run-time budget.")
    assert summary(result, "a") == "No run of this schedule would be blocked in the next 2 days."


def test_the_seeds_scenario_2_admits_both_at_once_unless_the_budget_is_strict() -> None:
    plan = Plan(daily_runtime_budget_minutes=60)
    jobs = [ForecastJob("a", "A", daily("01:00"), HOUR),
            ForecastJob("b", "B", daily("01:00"), HOUR)]
    recorded = forecast(jobs, plan, timezone="UTC", budget_mode="recorded", start=START,
                        days=1)
    assert reasons(recorded.days) == [[None, None]]
    assert recorded.days[0].max_runtime_seconds == 7200
    strict = forecast(jobs, plan, timezone="UTC", budget_mode="strict", start=START, days=1)
    assert reasons(strict.days) == [[None, "runtime_budget_insufficient"]]


def test_execution_and_invocation_counts_reset_at_the_accounts_midnight() -> None:
    plan = Plan(max_executions_per_day=3, max_invocations_per_job_per_day=2)
    jobs = [ForecastJob("a", "A", daily("00:30", "08:00", "16:00"), JobSettings(5)),
            ForecastJob("b", "B", daily("20:00", "22:00"), JobSettings(5))]
    result = forecast(jobs, plan, timezone="Europe/Berlin", budget_mode="recorded",
                      start=datetime(2025, 3, 9, 23, 0, tzinfo=UTC), days=2)
    assert result.days[0].day == date(2025, 3, 10)
    assert reasons(result.days) == [
        [None, None, "job_invocations_exceeded", None, "executions_per_day_exceeded"]] * 2


def test_todays_usage_and_running_runs_count() -> None:
    plan = Plan(max_executions_per_day=5)
    result = forecast([ForecastJob("a", "A", daily("12:00"), HOUR)], plan, timezone="UTC",
                      budget_mode="recorded", start=START, days=1,
                      today=TodayUsage(executions=5))
    assert reasons(result.days) == [["executions_per_day_exceeded"]]
    overlapping = ForecastJob("a", "A", daily("01:00", "02:00"),
                              JobSettings(timeout_minutes=90))
    result = forecast([overlapping], Plan(min_schedule_gap_minutes=60), timezone="UTC",
                      budget_mode="recorded", start=START, days=1)
    assert reasons(result.days) == [[None, "already_running"]]
    allowed = ForecastJob("a", "A", daily("01:00", "02:00"),
                          JobSettings(timeout_minutes=90, concurrency=Concurrency.ALLOW))
    result = forecast([allowed], Plan(), timezone="UTC", budget_mode="recorded", start=START,
                      days=1)
    assert reasons(result.days) == [[None, None]]


def test_expected_run_time_is_the_median_capped_by_the_timeout() -> None:
    assert median([]) is None
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    job = ForecastJob("a", "A", daily("01:00"), HOUR, expected_seconds=120.0)
    day = forecast([job], Plan(), timezone="UTC", budget_mode="recorded", start=START,
                   days=1).days[0]
    assert (day.expected_runtime_seconds, day.max_runtime_seconds) == (120.0, 3600.0)


def test_the_number_of_days_is_bounded() -> None:
    with pytest.raises(ValueError):
        forecast([], Plan(), timezone="UTC", budget_mode="recorded", start=START, days=0)
