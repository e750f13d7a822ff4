"""Schedules: what a job's schedule says, whether it is acceptable, and when it fires.

Everything here is pure: the stored schedule is a plain dict, time is an argument, and
fire instants are aware UTC datetimes.

**DST (SPEC §4)** for ``daily``, ``weekly`` and ``monthly``: a wall time that does not
exist that day fires once, at the instant the clocks jump (Europe/Berlin 02:30 on
2026-03-29 fires at 01:00 UTC, 03:00 CEST); configured times that land on the same
instant that way (02:30 and 03:00 that day) are one fire, since a job runs at most once
per instant. A wall time that occurs twice fires once, at its first occurrence. So
every matching calendar day gets its runs: a daily job never loses a day.

**cron** is cronsim's (Debian cron) semantics, kept as the documented meaning of cron.
When the minute and hour fields are fixed (``30 2 * * *``) that is the rule above. When
either starts with ``*`` (``*/15 * * * *``, ``0 */2 * * *``) cron follows the clock:
wall times inside a spring gap do not fire, and those in a repeated hour fire at both
occurrences.

**Minimum gap**, exact rather than sampled: consecutive fire instants can only come
closer than their wall times say where a UTC offset change lies between them. So
(1) the wall-time pattern (configured times on matching days, with day, week and month
wrap-around) is checked over four years of calendar, which holds common and leap
Februaries and every pair of month lengths, and (2) the real instants around every
offset change of the zone in the next ``GAP_SCAN_DAYS`` are computed. Together this
equals the brute-force minimum over the fires of that window whenever the window holds
both kinds of February (cron: leap-day and 28-year weekday coincidences count too).

**Pair names** (``pair`` of ``ScheduleGapTooSmall``), local wall time of the schedule's
zone: daily ``"01:00"``; weekly ``"Sun 23:30"``; monthly ``"31st 23:30"`` or
``"last day 23:30"``; cron, which has no such pattern, the date with its UTC offset
(``"2026-10-25 02:30 +02:00"``, telling apart the two passes of a repeated hour).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from batchyard.errors import InvalidInput

SCHEDULE_TYPES = ("none", "daily", "weekly", "monthly", "cron")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_TIMES = 48
MAX_CRON_LENGTH = 200
# Offset changes are checked this far ahead: every yearly change, and one window can hold
# a common and a leap February with the months around them (January 2027 to March 2028).
GAP_SCAN_DAYS = 470
CALENDAR_SCAN_DAYS = 4 * 366 + 62
_FIELDS = {"type", "timezone", "times", "days_of_week", "days_of_month", "cron"}
_TYPE_FIELDS = {"none": set(), "daily": {"times"}, "weekly": {"times", "days_of_week"},
                "monthly": {"times", "days_of_month"}, "cron": {"cron"}}
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_DAY = timedelta(days=1)
_ZERO = timedelta(0)
_OFFSET_PROBE = timedelta(hours=6)  # no zone changes its offset twice within 6 hours
# A fire this late is on time whatever the job's misfire grace (SPEC §4): a scheduler always
# wakes a little after the instant, so a grace of 0 means "now or never", not "never".
ON_TIME_TOLERANCE = timedelta(seconds=30)
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)  # start of the "ever fires" probe if no now


class ScheduleGapTooSmall(InvalidInput):
    """Two runs of this schedule can come closer together than the plan allows."""

    code = "schedule_gap_too_small"


@dataclass(frozen=True)
class Schedule:
    """A validated schedule; ``times`` are minutes after local midnight, ascending."""

    kind: str
    timezone: str
    times: tuple[int, ...] = ()
    weekdays: tuple[int, ...] = ()  # 0 = Monday
    days_of_month: tuple[int, ...] = ()
    last_day: bool = False
    cron: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], account_timezone: str = "UTC") -> Schedule:
        # The scheduler asks for many jobs' next fires per tick; stored dicts repeat.
        try:
            key = json.dumps(data, sort_keys=True)
        except (TypeError, ValueError):
            return _parse(data, account_timezone)
        return _parse_stored(key, account_timezone)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "timezone": self.timezone}
        if self.kind in ("daily", "weekly", "monthly"):
            out["times"] = [_hhmm(m) for m in self.times]
        if self.kind == "weekly":
            out["days_of_week"] = [WEEKDAYS[d] for d in self.weekdays]
        if self.kind == "monthly":
            out["days_of_month"] = [*self.days_of_month, *(["last"] if self.last_day else [])]
        if self.kind == "cron":
            out["cron"] = self.cron
        return out


@dataclass(frozen=True)
class GapViolation:
    """The first pair of consecutive fires found closer than the minimum gap."""

    first: str
    second: str
    first_at: datetime
    second_at: datetime
    gap_minutes: float
    offset_change: bool  # the pair is this close only because the UTC offset changes


# -- validation ---------------------------------------------------------------------------


def validate_timezone(name: object, field: str = "timezone") -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{field} must be an IANA time zone name such as 'Europe/Berlin'",
                           field=field)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"{field}: unknown time zone {name!r}", field=field) from exc
    return name


def validate_schedule(data: object, account_timezone: str, *,
                      min_gap_minutes: float | None = None,
                      now: datetime | None = None) -> dict[str, Any]:
    """Return the normalised schedule to store, or raise with the offending field.

    With ``min_gap_minutes`` (the plan's bound) also refuse schedules whose consecutive
    runs can come closer, raising ``ScheduleGapTooSmall``; that check needs ``now``.
    """
    if not isinstance(data, Mapping):
        raise InvalidInput("schedule must be an object", field="type")
    schedule = _parse(data, account_timezone)
    if schedule.kind == "cron":
        _require_fires(schedule, _as_utc(now or _REFERENCE))
    if min_gap_minutes is not None and min_gap_minutes > 0 and schedule.kind != "none":
        if now is None:
            raise ValueError("the minimum-gap check needs `now`")
        violation = find_gap_violation(schedule, min_gap_minutes, now)
        if violation is not None:
            raise _gap_error(schedule, violation, min_gap_minutes)
    return schedule.to_dict()


@lru_cache(maxsize=4096)
def _parse_stored(key: str, account_timezone: str) -> Schedule:
    data = json.loads(key)
    if not isinstance(data, dict):
        raise InvalidInput("schedule must be an object", field="type")
    return _parse(data, account_timezone)


def _parse(data: Mapping[str, Any], account_timezone: str) -> Schedule:
    kind = data.get("type")
    if kind not in SCHEDULE_TYPES:
        raise InvalidInput(f"type must be one of {', '.join(SCHEDULE_TYPES)}", field="type")
    unknown = set(data) - _FIELDS
    if unknown:
        raise InvalidInput(f"unknown schedule field(s): {', '.join(sorted(unknown))}",
                           field=sorted(unknown)[0])
    # Absent, null and [] all mean "not given", so a client may send a fixed shape.
    given = {k for k in _FIELDS - {"type", "timezone"} if data.get(k) not in (None, [], "")}
    foreign = given - _TYPE_FIELDS[kind]
    if foreign:
        field = sorted(foreign)[0]
        raise InvalidInput(f"{field} does not apply to a {kind} schedule", field=field)
    tz = validate_timezone(data.get("timezone") or account_timezone)
    if kind == "none":
        return Schedule(kind, tz)
    if kind == "cron":
        return Schedule(kind, tz, cron=_cron(data.get("cron")))
    times = _times(data.get("times"))
    if kind == "weekly":
        return Schedule(kind, tz, times, weekdays=_weekdays(data.get("days_of_week")))
    if kind == "monthly":
        days, last = _days_of_month(data.get("days_of_month"))
        return Schedule(kind, tz, times, days_of_month=days, last_day=last)
    return Schedule(kind, tz, times)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _times(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInput('times must be a non-empty list of local times "HH:MM", '
                           'e.g. ["01:00", "13:30"]', field="times")
    minutes = set()
    for item in value:
        match = _TIME.fullmatch(item) if isinstance(item, str) else None
        if match is None:
            raise InvalidInput(f'times: {_shown(item)} is not a time "HH:MM" from 00:00 '
                               "to 23:59", field="times")
        minutes.add(int(match[1]) * 60 + int(match[2]))
    if len(minutes) > MAX_TIMES:
        raise InvalidInput(f"times: at most {MAX_TIMES} different times a day", field="times")
    return tuple(sorted(minutes))


def _weekdays(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInput('days_of_week must be a non-empty list such as ["mon", "fri"]',
                           field="days_of_week")
    days = set()
    for item in value:
        name = item.lower() if isinstance(item, str) else None
        if name not in WEEKDAYS:
            raise InvalidInput(f"days_of_week: {_shown(item)} is not one of "
                               f"{', '.join(WEEKDAYS)}", field="days_of_week")
        days.add(WEEKDAYS.index(name))
    return tuple(sorted(days))


def _days_of_month(value: object) -> tuple[tuple[int, ...], bool]:
    if not isinstance(value, list) or not value:
        raise InvalidInput('days_of_month must be a non-empty list of days 1 to 31 and/or '
                           '"last"', field="days_of_month")
    days, last = set(), False
    for item in value:
        if item == "last":
            last = True
        elif isinstance(item, int) and not isinstance(item, bool) and 1 <= item <= 31:
            days.add(item)
        else:
            raise InvalidInput(f'days_of_month: {_shown(item)} is not a day 1 to 31 or '
                               '"last"', field="days_of_month")
    return tuple(sorted(days)), last


def _cron(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_CRON_LENGTH:
        raise InvalidInput('cron must be a five-field cron expression such as "0 */2 * * *"',
                           field="cron")
    fields = value.split()
    if len(fields) == 6:
        raise InvalidInput("cron: six fields given; seconds are not supported, use the five "
                           "fields minute hour day-of-month month day-of-week", field="cron")
    if len(fields) != 5:
        raise InvalidInput("cron must have five fields: minute hour day-of-month month "
                           "day-of-week", field="cron")
    expr = " ".join(fields)
    try:
        CronSim(expr, _REFERENCE)
    except (CronSimError, ValueError, IndexError) as exc:
        raise InvalidInput(f"cron: {expr!r} is not a valid expression ({exc})",
                           field="cron") from exc
    return expr


def _require_fires(schedule: Schedule, start: datetime) -> None:
    if next(_fires(schedule, start), None) is None:
        raise InvalidInput(f"cron: {schedule.cron!r} never fires", field="cron")


# -- fire instants ------------------------------------------------------------------------


def is_late(instant: datetime, now: datetime, grace: timedelta) -> bool:
    """Whether a fire due at ``instant`` and looked at ``now`` is missed rather than run."""
    return now - instant > max(grace, ON_TIME_TOLERANCE)


def next_fires(schedule: Mapping[str, Any], after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire instants strictly after ``after`` (naive means UTC)."""
    parsed = Schedule.from_dict(schedule)
    if parsed.kind == "none" or count <= 0:
        return []
    return [instant for instant, _ in islice(_fires(parsed, _as_utc(after), named=False),
                                             count)]


def next_fire(schedule: Mapping[str, Any], after: datetime) -> datetime | None:
    fires = next_fires(schedule, after, 1)
    return fires[0] if fires else None


def next_fire_of(schedule: Schedule, after: datetime) -> datetime | None:
    """``next_fire`` of an already parsed schedule: the scheduler's per-job step."""
    if schedule.kind == "none":
        return None
    return next((instant for instant, _ in _fires(schedule, _as_utc(after), named=False)), None)


def iter_fires(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Every fire instant strictly after ``after``, in order, from one walk (a projection
    over many days would pay ``next_fire_of``'s set-up for each instant)."""
    if schedule.kind == "none":
        return iter(())
    return (instant for instant, _ in _fires(schedule, _as_utc(after), named=False))


def describe_next_runs(schedule: Mapping[str, Any], after: datetime,
                       count: int = 5) -> list[dict[str, str]]:
    """The API's ``next_runs``: each instant in UTC and in the schedule's zone."""
    zone = ZoneInfo(Schedule.from_dict(schedule).timezone)
    return [{"utc": instant.isoformat().replace("+00:00", "Z"),
             "local": instant.astimezone(zone).isoformat()}
            for instant in next_fires(schedule, after, count)]


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _fires(schedule: Schedule, after: datetime,
           named: bool = True) -> Iterator[tuple[datetime, str]]:
    """(instant, pair name) of every fire after ``after``, strictly increasing.

    Names serve only the gap check's error message; ``named=False`` skips building them
    (the scheduler computes ten thousand next fires in one tick).
    """
    zone = ZoneInfo(schedule.timezone)
    last = after
    if schedule.kind == "cron":
        # cronsim may step back into the first pass of a repeated hour when started in
        # its second pass; such an instant is already past, so it is dropped here.
        for local in CronSim(schedule.cron, after.astimezone(zone)):
            instant = local.astimezone(UTC)
            if instant > last:
                last = instant
                yield instant, _cron_name(local) if named else ""
        return
    match_day = _day_matcher(schedule)
    # From the day before: a time skipped on that day may fire at a jump after midnight.
    day = after.astimezone(zone).date() - _DAY
    while day < date.max - _DAY:
        day_name = match_day(day)
        if day_name is not None:
            for minute in schedule.times:
                instant = _resolve(day, minute, zone)
                if instant > last:
                    last = instant
                    yield instant, (_name(schedule, day_name, minute, instant)
                                    if named else "")
        day += _DAY


def _resolve(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The instant of a wall time on a day, by the DST rules of SPEC §4."""
    hour, minute = divmod(minute, 60)
    wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
    first = wall.utcoffset() or _ZERO
    second = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone,
                      fold=1).utcoffset() or _ZERO
    utc = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
    if first >= second:  # it exists; if twice, fold=0 is its first occurrence
        return utc - first
    # Does not exist: the clocks jump over it at an instant between these two readings.
    return _offset_change(zone, utc - second, utc - first)


def _offset_at(instant: datetime, zone: ZoneInfo) -> timedelta:
    return instant.astimezone(zone).utcoffset() or _ZERO


def _offset_change(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first instant in (low, high] whose UTC offset differs from low's."""
    before = _offset_at(low, zone)
    lo, hi = 0, int((high - low).total_seconds())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_at(low + timedelta(seconds=mid), zone) == before:
            lo = mid
        else:
            hi = mid
    return low + timedelta(seconds=hi)


def _offset_changes(zone: ZoneInfo, start: datetime, end: datetime) -> Iterator[datetime]:
    probe, offset = start, _offset_at(start, zone)
    while probe < end:
        following = min(probe + _OFFSET_PROBE, end)
        following_offset = _offset_at(following, zone)
        if following_offset != offset:
            yield _offset_change(zone, probe, following)
        probe, offset = following, following_offset


def _day_matcher(schedule: Schedule) -> Callable[[date], str | None]:
    """A function naming a matching day ("Mon", "31st", "last day", "") or None."""
    if schedule.kind == "daily":
        return lambda day: ""
    if schedule.kind == "weekly":
        weekdays = frozenset(schedule.weekdays)
        return lambda day: WEEKDAYS[day.weekday()].title() if day.weekday() in weekdays else None
    if schedule.kind == "monthly":
        days, last = frozenset(schedule.days_of_month), schedule.last_day

        def monthly(day: date) -> str | None:
            if day.day in days:
                return _ordinal(day.day)
            return "last day" if last and (day + _DAY).day == 1 else None
        return monthly
    cron = CronSim(schedule.cron, _REFERENCE)
    return lambda day: "" if day.month in cron.months and cron.match_day(day) else None


def _wall_times(schedule: Schedule) -> tuple[int, ...]:
    if schedule.kind != "cron":
        return schedule.times
    cron = CronSim(schedule.cron, _REFERENCE)
    return tuple(sorted(h * 60 + m for h in cron.hours for m in cron.minutes))


def _name(schedule: Schedule, day_name: str, minute: int, instant: datetime) -> str:
    if schedule.kind == "cron":
        return _cron_name(instant.astimezone(ZoneInfo(schedule.timezone)))
    return f"{day_name} {_hhmm(minute)}".strip()


def _cron_name(local: datetime) -> str:
    # The offset tells apart the two passes of a repeated hour.
    offset = int((local.utcoffset() or timedelta(0)).total_seconds()) // 60
    sign = "-" if offset < 0 else "+"
    return f"{local:%Y-%m-%d %H:%M} {sign}{_hhmm(abs(offset))}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# -- minimum gap --------------------------------------------------------------------------


def find_gap_violation(schedule: Schedule | Mapping[str, Any], min_gap_minutes: float,
                       now: datetime) -> GapViolation | None:
    """The first pair of consecutive fires closer than ``min_gap_minutes``, or None."""
    parsed = schedule if isinstance(schedule, Schedule) else Schedule.from_dict(schedule)
    if parsed.kind == "none":
        return None
    now = _as_utc(now)
    return (_wall_violation(parsed, min_gap_minutes, now)
            or _offset_change_violation(parsed, min_gap_minutes, now))


def _wall_violation(schedule: Schedule, gap: float, now: datetime) -> GapViolation | None:
    """Wall-time pairs closer than ``gap``: within a day, and last run → next day's first."""
    times = _wall_times(schedule)
    close = [i for i in range(len(times) - 1) if times[i + 1] - times[i] < gap]
    span = times[-1] - times[0]
    if not close and 1440 - span >= gap:
        return None  # not even consecutive days could bring two runs that close
    zone = ZoneInfo(schedule.timezone)
    match_day = _day_matcher(schedule)
    fallback: GapViolation | None = None
    previous: tuple[date, str] | None = None
    day = now.astimezone(zone).date()
    for _ in range(CALENDAR_SCAN_DAYS):
        day_name = match_day(day)
        if day_name is not None:
            pairs = [((day, day_name, times[i]), (day, day_name, times[i + 1])) for i in close]
            if previous is not None and (day - previous[0]).days * 1440 - span < gap:
                pairs.insert(0, ((*previous, times[-1]), (day, day_name, times[0])))
            for (day_a, name_a, minute_a), (day_b, name_b, minute_b) in pairs:
                first_at, second_at = _resolve(day_a, minute_a, zone), _resolve(day_b,
                                                                              minute_b, zone)
                found = GapViolation(
                    _name(schedule, name_a, minute_a, first_at),
                    _name(schedule, name_b, minute_b, second_at), first_at, second_at,
                    (second_at - first_at).total_seconds() / 60, offset_change=False)
                if first_at <= now:
                    continue  # name a pair still to come
                if 0 < found.gap_minutes < gap:
                    return found
                # An offset change moved this occurrence (apart, or onto one instant);
                # the pattern recurs on ordinary days.
                wall_gap = (day_b - day_a).days * 1440 + minute_b - minute_a
                fallback = fallback or GapViolation(found.first, found.second, first_at,
                                                    second_at, wall_gap, False)
            previous = (day, day_name)
        day += _DAY
    return fallback


def _offset_change_violation(schedule: Schedule, gap: float,
                             now: datetime) -> GapViolation | None:
    """Pairs of real fires around each UTC offset change of the next ``GAP_SCAN_DAYS``."""
    zone = ZoneInfo(schedule.timezone)
    end = now + timedelta(days=GAP_SCAN_DAYS)
    # A pair closer than the gap around a change lies within the gap of it.
    reach = timedelta(minutes=min(gap, GAP_SCAN_DAYS * 1440) + 1)
    for change in _offset_changes(zone, now, end):
        previous: tuple[datetime, str] | None = None
        for instant, name in _fires(schedule, max(now, change - reach)):
            if instant > min(end, change + reach):
                break
            if previous is not None:
                minutes = (instant - previous[0]).total_seconds() / 60
                if minutes < gap:
                    return GapViolation(previous[1], name, previous[0], instant, minutes, True)
            previous = (instant, name)
    return None


def _gap_error(schedule: Schedule, found: GapViolation, gap: float) -> ScheduleGapTooSmall:
    zone = ZoneInfo(schedule.timezone)
    first = found.first_at.astimezone(zone)
    second = found.second_at.astimezone(zone)
    if found.offset_change:
        when = f" on {second:%Y-%m-%d}, when the clocks change in {schedule.timezone}"
    elif schedule.kind == "cron":
        when = f" ({schedule.timezone})"
    else:
        when = f" (e.g. {first:%Y-%m-%d %H:%M} and {second:%Y-%m-%d %H:%M} {schedule.timezone})"
    return ScheduleGapTooSmall(
        f"runs at {found.first} and {found.second} can come {_minutes(found.gap_minutes)} "
        f"minutes apart{when}; the plan requires at least {_minutes(gap)} minutes "
        "between runs", field="cron" if schedule.kind == "cron" else "times",
        pair=[found.first, found.second], gap_minutes=found.gap_minutes,
        min_gap_minutes=gap)


def _minutes(value: float) -> str:
    return f"{value:g}"


# -- display ------------------------------------------------------------------------------


def schedule_summary(schedule: Mapping[str, Any] | None) -> str:
    if not schedule:
        return "not set"
    try:
        parsed = Schedule.from_dict(schedule)
    except InvalidInput:
        return str(schedule.get("type"))
    stored = parsed.to_dict()
    times = ", ".join(stored.get("times", []))
    zone = f"({parsed.timezone})"
    if parsed.kind == "daily":
        return f"daily at {times} {zone}"
    if parsed.kind == "weekly":
        days = ", ".join(d.title() for d in stored["days_of_week"])
        return f"weekly on {days} at {times} {zone}"
    if parsed.kind == "monthly":
        days = ", ".join("last" if d == "last" else _ordinal(d) for d in stored["days_of_month"])
        return f"monthly on {days} at {times} {zone}"
    if parsed.kind == "cron":
        return f"cron {parsed.cron} {zone}"
    return "ad hoc (API only)"
