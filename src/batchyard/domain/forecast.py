"""The quota forecast: which scheduled runs of the coming days the plan would block.

Pure: the service gathers the published schedules, settings, run-time history and
today's counters; this replays the fires in time order against the same rules
``decide_admission`` applies, with each run lasting its upper bound (the job's
timeout). Run time is charged to the day a run starts and, as in the real queue,
becomes visible to admission only when the run ends (recorded mode) or at once as a
reservation (strict mode). API invocations cannot be foreseen and are not counted.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from batchyard.domain.admission import Usage, account_day, decide_admission
from batchyard.domain.jobs import Concurrency, JobSettings
from batchyard.domain.plans import Plan
from batchyard.domain.schedules import Schedule, iter_fires

MAX_DAYS = 92


@dataclass(frozen=True)
class ForecastJob:
    job_id: str
    name: str
    schedule: Mapping[str, Any]
    settings: JobSettings
    # Median of the job's last runs, or None without history.
    expected_seconds: float | None = None


@dataclass(frozen=True)
class TodayUsage:
    """What the account has used so far on its current day (the forecast's first day)."""

    executions: int = 0
    runtime_seconds: float = 0.0
    reserved_seconds: float = 0.0
    per_job: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedFire:
    job_id: str
    job_name: str
    at: datetime
    admitted: bool
    reason: str | None


@dataclass(frozen=True)
class ForecastDay:
    day: date
    fires: tuple[PlannedFire, ...]
    expected_runtime_seconds: float
    max_runtime_seconds: float

    @property
    def blocked(self) -> tuple[PlannedFire, ...]:
        return tuple(fire for fire in self.fires if not fire.admitted)


@dataclass(frozen=True)
class Forecast:
    start: datetime
    timezone: str
    budget_mode: str
    days: tuple[ForecastDay, ...]

    def blocked_days(self, job_id: str | None = None) -> list[ForecastDay]:
        return [day for day in self.days if any(
            job_id in (None, fire.job_id) for fire in day.blocked)]

    def reasons(self, job_id: str | None = None) -> list[str]:
        seen: dict[str, None] = {}
        for day in self.days:
            for fire in day.blocked:
                if job_id in (None, fire.job_id) and fire.reason:
                    seen[fire.reason] = None
        return list(seen)


@dataclass
class _DayState:
    executions: int = 0
    runtime: float = 0.0
    reserved: float = 0.0
    per_job: dict[str, int] = field(default_factory=dict)


def forecast(jobs: Sequence[ForecastJob], plan: Plan, *, timezone: str, budget_mode: str,
             start: datetime, days: int, today: TodayUsage | None = None) -> Forecast:
    """Project the fires strictly after ``start`` until the end of the ``days``-th account
    day (today counting as the first), in time order; coinciding fires in job order."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 1 to {MAX_DAYS}")
    first_day = account_day(start, timezone)
    last_day = first_day + timedelta(days=days - 1)
    strict = budget_mode == "strict"
    fires: list[tuple[datetime, int, ForecastJob]] = []
    for order, job in enumerate(sorted(jobs, key=lambda j: j.job_id)):
        for instant in iter_fires(Schedule.from_dict(job.schedule), start):
            if account_day(instant, timezone) > last_day:
                break
            fires.append((instant, order, job))
    fires.sort(key=lambda item: (item[0], item[1]))

    states: dict[date, _DayState] = {}
    seed = today or TodayUsage()
    states[first_day] = _DayState(seed.executions, seed.runtime_seconds, seed.reserved_seconds,
                                  dict(seed.per_job))
    # Runs in progress: (end, job_id, start day, seconds); recorded mode charges at the end.
    running: list[tuple[datetime, str, date, float]] = []
    active: dict[str, int] = {}
    planned: dict[date, list[PlannedFire]] = {}
    expected: dict[date, float] = {}
    maximal: dict[date, float] = {}
    for instant, _order, job in fires:
        while running and running[0][0] <= instant:
            _end, ended_job, started_day, seconds = heapq.heappop(running)
            active[ended_job] -= 1
            if not strict:
                states.setdefault(started_day, _DayState()).runtime += seconds
        day = account_day(instant, timezone)
        state = states.setdefault(day, _DayState())
        timeout = job.settings.timeout_seconds
        admission = decide_admission(
            enabled=True, published=True, plan=plan, settings=job.settings,
            usage=Usage(executions=state.executions,
                        job_executions=state.per_job.get(job.job_id, 0),
                        runtime_seconds=state.runtime, reserved_seconds=state.reserved,
                        job_active=active.get(job.job_id, 0)
                        if job.settings.concurrency is Concurrency.FORBID else 0))
        planned.setdefault(day, []).append(PlannedFire(
            job.job_id, job.name, instant, admission.admitted,
            admission.reason.value if admission.reason else None))
        if not admission.admitted:
            continue
        state.executions += 1
        state.per_job[job.job_id] = state.per_job.get(job.job_id, 0) + 1
        if strict:
            # Reserved at admission, then charged in place of the reservation: the same sum.
            state.reserved += timeout
        heapq.heappush(running, (instant + timedelta(seconds=timeout), job.job_id, day,
                                 timeout))
        active[job.job_id] = active.get(job.job_id, 0) + 1
        maximal[day] = maximal.get(day, 0.0) + timeout
        # Without history nothing better than the timeout is known.
        typical = job.expected_seconds if job.expected_seconds is not None else timeout
        expected[day] = expected.get(day, 0.0) + min(typical, timeout)
    out = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        out.append(ForecastDay(day, tuple(planned.get(day, ())), expected.get(day, 0.0),
                               maximal.get(day, 0.0)))
    return Forecast(start, timezone, budget_mode, tuple(out))


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def summary(result: Forecast, job_id: str | None = None) -> str:
    """One sentence for people: "this schedule would be blocked on 4 of the next 30 days:
    budget"."""
    blocked = result.blocked_days(job_id)
    subject = "this schedule" if job_id else "the schedules"
    if not blocked:
        return f"No run of {subject} would be blocked in the next {len(result.days)} days."
    words = {"executions_per_day_exceeded": "executions per day",
             "job_invocations_exceeded": "invocations per job",
             "runtime_budget_insufficient": "run-time budget",
             "already_running": "still running"}
    reasons = ", ".join(words.get(r, r) for r in result.reasons(job_id))
    return (f"{subject[0].upper()}{subject[1:]} would be blocked on {len(blocked)} of the "
            f"next {len(result.days)} days: {reasons}.")
