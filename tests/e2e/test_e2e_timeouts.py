"""Timeouts kill the whole process tree at the deadline, whatever the job does about it."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Any

import httpx
import pytest
from e2e_support import (
    Account,
    create_account,
    deploy_job,
    invoke,
    kill_orphan,
    lines_of,
    processes_of,
    read_logs,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

TIMEOUT_MINUTES = 0.05  # 3 s
DEADLINE = TIMEOUT_MINUTES * 60

SPAWNS_HELPERS_THEN_SLEEPS = textwrap.dedent("""\
    import os
    import subprocess
    import time

    def main(event):
        print("job", os.getpid())
        in_group = subprocess.Popen(["sleep", "600"])
        print("grandchild", in_group.pid)
        own_session = subprocess.Popen(["sleep", "601"], start_new_session=True)
        print("setsid-grandchild", own_session.pid)
        time.sleep(60)
    """)

IGNORES_SIGTERM = textwrap.dedent("""\
    import os
    import signal
    import time

    def main():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("job", os.getpid())
        time.sleep(60)
    """)


@pytest.fixture(scope="module")
def account(operator: httpx.Client) -> Iterator[Account]:
    made = create_account(operator)
    yield made
    made.close()


@pytest.fixture(scope="module")
def started(account: Account) -> dict[str, str]:
    """Both slow jobs invoked at once (two workers), so their deadlines run side by side."""
    settings = {"timeout_minutes": TIMEOUT_MINUTES}
    helpers = deploy_job(account, SPAWNS_HELPERS_THEN_SLEEPS, settings=settings)
    stubborn = deploy_job(account, IGNORES_SIGTERM, settings=settings)
    return {"helpers": invoke(account.owner, helpers), "stubborn": invoke(account.owner, stubborn)}


def _pids(logs: list[dict[str, Any]]) -> dict[str, int]:
    found = {}
    for line in lines_of(logs, "stdout"):
        match = re.fullmatch(r"([\w-]+) (\d+)", line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def _gone(execution_id: str) -> bool:
    # By the environment, not by the printed pids: those are the sandbox's PID namespace's.
    return not processes_of(execution_id)


def _assert_killed_at_deadline(execution: dict[str, Any]) -> None:
    assert execution["status"] == "timed_out", execution
    assert execution["reason"] == "timeout"
    (attempt,) = execution["attempts"]
    assert attempt["status"] == "timed_out"
    elapsed = (datetime.fromisoformat(attempt["ended_at"])
               - datetime.fromisoformat(attempt["started_at"])).total_seconds()
    assert DEADLINE <= attempt["runtime_seconds"] <= DEADLINE + 2, attempt
    assert DEADLINE <= elapsed <= DEADLINE + 2, attempt


def test_timeout_kills_the_job_and_its_grandchildren_at_the_deadline(
        account: Account, started: dict[str, str]) -> None:
    execution = wait_for(account.owner, started["helpers"], timeout=15)

    pids = _pids(read_logs(account.owner, execution["id"]))
    try:
        _assert_killed_at_deadline(execution)
        assert set(pids) == {"job", "grandchild", "setsid-grandchild"}, pids
        wait_until(partial(_gone, execution["id"]), 2,
                   lambda: f"{processes_of(execution['id'])} still run")
    finally:
        for pid in processes_of(execution["id"]):
            kill_orphan(pid, execution["id"])


def test_timeout_kills_a_job_that_ignores_sigterm(
        account: Account, started: dict[str, str]) -> None:
    execution = wait_for(account.owner, started["stubborn"], timeout=15)

    pids = _pids(read_logs(account.owner, execution["id"]))
    try:
        _assert_killed_at_deadline(execution)
        assert "job" in pids, pids
        wait_until(partial(_gone, execution["id"]), 2,
                   lambda: f"{processes_of(execution['id'])} still run")
    finally:
        for pid in processes_of(execution["id"]):
            kill_orphan(pid, execution["id"])
