"""backup while invocations keep coming → restore into an empty folder → served again.

The restored server answers with the same accounts, jobs, revisions, executions and logs,
and a secret variable still decrypts when the backup included the keys; without them the
restore says what cannot be decrypted, and the attempt that needs the secret cannot run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    Account,
    ServerFactory,
    create_account,
    deploy_job,
    invoke,
    lines_of,
    read_logs,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

SECRET = "s3cr3t-value-for-backup"
JOB = f"""\
from helper import LS

def main(event):
    print("token ok" if LS.settings.TOKEN == {SECRET!r} else "token WRONG")
    print("body", event["body"])
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchyard.cli.main", *args],
                          capture_output=True, text=True, timeout=120)


def listing(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    """Every page of a listing."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        answer = client.get(path, params={"limit": 200, **({"cursor": cursor} if cursor
                                                            else {})})
        assert answer.status_code == 200, answer.text
        items += answer.json()["items"]
        cursor = answer.json().get("next_cursor")
        if not cursor:
            return items


def test_backup_under_load_restores_into_an_empty_folder_and_is_served(
        launch_server: ServerFactory, tmp_path: Path) -> None:
    first = launch_server()
    with first.client() as operator:
        account = create_account(operator, plan={"max_executions_per_day": 100000,
                                                 "max_invocations_per_job_per_day": 100000})
    job_id = deploy_job(account, JOB, settings={"concurrency": "allow"},
                        variables=[{"key": "TOKEN", "value": SECRET, "secret": True}])
    done = [wait_for(account.owner, invoke(account.owner, job_id, {"n": n}))
            for n in range(3)]
    assert all(e["status"] == "succeeded" for e in done), done
    before_logs = read_logs(account.owner, done[0]["id"])

    stop = threading.Event()
    invoked: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=first.base_url, timeout=30, headers={
                "Authorization": f"Bearer {account.keys['owner']}"}) as client:
            while not stop.is_set():
                invoked.append(client.post(f"/api/v1/jobs/{job_id}/invoke",
                                           json={"load": True}).status_code)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        with_keys = cli("backup", "--to", str(tmp_path / "with-keys.tar"), "--include-keys",
                        "--data-dir", str(first.data_dir))
        without = cli("backup", "--to", str(tmp_path / "no-keys.tar"),
                      "--data-dir", str(first.data_dir))
    finally:
        stop.set()
        loader.join()
    assert with_keys.returncode == 0, with_keys.stderr
    assert "secret.key" in with_keys.stdout
    assert without.returncode == 0, without.stderr
    assert "can only be decrypted with this data folder's secret.key" in without.stdout
    assert invoked.count(202) >= 5, invoked  # the backups ran while invocations went on
    jobs_before = [(job["id"], job["name"], job["status"])
                   for job in listing(account.owner, "/api/v1/jobs")]
    executions_before = {e["id"] for e in listing(account.owner, "/api/v1/executions")}
    job_before = account.owner.get(f"/api/v1/jobs/{job_id}").json()
    versions_before = account.owner.get(f"/api/v1/jobs/{job_id}/code/versions").json()
    variables_before = account.owner.get(f"/api/v1/jobs/{job_id}/variables").json()
    assert job_before["revision"] == 1
    account.close()
    first.stop()

    restored_dir = tmp_path / "restored" / "data"
    restored = cli("restore", str(tmp_path / "with-keys.tar"), "--data-dir", str(restored_dir))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    again = cli("restore", str(tmp_path / "with-keys.tar"), "--data-dir", str(restored_dir))
    assert again.returncode == 1 and "not empty" in again.stderr
    checked = cli("check", "--data-dir", str(restored_dir))
    assert checked.returncode == 0, checked.stdout

    second = launch_server(data_dir=restored_dir)
    account = Account(account.id, account.keys, second.base_url)
    try:
        assert [(job["id"], job["name"], job["status"])
                for job in listing(account.owner, "/api/v1/jobs")] == jobs_before
        # A snapshot taken during the load: the executions it holds, all of them real.
        executions_restored = {e["id"] for e in listing(account.owner, "/api/v1/executions")}
        assert {e["id"] for e in done} <= executions_restored <= executions_before
        assert len(executions_restored) > len(done)
        # The job, its published revision, its code and its variables.
        assert account.owner.get(f"/api/v1/jobs/{job_id}").json() == job_before
        assert account.owner.get(f"/api/v1/jobs/{job_id}/code/versions").json() == \
            versions_before
        assert account.owner.get(f"/api/v1/jobs/{job_id}/variables").json() == \
            variables_before
        for execution in done:
            assert account.owner.get(f"/api/v1/executions/{execution['id']}").json()[
                "status"] == "succeeded"
        assert read_logs(account.owner, done[0]["id"]) == before_logs
        after = wait_for(account.owner, invoke(account.owner, job_id, {"n": "after"}),
                         timeout=60)
        assert after["status"] == "succeeded", after
        assert "token ok" in lines_of(read_logs(account.owner, after["id"]), "stdout")
    finally:
        account.close()
        second.stop()

    # Without the keys: the restore says so, and the secret cannot be read by the job.
    bare_dir = tmp_path / "bare" / "data"
    bare = cli("restore", str(tmp_path / "no-keys.tar"), "--data-dir", str(bare_dir))
    assert bare.returncode == 0, bare.stderr
    assert "cannot be decrypted" in bare.stdout
    assert not (bare_dir / "secret.key").exists()
    third = launch_server(data_dir=bare_dir)
    account = Account(account.id, account.keys, third.base_url)
    try:
        ended = wait_for(account.owner, invoke(account.owner, job_id, {}), timeout=60)
        assert (ended["status"], ended["reason"]) == ("failed", "setup_failed"), ended
    finally:
        account.close()


def test_backup_of_a_postgresql_store_explains_pg_dump_and_refuses(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchyard.cli.main", "backup", "--to", str(tmp_path / "x"),
         "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
        env={**os.environ,
             "BATCHYARD_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert done.returncode == 1
    assert "pg_dump" in done.stderr and not (tmp_path / "x").exists()
