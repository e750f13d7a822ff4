"""Schedules: validation, fire instants (with the DST rules of SPEC §4), the minimum gap."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from batchyard.domain.schedules import (
    ScheduleGapTooSmall,
    describe_next_runs,
    find_gap_violation,
    next_fire,
    next_fires,
    schedule_summary,
    validate_schedule,
)
from batchyard.errors import InvalidInput

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(zone: str, year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    """A local wall time (first occurrence) as a UTC instant."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def daily(*times: str, zone: str = "UTC") -> dict[str, Any]:
    return {"type": "daily", "times": list(times), "timezone": zone}


def fires_from(schedule: dict[str, Any], after: datetime, count: int = 5) -> list[datetime]:
    result = next_fires(schedule, after, count)
    assert result == sorted(set(result)) and all(f > after for f in result)
    assert all(f.tzinfo is UTC for f in result)
    return result


# -- validation ---------------------------------------------------------------------------

INVALID: list[tuple[Any, str]] = [
    ("daily", "type"),
    ({"type": "hourly"}, "type"),
    ({}, "type"),
    ({"type": "none", "colour": "red"}, "colour"),
    ({"type": "none", "timezone": "Mars/Olympus"}, "timezone"),
    ({"type": "none", "timezone": 5}, "timezone"),
    ({"type": "daily", "times": ["01:00"], "days_of_week": ["mon"]}, "days_of_week"),
    ({"type": "none", "cron": "* * * * *"}, "cron"),
    ({"type": "daily"}, "times"),
    ({"type": "daily", "times": []}, "times"),
    ({"type": "daily", "times": "01:00"}, "times"),
    ({"type": "daily", "times": ["24:00"]}, "times"),
    ({"type": "daily", "times": ["1:00"]}, "times"),
    ({"type": "daily", "times": ["01:60"]}, "times"),
    ({"type": "daily", "times": ["01:00:00"]}, "times"),
    ({"type": "daily", "times": [100]}, "times"),
    ({"type": "daily", "times": [f"{m // 60:02d}:{m % 60:02d}" for m in range(0, 1470, 30)]},
     "times"),
    ({"type": "weekly", "times": ["01:00"]}, "days_of_week"),
    ({"type": "weekly", "times": ["01:00"], "days_of_week": []}, "days_of_week"),
    ({"type": "weekly", "times": ["01:00"], "days_of_week": ["monday"]}, "days_of_week"),
    ({"type": "weekly", "times": ["01:00"], "days_of_week": [1]}, "days_of_week"),
    ({"type": "weekly", "days_of_week": ["mon"]}, "times"),
    ({"type": "monthly", "times": ["01:00"]}, "days_of_month"),
    ({"type": "monthly", "times": ["01:00"], "days_of_month": [0]}, "days_of_month"),
    ({"type": "monthly", "times": ["01:00"], "days_of_month": [32]}, "days_of_month"),
    ({"type": "monthly", "times": ["01:00"], "days_of_month": [True]}, "days_of_month"),
    ({"type": "monthly", "times": ["01:00"], "days_of_month": ["first"]}, "days_of_month"),
    ({"type": "monthly", "times": ["01:00"], "days_of_month": ["1"]}, "days_of_month"),
    ({"type": "cron"}, "cron"),
    ({"type": "cron", "cron": 5}, "cron"),
    ({"type": "cron", "cron": "0 0 * * * *"}, "cron"),
    ({"type": "cron", "cron": "0 0 * *"}, "cron"),
    ({"type": "cron", "cron": "61 * * * *"}, "cron"),
    ({"type": "cron", "cron": "0 0 * * mon-"}, "cron"),
    ({"type": "cron", "cron": "0 0 30 2 *"}, "cron"),
    ({"type": "cron", "cron": "0 0 31 4,6 *"}, "cron"),
    ({"type": "cron", "cron": "@daily"}, "cron"),
]


@pytest.mark.parametrize(("data", "field"), INVALID, ids=[repr(d)[:60] for d, _ in INVALID])
def test_invalid_schedules_name_the_field(data: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_schedule(data, "UTC")
    assert caught.value.extra["field"] == field
    assert caught.value.status == 422
    assert not isinstance(caught.value, ScheduleGapTooSmall)


def test_seconds_are_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="seconds are not supported"):
        validate_schedule({"type": "cron", "cron": "*/5 * * * * *"}, "UTC")


