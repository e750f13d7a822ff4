"""An attempt's final write that meets a transient database failure is tried again."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from batchyard.domain.attempts import AttemptResult
from batchyard.runtime.loops.pool import finish_with_retries
from batchyard.runtime.port_local import LocalPort
from batchyard.services import executions, invoke
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution, finish_attempt
from batchyard.store.db import Database
from batchyard.store.models import Account, Job


def test_a_final_write_failing_while_the_store_is_locked_is_retried_with_the_same_fencing(
        platform: Platform, result: Callable[..., AttemptResult],
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    if not platform.db.is_sqlite:
        pytest.skip("the transient failure is made with SQLite's lock and busy timeout")
    actor = make_actor(make_account())
    job = make_published_job(actor)
    recorded = invoke.invoke(platform, actor, job.id, {}, {})
    attempt = claim_next_execution(platform, "node-a:1", 30)
    assert attempt is not None
    # The worker's view of the store gives up on a lock after 0.2 s, as a database that is
    # restarting or overloaded fails a write.
    impatient = Database(platform.db.url, busy_timeout=0.2)
    worker_platform = replace(platform, db=impatient)
    path = platform.db.url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(1.5, blocker.rollback)
    releaser.start()
    started = time.monotonic()
    try:
        with pytest.raises(Exception, match="database is locked"):
            finish_attempt(worker_platform, attempt, result())
        assert finish_with_retries(LocalPort(worker_platform), attempt, result(), give_up_after=30)
    finally:
        releaser.join()
        blocker.close()
        impatient.dispose()
    assert time.monotonic() - started >= 1.4
    ended = executions.get_execution(platform, actor, recorded.id).execution
    assert (ended.status, ended.attempt_count) == ("succeeded", 1)
    # A second try of the same end is fenced: nothing is recorded twice.
    assert not finish_with_retries(LocalPort(platform), attempt, result(), give_up_after=1)


def test_a_final_write_that_keeps_failing_gives_up_after_the_lease(
        platform: Platform, result: Callable[..., AttemptResult],
        make_account: Callable[..., Account], make_actor: Callable[..., Actor],
        make_published_job: Callable[..., Job]) -> None:
    if not platform.db.is_sqlite:
        pytest.skip("the transient failure is made with SQLite's lock and busy timeout")
    actor = make_actor(make_account())
    job = make_published_job(actor)
    invoke.invoke(platform, actor, job.id, {}, {})
    attempt = claim_next_execution(platform, "node-a:1", 30)
    assert attempt is not None
    impatient = Database(platform.db.url, busy_timeout=0.1)
    blocker = sqlite3.connect(platform.db.url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    try:
        assert not finish_with_retries(LocalPort(replace(platform, db=impatient)), attempt,
                                       result(),
                                       give_up_after=1.0)
    finally:
        blocker.rollback()
        blocker.close()
        impatient.dispose()
    assert time.monotonic() - started < 5
