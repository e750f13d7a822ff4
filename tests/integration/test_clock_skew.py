"""Leases use each process's clock: a sweeper whose clock is far from the database's alarms
and does not sweep (runtime/loops/pool.py, max_clock_offset)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from batchyard.domain.clock import FixedClock, SystemClock
from batchyard.runtime.loops.pool import PoolTiming, max_clock_offset, sweep_if_clock_agrees
from batchyard.services import executions, invoke
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution
from batchyard.store.models import Account, Job

TIMING = PoolTiming(poll_interval=1, lease_seconds=30, heartbeat_seconds=2, sweep_interval=5)


def test_the_tolerated_offset_keeps_two_processes_within_a_lease_less_a_heartbeat() -> None:
    assert max_clock_offset(TIMING) * 2 == TIMING.lease_seconds - TIMING.heartbeat_seconds


def test_a_sweeper_whose_clock_runs_ahead_of_the_database_alarms_and_takes_nothing(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job],
        caplog: pytest.LogCaptureFixture) -> None:
    if platform.db.is_sqlite:
        pytest.skip("SQLite is one host's store: one clock")
    real = replace(platform, clock=SystemClock())
    actor = make_actor(make_account())
    job = make_published_job(actor)
    recorded = invoke.invoke(real, actor, job.id, {}, {})
    assert claim_next_execution(real, "node-a:1", TIMING.lease_seconds) is not None
    # A sweeper 10 minutes ahead sees that live lease as long expired.
    ahead = replace(platform, clock=FixedClock(datetime.now(UTC) + timedelta(minutes=10)))
    with caplog.at_level(logging.ERROR, logger="batchyard.worker"):
        assert sweep_if_clock_agrees(ahead, TIMING) is None
    assert "ahead of the database's" in caplog.text
    assert executions.get_execution(real, actor, recorded.id).execution.status == "running"
    # A sweeper whose clock agrees sweeps as usual (nothing is lost yet).
    assert sweep_if_clock_agrees(real, TIMING) == 0
