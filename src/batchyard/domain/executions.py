"""Executions and attempts: their states and what follows an attempt's end."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    MISSED = "missed"

    @property
    def finished(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    # The worker running it vanished (crash, restart, lost lease).
    INTERRUPTED = "interrupted"


FINISHED = frozenset(s for s in ExecutionStatus if s.finished)

# The job's requirements.txt could not be installed. Not retried: the next attempt would
# install the same file from the same index at once (retries have no backoff), and what
# fails an install (a package or version that does not exist, no binary wheel, conflicting
# pins) fails it again; a passing index outage is the exception, mended by invoking again.
DEPENDENCY_INSTALL_FAILED = "dependency_install_failed"
# This host cannot give the attempt an isolated identity (SPEC 4, fail closed): it is not
# started, and a retry on the same host would not start either.
SANDBOX_UNAVAILABLE = "sandbox_unavailable"

# Reasons of executions that ended without an attempt (SPEC §3).
# The attempt could not be prepared (a secret that does not decrypt, the stored code, a
# setup timeout, an error of ours): the next attempt would meet the same, so no retry.
SETUP_FAILED = "setup_failed"
RUNTIME_BUDGET_EXHAUSTED = "runtime_budget_exhausted"  # no budget left at the start
JOB_UNPUBLISHED = "job_unpublished"  # queued when its job was unpublished
JOB_DELETED = "job_deleted"  # queued when its job was deleted
# The worker running the last attempt stopped renewing its lease (a host or network lost);
# "interrupted" is kept for a node that restarted and took back its own attempts.
WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class AfterAttempt:
    """What the execution becomes once an attempt has ended."""

    status: ExecutionStatus
    retry: bool
    reason: str | None


def may_retry(outcome: AttemptOutcome, attempt_number: int, retries: int,
              final_failure: str | None = None) -> bool:
    """Whether ``after_attempt`` could decide on a retry: only then does the day's budget
    matter, so a finished attempt that cannot be retried never reads it."""
    if outcome in (AttemptOutcome.SUCCEEDED, AttemptOutcome.CANCELLED):
        return False
    if final_failure is not None and outcome is AttemptOutcome.FAILED:
        return False
    return attempt_number <= retries


def after_attempt(outcome: AttemptOutcome, attempt_number: int, retries: int,
                  budget_left_seconds: float | None = None,
                  final_failure: str | None = None, worker_lost: bool = False,
                  ) -> AfterAttempt:
    """Decide between a retry and a final status.

    ``attempt_number`` counts from 1. A retry starts only while retries remain
    and, when the budget is known, while some of it is left (SPEC §3).
    ``final_failure`` names a failure that a retry would only repeat (such as
    ``DEPENDENCY_INSTALL_FAILED``): the execution fails at once, with it as reason.
    ``worker_lost``: an interrupted attempt whose worker stopped renewing its lease.
    """
    if outcome is AttemptOutcome.SUCCEEDED:
        return AfterAttempt(ExecutionStatus.SUCCEEDED, False, None)
    if outcome is AttemptOutcome.CANCELLED:
        return AfterAttempt(ExecutionStatus.CANCELLED, False, "cancelled")
    if final_failure is not None and outcome is AttemptOutcome.FAILED:
        return AfterAttempt(ExecutionStatus.FAILED, False, final_failure)
    retry_left = attempt_number <= retries
    budget_ok = budget_left_seconds is None or budget_left_seconds > 0
    if retry_left and budget_ok:
        return AfterAttempt(ExecutionStatus.QUEUED, True, None)
    if outcome is AttemptOutcome.TIMED_OUT:
        return AfterAttempt(ExecutionStatus.TIMED_OUT, False, "timeout")
    reason = "error"
    if outcome is AttemptOutcome.INTERRUPTED:
        reason = WORKER_LOST if worker_lost else "interrupted"
    if retry_left and not budget_ok:
        reason = RUNTIME_BUDGET_EXHAUSTED
    return AfterAttempt(ExecutionStatus.FAILED, False, reason)
