"""The alert rules, pure: the expected instant, lateness, recovery, overlong runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batchyard.domain.alerts import (
    Alerts,
    expected_instant,
    is_late,
    is_overdue,
    late_recovered,
    validate_alerts,
)
from batchyard.domain.schedules import next_fire
from batchyard.errors import InvalidInput

NOW = datetime(2025, 3, 10, 14, 0, tzinfo=UTC)
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)


def expected(schedule: dict[str, Any], late_minutes: float, since: datetime = LONG_AGO,
             now: datetime = NOW) -> datetime | None:
    return expected_instant(lambda after: next_fire(schedule, after), since, now,
                            timedelta(minutes=late_minutes))


def test_the_latest_instant_whose_window_has_passed_is_expected() -> None:
    daily = {"type": "daily", "times": ["13:00"], "timezone": "UTC"}
    assert expected(daily, 30) == datetime(2025, 3, 10, 13, 0, tzinfo=UTC)
    assert expected(daily, 90) == datetime(2025, 3, 9, 13, 0, tzinfo=UTC)  # today's is open


def test_dense_and_sparse_schedules_are_found() -> None:
    minutely = {"type": "cron", "cron": "* * * * *", "timezone": "UTC"}
    assert expected(minutely, 5) == datetime(2025, 3, 10, 13, 55, tzinfo=UTC)
    monthly = {"type": "monthly", "days_of_month": [1], "times": ["06:00"], "timezone": "UTC"}
    assert expected(monthly, 60) == datetime(2025, 3, 1, 6, 0, tzinfo=UTC)


def test_instants_before_the_publish_are_not_expected() -> None:
    daily = {"type": "daily", "times": ["13:00"], "timezone": "UTC"}
    assert expected(daily, 30, since=datetime(2025, 3, 10, 13, 10, tzinfo=UTC)) is None


def test_late_until_a_success_ends_after_the_expected_instant() -> None:
    instant = datetime(2025, 3, 10, 13, 0, tzinfo=UTC)
    assert is_late(instant, None)
    assert is_late(instant, instant - timedelta(days=1))
    assert not is_late(instant, instant + timedelta(minutes=2))
    assert not is_late(None, None)
    assert late_recovered(instant, instant + timedelta(days=1, minutes=1))
    assert not late_recovered(instant, instant - timedelta(seconds=1))


def test_overdue_after_the_maximum_duration() -> None:
    started = NOW - timedelta(minutes=11)
    assert is_overdue(started, NOW, timedelta(minutes=10))
    assert not is_overdue(started, NOW, timedelta(minutes=12))


@pytest.mark.parametrize("bad", [{"late_after_minutes": 0}, {"late_after_minutes": -1},
                                 {"late_after_minutes": True}, {"max_duration_minutes": 10081},
                                 {"x": 1}, "60"])
def test_bad_alert_settings_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput):
        validate_alerts(bad)


def test_alert_settings_normalise_and_null_removes() -> None:
    assert validate_alerts({"late_after_minutes": 60}) == Alerts(60.0, None)
    assert validate_alerts({"late_after_minutes": None, "max_duration_minutes": None}) is None
    assert validate_alerts(None) is None
