"""On a real terminal (a pty), ``batchyard invoke --follow`` shows each log line while
the job runs, not at its end."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pexpect
import pytest
from devkit_support import Kit
from e2e_support import AccountFactory, ServerProcess, deploy_job, get_execution

pytestmark = pytest.mark.timeout(120)

MAIN_PY = textwrap.dedent("""\
    import time

    from helper import LS


    def main(event):
        for n in range(1, 4):
            LS.log.info(f"tick {n} of 3")
            time.sleep(1.5)
        LS.log.info("all ticks done")
    """)


def test_invoke_follow_prints_lines_as_the_job_writes_them(
        tmp_path: Path, server: ServerProcess,
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, MAIN_PY)
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)
    env = {**kit.env, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "batchyard.cli.main", "invoke", job_id,
                                           "--follow"], env=env, cwd=str(tmp_path),
                          encoding="utf-8", timeout=30, dimensions=(40, 160))
    try:
        child.expect(r"execution (\S+) queued")
        execution_id = child.match.group(1)
        seen = {}
        for n in (1, 2, 3):
            child.expect(f"tick {n} of 3")
            seen[n] = time.monotonic()
            # Shown while the job still runs: the execution has not ended yet.
            if n < 3:
                assert get_execution(account.owner, execution_id)["status"] == "running"
        child.expect("all ticks done")
        child.expect(f"{execution_id} succeeded")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    # The lines came one by one, about the job's 1.5 s apart.
    assert seen[2] - seen[1] > 0.8 and seen[3] - seen[2] > 0.8
