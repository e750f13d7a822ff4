"""The vendor's own project template (PyPI ``lsbatch``'s ``lsq_batch_template``, copied
from the wheel as it is) runs locally and deploys with the vendor's verbs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from devkit_support import Kit, user_records
from e2e_support import AccountFactory, ServerProcess

pytestmark = pytest.mark.timeout(180)

LSBATCH = "lsbatch==1.1.3"
TEMPLATE = "lsbatch/lsq_batch_template/"
TEMPLATE_RECORDS = [
    ("info", "Hello", None),
    ("info", "Hello", {"Support Email": "support@leadsquared.com"}),
    ("info", "myvalue", None),
    ("debug", "Debug Log Example", None),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template folder, extracted from the wheel downloaded now (never committed)."""
    folder = tmp_path_factory.mktemp("lsbatch")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--disable-pip-version-check", "-q", "-d", str(folder), LSBATCH],
                          capture_output=True, text=True, timeout=120)
    wheels = list(folder.glob("lsbatch-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"PyPI is unreachable, so the vendor's {LSBATCH} wheel cannot be "
                    f"downloaded: {done.stderr.strip()[-300:]}")
    extracted = folder / "template"
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in wheel.namelist():
            if name.startswith(TEMPLATE) and not name.endswith("/"):
                target = extracted / name[len(TEMPLATE):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(name))
    assert (extracted / "src" / "main.py").is_file()
    return extracted


def _copy(template: Path, tmp_path: Path) -> Path:
    # The vendor's init names the folder after the job; its batch_details.json Name is
    # left empty in the template, so the folder's name is the job's.
    project = tmp_path / f"lsq-{uuid.uuid4().hex[:8]}"
    shutil.copytree(template, project)
    return project


def test_the_vendor_template_runs_locally_and_deploys_with_save_and_publish(
        template: Path, tmp_path: Path, server: ServerProcess,
        make_account: AccountFactory) -> None:
    account = make_account()
    project = _copy(template, tmp_path)
    kit = Kit.make(tmp_path)
    local = kit.json("run", cwd=project)
    assert local["status"] == "succeeded", local
    assert user_records(local["logs"]) == TEMPLATE_RECORDS

    kit.login(server.base_url, account.keys["owner"], cwd=tmp_path)
    saved = kit.json("save", cwd=project)
    assert saved["created"] and saved["uploaded"] and saved["published_revision"] is None
    assert sorted(saved["code_files"]["added"]) == ["__init__.py", "main.py"]
    details = json.loads((project / "batch_details.json").read_text())
    assert details["Id"] == saved["job_id"]  # written back, as the vendor's kit does
    variables = account.owner.get(f"/api/v1/jobs/{saved['job_id']}/variables").json()
    assert [(v["key"], v["value"]) for v in variables["variables"]] == [("mykey", "myvalue")]

    published = kit.json("publish", cwd=project)
    assert published["published_revision"] == 1 and published["changes"] == []
    followed = kit("invoke", saved["job_id"], "--follow", "--json", cwd=project)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    lines = [json.loads(line) for line in followed.stdout.splitlines() if line.strip()]
    assert user_records(lines[:-1]) == TEMPLATE_RECORDS
    assert kit.json("publish", cwd=project)["requests"]["writes"] == 0


def test_ls_db_answers_from_query_json_locally_and_refuses_without_it(
        template: Path, tmp_path: Path) -> None:
    project = _copy(template, tmp_path)
    (project / "src" / "main.py").write_text(
        "from helper import LS\n\n\n"
        "def main():\n"
        "    rows = LS.db.execute_DB_query('Select * From Users')\n"
        "    LS.log.info('users', {'rows': list(rows)})\n")
    kit = Kit.make(tmp_path)
    answered = kit.json("run", cwd=project)
    assert answered["status"] == "succeeded", answered
    # The platform's line for each query (as on the server), then the job's own record.
    assert user_records(answered["logs"]) == [(
        "info", "query on main: 2 rows from sample_query_result.csv (query.json)", None), (
        "info", "users", {"rows": [
        {"FirstName": "Jhon", "LastName": "Mathew", "Email": "JohnMathew@example.com"},
        {"FirstName": "Vikas", "LastName": "Verma", "Email": "VermaV@example.com"}]})]

    # A query the file does not know fails the job with the file's own words.
    (project / "src" / "main.py").write_text(
        "from helper import LS\n\n\ndef main():\n    LS.db.execute_DB_query('select 2')\n")
    unknown = kit.json("run", cwd=project, expect=1)
    assert unknown["status"] == "failed"
    assert "query.json has no answer for this exact query" in unknown["error"]

    # Without query.json (and no --db): the refusal of an account without database access.
    (project / "query.json").unlink()
    refused = kit.json("run", cwd=project, expect=1)
    assert refused["error"].startswith("MXUnauthorizedDBAccess"), refused
