"""BATCHYARD_LOG_FORMAT=json: the server's log is one JSON object per line, with the
request id of the request (echoed as X-Request-Id) and the execution id of the attempt."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ServerProcess, create_account, deploy_job, invoke, wait_for, wait_until

pytestmark = pytest.mark.timeout(120)

SENDS_MAIL = """\
from helper import LS

def main():
    try:
        LS.email.send_email_notification("report", "subject", "body")
    except Exception as exc:
        print(type(exc).__name__)
"""


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]


def test_json_log_lines_carry_request_and_execution_ids(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server", env={"BATCHYARD_LOG_FORMAT": "json"}).start()
    try:
        with server.client() as operator:
            account = create_account(operator)
        job_id = deploy_job(account, SENDS_MAIL, settings={
            "notify": {"on_success": ["ops@example.com"]}})
        answer = account.owner.post(f"/api/v1/jobs/{job_id}/invoke", json={},
                                    headers={"X-Request-Id": "req-from-client-1"})
        assert answer.status_code == 202, answer.text
        assert answer.headers["X-Request-Id"] == "req-from-client-1"
        execution_id = answer.json()["execution_id"]
        assert wait_for(account.owner, execution_id)["status"] == "succeeded"
        generated = account.owner.get("/api/v1/me").headers["X-Request-Id"]
        assert generated.startswith("req_")
        invoke(account.owner, job_id)
        account.close()

        def logged() -> list[dict[str, Any]]:
            return json_lines(server)

        wait_until(lambda: any(line.get("execution_id") == execution_id for line in logged()),
                   10, lambda: f"no line names {execution_id}: {server.output()[-3000:]}")
    finally:
        server.stop()
    lines = logged()
    # Nothing is logged in the human-readable format any more.
    assert not re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", server.output(), re.M)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    invoked = [line for line in lines if line.get("request_id") == "req-from-client-1"]
    assert invoked and "POST /api/v1/jobs/{job_id}/invoke 202" in invoked[0]["message"]
    assert any(line.get("request_id") == generated for line in lines)
    mail = [line for line in lines if line.get("execution_id") == execution_id]
    assert any("no SMTP server is configured" in line["message"] for line in mail), mail
