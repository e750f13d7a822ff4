"""Plan limits on a real server: the seed's two budget scenarios, scaled down to seconds.

Fractional minutes keep them short: a budget of 0.1 minute is 6 s, a timeout of
0.1 minute is 6 s. The module's server has two workers, so two admitted jobs run
side by side as they would on the platform.
"""

from __future__ import annotations

import textwrap
import threading
from datetime import datetime
from typing import Any

import httpx
import pytest
from e2e_support import (
    Account,
    AccountFactory,
    deploy_job,
    invoke,
    lines_of,
    read_logs,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

SIX_SECONDS = 0.1  # minutes
# Process start, the SDK's boot and the end report on top of the job's own sleep.
OVERHEAD = 1.0


def sleeper(seconds: float, then: str = "print('done')") -> str:
    return textwrap.dedent(f"""\
        import time

        def main(event):
            print("started", flush=True)
            time.sleep({seconds})
            {then}
        """)


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


def _usage(account: Account) -> dict[str, Any]:
    response = account.owner.get("/api/v1/usage")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _blocked(account: Account) -> dict[str, dict[str, Any]]:
    listed = account.owner.get("/api/v1/executions", params={"status": "blocked"})
    assert listed.status_code == 200, listed.text
    return {item["id"]: item for item in listed.json()["items"]}


def _invoke_together(account: Account, job_ids: list[str]) -> list[httpx.Response]:
    """POST /invoke for every job from its own thread, released at the same moment."""
    barrier = threading.Barrier(len(job_ids))
    answers: list[httpx.Response | None] = [None] * len(job_ids)

    def call(index: int) -> None:
        with httpx.Client(base_url=account.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {account.keys['owner']}"}) \
                as client:
            barrier.wait(timeout=10)
            answers[index] = client.post(f"/api/v1/jobs/{job_ids[index]}/invoke", json={})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(job_ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def _span(attempt: dict[str, Any]) -> tuple[datetime, datetime]:
    return (datetime.fromisoformat(attempt["started_at"]),
            datetime.fromisoformat(attempt["ended_at"]))


def test_seed_scenario_1_after_a_4_s_run_the_second_job_is_blocked_for_budget(
        make_account: AccountFactory) -> None:
    account = make_account(plan={"daily_runtime_budget_minutes": SIX_SECONDS})
    settings = {"timeout_minutes": SIX_SECONDS}
    first = deploy_job(account, sleeper(4), settings=settings)
    second = deploy_job(account, sleeper(0), settings=settings)

    ran = wait_for(account.owner, invoke(account.owner, first), timeout=20)
    assert ran["status"] == "succeeded", ran
    answer = account.owner.post(f"/api/v1/jobs/{second}/invoke", json={})

    error = _error(answer, 429, "runtime_budget_insufficient")
    blocked = _blocked(account)
    assert set(blocked) == {error["execution_id"]}
    assert (blocked[error["execution_id"]]["job_id"], blocked[error["execution_id"]]["reason"]) \
        == (second, "runtime_budget_insufficient")
    assert blocked[error["execution_id"]]["attempts"] == []
    runtime = _usage(account)["runtime_seconds"]
    assert 4.0 <= runtime["used"] <= 4.0 + OVERHEAD, runtime
    assert runtime["used"] == pytest.approx(ran["runtime_seconds"])
    assert runtime["limit"] == 6
    assert _usage(account)["executions"]["used"] == 1  # the blocked one uses none


def test_seed_scenario_2_two_jobs_invoked_together_both_run_and_spend_9_s_of_6(
        make_account: AccountFactory) -> None:
    account = make_account(plan={"daily_runtime_budget_minutes": SIX_SECONDS})
    settings = {"timeout_minutes": SIX_SECONDS}
    job_ids = [deploy_job(account, sleeper(4.5), settings=settings) for _ in range(2)]

    answers = _invoke_together(account, job_ids)

    assert [answer.status_code for answer in answers] == [202, 202], [a.text for a in answers]
    ran = [wait_for(account.owner, answer.json()["execution_id"], timeout=20)
           for answer in answers]
    assert [execution["status"] for execution in ran] == ["succeeded", "succeeded"], ran
    attempts = [execution["attempts"][0] for execution in ran]
    # Both started before either ended, each with the whole timeout as its deadline.
    (start_a, end_a), (start_b, end_b) = (_span(attempt) for attempt in attempts)
    assert start_a < end_b and start_b < end_a, attempts
    assert [attempt["deadline_seconds"] for attempt in attempts] == [6, 6]
    runtime = _usage(account)["runtime_seconds"]
    assert 9.0 <= runtime["used"] <= 9.0 + 2 * OVERHEAD, runtime
    assert runtime["used"] > runtime["limit"] == 6
    assert runtime["reserved"] == 0


def test_seed_scenario_2_in_strict_mode_blocks_the_second_job(
        operator: httpx.Client, make_account: AccountFactory) -> None:
    account = make_account(plan={"daily_runtime_budget_minutes": SIX_SECONDS})
    patched = operator.patch(f"/api/v1/admin/accounts/{account.id}",
                             json={"budget_mode": "strict"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["budget_mode"] == "strict"
    settings = {"timeout_minutes": SIX_SECONDS}
    job_ids = [deploy_job(account, sleeper(4.5), settings=settings) for _ in range(2)]

    answers = _invoke_together(account, job_ids)

    codes = sorted(answer.status_code for answer in answers)
    assert codes == [202, 429], [answer.text for answer in answers]
    admitted = next(answer for answer in answers if answer.status_code == 202)
    refused = next(answer for answer in answers if answer.status_code == 429)
    error = _error(refused, 429, "runtime_budget_insufficient")
    assert _usage(account)["runtime_seconds"]["reserved"] == 6
    assert set(_blocked(account)) == {error["execution_id"]}

    ran = wait_for(account.owner, admitted.json()["execution_id"], timeout=20)
    assert ran["status"] == "succeeded", ran
    runtime = _usage(account)["runtime_seconds"]
    # The unused part of the reservation is given back; the budget was never exceeded.
    assert runtime["reserved"] == 0
    assert 4.5 <= runtime["used"] <= 4.5 + OVERHEAD, runtime


def test_a_retry_is_killed_at_the_remaining_budget_not_at_its_timeout(
        make_account: AccountFactory) -> None:
    account = make_account(plan={"daily_runtime_budget_minutes": 0.15})  # 9 s
    job_id = deploy_job(account, textwrap.dedent("""\
        import time

        def main(event):
            print("attempt", event["retry_attempt"], flush=True)
            if event["retry_attempt"] == 0:
                time.sleep(4)
                raise RuntimeError("first attempt fails")
            time.sleep(30)
        """), settings={"timeout_minutes": SIX_SECONDS, "retries": 1})

    execution = wait_for(account.owner, invoke(account.owner, job_id), timeout=25)

    assert (execution["status"], execution["reason"]) == ("timed_out", "timeout"), execution
    first, second = execution["attempts"]
    assert (first["status"], first["deadline_seconds"]) == ("failed", 6)
    assert "first attempt fails" in first["error"]
    # The retry's deadline is what the budget had left when it started: 9 s - attempt 1.
    assert second["status"] == "timed_out"
    assert second["deadline_seconds"] == pytest.approx(9 - first["runtime_seconds"], abs=0.05)
    assert 4.0 <= second["deadline_seconds"] < 6 - 0.5
    started, ended = _span(second)
    assert second["deadline_seconds"] <= (ended - started).total_seconds() \
        <= second["deadline_seconds"] + OVERHEAD, second
    assert second["runtime_seconds"] <= second["deadline_seconds"] + OVERHEAD, second
    assert "budget" in second["error"].lower(), second["error"]
    stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    assert [line for line in stdout if line.startswith("attempt")] == ["attempt 0", "attempt 1"]
    runtime = _usage(account)["runtime_seconds"]
    assert 9.0 <= runtime["used"] <= 9.0 + OVERHEAD, runtime


def test_daily_execution_limits_answer_429_with_their_code_and_record_the_blocked(
        make_account: AccountFactory) -> None:
    account = make_account(plan={"max_invocations_per_job_per_day": 3,
                                 "max_executions_per_day": 5})
    quick = "def main():\n    print('ran')\n"
    first = deploy_job(account, quick, settings={"concurrency": "allow"})
    second = deploy_job(account, quick, settings={"concurrency": "allow"})
    owner = account.owner

    admitted = [invoke(owner, first) for _ in range(3)]
    over_job = _error(owner.post(f"/api/v1/jobs/{first}/invoke", json={}), 429,
                      "job_invocations_exceeded")
    admitted += [invoke(owner, second) for _ in range(2)]
    over_day = [_error(owner.post(f"/api/v1/jobs/{job_id}/invoke", json={}), 429,
                       "executions_per_day_exceeded") for job_id in (second, first)]

    blocked = _blocked(account)
    assert {execution_id: (item["job_id"], item["reason"])
            for execution_id, item in blocked.items()} == {
        over_job["execution_id"]: (first, "job_invocations_exceeded"),
        over_day[0]["execution_id"]: (second, "executions_per_day_exceeded"),
        over_day[1]["execution_id"]: (first, "executions_per_day_exceeded")}
    for execution_id in admitted:
        assert wait_for(owner, execution_id)["status"] == "succeeded"
    usage = _usage(account)
    assert usage["executions"] == {"used": 5, "limit": 5}
    assert {item["job_id"]: (item["executions"], item["limit"]) for item in usage["per_job"]} \
        == {first: (3, 3), second: (2, 3)}
    today = {item["id"]: item["today"] for item in owner.get("/api/v1/jobs").json()["items"]}
    assert (today[first]["succeeded"], today[second]["succeeded"]) == (3, 2)
    assert today[first]["failed"] == today[second]["failed"] == 0


def test_concurrency_forbid_refuses_a_second_invoke_while_the_first_runs(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, sleeper(30))  # concurrency defaults to forbid
    owner = account.owner
    running = invoke(owner, job_id)
    wait_for(owner, running, "running")
    wait_until(lambda: "started" in lines_of(read_logs(owner, running), "stdout"), 10,
               "the job did not start")

    error = _error(owner.post(f"/api/v1/jobs/{job_id}/invoke", json={}), 429,
                   "already_running")

    assert _blocked(account)[error["execution_id"]]["reason"] == "already_running"
    assert owner.get(f"/api/v1/executions/{running}").json()["status"] == "running"
    # The guard lets go once the run ends: it never wedges the job.
    assert owner.post(f"/api/v1/executions/{running}/cancel").status_code == 200
    assert wait_for(owner, running, timeout=10)["status"] == "cancelled"
    again = invoke(owner, job_id)
    assert owner.post(f"/api/v1/executions/{again}/cancel").status_code == 200
    assert wait_for(owner, again, timeout=10)["status"] == "cancelled"
