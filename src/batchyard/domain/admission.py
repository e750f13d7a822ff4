"""The admission decision (SPEC §3): may this invocation become an execution?

Pure: the store gathers the usage under a lock, this decides, the store writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from batchyard.domain.jobs import Concurrency, JobSettings
from batchyard.domain.plans import Plan


class BlockReason(StrEnum):
    FEATURE_DISABLED = "feature_disabled"
    NOT_PUBLISHED = "not_published"
    EXECUTIONS_PER_DAY_EXCEEDED = "executions_per_day_exceeded"
    JOB_INVOCATIONS_EXCEEDED = "job_invocations_exceeded"
    RUNTIME_BUDGET_INSUFFICIENT = "runtime_budget_insufficient"
    ALREADY_RUNNING = "already_running"
    # The published revision was valid when published, but the operator lowered the plan
    # since: the plan in force now decides, until the job is re-published within it.
    REVISION_EXCEEDS_PLAN = "revision_exceeds_plan"


BLOCK_MESSAGES = {
    BlockReason.FEATURE_DISABLED: "Batch jobs are not enabled for this account.",
    BlockReason.NOT_PUBLISHED: "The job is not published.",
    BlockReason.EXECUTIONS_PER_DAY_EXCEEDED:
        "The account has used all its executions for today.",
    BlockReason.JOB_INVOCATIONS_EXCEEDED: "This job has used all its invocations for today.",
    BlockReason.RUNTIME_BUDGET_INSUFFICIENT:
        "The run time left for today is less than the job's timeout.",
    BlockReason.ALREADY_RUNNING:
        "The job is already running and its concurrency setting is 'forbid'.",
    BlockReason.REVISION_EXCEEDS_PLAN:
        "The published revision asks for more than the account's plan now allows "
        "(timeout or retries); publish the job again within the plan.",
}


@dataclass(frozen=True)
class Usage:
    """What the account and the job have used on the account's current day."""

    executions: int = 0
    job_executions: int = 0
    runtime_seconds: float = 0.0
    reserved_seconds: float = 0.0
    job_active: int = 0


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: BlockReason | None = None

    @property
    def message(self) -> str:
        return BLOCK_MESSAGES[self.reason] if self.reason else "admitted"


def remaining_budget_seconds(plan: Plan, usage: Usage) -> float:
    return plan.daily_runtime_budget_seconds - usage.runtime_seconds - usage.reserved_seconds


def exceeds_plan(plan: Plan, settings: JobSettings) -> bool:
    """Settings that the plan in force no longer allows (it may have been lowered)."""
    return (settings.timeout_minutes > plan.max_execution_timeout_minutes
            or settings.retries > plan.max_retries)


def decide_admission(*, enabled: bool, published: bool, plan: Plan, settings: JobSettings,
                     usage: Usage) -> Admission:
    if not enabled:
        return Admission(False, BlockReason.FEATURE_DISABLED)
    if not published:
        return Admission(False, BlockReason.NOT_PUBLISHED)
    if exceeds_plan(plan, settings):
        return Admission(False, BlockReason.REVISION_EXCEEDS_PLAN)
    if usage.executions >= plan.max_executions_per_day:
        return Admission(False, BlockReason.EXECUTIONS_PER_DAY_EXCEEDED)
    if usage.job_executions >= plan.max_invocations_per_job_per_day:
        return Admission(False, BlockReason.JOB_INVOCATIONS_EXCEEDED)
    if settings.concurrency is Concurrency.FORBID and usage.job_active > 0:
        return Admission(False, BlockReason.ALREADY_RUNNING)
    if remaining_budget_seconds(plan, usage) < settings.timeout_seconds:
        return Admission(False, BlockReason.RUNTIME_BUDGET_INSUFFICIENT)
    return Admission(True)


def account_day(now: datetime, timezone: str) -> date:
    """The calendar day in the account's zone: counters reset at its midnight."""
    return now.astimezone(ZoneInfo(timezone)).date()
