"""A server restarted on the same data folder keeps everything and recovers killed runs."""

from __future__ import annotations

import contextlib
import re
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_support import (
    Account,
    ServerFactory,
    ServerProcess,
    create_account,
    deploy_job,
    invoke,
    kill_orphan,
    lines_of,
    make_zip,
    processes_of,
    read_logs,
    upload_code,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

# Prints its pid so that the test can remove it once its server was SIGKILLed.
SLEEPER = textwrap.dedent("""\
    import os
    import time

    def main(event):
        print("pid", os.getpid(), "retry", event["retry_attempt"])
        time.sleep(59)
    """)


def _same_account_on(server: ServerProcess, account: Account) -> Account:
    return Account(account.id, account.keys, server.base_url)


def _snapshot(operator: httpx.Client, account: Account, job_id: str,
              execution_id: str) -> dict[str, Any]:
    owner = account.owner
    versions = owner.get(f"/api/v1/jobs/{job_id}/code/versions").json()["items"]
    return {
        "account": operator.get(f"/api/v1/admin/accounts/{account.id}").json(),
        "me": owner.get("/api/v1/me").json(),
        "jobs": owner.get("/api/v1/jobs").json(),
        "job": owner.get(f"/api/v1/jobs/{job_id}").json(),
        "variables": owner.get(f"/api/v1/jobs/{job_id}/variables").json(),
        "versions": versions,
        "zips": [owner.get(f"/api/v1/jobs/{job_id}/code/versions/{v['version']}").content
                 for v in versions],
        "executions": owner.get("/api/v1/executions").json(),
        "execution": owner.get(f"/api/v1/executions/{execution_id}").json(),
        "logs": read_logs(owner, execution_id),
        "audit": owner.get("/api/v1/audit").json(),
    }


def test_graceful_restart_keeps_accounts_jobs_versions_executions_and_logs(
        launch_server: ServerFactory) -> None:
    first = launch_server()
    with first.client() as operator, contextlib.closing(create_account(operator)) as account:
        job_id = deploy_job(account, "def main(event):\n    print('version one')\n",
                            variables=[{"key": "KEY", "value": "hidden", "secret": True}])
        v2 = make_zip({"main.py": "def main(event):\n    print('version two', event['body'])\n"})
        assert upload_code(account.owner, job_id, v2).status_code == 201
        assert account.owner.post(f"/api/v1/jobs/{job_id}/publish").status_code == 200
        execution = wait_for(account.owner, invoke(account.owner, job_id, {"n": 1}))
        assert execution["status"] == "succeeded", execution
        assert "version two {'n': 1}" in lines_of(read_logs(account.owner, execution["id"]),
                                                  "stdout")
        before = _snapshot(operator, account, job_id, execution["id"])

    assert first.stop() in (0, -15), "the server needed SIGKILL to stop"
    second = launch_server(data_dir=first.data_dir)
    with second.client() as operator, \
            contextlib.closing(_same_account_on(second, account)) as again:
        after = _snapshot(operator, again, job_id, execution["id"])

        assert [v["version"] for v in after["versions"]] == [2, 1]
        assert after["zips"][0] == v2
        assert after["job"]["revision"] == 2
        assert len(after["logs"]) >= 3
        for key in before:
            assert after[key] == before[key], f"{key} changed across the restart"
        # The restored job still runs, and its secret still decrypts (same secret.key).
        rerun = wait_for(again.owner, invoke(again.owner, job_id, {"n": 2}))
        assert rerun["status"] == "succeeded", rerun


def _printed_pids(client: httpx.Client, execution_id: str, count: int) -> list[int]:
    def pids() -> list[int]:
        lines = lines_of(read_logs(client, execution_id), "stdout")
        return [int(m.group(1)) for line in lines if (m := re.match(r"pid (\d+)", line))]

    found: list[int] = wait_until(lambda: len(pids()) >= count and pids(), 10,
                                  f"execution {execution_id} did not print {count} pid(s)")
    return found


@contextlib.contextmanager
def _sigkilled_mid_run(launch_server: ServerFactory,
                       settings: dict[str, Any]) -> Iterator[tuple[Account, str, list[int]]]:
    """Start a sleeping job, SIGKILL its server mid-run, start a new server on its data.

    Yields the account (clients on the new server), the execution id, and the list of
    job pids; whatever of them is still alive at the end is killed (by pid, after
    checking that its environment names this execution).
    """
    pids: list[int] = []
    execution_id = ""
    try:
        first = launch_server()
        with first.client() as operator:
            account = create_account(operator)
        with contextlib.closing(account):
            job_id = deploy_job(account, SLEEPER, settings=settings)
            execution_id = invoke(account.owner, job_id)
            running = wait_for(account.owner, execution_id, "running")
            assert len(running["attempts"]) == 1
            pids.extend(_printed_pids(account.owner, execution_id, 1))

        first.kill()
        second = launch_server(data_dir=first.data_dir)
        with contextlib.closing(_same_account_on(second, account)) as again:
            yield again, execution_id, pids
    finally:
        for pid in processes_of(execution_id) if execution_id else ():
            kill_orphan(pid, execution_id)


def test_sigkilled_server_leaves_a_running_execution_failed_interrupted_after_restart(
        launch_server: ServerFactory) -> None:
    with _sigkilled_mid_run(launch_server, {}) as (account, execution_id, _):
        execution = wait_for(account.owner, execution_id, {"failed", "succeeded", "timed_out"},
                             timeout=5)

        assert (execution["status"], execution["reason"]) == ("failed", "interrupted")
        (attempt,) = execution["attempts"]
        assert attempt["status"] == "interrupted"
        assert attempt["ended_at"] is not None
        assert "stopped" in attempt["error"]
        # Unsupervised, the job must not run on (nor overlap a retry): it notices that its
        # supervisor is gone and exits.
        wait_until(lambda: not processes_of(execution_id), 5,
                   lambda: f"{processes_of(execution_id)} outlived the SIGKILLed server")


def test_sigkilled_server_retries_the_interrupted_attempt_after_restart(
        launch_server: ServerFactory) -> None:
    with _sigkilled_mid_run(launch_server, {"retries": 1}) as (account, execution_id, pids):
        seen: list[dict[str, Any]] = []

        def second_attempt_running() -> dict[str, Any] | None:
            seen.append(account.owner.get(f"/api/v1/executions/{execution_id}").json())
            running = seen[-1]["status"] == "running" and len(seen[-1]["attempts"]) == 2
            return seen[-1] if running else None

        execution = wait_until(second_attempt_running, 10,
                               lambda: f"no second attempt was started: {seen[-1]}")

        first_attempt, second_attempt = execution["attempts"]
        assert first_attempt["status"] == "interrupted"
        assert second_attempt["status"] == "running"
        assert second_attempt["worker"] != first_attempt["worker"]
        pids.extend(_printed_pids(account.owner, execution_id, 2)[1:])
        stdout = lines_of(read_logs(account.owner, execution_id), "stdout")
        assert [line.split()[-1] for line in stdout if line.startswith("pid ")] == ["0", "1"]
        cancelled = account.owner.post(f"/api/v1/executions/{execution_id}/cancel")
        assert cancelled.status_code == 200
        assert wait_for(account.owner, execution_id, timeout=5)["status"] == "cancelled"


@pytest.mark.timeout(120)  # three server starts
def test_a_second_server_on_the_same_sqlite_data_folder_is_refused_and_the_first_serves_on(
        launch_server: ServerFactory, tmp_path: Any) -> None:
    first = launch_server()
    second = ServerProcess(tmp_path / "second", data_dir=first.data_dir)
    with pytest.raises(AssertionError, match="already serving the data folder"):
        second.start()
    assert second.process is not None and second.process.returncode == 1
    assert "Traceback" not in second.output()
    # The first one's node and its attempts were left alone.
    assert first.running
    assert httpx.get(f"{first.base_url}/api/v1/health", timeout=5).status_code == 200
    first.stop()
    # Once the first has stopped, the folder is free again.
    third = launch_server(first.data_dir)
    assert httpx.get(f"{third.base_url}/api/v1/health", timeout=5).status_code == 200
