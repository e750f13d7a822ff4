"""Schedules, as properties over random schedules and zones (SPEC §4).

The gap check is compared with the brute-force minimum over every fire of the
``GAP_SCAN_DAYS`` window. ``now`` is drawn from the eve of 2027 (before its first
midnight anywhere on Earth) so that the window runs from January 2027 to April 2028 and
holds a 28-day and a 29-day February with the months around them: then the calendar
patterns that the check covers for all time (leap days, month lengths, week wrap-around)
all occur in the window, and the brute force can see every one of them.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchyard.domain.schedules import (
    GAP_SCAN_DAYS,
    WEEKDAYS,
    ScheduleGapTooSmall,
    find_gap_violation,
    next_fires,
    validate_schedule,
)

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
         "America/St_Johns", "Pacific/Chatham", "Asia/Kathmandu", "Australia/Adelaide",
         "America/Santiago", "Africa/Cairo", "America/Havana", "Europe/London"]
# Wall times near the usual clock changes, midnight and the half hours, drawn often.
NEAR_CHANGES = [0, 10, 30, 50, 60, 90, 105, 120, 130, 135, 150, 165, 170, 180, 200, 225,
                1380, 1410, 1420, 1430, 1439]
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

minutes = st.one_of(st.sampled_from(NEAR_CHANGES), st.integers(0, 1439))
zones = st.sampled_from(ZONES)
starts = st.datetimes(datetime(2026, 1, 1), datetime(2029, 12, 31), timezones=st.just(UTC))
gap_nows = st.datetimes(datetime(2026, 12, 30, 12), datetime(2026, 12, 31, 9),
                        timezones=st.just(UTC))


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@st.composite
def calendar_schedules(draw: st.DrawFn, kinds: tuple[str, ...] = ("daily", "weekly",
                                                                   "monthly")) -> dict[str, Any]:
    kind = draw(st.sampled_from(kinds))
    times = draw(st.lists(minutes, min_size=1, max_size=5, unique=True))
    data: dict[str, Any] = {"type": kind, "times": [hhmm(m) for m in times],
                            "timezone": draw(zones)}
    if kind == "weekly":
        data["days_of_week"] = draw(st.lists(st.sampled_from(WEEKDAYS), min_size=1,
                                             max_size=4, unique=True))
    if kind == "monthly":
        days = st.one_of(st.sampled_from([1, 2, 27, 28, 29, 30, 31, "last"]),
                         st.integers(1, 31))
        data["days_of_month"] = draw(st.lists(days, min_size=1, max_size=4, unique=True))
    return validate_schedule(data, "UTC")


@st.composite
def cron_schedules(draw: st.DrawFn) -> dict[str, Any]:
    """Few fires a day (the brute force walks a year of them); dom or dow is ``*``."""
    minute_values = draw(st.lists(st.integers(0, 59), min_size=1, max_size=3, unique=True))
    minute = draw(st.sampled_from([",".join(map(str, minute_values)), "*/20", "*/30"]))
    hour_values = draw(st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True))
    hour = draw(st.sampled_from([",".join(map(str, hour_values)), "*/4", "*/6", "1-3"]))
    dom, dow = "*", "*"
    if draw(st.booleans()):
        dom = ",".join(map(str, draw(st.lists(st.sampled_from([1, 15, 28, 29, 30, 31]),
                                              min_size=1, max_size=3, unique=True))))
    else:
        dow = ",".join(map(str, draw(st.lists(st.integers(0, 6), max_size=3, unique=True))))
    return validate_schedule({"type": "cron", "cron": f"{minute} {hour} {dom} * {dow or '*'}",
                              "timezone": draw(zones)}, "UTC")


any_schedules = st.one_of(calendar_schedules(), cron_schedules())


def offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def is_jump(zone: ZoneInfo, instant: datetime) -> bool:
    """The clocks jump forward at this instant."""
    return offset(zone, instant) > offset(zone, instant - timedelta(seconds=1))


def exists_once(zone: ZoneInfo, wall: datetime) -> bool:
    first, second = wall.replace(tzinfo=zone), wall.replace(tzinfo=zone, fold=1)
    return (first.utcoffset() == second.utcoffset()
            and first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall)


def day_matches(schedule: dict[str, Any], day: date) -> bool:
    if schedule["type"] == "weekly":
        return WEEKDAYS[day.weekday()] in schedule["days_of_week"]
    if schedule["type"] == "monthly":
        last = (day + timedelta(days=1)).day == 1
        return day.day in schedule["days_of_month"] or (last and "last" in
                                                         schedule["days_of_month"])
    return True


def fires_in_window(schedule: dict[str, Any], start: datetime, end: datetime) -> list[datetime]:
    fires: list[datetime] = []
    after = start
    while True:
        chunk = next_fires(schedule, after, 500)
        fires.extend(f for f in chunk if f <= end)
        if len(chunk) < 500 or chunk[-1] > end:
            return fires
        after = chunk[-1]


@SETTINGS
@given(calendar_schedules(), starts)
def test_calendar_fires_are_exactly_the_configured_wall_times(schedule: dict[str, Any],
                                                              start: datetime) -> None:
    zone = ZoneInfo(schedule["timezone"])
    fires = next_fires(schedule, start, 150)
    assert fires and all(f > start for f in fires)
    assert all(a < b for a, b in pairwise(fires))
    times = set(schedule["times"])
    for fire in fires:
        local = fire.astimezone(zone)
        assert day_matches(schedule, local.date())
        assert local.fold == 0  # a repeated wall time runs at its first occurrence
        if hhmm(local.hour * 60 + local.minute) not in times:
            assert is_jump(zone, fire)
            assert any(not exists_once(zone, datetime.combine(local.date(), datetime.strptime(
                t, "%H:%M").time())) for t in times)
    # Nothing is lost: every configured wall time that exists once on a matching day runs.
    local_start = start.astimezone(zone).date() + timedelta(days=1)
    local_end = fires[-1].astimezone(zone).date()
    fired = set(fires)
    day = local_start
    while day < local_end:
        if day_matches(schedule, day):
            for t in times:
                wall = datetime.combine(day, datetime.strptime(t, "%H:%M").time())
                if exists_once(zone, wall):
                    assert wall.replace(tzinfo=zone).astimezone(UTC) in fired
        day += timedelta(days=1)


@SETTINGS
@given(calendar_schedules(kinds=("daily",)), starts)
def test_a_daily_schedule_never_misses_a_day(schedule: dict[str, Any], start: datetime) -> None:
    zone = ZoneInfo(schedule["timezone"])
    first = start.astimezone(zone).date() + timedelta(days=1)
    fires = fires_in_window(schedule, start, start + timedelta(days=62))
    days = {f.astimezone(zone).date() for f in fires}
    assert {first + timedelta(days=n) for n in range(60)} <= days


@settings(SETTINGS, max_examples=40)
@given(cron_schedules(), starts)
def test_cron_fires_increase_and_match_the_expression(schedule: dict[str, Any],
                                                      start: datetime) -> None:
    zone = ZoneInfo(schedule["timezone"])
    cron = CronSim(schedule["cron"], datetime(2000, 1, 1))
    fires = next_fires(schedule, start, 60)
    assert fires and all(f > start for f in fires)
    assert all(a < b for a, b in pairwise(fires))
    for fire in fires:
        local = fire.astimezone(zone)
        assert local.month in cron.months and cron.match_day(local.date())
        assert (local.hour in cron.hours and local.minute in cron.minutes) or is_jump(zone, fire)


@settings(SETTINGS, max_examples=60)
@given(st.one_of(calendar_schedules(), calendar_schedules(), cron_schedules()), gap_nows,
       st.floats(1, 2 * 1440))
def test_the_gap_check_agrees_with_the_brute_force_minimum(schedule: dict[str, Any],
                                                           now: datetime, gap: float) -> None:
    fires = fires_in_window(schedule, now, now + timedelta(days=GAP_SCAN_DAYS))
    brute = min(((b - a).total_seconds() / 60 for a, b in pairwise(fires)),
                default=math.inf)

    def accepted(bound: float) -> bool:
        try:
            validate_schedule(schedule, "UTC", min_gap_minutes=bound, now=now)
        except ScheduleGapTooSmall as error:
            assert error.extra["gap_minutes"] < bound
            return False
        return True

    assert accepted(gap) == (brute >= gap)
    if math.isfinite(brute):
        assert accepted(brute)
        assert not accepted(brute + 0.5)
        found = find_gap_violation(schedule, brute + 0.5, now)
        assert found is not None
        if found.second_at in fires:  # a pair inside the window: two consecutive fires
            index = fires.index(found.second_at)
            assert index > 0 and fires[index - 1] == found.first_at
