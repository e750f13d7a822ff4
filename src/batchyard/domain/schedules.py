"""Schedules: what a job's schedule says and whether it is acceptable.

Only ad hoc schedules (``type: none``) exist so far; the timed types arrive with
the scheduler and will compute their fire instants here, as pure functions.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from batchyard.errors import InvalidInput

SCHEDULE_TYPES = ("none", "daily", "weekly", "monthly", "cron")
SUPPORTED_TYPES = ("none",)


def validate_timezone(name: object, field: str = "timezone") -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{field} must be an IANA time zone name such as 'Europe/Berlin'",
                           field=field)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"{field}: unknown time zone {name!r}", field=field) from exc
    return name


def validate_schedule(data: object, account_timezone: str) -> dict[str, Any]:
    """Return the normalised schedule to store, or raise with the offending field."""
    if not isinstance(data, dict):
        raise InvalidInput("schedule must be an object", field="type")
    kind = data.get("type")
    if kind not in SCHEDULE_TYPES:
        raise InvalidInput(f"type must be one of {', '.join(SCHEDULE_TYPES)}", field="type")
    if kind not in SUPPORTED_TYPES:
        raise InvalidInput(f"schedule type {kind!r} is not available yet; use 'none' and "
                           "invoke the job over the API", field="type")
    timezone = validate_timezone(data.get("timezone") or account_timezone)
    unknown = set(data) - {"type", "timezone", "times", "days_of_week", "days_of_month", "cron"}
    if unknown:
        raise InvalidInput(f"unknown schedule field(s): {', '.join(sorted(unknown))}",
                           field=sorted(unknown)[0])
    return {"type": kind, "timezone": timezone}


def schedule_summary(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "not set"
    if schedule.get("type") == "none":
        return "ad hoc (API only)"
    return str(schedule.get("type"))
