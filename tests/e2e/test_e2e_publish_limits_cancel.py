"""Publishing rules, blocked invocations, the max_jobs limit and cancelling executions."""

from __future__ import annotations

import textwrap
from datetime import datetime

import httpx
import pytest
from e2e_support import (
    AccountFactory,
    create_job,
    deploy_job,
    invoke,
    lines_of,
    make_zip,
    read_logs,
    upload_code,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

QUICK = "def main():\n    print('ran')\n"
SLOW = textwrap.dedent("""\
    import time

    def main():
        print("started", flush=True)
        time.sleep(47)
    """)


def _error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error: dict[str, object] = response.json()["error"]
    assert error["code"] == code, error
    return error


def test_publishing_without_code_or_without_schedule_is_409_not_publishable(
        make_account: AccountFactory) -> None:
    owner = make_account().owner
    no_code = create_job(owner)
    assert owner.put(f"/api/v1/jobs/{no_code}/schedule", json={"type": "none"}).status_code \
        == 200
    no_schedule = create_job(owner)
    assert upload_code(owner, no_schedule, make_zip({"main.py": QUICK})).status_code == 201

    _error(owner.post(f"/api/v1/jobs/{no_code}/publish"), 409, "not_publishable")
    _error(owner.post(f"/api/v1/jobs/{no_schedule}/publish"), 409, "not_publishable")

    for job_id in (no_code, no_schedule):
        job = owner.get(f"/api/v1/jobs/{job_id}").json()
        assert (job["status"], job["revision"]) == ("draft", None)


def test_invoking_a_draft_or_unpublished_job_is_409_and_recorded_as_blocked(
        make_account: AccountFactory) -> None:
    owner = make_account().owner
    draft = create_job(owner)
    assert upload_code(owner, draft, make_zip({"main.py": QUICK})).status_code == 201
    assert owner.put(f"/api/v1/jobs/{draft}/schedule", json={"type": "none"}).status_code == 200
    unpublished = create_job(owner)
    assert upload_code(owner, unpublished, make_zip({"main.py": QUICK})).status_code == 201
    assert owner.put(f"/api/v1/jobs/{unpublished}/schedule",
                     json={"type": "none"}).status_code == 200
    assert owner.post(f"/api/v1/jobs/{unpublished}/publish").status_code == 200
    assert owner.post(f"/api/v1/jobs/{unpublished}/unpublish").json()["status"] == "unpublished"

    blocked_ids = {}
    for job_id in (draft, unpublished):
        error = _error(owner.post(f"/api/v1/jobs/{job_id}/invoke", json={"x": 1}), 409,
                       "not_published")
        blocked_ids[job_id] = error["execution_id"]

    listed = owner.get("/api/v1/executions", params={"status": "blocked"})
    assert listed.status_code == 200
    by_id = {item["id"]: item for item in listed.json()["items"]}
    assert set(by_id) == set(blocked_ids.values())
    for job_id, execution_id in blocked_ids.items():
        execution = by_id[execution_id]
        assert (execution["job_id"], execution["status"], execution["reason"]) == (
            job_id, "blocked", "not_published")
        assert execution["attempts"] == []
        assert execution["params"]["body"] == {"x": 1}
    assert owner.get("/api/v1/executions", params={"status": "succeeded"}).json()["items"] == []


def test_creating_a_job_past_max_jobs_is_429_max_jobs_exceeded(
        make_account: AccountFactory) -> None:
    owner = make_account(plan={"max_jobs": 2}).owner
    first = create_job(owner)
    create_job(owner)

    _error(owner.post("/api/v1/jobs", json={"name": "one-too-many"}), 429, "max_jobs_exceeded")

    assert len(owner.get("/api/v1/jobs").json()["items"]) == 2
    # A deleted job no longer counts.
    assert owner.delete(f"/api/v1/jobs/{first}").status_code == 200
    assert owner.post("/api/v1/jobs", json={"name": "fits-again"}).status_code == 201


def test_cancelling_a_running_execution_ends_it_cancelled_quickly(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, SLOW)
    execution_id = invoke(account.owner, job_id)
    wait_for(account.owner, execution_id, "running")
    wait_until(lambda: "started" in lines_of(read_logs(account.owner, execution_id), "stdout"),
               10, "the job did not start")

    response = account.developer.post(f"/api/v1/executions/{execution_id}/cancel")

    assert response.status_code == 200, response.text
    execution = wait_for(account.owner, execution_id, {"cancelled", "failed", "succeeded"},
                         timeout=5)
    assert (execution["status"], execution["reason"]) == ("cancelled", "cancelled")
    (attempt,) = execution["attempts"]
    assert attempt["status"] == "cancelled"
    ended = datetime.fromisoformat(execution["ended_at"])
    assert attempt["runtime_seconds"] < 10
    assert (ended - datetime.fromisoformat(attempt["started_at"])).total_seconds() < 10


def test_cancelling_a_finished_execution_is_409(make_account: AccountFactory) -> None:
    account = make_account()
    execution = wait_for(account.owner, invoke(account.owner, deploy_job(account, QUICK)))
    assert execution["status"] == "succeeded"

    _error(account.owner.post(f"/api/v1/executions/{execution['id']}/cancel"), 409, "conflict")

    assert account.owner.get(f"/api/v1/executions/{execution['id']}").json()["status"] == \
        "succeeded"
