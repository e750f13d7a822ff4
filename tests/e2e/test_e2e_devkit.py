"""The developer kit from an empty folder to a published, invoked, followed job.

``batchyard`` runs as a subprocess (its own config and cache folders) against a real
``batchyard serve``: init → run (locally, through the server's runtime) → deploy
--publish → invoke --follow → logs and artifacts; a second deploy changes nothing.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from devkit_support import Kit, user_records
from e2e_support import AccountFactory, ServerProcess, deploy_job, wait_for

pytestmark = pytest.mark.timeout(180)

TOKEN = "tok-" + uuid.uuid4().hex


def _project(tmp_path: Path, kit: Kit) -> tuple[Path, str]:
    name = f"kit-{uuid.uuid4().hex[:8]}"
    made = kit.json("init", name, cwd=tmp_path)
    root = Path(made["project"])
    assert {"main.py", "batchyard.toml", "event.json", ".gitignore", "requirements.txt",
            "tests/test_main.py"} <= set(made["files"])
    # A secret variable: its value from .secrets.toml (git-ignored), masked in logs.
    config = root / "batchyard.toml"
    config.write_text(config.read_text().replace("# API_TOKEN = { secret = true }",
                                                 "API_TOKEN = { secret = true }"))
    (root / ".secrets.toml").write_text(f'API_TOKEN = "{TOKEN}"\n')
    main = root / "main.py"
    main.write_text(main.read_text().replace(
        '    LS.log.info("Report written", {"file": "report.txt"})',
        '    LS.log.info("Report written", {"file": "report.txt"})\n'
        '    LS.log.warn("token in use", {"token": LS.settings.API_TOKEN})\n'
        '    print("plain stdout line")'))
    assert ".secrets.toml" in (root / ".gitignore").read_text()
    return root, name


def test_init_run_deploy_invoke_follow_logs_artifacts_and_an_idempotent_deploy(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)
    config = Path(kit.env["XDG_CONFIG_HOME"]) / "batchyard" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert kit.json("whoami", cwd=tmp_path)["account"]["id"] == account.id
    root, name = _project(tmp_path, kit)

    local = kit.json("run", cwd=root)
    assert local["status"] == "succeeded", local
    assert (root / "output" / "report.txt").read_text() == "Hello, batchyard\n"
    local_records = user_records(local["logs"])
    assert local_records == [
        ("info", "Job started", {"body": {"name": "batchyard"}}),
        ("info", "Report written", {"file": "report.txt"}),
        ("warn", "token in use", {"token": "***"}),
    ]
    assert TOKEN not in json.dumps(local)

    first = kit.json("deploy", "--publish", cwd=root)
    assert first["created"] and first["uploaded"] and first["published_revision"] == 1
    assert "main.py" in first["code_files"]["added"]
    assert any("API_TOKEN" in change for change in first["changes"])
    assert account.owner.get(f"/api/v1/jobs/{first['job_id']}").json()["status"] == "published"

    event = json.loads((root / "event.json").read_text())
    followed = kit("invoke", name, "--body", json.dumps(event["body"]), "--follow", "--json",
                   cwd=root)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    lines = [json.loads(line) for line in followed.stdout.splitlines() if line.strip()]
    summary = lines[-1]
    assert summary["status"] == "succeeded"
    assert user_records(lines[:-1]) == local_records
    assert "plain stdout line" in [item["message"] for item in lines[:-1]
                                   if item["stream"] == "stdout"]

    execution_id = summary["execution_id"]
    stored = kit.json("logs", execution_id, cwd=root)
    assert user_records(stored["items"]) == local_records
    downloads = tmp_path / "downloads"
    listed = kit.json("artifacts", execution_id, "--download", str(downloads), cwd=root)
    assert [item["name"] for item in listed["items"]] == ["report.txt"]
    assert (downloads / "report.txt").read_bytes() == (root / "output" / "report.txt").read_bytes()

    again = kit.json("deploy", "--publish", cwd=root)
    assert again["changes"] == [] and again["uploaded"] is None
    assert again["published_revision"] is None
    assert again["requests"]["writes"] == 0 and again["requests"]["reads"] <= 3, again
    human = kit("deploy", cwd=root)
    assert human.returncode == 0 and "no change; nothing written" in human.stdout
    versions = account.owner.get(f"/api/v1/jobs/{first['job_id']}/code/versions").json()
    assert len(versions["items"]) == 1

    # A changed secret is seen through its digest (the API never returns it): only the
    # variables are written, and the value that runs is the new one (masked).
    (root / ".secrets.toml").write_text(f'API_TOKEN = "{TOKEN}-rotated"\n')
    rotated = kit.json("deploy", "--publish", cwd=root)
    assert rotated["changes"] == ["variables: ~ API_TOKEN (secret)"], rotated
    assert rotated["uploaded"] is None and rotated["published_revision"] == 2
    listed_vars = account.owner.get(f"/api/v1/jobs/{first['job_id']}/variables").json()
    assert all(TOKEN not in json.dumps(v) for v in listed_vars["variables"])
    assert kit.json("deploy", "--publish", cwd=root)["changes"] == []

    # A change made on the server (not by this project) is named before it is published.
    changed = account.owner.put(f"/api/v1/jobs/{first['job_id']}/settings",
                                json={"misfire_grace_minutes": 5})
    assert changed.status_code == 200, changed.text
    pending = kit.json("deploy", "--publish", cwd=root)
    assert pending["changes"] == [] and pending["published_revision"] == 3
    assert [line.split(" by ")[0] for line in pending["pending_on_server"]] == ["job.settings"]
    assert kit.json("deploy", "--publish", cwd=root)["requests"]["writes"] == 0

    table = kit("jobs", cwd=root)
    assert table.returncode == 0 and name in table.stdout and "published" in table.stdout
    history = kit.json("executions", name, cwd=root)
    assert [item["id"] for item in history] == [execution_id]
    assert kit.json("usage", cwd=root)["executions"]["used"] == 1
    bars = kit("usage", cwd=root)
    assert bars.returncode == 0 and "executions today" in bars.stdout


def test_cancel_and_follow_a_running_execution(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    job_id = deploy_job(account, "import time\n\ndef main(event):\n    print('started')\n"
                                 "    time.sleep(60)\n")
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)
    queued = kit.json("invoke", job_id, cwd=tmp_path)
    execution_id = queued["execution_id"]
    wait_for(account.owner, execution_id, "running")
    cancelled = kit.json("cancel", execution_id, cwd=tmp_path)
    assert cancelled["id"] == execution_id
    followed = kit("logs", execution_id, "--follow", cwd=tmp_path)
    assert followed.returncode == 1 and "cancelled" in followed.stdout, followed.stdout
    assert wait_for(account.owner, execution_id)["status"] == "cancelled"
    again = kit("cancel", execution_id, cwd=tmp_path)
    assert again.returncode == 2 and "(HTTP 409)" in again.stderr


def test_a_project_test_and_the_kit_verbs_of_the_vendor(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory) -> None:
    kit = Kit.make(tmp_path)
    root, _name = _project(tmp_path, kit)
    # install/uninstall keep requirements.txt; the scaffold's test runs main locally.
    kit.json("install", "six==1.16.0", cwd=root)
    assert "six==1.16.0" in (root / "requirements.txt").read_text().splitlines()
    kit.json("install", "six==1.17.0", cwd=root)
    lines = (root / "requirements.txt").read_text().splitlines()
    assert "six==1.17.0" in lines and "six==1.16.0" not in lines
    assert kit.json("uninstall", "six", cwd=root)["removed"] == 1
    packed = kit.json("pack", cwd=root)
    names = {item["name"] for item in packed["files"]}
    assert "main.py" in names
    assert not {".secrets.toml", "batchyard.toml", "event.json", "tests/test_main.py"} & names
    assert (root / "deliverables" / "code.zip").stat().st_size == packed["size"]
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests"], cwd=root, env=kit.env, capture_output=True, text=True,
                            timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout


def test_a_schedule_is_applied_once_with_the_accounts_zone_and_its_next_runs(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory,
        operator: httpx.Client) -> None:
    account = make_account()
    assert operator.patch(f"/api/v1/admin/accounts/{account.id}",
                          json={"timezone": "Europe/Berlin"}).status_code == 200
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)
    name = f"sched-{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "main.py").write_text("def main():\n    pass\n")
    config = root / "batchyard.toml"
    config.write_text(f'[job]\nname = "{name}"\n\n[schedule]\ntype = "daily"\n'
                      'times = ["06:00", "18:00"]\n')
    first = kit.json("deploy", "--publish", cwd=root)
    assert any(change.startswith("schedule: ") for change in first["changes"])
    assert len(first["next_runs"]) == 5
    assert all(run.endswith(("06:00:00+01:00", "18:00:00+01:00", "06:00:00+02:00",
                             "18:00:00+02:00")) for run in first["next_runs"]), first
    job = account.owner.get(f"/api/v1/jobs/{first['job_id']}").json()
    assert job["schedule"]["timezone"] == "Europe/Berlin"
    again = kit.json("deploy", "--publish", cwd=root)
    assert again["changes"] == [] and again["requests"]["writes"] == 0
    assert again["next_runs"] == first["next_runs"]
    config.write_text(config.read_text().replace('"18:00"', '"19:30"'))
    changed = kit.json("deploy", "--publish", cwd=root)
    assert [c for c in changed["changes"] if c.startswith("schedule")], changed
    assert changed["published_revision"] == 2


def test_one_project_deployed_to_two_accounts_never_mixes_their_jobs(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory) -> None:
    first, second = make_account(), make_account()
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, first.keys["owner"], cwd=tmp_path)
    root, _name = _project(tmp_path, kit)
    one = kit.json("deploy", cwd=root)
    other = {"BATCHYARD_API_KEY": second.keys["owner"]}
    two = kit.json("deploy", cwd=root, env=other)
    # The recorded job is not the second account's (404 there): a job of its own, with code.
    assert two["created"] and two["uploaded"] and two["job_id"] != one["job_id"]
    assert second.owner.get(f"/api/v1/jobs/{two['job_id']}/code/versions").json()["items"]
    back = kit.json("deploy", cwd=root)
    assert back["job_id"] == one["job_id"] and not back["created"]
    assert back["uploaded"] is None  # same code: compared with the server's, not uploaded
    assert len(first.owner.get(f"/api/v1/jobs/{one['job_id']}/code/versions")
               .json()["items"]) == 1