def test_normalised_forms() -> None:
    assert validate_schedule({"type": "none"}, BERLIN) == {"type": "none", "timezone": BERLIN}
    assert validate_schedule({"type": "none", "timezone": None, "times": []}, BERLIN) == {
        "type": "none", "timezone": BERLIN}
    assert validate_schedule(daily("13:00", "01:00", "13:00", zone=NEW_YORK), BERLIN) == {
        "type": "daily", "timezone": NEW_YORK, "times": ["01:00", "13:00"]}
    assert validate_schedule({"type": "weekly", "times": ["09:00"],
                              "days_of_week": ["fri", "Mon", "fri"]}, "UTC") == {
        "type": "weekly", "timezone": "UTC", "times": ["09:00"], "days_of_week": ["mon", "fri"]}
    assert validate_schedule({"type": "monthly", "times": ["06:00"],
                              "days_of_month": ["last", 15, 1, 15]}, "UTC") == {
        "type": "monthly", "timezone": "UTC", "times": ["06:00"],
        "days_of_month": [1, 15, "last"]}
    assert validate_schedule({"type": "cron", "cron": "  0  */2 * * MON-FRI "}, "UTC") == {
        "type": "cron", "timezone": "UTC", "cron": "0 */2 * * MON-FRI"}


def test_normalised_schedule_validates_to_itself() -> None:
    stored = validate_schedule({"type": "monthly", "times": ["23:30", "00:10"],
                                "days_of_month": ["last", 3]}, BERLIN)
    assert validate_schedule(stored, "UTC") == stored


def test_forty_eight_times_are_allowed() -> None:
    times = [f"{m // 60:02d}:{m % 60:02d}" for m in range(0, 1440, 30)]
    assert validate_schedule(daily(*times), "UTC")["times"] == times


def test_the_gap_check_needs_now() -> None:
    with pytest.raises(ValueError, match="now"):
        validate_schedule(daily("01:00"), "UTC", min_gap_minutes=60)


def test_ad_hoc_schedules_have_no_gap_and_no_fires() -> None:
    none = validate_schedule({"type": "none"}, "UTC", min_gap_minutes=60, now=NOW)
    assert next_fires(none, NOW, 5) == [] and next_fire(none, NOW) is None
    assert describe_next_runs(none, NOW) == []


# -- fire instants ------------------------------------------------------------------------


def test_daily_fires_in_its_zone_strictly_after() -> None:
    schedule = daily("01:00", "13:00", zone=BERLIN)
    assert fires_from(schedule, at(BERLIN, 2026, 1, 10, 1, 0), 3) == [
        at(BERLIN, 2026, 1, 10, 13, 0), at(BERLIN, 2026, 1, 11, 1, 0),
        at(BERLIN, 2026, 1, 11, 13, 0)]
    assert next_fire(schedule, at(BERLIN, 2026, 1, 10, 0, 59)) == at(BERLIN, 2026, 1, 10, 1, 0)


def test_naive_after_means_utc() -> None:
    assert next_fire(daily("01:00"), datetime(2026, 1, 1)) == datetime(2026, 1, 1, 1, tzinfo=UTC)


def test_weekly_fires_on_its_days() -> None:
    schedule = {"type": "weekly", "times": ["09:00"], "days_of_week": ["mon", "fri"],
                "timezone": NEW_YORK}
    fires = fires_from(schedule, at(NEW_YORK, 2026, 6, 1, 9, 0), 4)  # a Monday, at 09:00
    assert [f.astimezone(ZoneInfo(NEW_YORK)).date() for f in fires] == [
        date(2026, 6, 5), date(2026, 6, 8), date(2026, 6, 12), date(2026, 6, 15)]
    assert fires[0] == at(NEW_YORK, 2026, 6, 5, 9, 0)


def test_the_31st_skips_short_months() -> None:
    schedule = {"type": "monthly", "times": ["06:00"], "days_of_month": [31], "timezone": "UTC"}
    assert [f.date() for f in fires_from(schedule, NOW, 4)] == [
        date(2026, 3, 31), date(2026, 5, 31), date(2026, 7, 31), date(2026, 8, 31)]


@pytest.mark.parametrize(("year", "last"), [(2027, 28), (2028, 29), (2100, 28)])
def test_last_is_the_last_day_of_february(year: int, last: int) -> None:
    schedule = {"type": "monthly", "times": ["06:00"], "days_of_month": ["last"],
                "timezone": "UTC"}
    after = datetime(year, 2, 1, tzinfo=UTC)
    assert fires_from(schedule, after, 2) == [datetime(year, 2, last, 6, tzinfo=UTC),
                                              datetime(year, 3, 31, 6, tzinfo=UTC)]


