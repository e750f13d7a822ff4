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
from e2e_support import (
    AccountFactory,
    ServerProcess,
    deploy_job,
    get_execution,
    process_alive,
    wait_until,
)

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


def test_login_asks_for_the_key_without_echo_and_profiles_are_chosen(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory) -> None:
    first, second = make_account(), make_account()
    kit = Kit.make(tmp_path)
    child = pexpect.spawn(sys.executable, ["-m", "batchyard.cli.main", "login", "--url",
                                           server.base_url], env=kit.env, cwd=str(tmp_path),
                          encoding="utf-8", timeout=30)
    try:
        child.expect(r"API key \(not shown\): ")
        child.sendline(first.keys["owner"])
        child.expect("Logged in")
        child.expect(pexpect.EOF)
        shown = (child.before or "") + (child.after if isinstance(child.after, str) else "")
    finally:
        child.close()
    assert child.exitstatus == 0
    assert first.keys["owner"] not in shown
    # A second, named profile; --profile and BATCHYARD_API_KEY pick between them.
    key_file = tmp_path / "second.key"
    key_file.write_text(second.keys["viewer"])
    assert kit("configure", "--url", server.base_url, "--key-file", str(key_file),
               "--profile", "other", "--no-default", cwd=tmp_path).returncode == 0
    assert kit.json("whoami", cwd=tmp_path)["account"]["id"] == first.id
    assert kit.json("--profile", "other", "whoami", cwd=tmp_path)["account"]["id"] == second.id
    overridden = kit.json("whoami", cwd=tmp_path,
                          env={"BATCHYARD_API_KEY": second.keys["owner"]})
    assert overridden["account"]["id"] == second.id
    assert kit("--profile", "nope", "whoami", cwd=tmp_path).returncode == 4


def test_ctrl_c_stops_a_local_run_and_its_job(tmp_path: Path) -> None:
    root = tmp_path / "sleepy"
    root.mkdir()
    pid_file = tmp_path / "job.pid"
    (root / "batchyard.toml").write_text('[job]\nname = "sleepy"\n')
    (root / "main.py").write_text(
        "import os\nimport time\n\nfrom helper import LS\n\n\ndef main():\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    LS.log.info('sleeping now')\n    time.sleep(120)\n")
    kit = Kit.make(tmp_path)
    child = pexpect.spawn(sys.executable, ["-m", "batchyard.cli.main", "run"], env=kit.env,
                          cwd=str(root), encoding="utf-8", timeout=30)
    try:
        child.expect("sleeping now")
        pid = int(pid_file.read_text())
        child.sendintr()
        child.expect("interrupted")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 130
    assert "Traceback" not in (child.before or "")
    wait_until(lambda: not process_alive(pid), 10, f"the job {pid} outlived its run")
