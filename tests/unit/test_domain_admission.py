"""The admission decision and the account's calendar day."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from batchyard.domain.admission import (
    BLOCK_MESSAGES,
    Admission,
    BlockReason,
    Usage,
    account_day,
    decide_admission,
    remaining_budget_seconds,
)
from batchyard.domain.jobs import Concurrency, JobSettings
from batchyard.domain.plans import Plan

PLAN = Plan()  # 24 executions a day, 10 per job, 240 minutes of budget
SETTINGS = JobSettings(timeout_minutes=60, concurrency=Concurrency.FORBID)


def decide(*, enabled: bool = True, published: bool = True, plan: Plan = PLAN,
           settings: JobSettings = SETTINGS, usage: Usage | None = None) -> Admission:
    return decide_admission(enabled=enabled, published=published, plan=plan,
                            settings=settings, usage=usage or Usage())


def test_a_fresh_day_admits() -> None:
    admission = decide()
    assert admission == Admission(True)
    assert admission.message == "admitted"


# Each row breaks one more rule than the row below it; the first broken rule wins.
EVERYTHING_WRONG: dict[str, Any] = {
    "enabled": False, "published": False,
    "usage": Usage(executions=24, job_executions=10, runtime_seconds=240 * 60, job_active=1),
}
PRECEDENCE: list[tuple[BlockReason, dict[str, Any]]] = [
    (BlockReason.FEATURE_DISABLED, {}),
    (BlockReason.NOT_PUBLISHED, {"enabled": True}),
    (BlockReason.EXECUTIONS_PER_DAY_EXCEEDED, {"enabled": True, "published": True}),
    (BlockReason.JOB_INVOCATIONS_EXCEEDED,
     {"enabled": True, "published": True,
      "usage": Usage(executions=23, job_executions=10, runtime_seconds=240 * 60, job_active=1)}),
    (BlockReason.ALREADY_RUNNING,
     {"enabled": True, "published": True,
      "usage": Usage(executions=23, job_executions=9, runtime_seconds=240 * 60, job_active=1)}),
    (BlockReason.RUNTIME_BUDGET_INSUFFICIENT,
     {"enabled": True, "published": True,
      "usage": Usage(executions=23, job_executions=9, runtime_seconds=240 * 60, job_active=0)}),
]


@pytest.mark.parametrize(("reason", "fixes"), PRECEDENCE, ids=[r.value for r, _ in PRECEDENCE])
def test_block_reasons_in_order_of_precedence(reason: BlockReason,
                                              fixes: dict[str, Any]) -> None:
    admission = decide(**{**EVERYTHING_WRONG, **fixes})
    assert admission == Admission(False, reason)
    assert admission.message == BLOCK_MESSAGES[reason]


def test_every_reason_has_a_message() -> None:
    assert set(BLOCK_MESSAGES) == set(BlockReason)


@pytest.mark.parametrize(("executions", "admitted"), [(0, True), (23, True), (24, False),
                                                      (30, False)])
def test_account_executions_per_day(executions: int, admitted: bool) -> None:
    admission = decide(usage=Usage(executions=executions))
    assert admission.admitted is admitted
    if not admitted:
        assert admission.reason is BlockReason.EXECUTIONS_PER_DAY_EXCEEDED


@pytest.mark.parametrize(("job_executions", "admitted"), [(9, True), (10, False)])
def test_job_invocations_per_day(job_executions: int, admitted: bool) -> None:
    admission = decide(usage=Usage(executions=job_executions, job_executions=job_executions))
    assert admission.admitted is admitted
    if not admitted:
        assert admission.reason is BlockReason.JOB_INVOCATIONS_EXCEEDED


def test_a_zero_limit_blocks_everything() -> None:
    assert decide(plan=replace(PLAN, max_executions_per_day=0)).reason is \
        BlockReason.EXECUTIONS_PER_DAY_EXCEEDED
    assert decide(plan=replace(PLAN, max_invocations_per_job_per_day=0)).reason is \
        BlockReason.JOB_INVOCATIONS_EXCEEDED


def test_concurrency_allow_ignores_active_executions() -> None:
    allow = replace(SETTINGS, concurrency=Concurrency.ALLOW)
    assert decide(settings=allow, usage=Usage(job_active=5)).admitted
    assert decide(usage=Usage(job_active=1)).reason is BlockReason.ALREADY_RUNNING


@pytest.mark.parametrize(("used_minutes", "timeout_minutes", "admitted"), [
    (180, 60, True),       # exactly the timeout is left
    (180.01, 60, False),   # a little less than the timeout
    (239, 1, True),
    (239.5, 1, False),
    (0, 240, True),
    (0, 241, False),
    (300, 0.05, False),    # over budget already (scenario 2's aftermath)
])
def test_remaining_budget_must_cover_the_timeout(used_minutes: float, timeout_minutes: float,
                                                 admitted: bool) -> None:
    usage = Usage(runtime_seconds=used_minutes * 60)
    admission = decide(settings=replace(SETTINGS, timeout_minutes=timeout_minutes), usage=usage)
    assert admission.admitted is admitted
    if not admitted:
        assert admission.reason is BlockReason.RUNTIME_BUDGET_INSUFFICIENT


def test_seed_scenario_2_two_jobs_admitted_with_60_minutes_left() -> None:
    # Recorded mode: nothing is reserved, so both are admitted and may consume 90 together.
    usage = Usage(executions=2, runtime_seconds=180 * 60)
    assert decide(usage=usage).admitted
    assert decide(usage=replace(usage, executions=3)).admitted


def test_strict_reservations_count_against_the_budget() -> None:
    # Strict mode: the first job reserved its 60-minute deadline, the second is blocked.
    usage = Usage(executions=1, runtime_seconds=180 * 60, reserved_seconds=60 * 60)
    assert remaining_budget_seconds(PLAN, usage) == 0
    assert decide(usage=usage).reason is BlockReason.RUNTIME_BUDGET_INSUFFICIENT
    # Reservations and recorded run time add up.
    usage = Usage(runtime_seconds=100 * 60, reserved_seconds=80 * 60)
    assert remaining_budget_seconds(PLAN, usage) == 60 * 60
    assert decide(usage=usage).admitted
    assert not decide(usage=replace(usage, reserved_seconds=80 * 60 + 1)).admitted


def test_remaining_budget_can_go_negative() -> None:
    assert remaining_budget_seconds(PLAN, Usage(runtime_seconds=300 * 60)) == -60 * 60


# --- the account's day ----------------------------------------------------------------

def test_kolkata_day_turns_at_local_midnight() -> None:
    # Asia/Kolkata is UTC+05:30 all year: local midnight is 18:30 UTC the day before.
    before_midnight = datetime(2025, 3, 9, 18, 29, tzinfo=UTC)   # 23:59 local, 9 March
    after_midnight = datetime(2025, 3, 9, 18, 31, tzinfo=UTC)    # 00:01 local, 10 March
    assert account_day(before_midnight, "Asia/Kolkata") == date(2025, 3, 9)
    assert account_day(after_midnight, "Asia/Kolkata") == date(2025, 3, 10)
    # The same instants are both 9 March in UTC.
    assert account_day(before_midnight, "UTC") == account_day(after_midnight, "UTC") \
        == date(2025, 3, 9)


def test_day_boundary_is_exact() -> None:
    midnight = datetime(2025, 3, 9, 18, 30, tzinfo=UTC)
    assert account_day(midnight - timedelta(microseconds=1), "Asia/Kolkata") == date(2025, 3, 9)
    assert account_day(midnight, "Asia/Kolkata") == date(2025, 3, 10)


def test_day_in_a_zone_behind_utc() -> None:
    now = datetime(2025, 1, 1, 3, 0, tzinfo=UTC)
    assert account_day(now, "America/New_York") == date(2024, 12, 31)
