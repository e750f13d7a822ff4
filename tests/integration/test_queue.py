"""The worker side of the queue, driven directly: claim, renew, log, finish, sweep, cancel."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from batchyard.domain.attempts import AttemptResult, ClaimedAttempt, LogRecord, OutputFile
from batchyard.domain.clock import FixedClock
from batchyard.domain.executions import AttemptOutcome, ExecutionStatus
from batchyard.errors import Conflict, Forbidden, NotFound
from batchyard.services import accounts, audit, executions, invoke, jobs
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import (
    append_logs,
    claim_next_execution,
    finish_attempt,
    renew_lease,
    renew_leases,
    sweep_lost,
)
from batchyard.store.models import Account, Attempt, Execution, Job, LogLine, UsageDay

LEASE = 30.0
Result = Callable[..., AttemptResult]


def run(platform: Platform, actor: Actor, job: Job, body: Any = None) -> invoke.Recorded:
    return invoke.invoke(platform, actor, job.id, body if body is not None else {}, {})


def claim(platform: Platform, worker: str = "node-a:1") -> ClaimedAttempt:
    claimed = claim_next_execution(platform, worker, LEASE)
    assert claimed is not None
    return claimed


def status_of(platform: Platform, actor: Actor, execution_id: str) -> Execution:
    return executions.get_execution(platform, actor, execution_id).execution


def usage_seconds(platform: Platform, account_id: str, day: str) -> float:
    with platform.db.read() as session:
        row = session.get(UsageDay, (account_id, day))
        return row.runtime_seconds if row else 0.0


@pytest.fixture
def owner(make_account: Callable[..., Account], make_actor: Callable[..., Actor]) -> Actor:
    # Room for the several running attempts these tests claim (the default plan runs 2).
    return make_actor(make_account(plan={"max_concurrent_executions": 10}))


@pytest.fixture
def parallel_job(platform: Platform, owner: Actor,
                 make_published_job: Callable[..., Job]) -> Job:
    return make_published_job(owner, settings={"concurrency": "allow"})


def test_claim_takes_the_oldest_queued_then_nothing(platform: Platform, clock: FixedClock,
                                                    owner: Actor, parallel_job: Job) -> None:
    first = run(platform, owner, parallel_job, {"n": 1})
    # Ids order executions by the millisecond: keep the two apart.
    time.sleep(0.002)
    second = run(platform, owner, parallel_job, {"n": 2})

    claimed = claim(platform, "node-a:1")
    assert (claimed.execution_id, claimed.number, claimed.worker) == (first.id, 1, "node-a:1")
    assert claimed.params == {"body": {"n": 1}, "query_string_parameters": {}}
    assert (claimed.source, claimed.revision, claimed.job_name) == (
        "api", 1, parallel_job.name)
    assert claimed.deadline_seconds == claimed.timeout_seconds == 3600
    row = status_of(platform, owner, first.id)
    assert (row.status, row.lease_owner, row.attempt_count) == ("running", "node-a:1", 1)
    assert row.lease_expires_at == clock.now() + timedelta(seconds=LEASE)
    assert row.started_at == clock.now()

    assert claim(platform, "node-b:1").execution_id == second.id
    assert claim_next_execution(platform, "node-c:1", LEASE) is None


def test_a_claim_says_whether_more_was_due(platform: Platform, owner: Actor,
                                          parallel_job: Job,
                                          make_account: Callable[..., Account],
                                          make_actor: Callable[..., Actor],
                                          make_published_job: Callable[..., Job]) -> None:
    """The pool wakes another slot only when more was due (runtime/loops/pool.py)."""
    run(platform, owner, parallel_job)
    time.sleep(0.002)
    run(platform, owner, parallel_job)
    assert claim(platform).due_seen == 2
    assert claim(platform).due_seen == 1
    # An account at its limit has due work nobody may claim: it is no reason to wake.
    full = make_actor(make_account(plan={"max_concurrent_executions": 1}))
    full_job = make_published_job(full, settings={"concurrency": "allow"})
    run(platform, full, full_job)
    time.sleep(0.002)
    run(platform, full, full_job)
    assert claim(platform).account_id == full.account_id
    run(platform, owner, parallel_job)
    claimed = claim(platform)
    assert (claimed.account_id, claimed.due_seen) == (owner.account_id, 1)


def test_claim_is_fair_across_accounts(platform: Platform, owner: Actor, parallel_job: Job,
                                       make_account: Callable[..., Account],
                                       make_actor: Callable[..., Actor],
                                       make_published_job: Callable[..., Job]) -> None:
    a1 = run(platform, owner, parallel_job)
    time.sleep(0.002)
    a2 = run(platform, owner, parallel_job)
    assert claim(platform).execution_id == a1.id  # account A now has one running
    other = make_actor(make_account())
    time.sleep(0.002)
    b1 = run(platform, other, make_published_job(other))
    # B's execution is newer than A's queued one, but B has nothing running.
    assert claim(platform).execution_id == b1.id
    assert claim(platform).execution_id == a2.id


def test_failed_attempt_is_retried_then_fails(platform: Platform, clock: FixedClock,
                                              owner: Actor, result: Result,
                                              make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={"retries": 1})
    execution = run(platform, owner, job)
    first = claim(platform)
    clock.advance(seconds=5)
    assert finish_attempt(platform, first, result(AttemptOutcome.FAILED, 5,
                                                  error="boom 1")) is ExecutionStatus.QUEUED
    after_first = status_of(platform, owner, execution.id)
    assert (after_first.status, after_first.attempt_count, after_first.reason) == (
        "queued", 1, None)
    assert after_first.lease_owner is None

    second = claim(platform, "node-b:1")
    assert (second.execution_id, second.number) == (execution.id, 2)
    clock.advance(seconds=7)
    assert finish_attempt(platform, second, result(AttemptOutcome.FAILED, 7,
                                                   error="boom 2")) is ExecutionStatus.FAILED
    final = status_of(platform, owner, execution.id)
    assert (final.status, final.reason, final.message) == ("failed", "error", "boom 2")
    assert final.ended_at == clock.now()

    detail = executions.get_execution(platform, owner, execution.id)
    assert [(a.number, a.status, a.runtime_seconds, a.worker, a.error)
            for a in detail.attempts] == [(1, "failed", 5, "node-a:1", "boom 1"),
                                          (2, "failed", 7, "node-b:1", "boom 2")]
    assert detail.execution.runtime_seconds == 12
    usage = executions.usage(platform, owner, None)
    # Retries are not new executions, but their run time counts.
    assert usage["executions"]["used"] == 1
    assert usage["runtime_seconds"]["used"] == 12
    assert claim_next_execution(platform, "node-c:1", LEASE) is None


def test_success_ends_the_execution_and_keeps_artifacts(platform: Platform, clock: FixedClock,
                                                        owner: Actor, parallel_job: Job,
                                                        result: Result) -> None:
    execution = run(platform, owner, parallel_job)
    claimed = claim(platform)
    clock.advance(seconds=3)
    assert finish_attempt(platform, claimed, result(
        runtime_seconds=3, artifacts=(OutputFile("report.csv", b"a,b\n1,2\n", "x" * 64),)),
    ) is ExecutionStatus.SUCCEEDED
    done = status_of(platform, owner, execution.id)
    assert (done.status, done.reason, done.ended_at) == ("succeeded", None, clock.now())
    listed = executions.list_artifacts(platform, owner, execution.id)
    assert [(a.name, a.size, a.attempt) for a in listed] == [("report.csv", 8, 1)]
    _row, content = executions.artifact_content(platform, owner, execution.id, "report.csv")
    assert content == b"a,b\n1,2\n"


def test_stale_attempt_cannot_finish_renew_or_log(platform: Platform, owner: Actor,
                                                  parallel_job: Job, result: Result) -> None:
    execution = run(platform, owner, parallel_job)
    claimed = claim(platform)
    impostors = [replace(claimed, worker="node-z:9"), replace(claimed, number=2),
                 replace(claimed, number=0)]
    for stale in impostors:
        assert finish_attempt(platform, stale, result(runtime_seconds=50)) is None
        assert renew_lease(platform, stale, LEASE) == (False, True)
        assert append_logs(platform, stale, [LogRecord(datetime.now(UTC), "stdout", "x")],
                           0, 10, False) is False

    detail = executions.get_execution(platform, owner, execution.id)
    assert (detail.execution.status, detail.execution.lease_owner,
            detail.execution.runtime_seconds, detail.execution.log_seq) == (
        "running", "node-a:1", 0, 0)
    assert [(a.status, a.ended_at) for a in detail.attempts] == [("running", None)]
    assert usage_seconds(platform, owner.account_id, "2025-03-10") == 0
    assert executions.read_logs(platform, owner, execution.id, level=None, after=None).items == []

    assert finish_attempt(platform, claimed, result()) is not None
    # The owner's own late duplicate is fenced too, once the attempt has ended.
    assert finish_attempt(platform, claimed, result(runtime_seconds=99)) is None
    assert status_of(platform, owner, execution.id).runtime_seconds == 1


def test_runtime_is_charged_to_the_day_the_attempt_started(
        platform: Platform, clock: FixedClock, result: Result,
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(timezone="Asia/Kolkata"))
    job = make_published_job(actor)
    clock.at = datetime(2025, 3, 10, 18, 29, tzinfo=UTC)  # 23:59 on 10 March in Kolkata
    execution = run(platform, actor, job)
    assert execution.account_day == "2025-03-10"
    claimed = claim(platform)
    clock.advance(minutes=2)  # 00:01 on 11 March in Kolkata
    assert finish_attempt(platform, claimed, result(runtime_seconds=120)) is not None

    attempt = executions.get_execution(platform, actor, execution.id).attempts[0]
    assert attempt.account_day == "2025-03-10"
    march_10 = executions.usage(platform, actor, date(2025, 3, 10))
    march_11 = executions.usage(platform, actor, None)
    assert march_11["date"] == "2025-03-11"
    assert (march_10["executions"]["used"], march_10["runtime_seconds"]["used"]) == (1, 120)
    assert (march_11["executions"]["used"], march_11["runtime_seconds"]["used"]) == (0, 0)
    assert march_10["per_job"][0]["runtime_seconds"] == 120

    # The counters of the new day start from zero.
    assert run(platform, actor, job).account_day == "2025-03-11"
    assert executions.usage(platform, actor, None)["executions"]["used"] == 1


def test_renew_lease_reports_cancel_and_loss(platform: Platform, clock: FixedClock,
                                             owner: Actor, parallel_job: Job) -> None:
    execution = run(platform, owner, parallel_job)
    claimed = claim(platform)
    clock.advance(seconds=10)
    assert renew_lease(platform, claimed, LEASE) == (True, False)
    assert status_of(platform, owner, execution.id).lease_expires_at == \
        clock.now() + timedelta(seconds=LEASE)
    executions.cancel(platform, owner, execution.id)
    assert renew_lease(platform, claimed, LEASE) == (True, True)
    clock.advance(seconds=LEASE + 1)
    assert sweep_lost(platform, LEASE) == 1
    assert renew_lease(platform, claimed, LEASE) == (False, True)


def test_renewing_many_leases_at_once_fences_each(platform: Platform, clock: FixedClock,
                                                   owner: Actor, parallel_job: Job) -> None:
    first = run(platform, owner, parallel_job)
    time.sleep(0.002)
    second = run(platform, owner, parallel_job)
    time.sleep(0.002)
    third = run(platform, owner, parallel_job)
    a, b, c = claim(platform, "node-a:1"), claim(platform, "node-a:2"), claim(platform)
    executions.cancel(platform, owner, second.id)
    clock.advance(seconds=10)
    # c as another worker's claim, or as an earlier attempt of its execution: not ours.
    stale = [replace(c, worker="node-z:9"), replace(c, number=c.number + 1)]
    assert renew_leases(platform, [a, b, *stale], LEASE) == [
        (True, False), (True, True), (False, True), (False, True)]
    until = clock.now() + timedelta(seconds=LEASE)
    assert status_of(platform, owner, first.id).lease_expires_at == until
    assert status_of(platform, owner, second.id).lease_expires_at == until
    assert status_of(platform, owner, third.id).lease_expires_at < until
    assert renew_leases(platform, [], LEASE) == []


def test_sweep_fails_an_expired_attempt(platform: Platform, clock: FixedClock, owner: Actor,
                                        parallel_job: Job, result: Result) -> None:
    execution = run(platform, owner, parallel_job)
    claimed = claim(platform)
    clock.advance(seconds=10)
    renew_lease(platform, claimed, LEASE)
    clock.advance(seconds=LEASE)
    assert sweep_lost(platform, LEASE) == 0  # expires at exactly now: not yet lost
    clock.advance(seconds=1)
    assert sweep_lost(platform, LEASE) == 1

    detail = executions.get_execution(platform, owner, execution.id)
    # An expired lease: the worker was lost (a node restart says "interrupted", below).
    assert (detail.execution.status, detail.execution.reason) == ("failed", "worker_lost")
    assert detail.execution.lease_owner is None
    # Run time up to the last renewal, the best knowledge of when it stopped.
    assert [(a.status, a.runtime_seconds) for a in detail.attempts] == [("interrupted", 10)]
    assert usage_seconds(platform, owner.account_id, "2025-03-10") == 10
    # The lost worker's late result is dropped.
    assert finish_attempt(platform, claimed, result(runtime_seconds=500)) is None
    assert status_of(platform, owner, execution.id).status == "failed"
    assert sweep_lost(platform, LEASE) == 0


def test_sweep_requeues_when_retries_remain(platform: Platform, clock: FixedClock,
                                            owner: Actor,
                                            make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={"retries": 1})
    execution = run(platform, owner, job)
    claim(platform)
    clock.advance(seconds=LEASE + 1)
    assert sweep_lost(platform, LEASE) == 1
    assert status_of(platform, owner, execution.id).status == "queued"
    retry = claim(platform, "node-b:1")
    assert (retry.execution_id, retry.number) == (execution.id, 2)


def test_sweep_by_owner_prefix_takes_that_nodes_attempts(
        platform: Platform, owner: Actor, parallel_job: Job,
        make_published_job: Callable[..., Job]) -> None:
    other_job = make_published_job(owner)
    mine = run(platform, owner, parallel_job)
    claim(platform, "node_a:1")
    lookalike = run(platform, owner, parallel_job)
    claim(platform, "nodeXa:1")  # "_" must not act as a LIKE wildcard
    theirs = run(platform, owner, other_job)
    claim(platform, "node-b:1")

    # Leases are fresh; a restarted node still knows its previous attempts are dead.
    assert sweep_lost(platform, LEASE, owner_prefix="node_a:") == 1
    assert (status_of(platform, owner, mine.id).status,
            status_of(platform, owner, mine.id).reason) == ("failed", "interrupted")
    assert status_of(platform, owner, lookalike.id).status == "running"
    assert status_of(platform, owner, theirs.id).status == "running"
    assert sweep_lost(platform, LEASE) == 0


def test_append_logs_assigns_seq_and_is_fenced(platform: Platform, clock: FixedClock,
                                               owner: Actor, result: Result,
                                               make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={"retries": 1})
    execution = run(platform, owner, job)
    claimed = claim(platform)
    now = clock.now()
    assert append_logs(platform, claimed, [
        LogRecord(now, "stdout", "hello"),
        LogRecord(now, "sdk", "careful", level="warn", data={"rows": 3}),
    ], claimed.log_seq, 40, False)
    assert append_logs(platform, claimed, [LogRecord(now, "stderr", "oops")], 2, 60, False)

    page = executions.read_logs(platform, owner, execution.id, level=None, after=None)
    assert [(line.seq, line.attempt, line.stream, line.message) for line in page.items] == [
        (0, 1, "stdout", "hello"), (1, 1, "sdk", "careful"), (2, 1, "stderr", "oops")]
    assert page.items[1].data == {"rows": 3}
    assert (page.truncated, page.finished) == (False, False)
    after = executions.read_logs(platform, owner, execution.id, level=None, after=0)
    assert [line.seq for line in after.items] == [1, 2]
    warned = executions.read_logs(platform, owner, execution.id, level="warn", after=None)
    assert [line.message for line in warned.items] == ["careful"]
    row = status_of(platform, owner, execution.id)
    assert (row.log_seq, row.log_bytes) == (3, 60)

    # The retry continues the sequence where the first attempt stopped.
    finish_attempt(platform, claimed, result(AttemptOutcome.FAILED))
    retry = claim(platform)
    assert (retry.log_seq, retry.log_bytes) == (3, 60)
    clock.advance(seconds=LEASE + 1)
    sweep_lost(platform, LEASE)
    assert not append_logs(platform, retry, [LogRecord(now, "stdout", "late")], 3, 70, False)
    page = executions.read_logs(platform, owner, execution.id, level=None, after=None)
    assert len(page.items) == 3
    assert page.finished
    with platform.db.read() as session:
        assert session.scalar(select(func.count()).select_from(LogLine)) == 3


def test_cancel_a_queued_execution_at_once(platform: Platform, owner: Actor,
                                           parallel_job: Job) -> None:
    execution = run(platform, owner, parallel_job)
    detail = executions.cancel(platform, owner, execution.id)
    assert (detail.execution.status, detail.execution.reason) == ("cancelled", "cancelled")
    assert detail.execution.ended_at is not None
    assert owner.email in (detail.execution.message or "")
    assert claim_next_execution(platform, "node-a:1", LEASE) is None
    with pytest.raises(Conflict):
        executions.cancel(platform, owner, execution.id)
    entries, _ = audit.list_entries(platform, owner, parallel_job.id, 10, None)
    assert entries[0].action == "execution.cancel"
    assert (entries[0].actor, entries[0].before, entries[0].after) == (
        owner.email, {"status": "queued"}, {"status": "cancelled", "cancel_requested": False})


def test_cancel_a_running_execution_asks_the_worker(platform: Platform, owner: Actor,
                                                    result: Result,
                                                    make_published_job: Callable[..., Job]) -> None:
    asked: list[str] = []
    platform.on_cancel = asked.append
    job = make_published_job(owner, settings={"retries": 1})
    execution = run(platform, owner, job)
    claimed = claim(platform)
    detail = executions.cancel(platform, owner, execution.id)
    assert (detail.execution.status, detail.execution.cancel_requested) == ("running", True)
    assert asked == [execution.id]
    assert renew_lease(platform, claimed, LEASE) == (True, True)
    # The killed attempt ends as cancelled and is not retried, whatever the retries.
    assert finish_attempt(platform, claimed, result(AttemptOutcome.FAILED, exit_code=-15),
                          ) is ExecutionStatus.CANCELLED
    done = status_of(platform, owner, execution.id)
    assert (done.status, done.reason) == ("cancelled", "cancelled")
    assert claim_next_execution(platform, "node-a:1", LEASE) is None


def test_cancel_between_attempts_skips_the_retry(platform: Platform, owner: Actor,
                                                 result: Result,
                                                 make_published_job: Callable[..., Job]) -> None:
    job = make_published_job(owner, settings={"retries": 1})
    execution = run(platform, owner, job)
    finish_attempt(platform, claim(platform), result(AttemptOutcome.FAILED))
    detail = executions.cancel(platform, owner, execution.id)
    assert (detail.execution.status, detail.execution.attempt_count) == ("cancelled", 1)
    assert "retry" in (detail.execution.message or "")
    assert claim_next_execution(platform, "node-a:1", LEASE) is None


def test_a_viewer_cannot_cancel(platform: Platform, owner: Actor, parallel_job: Job,
                                make_actor: Callable[..., Actor]) -> None:
    execution = run(platform, owner, parallel_job)
    with platform.db.read() as session:
        account = session.get_one(Account, owner.account_id)
    viewer = make_actor(account, "viewer")
    with pytest.raises(Forbidden):
        executions.cancel(platform, viewer, execution.id)
    assert status_of(platform, viewer, execution.id).status == "queued"


def test_deleting_a_job_cancels_its_queue_and_keeps_history(
        platform: Platform, owner: Actor, parallel_job: Job, result: Result) -> None:
    running = run(platform, owner, parallel_job)
    claimed = claim(platform)
    queued = run(platform, owner, parallel_job)
    jobs.delete_job(platform, owner, parallel_job.id)

    assert (status_of(platform, owner, queued.id).status,
            status_of(platform, owner, queued.id).reason) == ("cancelled", "job_deleted")
    assert status_of(platform, owner, running.id).cancel_requested
    assert claim_next_execution(platform, "node-b:1", LEASE) is None
    assert renew_lease(platform, claimed, LEASE) == (True, True)
    assert finish_attempt(platform, claimed, result(AttemptOutcome.FAILED, exit_code=-15),
                          ) is ExecutionStatus.CANCELLED
    assert status_of(platform, owner, running.id).status == "cancelled"

    listed, _ = executions.list_executions(platform, owner, job_id=parallel_job.id, status=None,
                                           since=None, until=None, limit=10, cursor=None)
    assert {d.execution.id for d in listed} == {running.id, queued.id}
    assert [a.status for a in executions.get_execution(platform, owner,
                                                       running.id).attempts] == ["failed"]
    with pytest.raises(NotFound):  # deleted means gone: its code versions too
        jobs.list_code_versions(platform, owner, parallel_job.id)
    with pytest.raises(NotFound):
        jobs.get_job(platform, owner, parallel_job.id)
    with pytest.raises(NotFound):
        run(platform, owner, parallel_job)


def test_strict_mode_reserves_and_releases_deadlines(
        platform: Platform, result: Result, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    account = make_account(plan={"daily_runtime_budget_minutes": 120})
    accounts.update_account(platform, account.id, {"budget_mode": "strict"})
    actor = make_actor(account)
    job = make_published_job(actor, settings={"concurrency": "allow", "timeout_minutes": 60})
    first = run(platform, actor, job)
    second = run(platform, actor, job)
    with pytest.raises(invoke.Blocked) as caught:
        run(platform, actor, job)
    assert caught.value.code == "runtime_budget_insufficient"

    executions.cancel(platform, actor, second.id)  # releases its 60 minutes
    third = run(platform, actor, job)
    claimed = claim(platform)
    assert claimed.execution_id == first.id
    # Its own reservation is not held against it; the other one's is.
    assert claimed.deadline_seconds == 3600
    finish_attempt(platform, claimed, result(runtime_seconds=600))
    usage = executions.usage(platform, actor, None)["runtime_seconds"]
    assert (usage["used"], usage["reserved"]) == (600, 3600)

    jobs.delete_job(platform, actor, job.id)  # cancels `third`: its reservation goes too
    assert status_of(platform, actor, third.id).status == "cancelled"
    usage = executions.usage(platform, actor, None)["runtime_seconds"]
    assert (usage["used"], usage["reserved"]) == (600, 0)


def test_attempt_rows_match_claims(platform: Platform, owner: Actor, parallel_job: Job) -> None:
    run(platform, owner, parallel_job)
    claimed = claim(platform)
    with platform.db.read() as session:
        attempt = session.scalars(select(Attempt)).one()
    assert (attempt.execution_id, attempt.number, attempt.status, attempt.worker,
            attempt.deadline_seconds) == (claimed.execution_id, 1, "running", "node-a:1", 3600)


def test_strict_reservation_made_before_midnight_is_not_taken_off_the_next_days_budget(
        platform: Platform, clock: FixedClock, result: Result,
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    account = make_account(plan={"daily_runtime_budget_minutes": 20})
    accounts.update_account(platform, account.id, {"budget_mode": "strict"})
    actor = make_actor(account)
    late = make_published_job(actor, settings={"concurrency": "allow", "timeout_minutes": 10,
                                               "retries": 1})
    other = make_published_job(actor, settings={"concurrency": "allow", "timeout_minutes": 15})
    clock.at = clock.at.replace(hour=23, minute=55)
    evening = run(platform, actor, late)  # reserves 600 s on the 10th
    clock.advance(minutes=10)  # 00:05 on the 11th
    run(platform, actor, other)  # reserves 900 s on the 11th
    claimed = claim(platform)
    assert claimed.execution_id == evening.id
    # The 11th has 1200 - 900 s left for it; its own 600 s are held on the 10th's row.
    assert claimed.deadline_seconds == 300
    clock.advance(seconds=300)
    finish_attempt(platform, claimed, result(AttemptOutcome.FAILED, runtime_seconds=300))
    # No budget is left on the 11th (300 s used, 900 s reserved): no retry.
    closed = status_of(platform, actor, evening.id)
    assert (closed.status, closed.reason) == ("failed", "runtime_budget_exhausted")
