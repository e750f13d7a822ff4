"""Several scheduler processes on one database: 500 jobs, several ticks, exactly once.

Each "process" is a Platform of its own (its own engine, connection pool and
revision cache) over the test's database, driven by two threads calling
``fire_due`` at the same instants, as two ``serve`` processes on one PostgreSQL
(or one SQLite file) would. Runs on both backends through the ``platform``
fixture; the PostgreSQL run is skipped without ``BATCHYARD_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import random
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from batchyard.domain.clock import FixedClock
from batchyard.services import scheduler
from batchyard.services.context import Actor, Platform
from batchyard.services.ids import new_id
from batchyard.store.db import Database
from batchyard.store.models import Account, CodeVersion, Execution, Job, Revision

HOURLY = {"type": "cron", "cron": "0 * * * *", "timezone": "UTC"}
PLAN = {"max_executions_per_day": 100_000, "max_invocations_per_job_per_day": 100,
        "min_schedule_gap_minutes": 60, "max_jobs": 1000}
JOBS = 500
ACCOUNTS = 5
PROCESSES = 2
THREADS_PER_PROCESS = 2
# Published at 12:00 (the clock's start): due at 13:00, 14:00 and 15:00. The second
# look at 13:00 and 14:00 is a process whose clock runs 20 s ahead of the other's.
TICKS = [datetime(2025, 3, 10, 13, 0, tzinfo=UTC), datetime(2025, 3, 10, 13, 0, 20, tzinfo=UTC),
         datetime(2025, 3, 10, 14, 0, tzinfo=UTC), datetime(2025, 3, 10, 14, 0, 20, tzinfo=UTC),
         datetime(2025, 3, 10, 15, 0, tzinfo=UTC)]
INSTANTS = sorted({tick.replace(second=0) for tick in TICKS})


def clone_published_jobs(platform: Platform, template: Job, account_ids: list[str],
                         count: int, now: datetime) -> list[str]:
    """``count`` copies of a published job, spread at random over the accounts.

    Rows are inserted in bulk, as ``jobs.publish`` would leave them: a code version,
    revision 1 with the same settings and schedule, and ``next_fire_at`` set by
    ``scheduler.first_fire`` from the publishing instant.
    """
    rng = random.Random(20250310)
    with platform.db.write() as session:
        code = session.scalars(select(CodeVersion).where(CodeVersion.job_id == template.id)).one()
        revision = session.scalars(select(Revision).where(Revision.job_id == template.id)).one()
        content = code.content
        next_fire_at = scheduler.first_fire(revision.schedule, now)
        job_ids: list[str] = []
        job_rows, code_rows, revision_rows = [], [], []
        for number in range(count):
            job_id, account_id = new_id("job"), rng.choice(account_ids)
            job_ids.append(job_id)
            job_rows.append(dict(
                id=job_id, account_id=account_id, name=f"clone {number}", description="",
                status="published", settings=template.settings, schedule=template.schedule,
                code_version=1, revision=1, next_fire_at=next_fire_at, created_at=now,
                modified_at=now, deleted_at=None))
            code_rows.append(dict(
                id=new_id("code"), account_id=account_id, job_id=job_id, version=1,
                sha256=code.sha256, size=code.size, main_parameters=code.main_parameters,
                requirements=code.requirements, created_by="bulk@example.com",
                created_at=now, content=content))
            revision_rows.append(dict(
                id=new_id("rev"), account_id=account_id, job_id=job_id, number=1,
                code_version=1, settings=revision.settings, variables=[],
                schedule=revision.schedule, created_by="bulk@example.com", created_at=now))
        session.execute(insert(Job), job_rows)
        session.execute(insert(CodeVersion), code_rows)
        session.execute(insert(Revision), revision_rows)
    return job_ids


@pytest.fixture
def processes(platform: Platform) -> Iterator[list[Platform]]:
    """The test's platform plus more scheduler "processes", each with its own engine."""
    others = [Platform(db=Database(platform.db.url), clock=FixedClock(platform.clock.now()),
                       secrets=platform.secrets) for _ in range(PROCESSES - 1)]
    yield [platform, *others]
    for other in others:
        other.db.dispose()


def run_schedulers(processes: list[Platform], ticks: list[datetime]) -> list[str]:
    """Every thread of every process calls fire_due at each tick; the tracebacks raised."""
    threads_count = len(processes) * THREADS_PER_PROCESS
    barrier = threading.Barrier(threads_count)
    errors: list[str] = []

    def scheduler_thread(platform: Platform) -> None:
        for tick in ticks:
            try:
                barrier.wait(timeout=120)
            except threading.BrokenBarrierError:
                return
            try:
                scheduler.fire_due(platform, tick)
            except BaseException:
                errors.append(traceback.format_exc())

    threads = [threading.Thread(target=scheduler_thread, args=(platform,))
               for platform in processes for _ in range(THREADS_PER_PROCESS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a scheduler thread hangs"
    return errors


def test_several_schedulers_fire_each_job_and_instant_exactly_once_over_500_jobs(
        platform: Platform, clock: FixedClock, processes: list[Platform],
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    accounts = [make_account(plan=PLAN) for _ in range(ACCOUNTS)]
    template = make_published_job(make_actor(accounts[0]), schedule=HOURLY,
                                  settings={"concurrency": "allow"})
    job_ids = [template.id, *clone_published_jobs(platform, template,
                                                  [a.id for a in accounts], JOBS - 1,
                                                  clock.now())]
    assert scheduler.next_due(platform) == INSTANTS[0]

    errors = run_schedulers(processes, TICKS)

    assert errors == [], "\n".join(errors)
    with platform.db.read() as session:
        rows = session.execute(select(Execution.idempotency_key, Execution.job_id,
                                      Execution.scheduled_for, Execution.status)
                               .where(Execution.source == "scheduler")).all()
        next_fires = Counter(session.scalars(select(Job.next_fire_at)))
        queued_per_account = dict(session.execute(
            select(Execution.account_id, func.count()).group_by(Execution.account_id)).all())
    keys = Counter(row.idempotency_key for row in rows)
    assert len(keys) == JOBS * len(INSTANTS)
    assert set(keys.values()) == {1}
    assert {(row.job_id, row.scheduled_for) for row in rows} == {
        (job_id, instant) for job_id in job_ids for instant in INSTANTS}
    assert Counter(row.status for row in rows) == {"queued": JOBS * len(INSTANTS)}
    assert next_fires == {INSTANTS[-1] + timedelta(hours=1): JOBS}
    # Every account's jobs took part (the random spread left none empty).
    assert len(queued_per_account) == ACCOUNTS
    assert sum(queued_per_account.values()) == JOBS * len(INSTANTS)
