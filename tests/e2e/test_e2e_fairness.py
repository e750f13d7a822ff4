"""Noisy neighbours: one account's long jobs never hold every worker slot (issue 9 §4)."""

from __future__ import annotations

from datetime import datetime

import pytest
from e2e_support import (
    ServerFactory,
    create_account,
    deploy_job,
    get_execution,
    invoke,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

SLEEPER = "import time\n\ndef main(event):\n    time.sleep(60)\n"


def test_ten_long_jobs_of_one_account_leave_a_slot_for_another_accounts_trivial_job(
        launch_server: ServerFactory) -> None:
    server = launch_server(workers=None)  # the default configuration
    with server.client() as operator:
        busy = create_account(operator, plan={"max_invocations_per_job_per_day": 20})
        quiet = create_account(operator)
    long_job = deploy_job(busy, SLEEPER, settings={"concurrency": "allow",
                                                   "timeout_minutes": 5})
    trivial = deploy_job(quiet, "def main():\n    return 1\n")
    long_runs = [invoke(busy.owner, long_job) for _ in range(10)]
    try:
        def statuses() -> list[str]:
            return [get_execution(busy.owner, run)["status"] for run in long_runs]

        wait_until(lambda: statuses().count("running") == 2, 30,
                   "two of the busy account's runs to start")
        mine = invoke(quiet.owner, trivial)
        done = wait_for(quiet.owner, mine, "succeeded", timeout=30)
        waited = (datetime.fromisoformat(done["started_at"])
                  - datetime.fromisoformat(done["created_at"])).total_seconds()
        assert waited < 5, f"the other account's job waited {waited:.1f} s for a slot"
        # The busy account holds its plan's two slots; the rest of its runs wait queued.
        now = statuses()
        assert (now.count("running"), now.count("queued")) == (2, 8), now
        for run in long_runs:
            busy.owner.post(f"/api/v1/executions/{run}/cancel")
        for run in long_runs:
            assert wait_for(busy.owner, run, timeout=30)["status"] == "cancelled"
    finally:
        for run in long_runs:
            busy.owner.post(f"/api/v1/executions/{run}/cancel")
        busy.close()
        quiet.close()
