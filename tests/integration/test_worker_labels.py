"""worker_labels: a job asking for labels runs only on a worker advertising all of them,
and waiting for such a worker holds up nothing else of its account."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from batchyard.errors import InvalidInput
from batchyard.services import invoke, jobs
from batchyard.services.context import Actor, Platform
from batchyard.services.queue import claim_next_execution
from batchyard.store.models import Account, Job


def test_a_labelled_job_waits_for_a_worker_with_its_labels(
        platform: Platform, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_published_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account())
    gpu_job = make_published_job(actor, settings={"worker_labels": ["region=eu", "gpu"]})
    plain_job = make_published_job(actor)
    assert jobs.get_job(platform, actor, gpu_job.id).settings["worker_labels"] == [
        "gpu", "region=eu"]
    labelled = invoke.invoke(platform, actor, gpu_job.id, {}, {})
    plain = invoke.invoke(platform, actor, plain_job.id, {}, {})
    # The older, labelled execution does not hold up the account's plain one.
    first = claim_next_execution(platform, "plain:1/0", 30)
    assert first is not None and first.execution_id == plain.id
    assert claim_next_execution(platform, "plain:1/1", 30) is None
    assert claim_next_execution(platform, "gpu-only:1/0", 30, ("gpu",)) is None
    taken = claim_next_execution(platform, "gpu-eu:1/0", 30, ("gpu", "ssd", "region=eu"))
    assert taken is not None and taken.execution_id == labelled.id


@pytest.mark.parametrize("labels", [["GPU"], ["a b"], "gpu", ["x"] * 7, [""]])
def test_malformed_worker_labels_are_refused(
        platform: Platform, labels: object, make_account: Callable[..., Account],
        make_actor: Callable[..., Actor], make_job: Callable[..., Job]) -> None:
    actor = make_actor(make_account())
    job = make_job(actor)
    with pytest.raises(InvalidInput, match="worker_labels"):
        jobs.update_settings(platform, actor, job.id, {"worker_labels": labels})
