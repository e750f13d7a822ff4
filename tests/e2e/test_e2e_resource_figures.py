"""The execution API shows each attempt's CPU time and peak memory (a real server)."""

from __future__ import annotations

import pytest
from e2e_support import AccountFactory, deploy_job, invoke, wait_for

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
JOB = """\
import time
def main():
    block = b"x" * (120 * 1024 * 1024)
    while time.process_time() < 0.5:  # the process's CPU in all
        pass
    print(len(block))
"""


def test_an_attempts_cpu_time_and_peak_memory_are_in_the_execution(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, JOB)
    execution = wait_for(account.owner, invoke(account.owner, job_id), timeout=60)
    assert execution["status"] == "succeeded", execution
    (attempt,) = execution["attempts"]
    assert 0.4 <= attempt["cpu_seconds"] <= 0.8, attempt
    assert 110 * MIB <= attempt["peak_memory_bytes"] <= 150 * MIB, attempt
