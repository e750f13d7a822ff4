"""The corners a review found in claiming, admission and scheduling (issue 8 §2), each a
regression test named after the behaviour, on SQLite and PostgreSQL."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, create_engine, func, select, text, update

from batchyard.domain.attempts import AttemptResult
from batchyard.domain.clock import FixedClock
from batchyard.domain.executions import AttemptOutcome
from batchyard.runtime.loops.scheduler_loop import SchedulerLoop
from batchyard.services import accounts, executions, invoke, jobs, scheduler
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution, finish_attempt
from batchyard.services.secrets import SecretBox
from batchyard.store.models import Account, Attempt, Execution, Job, LogLine, UsageDay

LEASE = 30.0
Result = Callable[..., AttemptResult]
ROOMY = {"max_executions_per_day": 100_000, "max_invocations_per_job_per_day": 100_000,
         "min_schedule_gap_minutes": 1, "max_jobs": 1000}


def run(platform: Platform, actor: Actor, job: Job) -> invoke.Recorded:
    return invoke.invoke(platform, actor, job.id, {}, {})


def execution(platform: Platform, execution_id: str) -> Execution:
    with platform.db.read() as session:
        return session.get_one(Execution, execution_id)


def attempts_of(platform: Platform, execution_id: str) -> list[Attempt]:
    with platform.db.read() as session:
        return list(session.scalars(select(Attempt).where(
            Attempt.execution_id == execution_id).order_by(Attempt.number)))


def day_row(platform: Platform, account_id: str, day: str) -> tuple[float, float]:
    with platform.db.read() as session:
        row = session.get(UsageDay, (account_id, day))
        return (row.runtime_seconds, row.reserved_seconds) if row else (0.0, 0.0)


def strict_actor(platform: Platform, make_account: Callable[..., Account],
                 make_actor: Callable[..., Actor], budget_minutes: float) -> Actor:
    account = make_account(plan={"daily_runtime_budget_minutes": budget_minutes})
    accounts.update_account(platform, account.id, {"budget_mode": "strict"})
    return make_actor(account)


# --- 1. One bad queued execution stops every account's queue ----------------------------

def test_1_an_execution_that_cannot_be_prepared_ends_setup_failed_and_the_queue_moves_on(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    first = make_actor(make_account())
    second = make_actor(make_account())
    sealed = make_published_job(first, variables=[
        {"key": "TOKEN", "value": "s3cret", "secret": True}])
    plain = make_published_job(second)
    bad = run(platform, first, sealed)
    good = run(platform, second, plain)
    # The server now holds another key: the secret was sealed with one it no longer has.
    rekeyed = replace(platform, secrets=SecretBox(Fernet.generate_key()))
    claimed = claim_next_execution(rekeyed, "node-a:1", LEASE)
    assert claimed is not None and claimed.execution_id == good.id
    ended = execution(platform, bad.id)
    assert (ended.status, ended.reason) == ("failed", "setup_failed")
    assert "cannot be decrypted" in (ended.message or "")
    assert ended.attempt_count == 0 and ended.started_at is None
    assert attempts_of(platform, bad.id) == []
    with platform.db.read() as session:
        logged = list(session.scalars(select(LogLine.message).where(
            LogLine.execution_id == bad.id)))
    assert logged == [ended.message]
    assert claim_next_execution(rekeyed, "node-a:1", LEASE) is None


# --- 2. The scheduler jams on PostgreSQL after a long outage ----------------------------

def test_2_after_a_three_week_outage_135_hourly_jobs_catch_up_and_then_fire_normally(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=ROOMY))
    hourly = {"type": "cron", "cron": "0 * * * *", "timezone": "UTC"}
    job_ids = [make_published_job(actor, schedule=hourly, settings={"concurrency": "allow"}).id
               for _ in range(135)]
    back = clock.at + timedelta(days=21, minutes=5)
    # 135 jobs x 504 missed hours: more (job, instant) keys than one statement may bind.
    first = scheduler.fire_due(platform, back)
    rest = scheduler.fire_due(platform, back)
    assert first.queued + rest.queued == 135
    assert first.missed + rest.missed == 135 * 503
    later = scheduler.fire_due(platform, back + timedelta(hours=1))
    assert (later.queued, later.missed, later.blocked) == (135, 0, 0)
    with platform.db.read() as session:
        keys = list(session.scalars(select(Execution.idempotency_key).where(
            Execution.job_id.in_(job_ids))))
    assert len(keys) == len(set(keys)) == 135 * 505


# --- 3. Strict budget over midnight -----------------------------------------------------

def test_3_strict_budget_an_execution_admitted_before_midnight_reserves_on_the_day_it_starts(
        platform: Platform, clock: FixedClock, result: Result,
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    actor = strict_actor(platform, make_account, make_actor, budget_minutes=20)
    evening_job = make_published_job(actor, settings={"concurrency": "allow",
                                                      "timeout_minutes": 10})
    morning_job = make_published_job(actor, settings={"concurrency": "allow",
                                                      "timeout_minutes": 15})
    clock.at = clock.at.replace(hour=23, minute=55)
    evening = run(platform, actor, evening_job)
    assert day_row(platform, actor.account_id, "2025-03-10") == (0, 600)
    clock.advance(minutes=10)  # 00:05 on the 11th
    claimed = claim_next_execution(platform, "node-a:1", LEASE)
    assert claimed is not None and claimed.execution_id == evening.id
    assert claimed.deadline_seconds == 600
    # The reservation moved with the attempt to the 11th, the day that will be charged.
    assert day_row(platform, actor.account_id, "2025-03-10") == (0, 0)
    assert day_row(platform, actor.account_id, "2025-03-11") == (0, 600)
    clock.advance(minutes=1)
    with pytest.raises(invoke.Blocked) as caught:  # 1200 - 600 < 900
        run(platform, actor, morning_job)
    assert caught.value.code == "runtime_budget_insufficient"
    clock.advance(minutes=10)
    finish_attempt(platform, claimed, result(AttemptOutcome.TIMED_OUT, runtime_seconds=600.4))
    assert day_row(platform, actor.account_id, "2025-03-11") == (600, 0)
    used = executions.usage(platform, actor, None)["runtime_seconds"]
    assert used["used"] + used["reserved"] <= 1200


# --- 4. misfire_grace_minutes: 0 makes a scheduled job never run -----------------------

def test_4_a_grace_of_zero_still_runs_a_fire_looked_at_a_few_seconds_late(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=ROOMY))
    daily = {"type": "daily", "times": ["13:00", "15:00"], "timezone": "UTC"}
    job = make_published_job(actor, schedule=daily, settings={"misfire_grace_minutes": 0})
    on_time = scheduler.fire_due(platform, datetime(2025, 3, 10, 13, 0, 2, tzinfo=UTC))
    assert (on_time.queued, on_time.missed) == (1, 0)
    too_late = scheduler.fire_due(platform, datetime(2025, 3, 10, 15, 0, 31, tzinfo=UTC))
    assert (too_late.queued, too_late.missed) == (0, 1)
    assert jobs.get_job(platform, actor, job.id).next_fire_at == \
        datetime(2025, 3, 11, 13, 0, tzinfo=UTC)


# --- 5. Re-publishing drops a due fire silently ------------------------------------------

def test_5_republishing_after_a_due_instant_fires_it_with_the_revision_in_force(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=ROOMY))
    daily = {"type": "daily", "times": ["13:00"], "timezone": "UTC"}
    job = make_published_job(actor, schedule=daily)  # published at 12:00
    clock.at = datetime(2025, 3, 10, 13, 10, tzinfo=UTC)  # the scheduler has not run yet
    jobs.update_settings(platform, actor, job.id, {"timeout_minutes": 30})
    republished = jobs.publish(platform, actor, job.id)
    assert republished.revision == 2
    assert republished.next_fire_at == datetime(2025, 3, 11, 13, 0, tzinfo=UTC)
    with platform.db.read() as session:
        fired = list(session.scalars(select(Execution).where(Execution.job_id == job.id)))
    assert [(e.scheduled_for, e.status, e.revision) for e in fired] == [
        (datetime(2025, 3, 10, 13, 0, tzinfo=UTC), "queued", 1)]
    assert scheduler.fire_due(platform, clock.at).jobs == 0


def test_5_republishing_long_after_a_due_instant_records_it_missed(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=ROOMY))
    daily = {"type": "daily", "times": ["13:00"], "timezone": "UTC"}
    job = make_published_job(actor, schedule=daily, settings={"misfire_grace_minutes": 5})
    clock.at = datetime(2025, 3, 10, 14, 0, tzinfo=UTC)
    jobs.publish(platform, actor, job.id)
    with platform.db.read() as session:
        fired = list(session.scalars(select(Execution).where(Execution.job_id == job.id)))
    assert [(e.status, e.reason) for e in fired] == [("missed", "misfire")]


# --- 6. A retry starts with no budget left -----------------------------------------------

def test_6_a_retry_with_no_budget_left_is_never_spawned_and_ends_runtime_budget_exhausted(
        platform: Platform, result: Result, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan={"daily_runtime_budget_minutes": 20}))
    long_job = make_published_job(actor, settings={"timeout_minutes": 15})
    flaky = make_published_job(actor, settings={"timeout_minutes": 10, "retries": 1})
    long_run = run(platform, actor, long_job)
    flaky_run = run(platform, actor, flaky)
    long_attempt = claim_next_execution(platform, "node-a:1", LEASE)
    flaky_attempt = claim_next_execution(platform, "node-a:2", LEASE)
    assert long_attempt is not None and long_attempt.execution_id == long_run.id
    assert flaky_attempt is not None and flaky_attempt.execution_id == flaky_run.id
    finish_attempt(platform, flaky_attempt, result(AttemptOutcome.FAILED, runtime_seconds=300))
    assert execution(platform, flaky_run.id).status == "queued"  # 15 minutes were left
    finish_attempt(platform, long_attempt, result(runtime_seconds=900))  # now none are
    assert claim_next_execution(platform, "node-a:1", LEASE) is None
    ended = execution(platform, flaky_run.id)
    assert (ended.status, ended.reason) == ("failed", "runtime_budget_exhausted")
    assert [a.number for a in attempts_of(platform, flaky_run.id)] == [1]
    assert ended.attempt_count == 1


def test_a_claim_holding_one_accounts_lock_does_not_wait_for_anothers(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    """A claim that has locked one account (here: its head could not be prepared and was
    ended) passes over an account locked elsewhere instead of waiting for it: waiting
    while holding a lock, in its own heads' order, deadlocked with other claims and with
    admissions (seen with 4 workers and 8 accounts: invocations answered 500)."""
    if platform.db.is_sqlite:
        pytest.skip("SQLite has no row locks: its writers run one after the other")
    first = make_actor(make_account())
    second = make_actor(make_account())
    sealed = make_published_job(first, variables=[
        {"key": "TOKEN", "value": "s3cret", "secret": True}])
    bad = run(platform, first, sealed)
    time.sleep(0.002)
    good = run(platform, second, make_published_job(second))
    rekeyed = replace(platform, secrets=SecretBox(Fernet.generate_key()))
    holder = create_engine(platform.db.url)
    outcome: dict[str, object] = {}
    with holder.connect() as connection:
        # A slow admission of the second account holds its row.
        connection.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE"),
                           {"a": second.account_id})
        claiming = threading.Thread(target=lambda: outcome.update(
            claimed=claim_next_execution(rekeyed, "node-a:1", LEASE)))
        claiming.start()
        claiming.join(10)
        still_waiting = claiming.is_alive()
        connection.rollback()
    claiming.join(30)
    holder.dispose()
    assert not still_waiting, "the claim waited for the second account while holding the first"
    assert outcome["claimed"] is None
    assert (execution(platform, bad.id).status, execution(platform, good.id).status) == (
        "failed", "queued")
    claimed = claim_next_execution(rekeyed, "node-a:1", LEASE)
    assert claimed is not None and claimed.execution_id == good.id


# --- 7. Delete races invoke ---------------------------------------------------------------

def test_7_a_delete_racing_an_invoke_leaves_no_queued_execution_of_the_deleted_job(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    if platform.db.is_sqlite:
        pytest.skip("SQLite runs every writer after the other (BEGIN IMMEDIATE): no race")
    actor = make_actor(make_account())
    job = make_published_job(actor, settings={"concurrency": "allow"})
    run(platform, actor, job)  # today's usage row exists
    # Hold today's usage row: the invocation below reads the job, records its execution
    # and then waits here, inside its transaction, as a slow admission would.
    holder = create_engine(platform.db.url)
    outcomes: dict[str, object] = {}
    with holder.connect() as connection:
        connection.execute(text("SELECT 1 FROM usage_days WHERE account_id = :a FOR UPDATE"),
                           {"a": actor.account_id})

        def invoke_now() -> None:
            try:
                outcomes["invoke"] = run(platform, actor, job).id
            except Exception as exc:  # reported below
                outcomes["invoke"] = exc

        def delete_now() -> None:
            try:
                outcomes["delete"] = jobs.delete_job(platform, actor, job.id).id
            except Exception as exc:
                outcomes["delete"] = exc

        invoking = threading.Thread(target=invoke_now)
        invoking.start()
        _wait_for_lock_waiters(holder, 1)
        deleting = threading.Thread(target=delete_now)
        deleting.start()
        # The delete must wait for the admission in flight (the account lock).
        _wait_for_lock_waiters(holder, 2)
        connection.rollback()
    invoking.join(30)
    deleting.join(30)
    holder.dispose()
    assert isinstance(outcomes["invoke"], str) and outcomes["delete"] == job.id
    late = execution(platform, outcomes["invoke"])
    assert (late.status, late.reason) == ("cancelled", "job_deleted")
    assert claim_next_execution(platform, "node-a:1", LEASE) is None


def _wait_for_lock_waiters(engine: Engine, count: int) -> None:
    deadline = time.monotonic() + 20
    with engine.connect() as probe:
        while time.monotonic() < deadline:
            waiting = probe.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")).scalar_one()
            probe.rollback()
            if waiting >= count:
                return
            time.sleep(0.02)
    raise AssertionError(f"fewer than {count} transactions came to wait on a lock")


def test_7_a_claim_never_starts_an_execution_whose_job_was_deleted(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account())
    job = make_published_job(actor)
    queued = run(platform, actor, job)
    # As a commit racing the delete would leave it: the job gone, its execution queued.
    with platform.db.write() as session:
        session.execute(update(Job).where(Job.id == job.id).values(
            deleted_at=datetime(2025, 3, 10, 12, 0, tzinfo=UTC), status="unpublished"))
    assert claim_next_execution(platform, "node-a:1", LEASE) is None
    ended = execution(platform, queued.id)
    assert (ended.status, ended.reason) == ("cancelled", "job_deleted")
    assert attempts_of(platform, queued.id) == []


# --- 8. Unpublish leaves queued executions to run ---------------------------------------

def test_8_unpublishing_cancels_queued_executions_and_running_ones_finish(
        platform: Platform, result: Result, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    account = make_account()
    accounts.update_account(platform, account.id, {"budget_mode": "strict"})
    actor = make_actor(account)
    job = make_published_job(actor, settings={"concurrency": "allow"})
    running = run(platform, actor, job)
    waiting = run(platform, actor, job)
    claimed = claim_next_execution(platform, "node-a:1", LEASE)
    assert claimed is not None and claimed.execution_id == running.id
    jobs.unpublish(platform, actor, job.id)
    ended = execution(platform, waiting.id)
    assert (ended.status, ended.reason) == ("cancelled", "job_unpublished")
    assert claim_next_execution(platform, "node-a:1", LEASE) is None
    finish_attempt(platform, claimed, result(runtime_seconds=60))
    assert execution(platform, running.id).status == "succeeded"
    used = executions.usage(platform, actor, None)["runtime_seconds"]
    assert (used["used"], used["reserved"]) == (60, 0)  # no reservation left behind


# --- 9. The scheduler busy-loops while a due job's row is locked ------------------------

def test_9_the_scheduler_backs_off_while_a_due_jobs_row_is_locked_elsewhere(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=ROOMY))
    hourly = {"type": "cron", "cron": "0 * * * *", "timezone": "UTC"}
    job = make_published_job(actor, schedule=hourly)
    clock.advance(hours=1)  # due
    if platform.db.is_sqlite:
        pytest.skip("SQLite has no row locks: a due row is never held by another writer")
    loop = SchedulerLoop(platform)
    holder = create_engine(platform.db.url)
    steps = 0
    with holder.connect() as connection:
        connection.execute(text("SELECT 1 FROM jobs WHERE id = :j FOR UPDATE"), {"j": job.id})
        cpu_before = _cpu_seconds()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 3.0:
            wait = loop.step()
            steps += 1
            time.sleep(max(0.0, min(wait, 3.0 - elapsed)))
        cpu = _cpu_seconds() - cpu_before
        connection.rollback()
    holder.dispose()
    # A busy loop makes hundreds of steps and burns most of a core for the 3 s.
    assert steps <= 5 and cpu < 1.0, (steps, cpu)
    assert scheduler.fire_due(platform, clock.now()).queued == 1  # free again: it fires


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- 10. A timed-out attempt is charged more than its deadline --------------------------

def test_10_a_timed_out_attempt_is_charged_at_most_its_deadline_and_a_fourth_hour_fits(
        platform: Platform, clock: FixedClock, result: Result,
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account())  # 240 minutes a day
    job = make_published_job(actor, settings={"concurrency": "allow", "timeout_minutes": 60})
    for _ in range(3):
        recorded = run(platform, actor, job)
        claimed = claim_next_execution(platform, "node-a:1", LEASE)
        assert claimed is not None and claimed.deadline_seconds == 3600
        clock.advance(seconds=3601)
        # Measured past the deadline: the spawn before the timer, the kill's grace.
        finish_attempt(platform, claimed, result(AttemptOutcome.TIMED_OUT,
                                                 runtime_seconds=3600.0199))
        attempt = attempts_of(platform, recorded.id)[0]
        assert attempt.runtime_seconds == 3600
        assert execution(platform, recorded.id).runtime_seconds == 3600
    assert day_row(platform, actor.account_id, "2025-03-10") == (10800, 0)
    fourth = run(platform, actor, job)  # exactly 60 minutes left: it fits
    assert fourth.status == "queued"


# --- Decided: a plan lowered after publish ----------------------------------------------

def test_a_revision_over_a_lowered_plan_is_blocked_until_published_within_it(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    account = make_account(plan={"max_retries": 2})
    actor = make_actor(account)
    job = make_published_job(actor, settings={"timeout_minutes": 120, "retries": 2})
    accounts.update_account(platform, account.id, {"plan": {
        "max_retries": 1, "max_execution_timeout_minutes": 60}})
    with pytest.raises(invoke.Blocked) as caught:
        run(platform, actor, job)
    assert (caught.value.code, caught.value.status) == ("revision_exceeds_plan", 429)
    blocked = execution(platform, caught.value.extra["execution_id"])
    assert (blocked.status, blocked.reason) == ("blocked", "revision_exceeds_plan")
    with pytest.raises(Exception, match="more than the plan allows"):
        jobs.publish(platform, actor, job.id)
    jobs.update_settings(platform, actor, job.id, {"timeout_minutes": 60, "retries": 1})
    jobs.publish(platform, actor, job.id)
    assert run(platform, actor, job).status == "queued"


# --- Issue 9 §4: fair slots ----------------------------------------------------------------

def test_an_account_at_its_max_concurrent_executions_waits_and_others_are_served(
        platform: Platform, result: Result, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    busy = make_actor(make_account(plan={"max_concurrent_executions": 2}))
    other = make_actor(make_account())
    busy_job = make_published_job(busy, settings={"concurrency": "allow"})
    other_job = make_published_job(other)
    waiting = [run(platform, busy, busy_job) for _ in range(4)]
    latecomer = run(platform, other, other_job)
    taken = [claim_next_execution(platform, f"node-a:{n}", LEASE) for n in range(4)]
    claimed_ids = [attempt.execution_id for attempt in taken if attempt is not None]
    # Two of the busy account's, then the other account's; the rest of the busy one's wait.
    assert sorted(claimed_ids) == sorted([waiting[0].id, waiting[1].id, latecomer.id])
    assert taken[3] is None
    assert [execution(platform, e.id).status for e in waiting[2:]] == ["queued", "queued"]
    first = next(a for a in taken if a is not None and a.execution_id == waiting[0].id)
    finish_attempt(platform, first, result())
    freed = claim_next_execution(platform, "node-a:9", LEASE)
    assert freed is not None and freed.execution_id == waiting[2].id


def test_concurrent_claims_never_exceed_an_accounts_max_concurrent_executions(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan={"max_concurrent_executions": 3,
                                          "max_invocations_per_job_per_day": 50,
                                          "max_executions_per_day": 50}))
    job = make_published_job(actor, settings={"concurrency": "allow"})
    for _ in range(20):
        run(platform, actor, job)
    claimed: list[object] = []
    barrier = threading.Barrier(8)

    def worker(number: int) -> None:
        barrier.wait()
        for _ in range(3):
            attempt = claim_next_execution(platform, f"node-a:{number}", LEASE)
            if attempt is not None:
                claimed.append(attempt)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(claimed) == 3
    with platform.db.read() as session:
        running = session.scalar(select(func.count()).select_from(Execution).where(
            Execution.account_id == actor.account_id, Execution.status == "running"))
    assert running == 3
