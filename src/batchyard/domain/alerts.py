"""Quiet-schedule and duration alerts (issue 13): pure rules, time passed in.

A job's ``alerts: {late_after_minutes, max_duration_minutes}`` (either may be null):

- **late**: the latest scheduled instant I with I + late_after <= now (and after the
  revision was published) has no success that ended at or after I: missed, blocked,
  failed, still running, or the scheduler was down. One incident is opened (one
  notification); it recovers (one notification) at the next success ending after I.
- **duration**: an execution running longer than ``max_duration_minutes`` opens an
  incident of its own; it recovers when that execution ends, however it ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from batchyard.errors import InvalidInput

LATE = "late"
DURATION = "duration"
MAX_MINUTES = 7 * 24 * 60
# How far back the expected instant is looked for (a monthly job's included).
LOOKBACK = timedelta(days=40)


@dataclass(frozen=True)
class Alerts:
    late_after_minutes: float | None = None
    max_duration_minutes: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"late_after_minutes": self.late_after_minutes,
                "max_duration_minutes": self.max_duration_minutes}


def alerts_from_dict(data: object) -> Alerts | None:
    if not isinstance(data, dict):
        return None
    return Alerts(data.get("late_after_minutes"), data.get("max_duration_minutes"))


def validate_alerts(value: object) -> Alerts | None:
    """``null`` (or both null) removes the alerts."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("alerts must be an object {late_after_minutes, "
                           "max_duration_minutes} or null", field="alerts")
    unknown = set(value) - {"late_after_minutes", "max_duration_minutes"}
    if unknown:
        raise InvalidInput(f"alerts: unknown field(s) {sorted(unknown)}", field="alerts")
    minutes: dict[str, float | None] = {}
    for key in ("late_after_minutes", "max_duration_minutes"):
        item = value.get(key)
        if item is None:
            minutes[key] = None
            continue
        if isinstance(item, bool) or not isinstance(item, int | float) or \
                not 0 < item <= MAX_MINUTES:
            raise InvalidInput(f"alerts.{key} must be a number of minutes above 0 and at "
                               f"most {MAX_MINUTES}, or null", field=f"alerts.{key}")
        minutes[key] = float(item)
    if minutes["late_after_minutes"] is None and minutes["max_duration_minutes"] is None:
        return None
    return Alerts(minutes["late_after_minutes"], minutes["max_duration_minutes"])


def expected_instant(next_fire: Callable[[datetime], datetime | None], since: datetime,
                     now: datetime, late_after: timedelta) -> datetime | None:
    """The latest scheduled instant whose window has passed (I + late_after <= now),
    later than ``since``; None when there is none."""
    deadline = now - late_after
    # The nearest window first (doubling): a minutely cron costs a few dozen steps, a
    # monthly one a few windows.
    span = timedelta(hours=1)
    while True:
        start = max(since, deadline - span)
        instant = next_fire(start)
        if instant is not None and instant <= deadline:
            break
        if start == since or span >= LOOKBACK:
            return None
        span *= 2
    while (following := next_fire(instant)) is not None and following <= deadline:
        instant = following
    return instant


def is_late(expected: datetime | None, last_success_end: datetime | None) -> bool:
    return expected is not None and (last_success_end is None or last_success_end < expected)


def late_recovered(subject: datetime, last_success_end: datetime | None) -> bool:
    return last_success_end is not None and last_success_end >= subject


def is_overdue(started_at: datetime, now: datetime, max_duration: timedelta) -> bool:
    return now - started_at > max_duration


@dataclass(frozen=True)
class AlertNotice:
    """What an alert delivery says: stored in the outbox, composed at send time."""

    event: str  # alert.late, alert.late.recovered, alert.duration, alert.duration.recovered
    job_id: str
    job_name: str
    kind: str
    subject: str  # the missed instant (ISO) or the overlong execution's id
    opened_at: str
    at: str
    detail: str

    @property
    def recovered(self) -> bool:
        return self.event.endswith(".recovered")

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertNotice:
        return cls(**{name: str(data.get(name, "")) for name in cls.__dataclass_fields__})


def alert_subject_line(notice: AlertNotice) -> str:
    what = "recovered" if notice.recovered else (
        "late" if notice.kind == LATE else "running too long")
    return " ".join(f"[batchyard] {notice.job_name}: {what}".splitlines())[:255]


def alert_text(notice: AlertNotice) -> str:
    return "\n".join([
        f"Job:       {notice.job_name} ({notice.job_id})",
        f"Alert:     {notice.event}",
        f"About:     {notice.subject}",
        f"Opened:    {notice.opened_at}",
        f"At:        {notice.at}",
        "",
        notice.detail, ""])


def alert_webhook_body(notice: AlertNotice, delivery_id: str) -> bytes:
    payload = {"event": notice.event, "delivery_id": delivery_id,
               "alert": {key: value for key, value in notice.as_dict().items()
                         if key != "event"}}
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
