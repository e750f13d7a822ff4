"""Jobs: names, descriptions, settings, variables and status transitions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batchyard.domain.jobs import (
    MAX_VARIABLE_VALUE,
    MAX_VARIABLES,
    Concurrency,
    JobSettings,
    JobStatus,
    Notify,
    Variable,
    apply_settings_changes,
    next_status_on_publish,
    next_status_on_unpublish,
    settings_from_dict,
    validate_description,
    validate_name,
    validate_variables,
)
from batchyard.domain.plans import Plan
from batchyard.errors import Conflict, InvalidInput, NotPublishable

ALLOWED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]*")
PLAN = Plan()


# --- names ----------------------------------------------------------------------------

@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9 _-]{2,99}\Z"))
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_name(name) == name


@given(st.text(max_size=120))
@example("abc\n")
@example("ab")
@example("a" * 101)
@example(" abc")
@example("_abc")
@example("-abc")
@example("abc/def")
@example("déjà vu")
def test_a_name_is_accepted_exactly_when_it_follows_the_rules(name: str) -> None:
    valid = 3 <= len(name) <= 100 and ALLOWED_NAME.fullmatch(name) is not None
    if valid:
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidInput) as caught:
            validate_name(name)
        assert caught.value.extra["field"] == "name"


@pytest.mark.parametrize("name", ["abc", "a" * 100, "9 lives", "Nightly report_v2-final"])
def test_boundary_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [None, 123, b"abc", ["abc"]])
def test_a_name_must_be_a_string(name: object) -> None:
    with pytest.raises(InvalidInput, match="must be a string"):
        validate_name(name)


# --- descriptions ---------------------------------------------------------------------

def test_description_up_to_1000_characters() -> None:
    assert validate_description("") == ""
    assert validate_description("x" * 1000) == "x" * 1000
    with pytest.raises(InvalidInput, match="at most 1000"):
        validate_description("x" * 1001)
    with pytest.raises(InvalidInput, match="must be a string"):
        validate_description(None)


# --- settings -------------------------------------------------------------------------

def test_default_settings() -> None:
    settings = JobSettings()
    assert (settings.timeout_minutes, settings.retries, settings.concurrency) == (
        60, 0, Concurrency.FORBID)
    assert settings.notify == Notify((), ())
    assert settings.timeout_seconds == 3600


@pytest.mark.parametrize("minutes", [0.05, 1, 59.5, 1440])
def test_timeout_accepts_positive_minutes_up_to_the_plan(minutes: float) -> None:
    settings = apply_settings_changes(JobSettings(), {"timeout_minutes": minutes}, PLAN)
    assert settings.timeout_minutes == minutes
    assert settings.timeout_seconds == pytest.approx(minutes * 60)


@pytest.mark.parametrize("minutes", [0, -1, 1440.01, 100_000, float("nan"), float("inf")])
def test_timeout_outside_the_plan_is_refused(minutes: float) -> None:
    with pytest.raises(InvalidInput) as caught:
        apply_settings_changes(JobSettings(), {"timeout_minutes": minutes}, PLAN)
    assert caught.value.extra["field"] == "timeout_minutes"


def test_timeout_follows_the_accounts_plan() -> None:
    small = Plan(max_execution_timeout_minutes=5)
    assert apply_settings_changes(JobSettings(), {"timeout_minutes": 5}, small).timeout_minutes == 5
    with pytest.raises(InvalidInput, match="at most 5"):
        apply_settings_changes(JobSettings(), {"timeout_minutes": 6}, small)


@pytest.mark.parametrize("value", [True, "10", [10]])
def test_timeout_must_be_a_number(value: object) -> None:
    with pytest.raises(InvalidInput, match="must be a number"):
        apply_settings_changes(JobSettings(), {"timeout_minutes": value}, PLAN)


@pytest.mark.parametrize(("max_retries", "retries"), [(1, 0), (1, 1), (3, 3), (0, 0)])
def test_retries_up_to_the_plan(max_retries: int, retries: int) -> None:
    plan = Plan(max_retries=max_retries)
    assert apply_settings_changes(JobSettings(), {"retries": retries}, plan).retries == retries


@pytest.mark.parametrize(("max_retries", "retries"), [(1, 2), (0, 1), (3, -1)])
def test_retries_beyond_the_plan_are_refused(max_retries: int, retries: int) -> None:
    with pytest.raises(InvalidInput, match=f"between 0 and {max_retries}"):
        apply_settings_changes(JobSettings(), {"retries": retries}, Plan(max_retries=max_retries))


@pytest.mark.parametrize("value", [True, 1.0, "1"])
def test_retries_must_be_a_whole_number(value: object) -> None:
    with pytest.raises(InvalidInput, match="whole number"):
        apply_settings_changes(JobSettings(), {"retries": value}, PLAN)


@pytest.mark.parametrize(("value", "expected"), [("forbid", Concurrency.FORBID),
                                                 ("allow", Concurrency.ALLOW)])
def test_concurrency_values(value: str, expected: Concurrency) -> None:
    assert apply_settings_changes(JobSettings(), {"concurrency": value},
                                  PLAN).concurrency is expected


@pytest.mark.parametrize("value", ["ALLOW", "replace", "", 1, True])
def test_other_concurrency_values_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match="'forbid' or 'allow'"):
        apply_settings_changes(JobSettings(), {"concurrency": value}, PLAN)


def test_notify_lists_are_validated_and_kept_apart() -> None:
    settings = apply_settings_changes(
        JobSettings(), {"notify": {"on_failure": ["ops@example.com", "b@x.io"]}}, PLAN)
    assert settings.notify == Notify(("ops@example.com", "b@x.io"), ())
    # A partial notify change keeps the list it does not name.
    settings = apply_settings_changes(settings, {"notify": {"on_success": ["c@x.io"]}}, PLAN)
    assert settings.notify == Notify(("ops@example.com", "b@x.io"), ("c@x.io",))


@pytest.mark.parametrize("address", ["not-an-email", "a@b", "a b@c.d", "@c.d", "a@@b.c",
                                     "ops@example.com\n", "x" * 250 + "@e.io", 7])
def test_bad_notify_addresses_are_refused(address: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        apply_settings_changes(JobSettings(), {"notify": {"on_success": [address]}}, PLAN)
    assert caught.value.extra["field"] == "notify.on_success"


@pytest.mark.parametrize("notify", [["a@b.c"], "a@b.c", {"on_error": []},
                                    {"on_failure": ["a@b.c"] * 21}, {"on_failure": "a@b.c"}])
def test_bad_notify_shapes_are_refused(notify: object) -> None:
    with pytest.raises(InvalidInput):
        apply_settings_changes(JobSettings(), {"notify": notify}, PLAN)


def test_unknown_settings_are_refused_and_none_means_unchanged() -> None:
    with pytest.raises(InvalidInput, match="Unknown setting 'timeout'"):
        apply_settings_changes(JobSettings(), {"timeout": 5}, PLAN)
    assert apply_settings_changes(JobSettings(), {"retries": None}, PLAN) == JobSettings()


def test_misfire_grace_between_zero_and_a_week() -> None:
    assert apply_settings_changes(JobSettings(), {"misfire_grace_minutes": 0},
                                  PLAN).misfire_grace_minutes == 0
    with pytest.raises(InvalidInput):
        apply_settings_changes(JobSettings(), {"misfire_grace_minutes": 10081}, PLAN)


def test_settings_round_trip_through_stored_json() -> None:
    settings = apply_settings_changes(JobSettings(), {
        "timeout_minutes": 0.05, "retries": 1, "concurrency": "allow",
        "notify": {"on_failure": ["a@b.io"], "on_success": ["c@d.io"]}}, PLAN)
    stored: dict[str, Any] = settings.as_dict()
    assert stored["concurrency"] == "allow"
    assert stored["notify"] == {"on_failure": ["a@b.io"], "on_success": ["c@d.io"]}
    assert settings_from_dict(stored) == settings
    assert settings_from_dict(None) == JobSettings()
    assert settings_from_dict({"retired": 1, "retries": 1}) == JobSettings(retries=1)


# --- variables ------------------------------------------------------------------------

def test_variables_keep_order_and_secret_flag() -> None:
    result = validate_variables([
        {"key": "API_URL", "value": "https://x"},
        {"key": "token", "value": "s3cr3t", "secret": True},
        {"key": "match", "value": ""},  # a soft keyword is a valid identifier
    ])
    assert result == (Variable("API_URL", "https://x", False), Variable("token", "s3cr3t", True),
                      Variable("match", "", False))


@pytest.mark.parametrize("key", ["1abc", "has-dash", "has space", "", "ünïcode ok?", None, 5])
def test_keys_must_be_identifiers(key: object) -> None:
    with pytest.raises(InvalidInput, match="Python identifier") as caught:
        validate_variables([{"key": key, "value": "v"}])
    assert caught.value.extra["field"] == "variables[0].key"


@pytest.mark.parametrize("key", ["class", "None", "lambda", "for", "True"])
def test_keywords_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="Python identifier"):
        validate_variables([{"key": key, "value": "v"}])


def test_private_keys_are_refused() -> None:
    with pytest.raises(InvalidInput, match="must not start with '_'"):
        validate_variables([{"key": "_hidden", "value": "v"}])


def test_duplicate_keys_are_refused_at_the_second() -> None:
    with pytest.raises(InvalidInput, match="given twice") as caught:
        validate_variables([{"key": "A", "value": "1"}, {"key": "B", "value": "2"},
                            {"key": "A", "value": "3", "secret": True}])
    assert caught.value.extra["field"] == "variables[2].key"


@pytest.mark.parametrize(("item", "message"), [
    ({"key": "A", "value": 1}, "value must be a string"),
    ({"key": "A"}, "value must be a string"),
    ({"key": "A", "value": "x" * (MAX_VARIABLE_VALUE + 1)}, "longer than"),
    ({"key": "A", "value": "v", "secret": "yes"}, "secret must be true or false"),
    ({"key": "A", "value": "v", "masked": True}, "unknown field"),
    ("A=v", "must be an object"),
])
def test_bad_variable_items(item: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_variables([item])


def test_variables_must_be_a_bounded_list() -> None:
    with pytest.raises(InvalidInput, match="must be a list"):
        validate_variables({"A": "v"})
    many = [{"key": f"K{i}", "value": ""} for i in range(MAX_VARIABLES)]
    assert len(validate_variables(many)) == MAX_VARIABLES
    with pytest.raises(InvalidInput, match=f"at most {MAX_VARIABLES}"):
        validate_variables([*many, {"key": "ONE_MORE", "value": ""}])


# --- status transitions ---------------------------------------------------------------

@pytest.mark.parametrize("status", list(JobStatus))
def test_publish_needs_code_and_schedule_from_any_status(status: JobStatus) -> None:
    assert next_status_on_publish(status, True, True) is JobStatus.PUBLISHED
    with pytest.raises(NotPublishable, match="Upload a code version"):
        next_status_on_publish(status, False, True)
    with pytest.raises(NotPublishable, match="Set a schedule"):
        next_status_on_publish(status, True, False)


def test_missing_code_is_reported_before_a_missing_schedule() -> None:
    with pytest.raises(NotPublishable, match="Upload a code version"):
        next_status_on_publish(JobStatus.DRAFT, False, False)


def test_only_a_published_job_can_be_unpublished() -> None:
    assert next_status_on_unpublish(JobStatus.PUBLISHED) is JobStatus.UNPUBLISHED
    for status in (JobStatus.DRAFT, JobStatus.UNPUBLISHED):
        with pytest.raises(Conflict, match=status.value):
            next_status_on_unpublish(status)
