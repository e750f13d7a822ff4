"""Retention: expired executions (and everything hanging from them) and old audit entries
are deleted in small batches, while invocations go on; SQLite gives the space back."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from batchyard.domain.clock import FixedClock
from batchyard.errors import BatchyardError
from batchyard.runtime.box.envcache import EnvCache
from batchyard.runtime.loops.retention_loop import (
    RetentionLoop,
    RetentionPolicy,
    UvCache,
    folder_bytes,
)
from batchyard.services import audit, executions, invoke, retention
from batchyard.services.context import Actor, Platform
from batchyard.services.ids import new_id
from batchyard.store.models import (
    Artifact,
    Attempt,
    AuditEntry,
    CodeVersion,
    Delivery,
    Execution,
    LogLine,
    execution_row,
)

MIB = 1024 * 1024

def seed(platform: Platform, account_id: str, job_id: str, count: int, age: timedelta,
         status: str = "succeeded", log_lines: int = 2) -> list[str]:
    """``count`` executions created ``age`` ago, each with an attempt, logs, an artifact and
    a delivery; inserted in bulk (the services would take minutes for 20,000)."""
    created = platform.clock.now() - age
    ids = [new_id("exe") for _ in range(count)]
    with platform.db.write() as session:
        for start in range(0, count, 2000):
            chunk = ids[start:start + 2000]
            session.execute(insert(Execution), [execution_row(
                id=execution_id, account_id=account_id, job_id=job_id, job_name="old",
                revision=1, source="api", status=status, params={}, account_day="2025-01-01",
                created_at=created, ended_at=created, attempt_count=1)
                for execution_id in chunk])
            session.execute(insert(Attempt), [{
                "account_id": account_id, "execution_id": execution_id, "number": 1,
                "status": status, "account_day": "2025-01-01", "started_at": created,
                "deadline_seconds": 60.0} for execution_id in chunk])
            session.execute(insert(LogLine), [{
                "account_id": account_id, "execution_id": execution_id, "seq": seq,
                "attempt": 1, "at": created, "stream": "stdout",
                "message": f"line {seq} of a run long gone " + "x" * 200}
                for execution_id in chunk for seq in range(log_lines)])
            session.execute(insert(Artifact), [{
                "account_id": account_id, "execution_id": execution_id, "attempt": 1,
                "name": "out.csv", "size": 512, "sha256": "0" * 64, "created_at": created,
                "content": b"y" * 512} for execution_id in chunk])
            session.execute(insert(Delivery), [{
                "id": new_id("dlv"), "account_id": account_id, "execution_id": execution_id,
                "kind": "webhook", "event": "execution.succeeded", "payload": {},
                "status": "sent", "attempts": 1, "created_at": created}
                for execution_id in chunk])
    return ids


def checkpoint(platform: Platform) -> None:
    """Write the WAL back into the database file (a raw connection: no transaction)."""
    raw = platform.db.engine.raw_connection()
    try:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        raw.close()


def count(platform: Platform, model: Any, *where: Any) -> int:
    with platform.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_expired_finished_executions_go_with_their_children_per_account_plan(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Any],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Any]) -> None:
    short = make_account(plan={"retention_days": 7})
    default = make_account()
    short_job = make_published_job(make_actor(short))
    default_job = make_published_job(make_actor(default))
    expired = seed(platform, short.id, short_job.id, 30, timedelta(days=8))
    kept_young = seed(platform, short.id, short_job.id, 5, timedelta(days=6))
    kept_active = seed(platform, short.id, short_job.id, 2, timedelta(days=9), status="queued")
    kept_default = seed(platform, default.id, default_job.id, 4, timedelta(days=20))
    old_default = seed(platform, default.id, default_job.id, 3, timedelta(days=31))

    total = retention.Purged(0, 0)
    while (batch := retention.purge_batch(platform, 10, 365)).total:
        assert batch.executions <= 10
        total = retention.Purged(total.executions + batch.executions, 0)
    assert total.executions == len(expired) + len(old_default)

    gone = expired + old_default
    for model in (Execution,):
        assert count(platform, model, model.id.in_(gone)) == 0
    for model in (Attempt, LogLine, Artifact, Delivery):
        assert count(platform, model, model.execution_id.in_(gone)) == 0
    kept = kept_young + kept_active + kept_default
    assert count(platform, Execution, Execution.id.in_(kept)) == len(kept)
    assert count(platform, LogLine, LogLine.execution_id.in_(kept)) == 2 * len(kept)
    # Code versions stay while their job exists.
    assert count(platform, CodeVersion, CodeVersion.job_id == short_job.id) == 1


def test_audit_entries_have_their_own_retention(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Any],
        make_actor: Callable[..., Actor], make_job: Callable[..., Any]) -> None:
    account = make_account()
    actor = make_actor(account)
    make_job(actor)  # an audit entry now
    before = count(platform, AuditEntry, AuditEntry.account_id == account.id)
    assert before >= 1
    clock.advance(days=366)
    make_job(actor)  # and one a year later
    assert retention.purge_batch(platform, 100, 365).audit_entries == before
    entries, _ = audit.list_entries(platform, actor, None, 100, None)
    assert len(entries) == 1


def test_usage_shows_the_retention_in_force(
        platform: Platform, make_account: Callable[..., Any],
        make_actor: Callable[..., Actor]) -> None:
    actor = make_actor(make_account(plan={"retention_days": 90}))
    assert executions.usage(platform, actor, None)["retention"] == {"days": 90}


def test_20000_expired_executions_are_deleted_during_an_invoke_load_and_the_file_shrinks(
        platform: Platform, clock: FixedClock, make_account: Callable[..., Any],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Any]) -> None:
    if not platform.db.is_sqlite:
        pytest.skip("the file that shrinks is SQLite's (the deletes run on both backends "
                    "above)")
    account = make_account(plan={"max_executions_per_day": 1_000_000,
                                 "max_invocations_per_job_per_day": 1_000_000})
    actor = make_actor(account)
    job = make_published_job(actor, settings={"concurrency": "allow"})
    seed(platform, account.id, job.id, 20_000, timedelta(days=40))
    path = platform.db.engine.url.database
    assert path is not None
    checkpoint(platform)
    size_before = os.path.getsize(path)

    stop = threading.Event()
    admitted: list[str] = []
    errors: list[BaseException] = []

    def load() -> None:
        while not stop.is_set():
            try:
                admitted.append(invoke.invoke(platform, actor, job.id, {}, {}).id)
            except BatchyardError as exc:  # a refusal would be a bug here
                errors.append(exc)
                return
            time.sleep(0.005)  # two clients of a few hundred invocations per second

    loop = RetentionLoop(platform, RetentionPolicy(batch_size=500, interval_seconds=3600))
    clients = [threading.Thread(target=load) for _ in range(2)]
    for client in clients:
        client.start()
    started = time.monotonic()
    loop.start()
    try:
        while count(platform, Execution, Execution.account_id == account.id,
                    Execution.created_at < clock.now() - timedelta(days=30)) and \
                time.monotonic() - started < 120:
            time.sleep(0.5)
        time.sleep(0.5)  # the last vacuum step
    finally:
        loop.stop()
        stop.set()
        for client in clients:
            client.join()
    assert not errors, errors
    assert count(platform, Execution, Execution.created_at < clock.now() - timedelta(days=30)) \
        == 0
    assert count(platform, LogLine, LogLine.account_id == account.id) == 0
    # Every invocation made meanwhile is there, untouched.
    assert len(admitted) > 0
    assert count(platform, Execution, Execution.id.in_(admitted)) == len(admitted)
    checkpoint(platform)
    size_after = os.path.getsize(path)
    assert size_after < size_before / 2, (size_before, size_after)


def test_the_uv_download_cache_is_cleaned_above_its_bound_and_left_below_it(
        platform: Platform, tmp_path: Path) -> None:
    """The env cache's uv folder gets a size bound: above it the retention step runs the
    real ``uv cache clean``; at or below it nothing is touched."""
    environments = EnvCache(tmp_path / "envs", sys.executable, tmp_path / "uv-cache",
                            64 * MIB, 60.0)
    cache = environments.uv_cache
    (cache / "wheels-v5" / "pypi").mkdir(parents=True)
    (cache / "wheels-v5" / "pypi" / "big.whl").write_bytes(os.urandom(2 * MIB))

    def loop(bound: int) -> RetentionLoop:
        return RetentionLoop(platform, RetentionPolicy(), UvCache(
            cache, bound, environments.uv, environments.uv_environment))

    loop(4 * MIB).bound_uv_cache()
    assert (cache / "wheels-v5" / "pypi" / "big.whl").exists()
    loop(1 * MIB).bound_uv_cache()
    assert folder_bytes(cache) < 1 * MIB
    assert not (cache / "wheels-v5" / "pypi" / "big.whl").exists()
