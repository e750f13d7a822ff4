"""The scheduler against a real database: exactly once, misfires, unpublish, concurrency."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from batchyard.domain.clock import FixedClock
from batchyard.services import jobs, scheduler
from batchyard.services.context import Actor, Platform
from batchyard.store.models import Account, Execution, Job

DAILY_1300 = {"type": "daily", "times": ["13:00"], "timezone": "UTC"}
HOURLY = {"type": "cron", "cron": "0 * * * *", "timezone": "UTC"}
SMALL_GAP = {"min_schedule_gap_minutes": 1, "max_invocations_per_job_per_day": 100,
             "max_executions_per_day": 1000}


def scheduled(platform: Platform, job_id: str) -> list[Execution]:
    with platform.db.read() as session:
        return list(session.scalars(select(Execution).where(
            Execution.job_id == job_id, Execution.source == "scheduler")
            .order_by(Execution.scheduled_for)))


def test_a_due_instant_fires_once_and_the_next_one_is_scheduled(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=SMALL_GAP))
    job = make_published_job(actor, schedule=DAILY_1300)  # published at 12:00 UTC
    assert job.next_fire_at == datetime(2025, 3, 10, 13, 0, tzinfo=UTC)
    assert scheduler.fire_due(platform, clock.at + timedelta(minutes=59)).queued == 0
    at_one = clock.at + timedelta(hours=1)
    assert scheduler.fire_due(platform, at_one).queued == 1
    assert scheduler.fire_due(platform, at_one).queued == 0
    fired = scheduled(platform, job.id)
    assert [(e.status, e.scheduled_for, e.params["body"]) for e in fired] == [
        ("queued", datetime(2025, 3, 10, 13, 0, tzinfo=UTC), {})]
    assert jobs.get_job(platform, actor, job.id).next_fire_at == \
        datetime(2025, 3, 11, 13, 0, tzinfo=UTC)
    assert scheduler.next_due(platform) == datetime(2025, 3, 11, 13, 0, tzinfo=UTC)


def test_fires_missed_within_the_grace_run_once_and_older_ones_are_recorded_missed(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=SMALL_GAP))
    job = make_published_job(actor, schedule=HOURLY, settings={"misfire_grace_minutes": 120})
    # Published at 12:00: instants 13:00 .. 16:00 pass while "the server is down".
    report = scheduler.fire_due(platform, datetime(2025, 3, 10, 16, 30, tzinfo=UTC))
    assert (report.queued, report.missed, report.coalesced) == (1, 2, 1)
    fired = scheduled(platform, job.id)
    assert [(e.scheduled_for.hour, e.status) for e in fired] == [
        (13, "missed"), (14, "missed"), (16, "queued")]
    assert fired[-1].params["coalesced"] == ["2025-03-10T15:00:00+00:00"]
    assert all(e.reason == "misfire" for e in fired[:2])


def test_unpublishing_stops_fires_and_republishing_does_not_replay_the_past(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan=SMALL_GAP))
    job = make_published_job(actor, schedule=HOURLY)
    jobs.unpublish(platform, actor, job.id)
    assert scheduler.fire_due(platform, clock.at + timedelta(hours=3)).jobs == 0
    clock.advance(hours=3)
    republished = jobs.publish(platform, actor, job.id)
    assert republished.next_fire_at == datetime(2025, 3, 10, 16, 0, tzinfo=UTC)
    assert scheduler.fire_due(platform, clock.at).jobs == 0
    assert scheduled(platform, job.id) == []


def test_a_scheduled_fire_over_a_plan_limit_is_recorded_blocked(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan={**SMALL_GAP, "max_invocations_per_job_per_day": 1}))
    job = make_published_job(actor, schedule=HOURLY, settings={"concurrency": "allow"})
    scheduler.fire_due(platform, datetime(2025, 3, 10, 13, 0, tzinfo=UTC))
    report = scheduler.fire_due(platform, datetime(2025, 3, 10, 14, 0, tzinfo=UTC))
    assert (report.queued, report.blocked) == (0, 1)
    assert [e.reason for e in scheduled(platform, job.id)] == [None,
                                                              "job_invocations_exceeded"]


def test_concurrent_schedulers_fire_each_instant_exactly_once(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan={**SMALL_GAP, "max_jobs": 40}))
    created = [make_published_job(actor, schedule=HOURLY, settings={"concurrency": "allow"})
               for _ in range(30)]
    errors: list[BaseException] = []

    def tick(hour: int) -> None:
        try:
            scheduler.fire_due(platform, datetime(2025, 3, 10, hour, 0, tzinfo=UTC))
        except BaseException as exc:
            errors.append(exc)

    for hour in (13, 14, 15):
        threads = [threading.Thread(target=tick, args=(hour,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    with platform.db.read() as session:
        keys = Counter(session.scalars(select(Execution.idempotency_key).where(
            Execution.job_id.in_([job.id for job in created]))))
    assert len(keys) == 30 * 3
    assert set(keys.values()) == {1}
