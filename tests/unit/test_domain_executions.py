"""What an execution becomes once an attempt has ended."""

from __future__ import annotations

import pytest

from batchyard.domain.executions import (
    DEPENDENCY_INSTALL_FAILED,
    FINISHED,
    AfterAttempt,
    AttemptOutcome,
    ExecutionStatus,
    after_attempt,
    may_retry,
)

QUEUED_AGAIN = AfterAttempt(ExecutionStatus.QUEUED, True, None)


def test_finished_states() -> None:
    assert {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING}.isdisjoint(FINISHED)
    never_ran = {ExecutionStatus.BLOCKED, ExecutionStatus.MISSED}
    ended = {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT,
             ExecutionStatus.CANCELLED}
    assert set(FINISHED) == ended | never_ran


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_success_ends_the_execution(retries: int) -> None:
    assert after_attempt(AttemptOutcome.SUCCEEDED, 1, retries) == AfterAttempt(
        ExecutionStatus.SUCCEEDED, False, None)
    assert after_attempt(AttemptOutcome.SUCCEEDED, 2, retries, budget_left_seconds=-5) == \
        AfterAttempt(ExecutionStatus.SUCCEEDED, False, None)


@pytest.mark.parametrize("outcome", [AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT,
                                     AttemptOutcome.INTERRUPTED])
def test_a_failed_attempt_with_retries_left_is_retried(outcome: AttemptOutcome) -> None:
    assert after_attempt(outcome, 1, 1) == QUEUED_AGAIN
    assert after_attempt(outcome, 2, 3, budget_left_seconds=0.5) == QUEUED_AGAIN
    assert after_attempt(outcome, 3, 3) == QUEUED_AGAIN


def test_failure_with_retries_exhausted() -> None:
    assert after_attempt(AttemptOutcome.FAILED, 1, 0) == AfterAttempt(
        ExecutionStatus.FAILED, False, "error")
    assert after_attempt(AttemptOutcome.FAILED, 2, 1) == AfterAttempt(
        ExecutionStatus.FAILED, False, "error")


def test_timeout_with_retries_exhausted() -> None:
    assert after_attempt(AttemptOutcome.TIMED_OUT, 2, 1) == AfterAttempt(
        ExecutionStatus.TIMED_OUT, False, "timeout")


def test_interrupted_with_retries_exhausted() -> None:
    assert after_attempt(AttemptOutcome.INTERRUPTED, 1, 0) == AfterAttempt(
        ExecutionStatus.FAILED, False, "interrupted")


def test_a_lost_worker_is_named_once_retries_are_exhausted() -> None:
    assert after_attempt(AttemptOutcome.INTERRUPTED, 1, 0, worker_lost=True) == AfterAttempt(
        ExecutionStatus.FAILED, False, "worker_lost")
    assert after_attempt(AttemptOutcome.INTERRUPTED, 1, 1, worker_lost=True) == AfterAttempt(
        ExecutionStatus.QUEUED, True, None)


@pytest.mark.parametrize("retries", [0, 1])
@pytest.mark.parametrize("budget", [None, 0.0, 100.0])
def test_cancel_is_final_whatever_the_retries(retries: int, budget: float | None) -> None:
    assert after_attempt(AttemptOutcome.CANCELLED, 1, retries, budget) == AfterAttempt(
        ExecutionStatus.CANCELLED, False, "cancelled")


@pytest.mark.parametrize("budget", [0.0, -30.0])
def test_no_retry_once_the_budget_is_spent(budget: float) -> None:
    assert after_attempt(AttemptOutcome.FAILED, 1, 1, budget) == AfterAttempt(
        ExecutionStatus.FAILED, False, "runtime_budget_exhausted")
    assert after_attempt(AttemptOutcome.INTERRUPTED, 1, 1, budget) == AfterAttempt(
        ExecutionStatus.FAILED, False, "runtime_budget_exhausted")
    # A timeout keeps its own status; there was nothing to retry into anyway.
    assert after_attempt(AttemptOutcome.TIMED_OUT, 1, 1, budget) == AfterAttempt(
        ExecutionStatus.TIMED_OUT, False, "timeout")


def test_spent_budget_without_retries_left_is_a_plain_failure() -> None:
    assert after_attempt(AttemptOutcome.FAILED, 2, 1, 0.0) == AfterAttempt(
        ExecutionStatus.FAILED, False, "error")


def test_a_dependency_install_failure_is_final_whatever_the_retries() -> None:
    assert after_attempt(AttemptOutcome.FAILED, 1, 3, 100.0,
                         final_failure=DEPENDENCY_INSTALL_FAILED) == AfterAttempt(
        ExecutionStatus.FAILED, False, "dependency_install_failed")
    # Cancelled while installing: the cancel is what the execution records.
    assert after_attempt(AttemptOutcome.CANCELLED, 1, 3,
                         final_failure=DEPENDENCY_INSTALL_FAILED).reason == "cancelled"


@pytest.mark.parametrize("outcome", list(AttemptOutcome))
@pytest.mark.parametrize("final_failure", [None, DEPENDENCY_INSTALL_FAILED])
@pytest.mark.parametrize("number", [1, 2, 3])
def test_the_budget_matters_exactly_when_a_retry_may_start(
        outcome: AttemptOutcome, final_failure: str | None, number: int) -> None:
    """Finishing reads the day's budget only when may_retry says so: everywhere else the
    decision must be the same with the budget unknown, plenty or exhausted."""
    decisions = {after_attempt(outcome, number, 2, budget, final_failure)
                 for budget in (None, 100.0, 0.0)}
    if may_retry(outcome, number, 2, final_failure):
        assert after_attempt(outcome, number, 2, 100.0, final_failure) == QUEUED_AGAIN
        assert not after_attempt(outcome, number, 2, 0.0, final_failure).retry
    else:
        assert len(decisions) == 1 and not decisions.pop().retry
