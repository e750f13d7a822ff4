"""Plan limits under 200 concurrent API invocations, and the account's day boundary.

Every test runs on SQLite and on PostgreSQL (the ``platform`` fixture). The callers
are threads that each go through ``invoke.invoke`` with an actor of their own, the
way separate API requests (or separate API servers) would.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from batchyard.domain.attempts import AttemptResult
from batchyard.domain.clock import FixedClock
from batchyard.domain.executions import AttemptOutcome
from batchyard.services import accounts, executions, invoke
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution, finish_attempt
from batchyard.store.models import Account, Execution, Job, JobUsageDay, UsageDay

CALLERS = 200
Result = Callable[..., AttemptResult]


def invoke_all_at_once(platform: Platform, actors: list[Actor], job_ids: list[str]) -> list[str]:
    """Call invoke once per (actor, job) pair, all released by one barrier; the outcomes."""
    start = threading.Barrier(len(actors))

    def call(index: int) -> str:
        start.wait()
        try:
            invoke.invoke(platform, actors[index], job_ids[index], {"caller": index}, {})
        except invoke.Blocked as error:
            assert error.status == 429, error
            return error.code
        return "admitted"

    with ThreadPoolExecutor(len(actors)) as pool:
        return list(pool.map(call, range(len(actors))))


def statuses_by_job(platform: Platform, account_id: str) -> dict[tuple[str, str, str | None],
                                                                 int]:
    with platform.db.read() as session:
        rows = session.execute(
            select(Execution.job_id, Execution.status, Execution.reason, func.count())
            .where(Execution.account_id == account_id)
            .group_by(Execution.job_id, Execution.status, Execution.reason)).all()
    return {(job_id, status, reason): count for job_id, status, reason, count in rows}


def own_actors(actor: Actor, count: int) -> list[Actor]:
    # One actor object per caller, as each API request authenticates on its own.
    return [replace(actor) for _ in range(count)]


def test_200_concurrent_invocations_admit_exactly_max_executions_per_day(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    account = make_account(plan={"max_executions_per_day": 24,
                                 "max_invocations_per_job_per_day": 1000, "max_jobs": 10})
    admin, developer = make_actor(account), make_actor(account, role="developer")
    # Four jobs share the account's 24: the limit is per account, not per job.
    job_ids = [make_published_job(admin, settings={"concurrency": "allow"}).id
               for _ in range(4)]
    actors = own_actors(admin, CALLERS // 2) + own_actors(developer, CALLERS // 2)

    outcomes = invoke_all_at_once(platform, actors,
                                  [job_ids[i % 4] for i in range(CALLERS)])

    assert Counter(outcomes) == {"admitted": 24, "executions_per_day_exceeded": CALLERS - 24}
    recorded = statuses_by_job(platform, account.id)
    assert sum(n for (_, status, _), n in recorded.items() if status == "queued") == 24
    assert sum(n for (_, status, reason), n in recorded.items()
               if (status, reason) == ("blocked", "executions_per_day_exceeded")) == CALLERS - 24
    assert sum(recorded.values()) == CALLERS
    with platform.db.read() as session:
        assert session.get_one(UsageDay, (account.id, "2025-03-10")).executions == 24
        per_job = session.scalar(select(func.sum(JobUsageDay.executions)).where(
            JobUsageDay.account_id == account.id, JobUsageDay.day == "2025-03-10"))
    assert per_job == 24
    assert executions.usage(platform, admin, None)["executions"] == {"used": 24, "limit": 24}


def test_200_concurrent_invocations_admit_exactly_max_invocations_per_job_per_day(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    account = make_account(plan={"max_executions_per_day": 10_000,
                                 "max_invocations_per_job_per_day": 10})
    admin = make_actor(account)
    first, second = (make_published_job(admin, settings={"concurrency": "allow"}).id
                     for _ in range(2))

    outcomes = invoke_all_at_once(platform, own_actors(admin, CALLERS),
                                  [first if i % 2 else second for i in range(CALLERS)])

    assert Counter(outcomes) == {"admitted": 20, "job_invocations_exceeded": CALLERS - 20}
    recorded = statuses_by_job(platform, account.id)
    half = CALLERS // 2
    for job_id in (first, second):
        assert recorded[(job_id, "queued", None)] == 10
        assert recorded[(job_id, "blocked", "job_invocations_exceeded")] == half - 10
    assert sum(recorded.values()) == CALLERS
    usage = executions.usage(platform, admin, None)
    assert usage["executions"]["used"] == 20
    assert sorted(item["executions"] for item in usage["per_job"]) == [10, 10]


KOLKATA = "Asia/Kolkata"  # UTC+05:30: its midnight is 18:30 UTC of the day before


def invoke_code(platform: Platform, actor: Actor, job: Job) -> tuple[str, str]:
    """(outcome, account day) of one invocation."""
    try:
        recorded = invoke.invoke(platform, actor, job.id, {}, {})
    except invoke.Blocked as error:
        with platform.db.read() as session:
            day = session.get_one(Execution, error.extra["execution_id"]).account_day
        return error.code, day
    return "admitted", recorded.account_day


def test_max_executions_per_day_follows_the_accounts_midnight_in_kolkata(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(timezone=KOLKATA, plan={
        "max_executions_per_day": 1, "max_invocations_per_job_per_day": 100}))
    job = make_published_job(actor, settings={"concurrency": "allow"})

    # 00:30 on 10 March in Kolkata is still 9 March in UTC.
    clock.at = datetime(2025, 3, 9, 19, 0, tzinfo=UTC)
    assert invoke_code(platform, actor, job) == ("admitted", "2025-03-10")
    # 23:59 on 10 March in Kolkata (10 March in UTC too): that local day's one is used.
    clock.at = datetime(2025, 3, 10, 18, 29, tzinfo=UTC)
    assert invoke_code(platform, actor, job) == ("executions_per_day_exceeded", "2025-03-10")
    # 00:01 on 11 March in Kolkata, still 10 March in UTC: a fresh allowance.
    clock.at = datetime(2025, 3, 10, 18, 31, tzinfo=UTC)
    assert invoke_code(platform, actor, job) == ("admitted", "2025-03-11")
    assert invoke_code(platform, actor, job) == ("executions_per_day_exceeded", "2025-03-11")

    today = executions.usage(platform, actor, None)
    assert (today["date"], today["timezone"], today["executions"]["used"]) == (
        "2025-03-11", KOLKATA, 1)


def test_runtime_budget_follows_the_accounts_midnight_in_kolkata(
        platform: Platform, clock: FixedClock, result: Result,
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(timezone=KOLKATA, plan={
        "daily_runtime_budget_minutes": 10, "max_invocations_per_job_per_day": 100}))
    job = make_published_job(actor, settings={"concurrency": "allow", "timeout_minutes": 6})

    clock.at = datetime(2025, 3, 10, 18, 0, tzinfo=UTC)  # 23:30 in Kolkata
    assert invoke_code(platform, actor, job) == ("admitted", "2025-03-10")
    claimed = claim_next_execution(platform, "node-a:1", 30)
    assert claimed is not None
    clock.at = datetime(2025, 3, 10, 18, 29, tzinfo=UTC)  # 23:59: 6 of the 10 minutes used
    finish_attempt(platform, claimed, result(AttemptOutcome.SUCCEEDED, 360))
    assert invoke_code(platform, actor, job) == ("runtime_budget_insufficient", "2025-03-10")

    clock.at = datetime(2025, 3, 10, 18, 31, tzinfo=UTC)  # 00:01 on 11 March
    assert invoke_code(platform, actor, job) == ("admitted", "2025-03-11")
    runtime = executions.usage(platform, actor, None)["runtime_seconds"]
    assert (runtime["used"], runtime["limit"]) == (0, 600)


@pytest.mark.parametrize("mode", ["recorded", "strict"])
def test_concurrent_invocations_of_two_jobs_share_the_budget_as_the_mode_says(
        platform: Platform, mode: str, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    """Seed scenario 2 at scale: 200 callers, 60 minutes left, 30-minute timeouts."""
    account = make_account(plan={"daily_runtime_budget_minutes": 60,
                                 "max_executions_per_day": 10_000,
                                 "max_invocations_per_job_per_day": 10_000})
    accounts.update_account(platform, account.id, {"budget_mode": mode})
    admin = make_actor(account)
    job_ids = [make_published_job(admin, settings={"concurrency": "allow",
                                                   "timeout_minutes": 30}).id
               for _ in range(2)]

    outcomes = invoke_all_at_once(platform, own_actors(admin, CALLERS),
                                  [job_ids[i % 2] for i in range(CALLERS)])

    # Recorded mode: nothing has run yet, so every caller sees 60 minutes left.
    # Strict mode: each admitted one reserves its 30 minutes, so exactly two fit.
    admitted = CALLERS if mode == "recorded" else 2
    assert outcomes.count("admitted") == admitted
    assert outcomes.count("runtime_budget_insufficient") == CALLERS - admitted
    runtime = executions.usage(platform, admin, None)["runtime_seconds"]
    assert runtime["reserved"] == (0 if mode == "recorded" else 3600)
