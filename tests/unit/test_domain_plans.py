"""Plan limits: the operator's partial changes are validated field by field."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest

from batchyard.domain.plans import PLAN_FIELDS, Plan, apply_plan_changes, plan_from_dict
from batchyard.errors import InvalidInput

INT_FIELDS = ["max_jobs", "max_executions_per_day", "max_invocations_per_job_per_day",
              "max_retries", "max_code_size_bytes", "max_concurrent_executions",
              "retention_days"]
FLOAT_FIELDS = ["daily_runtime_budget_minutes", "min_schedule_gap_minutes",
                "max_execution_timeout_minutes"]


def test_default_plan_is_the_seeds() -> None:
    plan = Plan()
    assert (plan.max_jobs, plan.max_executions_per_day, plan.daily_runtime_budget_minutes,
            plan.max_invocations_per_job_per_day, plan.max_retries,
            plan.min_schedule_gap_minutes, plan.max_code_size_bytes,
            plan.max_execution_timeout_minutes, plan.database_access) == (
        5, 24, 240, 10, 1, 60, 4 * 1024 * 1024, 1440, False)
    assert plan.daily_runtime_budget_seconds == 240 * 60


def test_every_field_is_classified() -> None:
    assert set(PLAN_FIELDS) == {*INT_FIELDS, *FLOAT_FIELDS, "database_access"}
    assert [f.name for f in fields(Plan)] == list(PLAN_FIELDS)


def test_changes_apply_and_leave_the_rest() -> None:
    plan = apply_plan_changes(Plan(), {"max_jobs": 7, "daily_runtime_budget_minutes": 0.5,
                                       "database_access": True})
    assert plan == Plan(max_jobs=7, daily_runtime_budget_minutes=0.5, database_access=True)


def test_empty_change_is_the_same_plan() -> None:
    plan = Plan(max_jobs=9)
    assert apply_plan_changes(plan, {}) == plan


def test_unknown_key_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as caught:
        apply_plan_changes(Plan(), {"max_jobz": 3})
    assert caught.value.extra["field"] == "plan.max_jobz"
    assert "max_jobs" in caught.value.message


@pytest.mark.parametrize("key", INT_FIELDS + FLOAT_FIELDS)
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_not_a_number(key: str, value: bool) -> None:
    with pytest.raises(InvalidInput) as caught:
        apply_plan_changes(Plan(), {key: value})
    assert caught.value.extra["field"] == f"plan.{key}"


@pytest.mark.parametrize("value", ["5", None, [5], {"n": 5}])
def test_a_non_number_is_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match="must be a number"):
        apply_plan_changes(Plan(), {"max_jobs": value})


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_database_access_takes_only_booleans(value: Any) -> None:
    with pytest.raises(InvalidInput, match="true or false"):
        apply_plan_changes(Plan(), {"database_access": value})


@pytest.mark.parametrize("key", INT_FIELDS + FLOAT_FIELDS)
def test_negative_values_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="out of range"):
        apply_plan_changes(Plan(), {key: -1})


# 0 would leave an account's executions queued for ever, or delete each as it ends.
AT_LEAST_ONE = {"max_concurrent_executions", "retention_days"}


@pytest.mark.parametrize("key", [k for k in INT_FIELDS + FLOAT_FIELDS if k not in AT_LEAST_ONE])
def test_zero_is_allowed(key: str) -> None:
    assert getattr(apply_plan_changes(Plan(), {key: 0}), key) == 0


@pytest.mark.parametrize("key", sorted(AT_LEAST_ONE))
def test_zero_is_refused_where_it_would_break_the_account(key: str) -> None:
    with pytest.raises(InvalidInput, match=r"at least 1|between 1 and"):
        apply_plan_changes(Plan(), {key: 0})


def test_retention_days_default_to_30_and_have_an_upper_bound() -> None:
    assert Plan().retention_days == 30
    assert apply_plan_changes(Plan(), {"retention_days": 400}).retention_days == 400
    with pytest.raises(InvalidInput, match="between 1 and 36500"):
        apply_plan_changes(Plan(), {"retention_days": 36501})


@pytest.mark.parametrize("key", INT_FIELDS)
def test_integer_limits_need_whole_numbers(key: str) -> None:
    with pytest.raises(InvalidInput, match="whole number"):
        apply_plan_changes(Plan(), {key: 2.5})


@pytest.mark.parametrize("key", INT_FIELDS)
def test_a_whole_float_becomes_an_int(key: str) -> None:
    value = getattr(apply_plan_changes(Plan(), {key: 3.0}), key)
    assert value == 3
    assert type(value) is int


@pytest.mark.parametrize("key", FLOAT_FIELDS)
def test_minute_limits_accept_fractions_and_store_floats(key: str) -> None:
    value = getattr(apply_plan_changes(Plan(), {key: 0.1}), key)
    assert value == 0.1
    assert type(value) is float
    assert type(getattr(apply_plan_changes(Plan(), {key: 2}), key)) is float


@pytest.mark.parametrize("key", FLOAT_FIELDS)
def test_minute_limits_have_an_upper_bound(key: str) -> None:
    assert getattr(apply_plan_changes(Plan(), {key: 10_000_000}), key) == 10_000_000
    with pytest.raises(InvalidInput, match="out of range"):
        apply_plan_changes(Plan(), {key: 10_000_001})


@pytest.mark.parametrize("key", INT_FIELDS + FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(key: str, value: float) -> None:
    # JSON parsers accept NaN and Infinity; a NaN budget would admit everything.
    with pytest.raises(InvalidInput):
        apply_plan_changes(Plan(), {key: value})


def test_the_first_bad_value_is_reported_and_nothing_applies() -> None:
    plan = Plan()
    with pytest.raises(InvalidInput):
        apply_plan_changes(plan, {"max_jobs": 3, "max_retries": -2})
    assert plan == Plan()


def test_plan_from_stored_json_tolerates_added_and_removed_fields() -> None:
    assert plan_from_dict(None) == Plan()
    assert plan_from_dict({"max_jobs": 2, "retired_limit": 9}) == Plan(max_jobs=2)
    assert plan_from_dict(Plan(max_retries=3).as_dict()) == Plan(max_retries=3)