def test_a_day_that_is_also_the_last_fires_once() -> None:
    schedule = {"type": "monthly", "times": ["06:00"], "days_of_month": [30, "last"],
                "timezone": "UTC"}
    assert [f.date() for f in fires_from(schedule, datetime(2026, 4, 1, tzinfo=UTC), 3)] == [
        date(2026, 4, 30), date(2026, 5, 30), date(2026, 5, 31)]


def test_cron_through_cronsim() -> None:
    every_two_hours = {"type": "cron", "cron": "0 */2 * * *", "timezone": BERLIN}
    assert fires_from(every_two_hours, at(BERLIN, 2026, 1, 5, 3, 0), 3) == [
        at(BERLIN, 2026, 1, 5, 4, 0), at(BERLIN, 2026, 1, 5, 6, 0), at(BERLIN, 2026, 1, 5, 8, 0)]
    weekdays = {"type": "cron", "cron": "30 9 * * mon-fri", "timezone": "UTC"}
    fires = fires_from(weekdays, datetime(2026, 1, 2, 10, tzinfo=UTC), 3)  # a Friday
    assert fires == [datetime(2026, 1, d, 9, 30, tzinfo=UTC) for d in (5, 6, 7)]


def test_describe_next_runs() -> None:
    runs = describe_next_runs(daily("02:30", zone=BERLIN), at(BERLIN, 2026, 3, 28, 3, 0), 2)
    assert runs == [{"utc": "2026-03-29T01:00:00Z", "local": "2026-03-29T03:00:00+02:00"},
                    {"utc": "2026-03-30T00:30:00Z", "local": "2026-03-30T02:30:00+02:00"}]
    assert len(describe_next_runs(daily("02:30"), NOW)) == 5


# -- DST ----------------------------------------------------------------------------------

SPRING = [  # zone, the day the clocks jump, a wall time that day lacks, the jump in UTC
    (BERLIN, date(2026, 3, 29), "02:30", datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
    (NEW_YORK, date(2026, 3, 8), "02:30", datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
    ("Australia/Lord_Howe", date(2026, 10, 4), "02:15", datetime(2026, 10, 3, 15, 30, tzinfo=UTC)),
    ("America/Havana", date(2026, 3, 8), "00:30", datetime(2026, 3, 8, 5, 0, tzinfo=UTC)),
]


@pytest.mark.parametrize(("zone", "day", "wall", "jump"), SPRING, ids=[s[0] for s in SPRING])
def test_a_nonexistent_time_fires_once_when_the_clocks_jump(zone: str, day: date, wall: str,
                                                           jump: datetime) -> None:
    fires = fires_from(daily(wall, zone=zone), jump - timedelta(hours=36), 4)
    local = [f.astimezone(ZoneInfo(zone)) for f in fires]
    assert [f.date() for f in local] == [day + timedelta(days=n) for n in (-1, 0, 1, 2)]
    assert fires[1] == jump
    assert local[1].utcoffset() != (jump - timedelta(seconds=1)).astimezone(
        ZoneInfo(zone)).utcoffset()
    assert all(f"{t:%H:%M}" == wall for t in local if t.date() != day)


def test_berlin_spring_0230_fires_at_0100_utc() -> None:
    assert next_fire(daily("02:30", zone=BERLIN), datetime(2026, 3, 28, 12, tzinfo=UTC)) == \
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


FALL = [  # zone, the repeated wall time, its first occurrence in UTC
    (BERLIN, "02:30", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    (NEW_YORK, "01:30", datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
]


@pytest.mark.parametrize(("zone", "wall", "first"), FALL, ids=[f[0] for f in FALL])
def test_a_repeated_time_fires_once_at_its_first_occurrence(zone: str, wall: str,
                                                           first: datetime) -> None:
    fires = fires_from(daily(wall, zone=zone), first - timedelta(hours=12), 2)
    assert fires[0] == first
    assert fires[1] - fires[0] == timedelta(hours=25)  # the second occurrence is skipped
    # Started inside the repeated hour's second pass, the day's run is already past.
    assert next_fire(daily(wall, zone=zone), first + timedelta(minutes=61)) == fires[1]


@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK])
def test_a_daily_0230_job_fires_every_day_across_the_spring_change(zone: str) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    fires = fires_from(daily("02:30", zone=zone), start, 40)
    days = [f.astimezone(ZoneInfo(zone)).date() for f in fires]
    assert days == [date(2026, 3, 1) + timedelta(days=n) for n in range(40)]


def test_times_landing_on_the_jump_are_one_run() -> None:
    fires = fires_from(daily("02:30", "03:00", zone=BERLIN), datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert fires[:2] == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
                         datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]


def test_cron_with_fixed_hours_follows_the_same_rules() -> None:
    cron = {"type": "cron", "cron": "30 2 * * *", "timezone": BERLIN}
    assert fires_from(cron, datetime(2026, 3, 28, 12, tzinfo=UTC), 2) == [
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]
    assert fires_from(cron, datetime(2026, 10, 24, 12, tzinfo=UTC), 2) == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]


def test_cron_with_wildcard_hours_follows_the_clock_like_debian_cron() -> None:
    """The documented difference: cronsim keeps cron's meaning for wildcard fields."""
    fall = {"type": "cron", "cron": "*/30 2 * * *", "timezone": BERLIN}
    assert fires_from(fall, datetime(2026, 10, 24, 12, tzinfo=UTC), 4) == [
        datetime(2026, 10, 25, h, m, tzinfo=UTC) for h, m in ((0, 0), (0, 30), (1, 0), (1, 30))]
    spring = {"type": "cron", "cron": "30 */1 * * *", "timezone": BERLIN}
    assert fires_from(spring, datetime(2026, 3, 29, 0, 0, tzinfo=UTC), 2) == [
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, tzinfo=UTC)]


