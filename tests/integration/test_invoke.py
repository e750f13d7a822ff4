"""Invocation: admission decided atomically with the recording of the execution."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from batchyard.domain.attempts import AttemptResult
from batchyard.domain.executions import AttemptOutcome
from batchyard.services import accounts, executions, invoke, jobs
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution, finish_attempt
from batchyard.store import scoped
from batchyard.store.models import Account, Execution, Job, UsageDay

Result = Callable[..., AttemptResult]


def blocked(platform: Platform, actor: Actor, job: Job) -> invoke.Blocked:
    with pytest.raises(invoke.Blocked) as caught:
        invoke.invoke(platform, actor, job.id, {}, {})
    return caught.value


def test_invoke_queues_with_its_parameters(platform: Platform,
                                           make_account: Callable[..., Account],
                                           make_actor: Callable[..., Actor],
                                           make_published_job: Callable[..., Job]) -> None:
    queued: list[None] = []
    platform.on_queued = lambda: queued.append(None)
    actor = make_actor(make_account())
    job = make_published_job(actor)
    execution = invoke.invoke(platform, actor, job.id, {"order": 42}, {"dry": "1"})
    assert (execution.status, execution.source, execution.revision, execution.job_name) == (
        "queued", "api", 1, job.name)
    assert execution.params == {"body": {"order": 42}, "query_string_parameters": {"dry": "1"}}
    assert queued == [None]
    stored = executions.get_execution(platform, actor, execution.id).execution
    assert (stored.status, stored.account_day, stored.attempt_count) == (
        "queued", "2025-03-10", 0)


def test_unpublished_job_is_blocked_and_recorded(platform: Platform,
                                                 make_account: Callable[..., Account],
                                                 make_actor: Callable[..., Actor],
                                                 make_job: Callable[..., Job],
                                                 make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account())
    draft = make_job(actor)
    error = blocked(platform, actor, draft)
    assert (error.code, error.status) == ("not_published", 409)
    detail = executions.get_execution(platform, actor, error.extra["execution_id"])
    assert (detail.execution.status, detail.execution.reason, detail.execution.revision) == (
        "blocked", "not_published", None)
    assert detail.execution.message == error.message
    assert detail.execution.ended_at is not None
    assert detail.attempts == []

    unpublished = jobs.unpublish(platform, actor, make_published_job(actor).id)
    error = blocked(platform, actor, unpublished)
    assert (error.code, error.status) == ("not_published", 409)

    listed, _ = executions.list_executions(platform, actor, job_id=None, status="blocked",
                                           since=None, until=None, limit=10, cursor=None)
    assert len(listed) == 2
    # Blocked invocations are recorded but use none of the day's executions.
    assert executions.usage(platform, actor, None)["executions"]["used"] == 0
    assert claim_next_execution(platform, "node-a:1", 30) is None


def test_disabled_account_is_blocked_and_recorded(platform: Platform,
                                                  make_account: Callable[..., Account],
                                                  make_actor: Callable[..., Actor],
                                                  make_published_job: Callable[..., Job]) -> None:
    account = make_account()
    actor = make_actor(account)
    job = make_published_job(actor)
    accounts.update_account(platform, account.id, {"batch_jobs_enabled": False})
    error = blocked(platform, actor, job)
    assert (error.code, error.status) == ("feature_disabled", 403)
    with platform.db.read() as session:
        row = scoped.execution(session, account.id, error.extra["execution_id"])
    assert (row.status, row.reason) == ("blocked", "feature_disabled")


def test_limits_read_the_days_counters(platform: Platform, result: Result,
                                       make_account: Callable[..., Account],
                                       make_actor: Callable[..., Actor],
                                       make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan={"max_invocations_per_job_per_day": 2,
                                          "daily_runtime_budget_minutes": 3}))
    job = make_published_job(actor, settings={"timeout_minutes": 2.5})
    invoke.invoke(platform, actor, job.id, {}, {})
    error = blocked(platform, actor, job)
    assert (error.code, error.status) == ("already_running", 429)

    claimed = claim_next_execution(platform, "node-a:1", 30)
    assert claimed is not None
    finish_attempt(platform, claimed, result(AttemptOutcome.SUCCEEDED, 150))
    # 30 seconds of budget left, the timeout is 150.
    assert blocked(platform, actor, job).code == "runtime_budget_insufficient"

    other = make_published_job(actor, settings={"timeout_minutes": 0.25})
    assert invoke.invoke(platform, actor, other.id, {}, {}).status == "queued"  # 30 s >= 15 s
    claimed = claim_next_execution(platform, "node-a:1", 30)
    assert claimed is not None
    finish_attempt(platform, claimed, result(AttemptOutcome.FAILED, 10))
    assert invoke.invoke(platform, actor, other.id, {}, {}).status == "queued"  # 20 s left
    assert blocked(platform, actor, other).code == "job_invocations_exceeded"
    assert executions.usage(platform, actor, None)["executions"]["used"] == 3


def test_concurrent_invocations_never_over_admit(platform: Platform,
                                                 make_account: Callable[..., Account],
                                                 make_actor: Callable[..., Actor],
                                                 make_published_job: Callable[..., Job]) -> None:
    account = make_account(plan={"max_executions_per_day": 24,
                                 "max_invocations_per_job_per_day": 100})
    actor = make_actor(account)
    job = make_published_job(actor, settings={"concurrency": "allow"})
    callers = 50
    start = threading.Barrier(callers)

    def call(_index: int) -> str:
        start.wait()
        try:
            invoke.invoke(platform, actor, job.id, {}, {})
        except invoke.Blocked as error:
            return error.code
        return "admitted"

    with ThreadPoolExecutor(callers) as pool:
        outcomes = list(pool.map(call, range(callers)))
    assert outcomes.count("admitted") == 24
    assert outcomes.count("executions_per_day_exceeded") == callers - 24

    with platform.db.read() as session:
        counts = dict(session.execute(select(Execution.status, func.count()).where(
            Execution.account_id == account.id).group_by(Execution.status)).all())
        usage = session.get_one(UsageDay, (account.id, "2025-03-10"))
    assert counts == {"queued": 24, "blocked": callers - 24}
    assert usage.executions == 24


def test_admission_waits_for_the_account_lock(platform: Platform,
                                              make_account: Callable[..., Account],
                                              make_actor: Callable[..., Actor],
                                              make_published_job: Callable[..., Job]) -> None:
    account = make_account()
    actor = make_actor(account)
    job = make_published_job(actor)
    done = threading.Event()

    def call() -> None:
        invoke.invoke(platform, actor, job.id, {}, {})
        done.set()

    with platform.db.write() as session:
        scoped.account(session, account.id, lock=True)
        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)
        assert not done.is_set()
    caller.join(timeout=10)
    assert done.is_set()
