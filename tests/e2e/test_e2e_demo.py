"""`./dev run` (= `batchyard serve --demo`) prints a key and curl lines that really work."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from e2e_support import ServerProcess, wait_until


def demo_key(output: str) -> str:
    return [line.split()[-1] for line in output.splitlines()
            if line.startswith("Demo API key:")][-1]


def printed_command(output: str, label: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(label))
    return shlex.split(line[len(label):].strip())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_demo_server_prints_a_working_key_and_a_curl_line_that_runs_the_demo_job(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=("--demo",)).start()
    try:
        wait_until(lambda: "Run the demo:" in server.output(), timeout=10,
                   message=server.output)
        output = server.output()
        key = demo_key(output)
        me = subprocess.run(printed_command(output, "Check it:"), capture_output=True,
                            check=True, timeout=30)
        assert json.loads(me.stdout)["user"]["email"] == "demo@example.com"
        invoked = subprocess.run(printed_command(output, "Run the demo:"),
                                 capture_output=True, check=True, timeout=30)
        execution_id = json.loads(invoked.stdout)["execution_id"]
        read = printed_command(output, "Then read it:")
        read[-1] = read[-1].replace("<execution_id>", execution_id)

        def finished() -> dict[str, object] | None:
            answer = json.loads(subprocess.run(read, capture_output=True, check=True,
                                               timeout=30).stdout)
            return answer if answer["status"] not in ("queued", "running") else None

        execution = wait_until(finished, timeout=20, message="the demo job did not finish")
        assert execution["status"] == "succeeded"
        with server.client(key) as client:
            artifacts = client.get(f"/api/v1/executions/{execution_id}/artifacts").json()
        assert [a["name"] for a in artifacts["items"]] == ["report.txt"]
    finally:
        server.stop()


def test_a_restarted_demo_server_prints_the_same_working_key(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path, extra_args=("--demo",)).start()
    try:
        wait_until(lambda: "Demo API key:" in first.output(), timeout=10, message=first.output)
    finally:
        first.stop()
    key = demo_key(first.output())
    second = ServerProcess(tmp_path, data_dir=first.data_dir, extra_args=("--demo",)).start()
    try:
        wait_until(lambda: "Demo API key:" in second.output(), timeout=10,
                   message=second.output)
        assert demo_key(second.output()) == key
        with second.client(key) as client:
            assert client.get("/api/v1/me").status_code == 200
    finally:
        second.stop()


def test_the_demo_server_prints_a_one_time_console_sign_in_that_works(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=("--demo",)).start()
    try:
        label = "Sign in to the console (one-time link, 72 h):"
        wait_until(lambda: label in server.output(), timeout=10, message=server.output)
        url = next(line for line in server.output().splitlines()
                   if line.startswith(label)).split()[-1]
        assert url.startswith(server.base_url + "/invite/")
        with httpx.Client(timeout=30) as browser:
            form = browser.get(url)
            assert form.status_code == 200 and "demo@example.com" in form.text
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token is not None
            signed_in = browser.post(url, data={"csrf": token.group(1),
                                                "password": "demo password",
                                                "password_again": "demo password"})
            assert signed_in.status_code == 303
            grid = browser.get(server.base_url + "/jobs")
            assert grid.status_code == 200 and "hello-world" in grid.text
            assert browser.get(url).status_code == 404
    finally:
        server.stop()