# -- minimum gap --------------------------------------------------------------------------

REFUSED: list[tuple[dict[str, Any], float, list[str]]] = [
    (daily("01:00", "01:10"), 15, ["01:00", "01:10"]),
    (daily("23:30", "00:10"), 60, ["23:30", "00:10"]),
    ({"type": "monthly", "days_of_month": [31, 1], "times": ["23:30", "00:10"]}, 60,
     ["31st 23:30", "1st 00:10"]),
    ({"type": "monthly", "days_of_month": ["last", 1], "times": ["23:30", "00:10"]}, 60,
     ["last day 23:30", "1st 00:10"]),
    ({"type": "monthly", "days_of_month": [28, 1], "times": ["23:30", "00:10"]}, 60,
     ["28th 23:30", "1st 00:10"]),  # only when February has 28 days
    ({"type": "monthly", "days_of_month": [29, 1], "times": ["23:30", "00:10"]}, 60,
     ["29th 23:30", "1st 00:10"]),  # only in leap years: 2028 is beyond the next year
    ({"type": "weekly", "days_of_week": ["sun", "mon"], "times": ["23:30", "00:10"]}, 60,
     ["Sun 23:30", "Mon 00:10"]),
    ({"type": "weekly", "days_of_week": ["mon"], "times": ["00:00", "23:50"]}, 60 * 24 * 7,
     ["Mon 00:00", "Mon 23:50"]),
    (daily("01:30", "03:00", zone=BERLIN), 60, ["01:30", "03:00"]),  # 30 min at the change
    (daily("01:00", "03:00", zone=BERLIN), 61, ["01:00", "03:00"]),
    (daily("00:30", "03:15", zone=NEW_YORK), 120, ["00:30", "03:15"]),  # 105 on 2026-03-08
    (daily("02:30", "03:00", zone="Pacific/Chatham"), 30, ["02:30", "03:00"]),  # 45 min jump
    ({"type": "cron", "cron": "*/10 * * * *"}, 15, ["2026-03-01 12:10 +00:00",
                                                    "2026-03-01 12:20 +00:00"]),
    ({"type": "cron", "cron": "30 */2 * * *", "timezone": BERLIN}, 120,
     ["2026-10-25 02:30 +02:00", "2026-10-25 02:30 +01:00"]),
]


@pytest.mark.parametrize(("data", "gap", "pair"), REFUSED, ids=[" ".join(r[2]) for r in REFUSED])
def test_gap_refusals_name_the_pair(data: dict[str, Any], gap: float, pair: list[str]) -> None:
    with pytest.raises(ScheduleGapTooSmall) as caught:
        validate_schedule(data, "UTC", min_gap_minutes=gap, now=NOW)
    error = caught.value
    assert (error.code, error.status) == ("schedule_gap_too_small", 422)
    assert isinstance(error, InvalidInput)
    assert error.extra["pair"] == pair
    assert error.extra["gap_minutes"] < gap == error.extra["min_gap_minutes"]
    assert pair[0] in error.message and pair[1] in error.message


