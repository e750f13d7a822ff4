"""The store side of operating it, on both backends: check_store and the metrics collector."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batchyard.errors import BatchyardError
from batchyard.services import invoke
from batchyard.services.context import Actor, Platform
from batchyard.services.metrics import MAX_LABEL_VALUES, StoreCollector, bounded
from batchyard.store.maintenance import check_store, current_revision, head_revision
from batchyard.store.models import Account, Job


def test_a_migrated_store_checks_sound(platform: Platform) -> None:
    assert current_revision(platform.db) == head_revision()
    assert check_store(platform.db) == []


def test_the_collector_reads_the_store_with_bounded_labels(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    owner = make_actor(make_account(plan={"max_invocations_per_job_per_day": 2}))
    job = make_published_job(owner, settings={"concurrency": "allow"})
    for _ in range(2):
        invoke.invoke(platform, owner, job.id, {}, {})
    with contextlib.suppress(BatchyardError):  # the third is refused: recorded as blocked
        invoke.invoke(platform, owner, job.id, {}, {})
    registry = CollectorRegistry()
    registry.register(StoreCollector(platform, {"sandbox_level": "rlimits"}))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples[("batchyard_queue_depth", ())] == 2
    assert samples[("batchyard_executions", (("reason", ""), ("status", "queued")))] == 2
    blocked = [value for (name, labels), value in samples.items()
               if name == "batchyard_admission_decisions" and ("decision", "blocked") in labels]
    assert blocked == [1]
    assert samples[("batchyard_sandbox_level_info", (("sandbox_level", "rlimits"),))] == 1


def test_labels_beyond_the_bound_are_summed_as_other() -> None:
    values = bounded(iter([(f"reason{n}", float(n)) for n in range(1, 80)]))
    assert len(values) == MAX_LABEL_VALUES
    assert values["other"] == sum(range(1, 80 - MAX_LABEL_VALUES + 1))
    assert sum(values.values()) == sum(range(1, 80))
