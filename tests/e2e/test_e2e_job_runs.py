"""Jobs run by a real server: the code contract, logs, secrets, failures, retries, outputs."""

from __future__ import annotations

import hashlib
import json
import textwrap
import time
from collections.abc import Iterator

import pytest
from e2e_support import (
    AccountFactory,
    deploy_job,
    get_execution,
    invoke,
    lines_of,
    read_logs,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

SECRET = "s3cr3t-Tok3n-e2e-9d41"


def test_job_gets_body_logs_sdk_record_and_secret_is_masked_everywhere(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, textwrap.dedent("""\
        from helper import LS

        def main(event):
            print(event["body"])
            LS.log.info("x", {"k": 1})
            print(LS.settings.TOKEN)
            print("region is", LS.settings.REGION)
            LS.log.warn("token in a record", {"token": LS.settings.TOKEN})
        """), variables=[{"key": "TOKEN", "value": SECRET, "secret": True},
                         {"key": "REGION", "value": "eu-west", "secret": False}])
    body = {"greeting": "hello-e2e", "n": 3}

    execution = wait_for(account.owner, invoke(account.owner, job_id, body))

    assert execution["status"] == "succeeded", execution
    assert execution["params"]["body"] == body
    logs = read_logs(account.owner, execution["id"])
    stdout = lines_of(logs, "stdout")
    assert str(body) in stdout
    assert "region is eu-west" in stdout
    assert "***" in stdout
    records = [item for item in logs if item["stream"] == "log" and item["message"] == "x"]
    assert len(records) == 1
    assert records[0]["level"] == "info"
    assert records[0]["data"] == {"k": 1}
    assert [item["data"] for item in logs if item["message"] == "token in a record"] == [
        {"token": "***"}]
    for item in logs:
        assert SECRET not in item["message"]
        assert SECRET not in str(item.get("data"))
    variables = account.owner.get(f"/api/v1/jobs/{job_id}/variables")
    assert variables.status_code == 200
    # Each value's keyed digest (for `batchyard deploy`) comes along; never the secret.
    assert [{k: v for k, v in item.items() if k != "digest"}
            for item in variables.json()["variables"]] == [
        {"key": "TOKEN", "value": None, "secret": True},
        {"key": "REGION", "value": "eu-west", "secret": False}]
    assert all(len(item["digest"]) == 64 for item in variables.json()["variables"])
    assert SECRET not in variables.text
    assert SECRET not in account.owner.get(f"/api/v1/jobs/{job_id}").text
    assert SECRET not in account.owner.get("/api/v1/audit", params={"job_id": job_id}).text


def test_main_without_parameters_succeeds(make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, "def main():\n    print('no event needed')\n")

    execution = wait_for(account.owner, invoke(account.owner, job_id, {"ignored": True}))

    assert execution["status"] == "succeeded", execution
    assert "no event needed" in lines_of(read_logs(account.owner, execution["id"]), "stdout")


def test_uncaught_exception_fails_with_traceback_on_stderr(make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, textwrap.dedent("""\
        def divide(a, b):
            return a / b

        def main(event):
            print("before the crash")
            divide(1, 0)
        """))

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "failed", execution
    assert len(execution["attempts"]) == 1
    attempt = execution["attempts"][0]
    assert attempt["status"] == "failed"
    assert attempt["exit_code"] == 1
    assert "ZeroDivisionError" in attempt["error"]
    stderr = "\n".join(lines_of(read_logs(account.owner, execution["id"]), "stderr"))
    assert "Traceback (most recent call last)" in stderr
    assert "ZeroDivisionError: division by zero" in stderr
    assert "in divide" in stderr


def test_retries_one_makes_two_attempts_with_retry_attempt_0_then_1(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, textwrap.dedent("""\
        def main(event):
            print("retry_attempt", event["retry_attempt"])
            raise RuntimeError("always fails")
        """), settings={"retries": 1})

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "failed", execution
    assert [a["number"] for a in execution["attempts"]] == [1, 2]
    assert all(a["status"] == "failed" for a in execution["attempts"])
    assert all("RuntimeError: always fails" in a["error"] for a in execution["attempts"])
    stdout = lines_of(read_logs(account.owner, execution["id"]), "stdout")
    assert [line for line in stdout if line.startswith("retry_attempt")] == [
        "retry_attempt 0", "retry_attempt 1"]


def test_retries_above_the_plan_maximum_are_refused(make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, "def main():\n    pass\n")

    response = account.owner.put(f"/api/v1/jobs/{job_id}/settings", json={"retries": 2})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"


def test_files_written_to_output_dir_become_downloadable_artifacts(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, textwrap.dedent("""\
        import os
        from pathlib import Path

        from batchyard.sdk import output_dir

        def main(event):
            Path(os.environ["OUTPUT_DIR"], "report.csv").write_text("id,total\\n1,9.50\\n")
            folder = output_dir() / "nested"
            folder.mkdir()
            (folder / "blob.bin").write_bytes(bytes(range(256)) * 40)
        """))

    execution = wait_for(account.owner, invoke(account.owner, job_id))

    assert execution["status"] == "succeeded", execution
    expected = {"report.csv": b"id,total\n1,9.50\n", "nested/blob.bin": bytes(range(256)) * 40}
    listed = account.owner.get(f"/api/v1/executions/{execution['id']}/artifacts")
    assert listed.status_code == 200
    items = {item["name"]: item for item in listed.json()["items"]}
    assert set(items) == set(expected)
    for name, content in expected.items():
        assert items[name]["size"] == len(content)
        assert items[name]["sha256"] == hashlib.sha256(content).hexdigest()
        download = account.owner.get(f"/api/v1/executions/{execution['id']}/artifacts/{name}")
        assert download.status_code == 200
        assert download.content == content


def _server_sent_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = event.get(name, "") + value.removeprefix(" ")


def test_log_stream_follows_a_running_job_live_and_ends_with_an_end_event(
        make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, textwrap.dedent("""\
        import time

        def main():
            for i in range(7):
                print("tick", i)
                time.sleep(0.3)
        """))
    execution_id = invoke(account.owner, job_id)
    ticks: list[tuple[float, str, str]] = []
    events: list[dict[str, str]] = []

    with account.owner.stream("GET", f"/api/v1/executions/{execution_id}/logs",
                              headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in _server_sent_events(response.iter_lines()):
            events.append(event)
            if event.get("event") == "end":
                break
            line = json.loads(event["data"])
            if line["message"].startswith("tick"):
                # Asked while the stream is open: the job must still be running.
                status = get_execution(account.viewer, execution_id)["status"]
                ticks.append((time.monotonic(), line["message"], status))
        ended_at = time.monotonic()

    assert [message for _, message, _ in ticks] == [f"tick {i}" for i in range(7)]
    assert ticks[0][2] == "running"
    assert ended_at - ticks[0][0] >= 1.0, "the lines arrived in one burst, not live"
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"]) == {"status": "succeeded"}
    assert all(event["event"] == "log" for event in events[:-1])
    seqs = [int(event["id"]) for event in events[:-1]]
    assert seqs == sorted(set(seqs))
