"""Group commit of API invocations: batched admission decides exactly as one-by-one would."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import pytest
from sqlalchemy import func, select

from batchyard.errors import NotFound
from batchyard.services.context import Actor, Platform
from batchyard.services.invoke import Invocation
from batchyard.services.invoke_batcher import Decision, InvocationBatcher
from batchyard.store.models import Account, Execution, Job


def api_call(job: Job, n: int = 0) -> Invocation:
    return Invocation(job_id=job.id, source="api",
                      params={"body": {"n": n}, "query_string_parameters": {}})


def test_concurrent_submissions_admit_exactly_the_daily_limit(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan={"max_executions_per_day": 24,
                                          "max_invocations_per_job_per_day": 1000}))
    job = make_published_job(actor, settings={"concurrency": "allow"})
    batcher = InvocationBatcher(platform, max_batch=16)
    batcher.start()
    futures: list[Future[Decision]] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        for n in range(25):
            future = batcher.submit(actor.account_id, api_call(job, offset + n))
            with lock:
                futures.append(future)

    try:
        threads = [threading.Thread(target=client, args=(k * 100,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        decisions = [future.result(timeout=60) for future in futures]
    finally:
        batcher.stop()
    admitted = [recorded for recorded, admission in decisions if admission.admitted]
    refused = {recorded.reason for recorded, admission in decisions if not admission.admitted}
    assert len(decisions) == 200
    assert len(admitted) == 24
    assert refused == {"executions_per_day_exceeded"}
    with platform.db.read() as session:
        stored = dict(session.execute(select(Execution.status, func.count()).where(
            Execution.account_id == actor.account_id).group_by(Execution.status)).all())
    assert stored == {"queued": 24, "blocked": 176}


def test_an_unknown_job_fails_alone_and_its_batch_neighbours_are_admitted(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    first = make_actor(make_account())
    second = make_actor(make_account())
    job_a = make_published_job(first, settings={"concurrency": "allow"})
    job_b = make_published_job(second, settings={"concurrency": "allow"})
    batcher = InvocationBatcher(platform)
    unknown = Invocation(job_id="job_doesnotexist", source="api", params={})
    # Another tenant's job is as unknown to this account as a made-up id.
    foreign = api_call(job_b)
    futures = batcher.admit_together([
        (first.account_id, api_call(job_a, 1)), (first.account_id, unknown),
        (second.account_id, api_call(job_b, 2)), (first.account_id, foreign),
        (first.account_id, api_call(job_a, 3))])
    outcomes = [future.exception() or future.result() for future in futures]
    assert isinstance(outcomes[1], NotFound)
    assert isinstance(outcomes[3], NotFound)
    for index in (0, 2, 4):
        recorded, admission = outcomes[index]  # type: ignore[misc]
        assert admission.admitted and recorded.status == "queued"
    with platform.db.read() as session:
        per_account = dict(session.execute(select(Execution.account_id, func.count())
                                           .group_by(Execution.account_id)).all())
    assert per_account == {first.account_id: 2, second.account_id: 1}


def test_stopping_admits_every_invocation_already_submitted(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account(plan={"max_executions_per_day": 1000,
                                          "max_invocations_per_job_per_day": 1000}))
    job = make_published_job(actor, settings={"concurrency": "allow"})
    batcher = InvocationBatcher(platform, max_batch=4)
    batcher.start()
    futures = [batcher.submit(actor.account_id, api_call(job, n)) for n in range(40)]
    batcher.stop()
    assert all(future.done() for future in futures)
    assert sum(future.result()[1].admitted for future in futures) == 40
    # After stopping, a late request is still admitted (on the caller's thread), not lost.
    late = batcher.submit(actor.account_id, api_call(job, 99))
    assert late.result(timeout=0)[0].status == "queued"


@pytest.mark.parametrize("max_batch", [1, 64])
def test_a_batch_keeps_arrival_order_within_an_account(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job],
        max_batch: int) -> None:
    actor = make_actor(make_account(plan={"max_invocations_per_job_per_day": 3}))
    job = make_published_job(actor, settings={"concurrency": "allow"})
    batcher = InvocationBatcher(platform, max_batch=max_batch)
    futures = batcher.admit_together([(actor.account_id, api_call(job, n)) for n in range(5)])
    statuses = [future.result()[0].status for future in futures]
    # The first three in arrival order are admitted, never a later one ahead of them.
    assert statuses == ["queued", "queued", "queued", "blocked", "blocked"]


def test_a_request_cancelled_while_waiting_is_not_admitted_and_its_neighbours_are(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    if not platform.db.is_sqlite:
        pytest.skip("holds SQLite's in-process write lock to keep the requests waiting")
    actor = make_actor(make_account(plan={"max_executions_per_day": 100,
                                          "max_invocations_per_job_per_day": 100}))
    job = make_published_job(actor, settings={"concurrency": "allow"})
    batcher = InvocationBatcher(platform)
    batcher.start()
    lock = platform.db._write_lock  # the batcher's transaction waits behind it
    try:
        with lock:
            first = batcher.submit(actor.account_id, api_call(job, 1))
            deadline = time.monotonic() + 10
            while first.running() is False and time.monotonic() < deadline:
                time.sleep(0.01)  # the batcher took it and waits for the lock
            waiting = [batcher.submit(actor.account_id, api_call(job, n)) for n in (2, 3, 4)]
            assert waiting[1].cancel()  # its client went away before its turn
        decisions = [first.result(timeout=30), waiting[0].result(timeout=30),
                     waiting[2].result(timeout=30)]
    finally:
        batcher.stop()
    assert [recorded.status for recorded, _ in decisions] == ["queued"] * 3
    assert waiting[1].cancelled()
    with platform.db.read() as session:
        bodies = sorted(params["body"]["n"] for params in session.scalars(
            select(Execution.params).where(Execution.account_id == actor.account_id)))
    assert bodies == [1, 2, 4]


def test_an_account_whose_row_is_held_delays_only_its_own_invocations(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    if platform.db.is_sqlite:
        pytest.skip("SQLite has one writer: every invocation waits for it whatever its account")
    held_actor = make_actor(make_account())
    free_actor = make_actor(make_account())
    held_job = make_published_job(held_actor, settings={"concurrency": "allow"})
    free_job = make_published_job(free_actor, settings={"concurrency": "allow"})
    batcher = InvocationBatcher(platform)
    batcher.start()
    try:
        # Another transaction (a scheduler admitting a large batch, say) holds the row.
        with platform.db.write() as session:
            session.execute(select(Account.id).where(Account.id == held_actor.account_id)
                            .with_for_update())
            held = batcher.submit(held_actor.account_id, api_call(held_job))
            time.sleep(0.2)
            free = batcher.submit(free_actor.account_id, api_call(free_job))
            assert free.result(timeout=5)[0].status == "queued"
            assert not held.done()
        assert held.result(timeout=10)[0].status == "queued"
    finally:
        batcher.stop()