def test_a_gap_shortened_by_the_clock_change_says_so() -> None:
    with pytest.raises(ScheduleGapTooSmall, match="on 2026-03-29, when the clocks change"):
        validate_schedule(daily("01:30", "03:00", zone=BERLIN), "UTC", min_gap_minutes=60,
                          now=NOW)
    found = find_gap_violation(daily("01:30", "03:00", zone=BERLIN), 60, NOW)
    assert found is not None and found.gap_minutes == 30 and found.offset_change
    assert (found.first_at, found.second_at) == (datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
                                                 datetime(2026, 3, 29, 1, 0, tzinfo=UTC))


ACCEPTED: list[tuple[dict[str, Any], float]] = [
    (daily("01:00", "01:15"), 15),
    (daily("23:30", "00:30"), 60),
    (daily("01:00", "03:00", zone=BERLIN), 60),  # exactly 60 on the spring day
    (daily("02:30", "03:00", zone=BERLIN), 30),  # one run on the spring day
    ({"type": "monthly", "days_of_month": [31, 1], "times": ["23:00", "00:00"]}, 60),
    ({"type": "monthly", "days_of_month": [30, 1], "times": ["06:00"]}, 60 * 24),
    ({"type": "weekly", "days_of_week": ["sun", "mon"], "times": ["23:00", "00:00"]}, 60),
    ({"type": "weekly", "days_of_week": ["mon"], "times": ["09:00"]}, 60 * 24 * 7),
    ({"type": "cron", "cron": "0 */2 * * *", "timezone": BERLIN}, 60),
    ({"type": "cron", "cron": "* * * * *", "timezone": BERLIN}, 1),
]


@pytest.mark.parametrize(("data", "gap"), ACCEPTED, ids=[repr(a[0])[:50] for a in ACCEPTED])
def test_schedules_just_at_the_gap_are_accepted(data: dict[str, Any], gap: float) -> None:
    assert validate_schedule(data, "UTC", min_gap_minutes=gap, now=NOW)["type"] == data["type"]


LARGEST = [
    daily(*[f"{m // 60:02d}:{m % 60:02d}" for m in range(0, 1440, 30)], zone=BERLIN),
    {"type": "monthly", "days_of_month": [*range(1, 32), "last"], "timezone": NEW_YORK,
     "times": [f"{m // 60:02d}:{m % 60:02d}" for m in range(0, 1440, 30)]},
    {"type": "cron", "cron": "* * * * *", "timezone": "Australia/Lord_Howe"},
]


@pytest.mark.parametrize("data", LARGEST, ids=["daily", "monthly", "cron"])
def test_the_gap_check_is_fast_for_the_largest_schedules(data: dict[str, Any]) -> None:
    gap = 1 if data["type"] == "cron" else 30
    elapsed = []
    for _ in range(3):
        started = time.perf_counter()
        validate_schedule(data, "UTC", min_gap_minutes=gap, now=NOW)
        elapsed.append(time.perf_counter() - started)
    assert min(elapsed) < 0.05


# -- display ------------------------------------------------------------------------------

SUMMARIES = [
    (daily("13:00", "01:00", zone=BERLIN), "daily at 01:00, 13:00 (Europe/Berlin)"),
    ({"type": "weekly", "days_of_week": ["fri", "mon"], "times": ["09:00"]},
     "weekly on Mon, Fri at 09:00 (UTC)"),
    ({"type": "monthly", "days_of_month": ["last", 1], "times": ["06:00"]},
     "monthly on 1st, last at 06:00 (UTC)"),
    ({"type": "monthly", "days_of_month": [2, 3, 11, 22], "times": ["06:00"]},
     "monthly on 2nd, 3rd, 11th, 22nd at 06:00 (UTC)"),
    ({"type": "cron", "cron": "0 */2 * * *"}, "cron 0 */2 * * * (UTC)"),
    ({"type": "none"}, "ad hoc (API only)"),
]


@pytest.mark.parametrize(("data", "text"), SUMMARIES, ids=[s[1] for s in SUMMARIES])
def test_summaries(data: dict[str, Any], text: str) -> None:
    assert schedule_summary(validate_schedule(data, "UTC")) == text


def test_summary_of_nothing_and_of_garbage() -> None:
    assert schedule_summary(None) == "not set"
    assert schedule_summary({"type": "daily"}) == "daily"
