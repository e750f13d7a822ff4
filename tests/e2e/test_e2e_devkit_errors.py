"""Bad input is refused before anything is uploaded, naming the file and line; errors of
the server keep its own code and message, with the documented exit codes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import pytest
from devkit_support import Kit
from e2e_support import AccountFactory, ServerProcess, deploy_job, free_port

pytestmark = pytest.mark.timeout(120)

CONFIG = '[job]\nname = "{name}"\n\n[schedule]\ntype = "none"\n'


def _project(tmp_path: Path, main_py: str | None = "def main(event):\n    pass\n",
             config: str | None = None) -> Path:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "batchyard.toml").write_text((config or CONFIG).replace("{name}", name))
    if main_py is not None:
        (root / "main.py").write_text(main_py)
    return root


def _refused(kit: Kit, root: Path, command: str, code: int, *needles: str) -> str:
    done = kit(command, cwd=root)
    assert done.returncode == code, (command, done.returncode, done.stdout, done.stderr)
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    return done.stderr


def test_bad_projects_are_refused_before_any_upload_with_file_and_line(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account(plan={"max_code_size_bytes": 20_000})
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)

    missing = _project(tmp_path, main_py=None)
    for command in ("pack", "deploy", "run"):
        _refused(kit, missing, command, 2, "main.py")

    syntax = _project(tmp_path, main_py="def main(event):\n    x = 1\n    return (\n")
    for command in ("pack", "deploy", "run"):
        _refused(kit, syntax, command, 2, f"{syntax / 'main.py'}:3:", "never closed")

    signature = _project(tmp_path, main_py="def main(a, b):\n    pass\n")
    _refused(kit, signature, "deploy", 2, "main")

    # Over the plan's 20,000 bytes (known from the server for this profile): exit 3.
    oversize = _project(tmp_path)
    (oversize / "data.bin").write_bytes(os.urandom(60_000))
    _refused(kit, oversize, "deploy", 3, "larger than the 19.5 KiB your plan allows")
    _refused(kit, oversize, "pack", 3, "19.5 KiB")
    # Without a profile the default plan's 4 MiB applies.
    (oversize / "data.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    offline = Kit.make(tmp_path / "offline")
    _refused(offline, oversize, "pack", 3, "larger than the 4.0 MiB")

    toml_syntax = _project(tmp_path, config='[job]\nname = "{name}"\n\n[settings]\n'
                                            'timeout_minutes = = 3\n')
    _refused(kit, toml_syntax, "deploy", 2, f"{toml_syntax / 'batchyard.toml'}:5:")
    wrong_type = _project(tmp_path, config='[job]\nname = "{name}"\n\n[settings]\n'
                                           'retries = 0\ntimeout_minutes = "ten"\n')
    _refused(kit, wrong_type, "deploy", 2, f"{wrong_type / 'batchyard.toml'}:6:",
             "timeout_minutes must be")
    unknown = _project(tmp_path, config='[job]\nname = "{name}"\nowner = "me"\n')
    _refused(kit, unknown, "pack", 2, f"{unknown / 'batchyard.toml'}:3:", "owner")
    bad_schedule = _project(tmp_path, config='[job]\nname = "{name}"\n\n[schedule]\n'
                                             'type = "daily"\ntimes = ["25:00"]\n')
    _refused(kit, bad_schedule, "deploy", 2, f"{bad_schedule / 'batchyard.toml'}:6:")
    secret = _project(tmp_path, config='[job]\nname = "{name}"\n\n[variables]\n'
                                       'TOKEN = { secret = true }\n')
    _refused(kit, secret, "deploy", 2, "TOKEN", ".secrets.toml")

    # Nothing reached the server: no job, so no code version either.
    assert account.owner.get("/api/v1/jobs").json()["items"] == []


def test_exit_codes_keep_the_servers_code_and_message(
        tmp_path: Path, server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account(plan={"max_invocations_per_job_per_day": 1})
    other = make_account()
    job_id = deploy_job(account, "def main(event):\n    pass\n")
    kit = Kit.make(tmp_path)
    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)

    body = tmp_path / "body.json"
    body.write_text('{"from": "a file"}')
    followed = kit("invoke", job_id, "--body", f"@{body}", "--follow", "--json", cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr
    summary = json.loads(followed.stdout.splitlines()[-1])  # JSON lines, then the summary
    executed = account.owner.get(f"/api/v1/executions/{summary['execution_id']}").json()
    assert executed["params"]["body"] == {"from": "a file"}
    limited = kit("invoke", job_id, cwd=tmp_path)
    assert limited.returncode == 3
    assert "job_invocations_exceeded" in limited.stderr
    assert kit("invoke", job_id, "--body", "{not json", cwd=tmp_path).returncode == 2
    assert kit("frobnicate", cwd=tmp_path).returncode == 2

    foreign = deploy_job(other, "def main(event):\n    pass\n")
    hidden = kit("invoke", foreign, cwd=tmp_path)
    assert hidden.returncode == 4 and "not_found" in hidden.stderr
    assert kit("logs", "exe_missing", cwd=tmp_path).returncode == 4

    made = account.owner.post("/api/v1/api-keys", json={"name": "short-lived"}).json()
    assert account.owner.delete(f"/api/v1/api-keys/{made['id']}").status_code == 200
    answer = httpx.get(f"{server.base_url}/api/v1/jobs",
                       headers={"Authorization": f"Bearer {made['key']}"}).json()["error"]
    revoked = kit("jobs", cwd=tmp_path, env={"BATCHYARD_API_KEY": made["key"]})
    assert revoked.returncode == 4, revoked.stderr
    assert f"{answer['code']}: {answer['message']}" in revoked.stderr
    assert "Traceback" not in revoked.stderr

    stopped = {"BATCHYARD_URL": f"http://127.0.0.1:{free_port()}"}
    for args in (("jobs",), ("invoke", job_id, "--follow"), ("logs", "exe_x", "--follow"),
                 ("whoami",)):
        down = kit(*args, cwd=tmp_path, env=stopped)
        assert down.returncode == 5, (args, down.stderr)
        assert "did not answer" in down.stderr and "Traceback" not in down.stderr
    project = _project(tmp_path)
    down = kit("deploy", cwd=project, env=stopped)
    assert down.returncode == 5 and "Traceback" not in down.stderr

    (tmp_path / "nologin").mkdir()
    nobody = Kit.make(tmp_path / "nologin")
    assert nobody("jobs", cwd=tmp_path).returncode == 2
