"""The worker pool through its port: a worker that cannot renew its lease kills its attempt."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from batchyard.app import job_python
from batchyard.runtime.box.supervisor import RuntimeLimits, Supervisor
from batchyard.runtime.loops.pool import PoolTiming, WorkerPool
from batchyard.runtime.port_local import LocalPort
from batchyard.services import executions, invoke
from batchyard.services.context import Actor, Platform
from batchyard.store.db import Database
from batchyard.store.models import Account, Job
from support.processes import process_alive


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_worker_that_cannot_renew_its_lease_kills_its_own_attempt(
        platform: Platform, tmp_path: Path, code_zip: Callable[..., bytes],
        make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    if not platform.db.is_sqlite:
        pytest.skip("the store's failure is made with SQLite's lock and busy timeout")
    pid_file = tmp_path / "child.pid"
    main = (f"import os, time\ndef main():\n    open({str(pid_file)!r}, 'w').write("
            "str(os.getpid()))\n    time.sleep(60)\n")
    actor = make_actor(make_account())
    job = make_published_job(actor, code=code_zip(main))
    recorded = invoke.invoke(platform, actor, job.id, {}, {})
    # The worker's store gives up on a lock after 0.2 s, as an unreachable control plane.
    impatient = Database(platform.db.url, busy_timeout=0.2)
    supervisor = Supervisor(job_python(None), tmp_path / "work", RuntimeLimits(
        kill_grace_seconds=0.3, log_cap_bytes=64 * 1024, log_line_max_bytes=1024,
        artifact_cap_bytes=1000, artifact_max_files=2))
    timing = PoolTiming(poll_interval=0.2, lease_seconds=3.0, heartbeat_seconds=0.5,
                        sweep_interval=100)
    pool = WorkerPool(LocalPort(replace(platform, db=impatient)), supervisor, "node-t:1", 1,
                      timing, platform.clock.now)
    blocker = sqlite3.connect(platform.db.url.removeprefix("sqlite:///"),
                              isolation_level=None, check_same_thread=False)
    pool.start()
    try:
        assert _wait(lambda: pid_file.exists() and pid_file.read_text() != "", 20)
        pid = int(pid_file.read_text())
        assert process_alive(pid)
        blocker.execute("BEGIN IMMEDIATE")
        blocked = time.monotonic()
        assert _wait(lambda: not process_alive(pid), 10), "the child outlived the lease"
        # Killed once the lease could be taken, not at the first failed renewal.
        assert time.monotonic() - blocked >= timing.lease_seconds - 2 * timing.heartbeat_seconds
        blocker.rollback()
        ended = _wait(lambda: executions.get_execution(platform, actor, recorded.id)
                      .execution.status == "failed", 10)
        assert ended
    finally:
        if blocker.in_transaction:
            blocker.rollback()
        blocker.close()
        pool.stop()
        impatient.dispose()
    detail = executions.get_execution(platform, actor, recorded.id)
    assert detail.attempts[0].status == "interrupted"
    assert "could not renew its lease" in (detail.attempts[0].error or "")
    assert detail.execution.reason == "interrupted"
    assert os.path.exists(pid_file)
