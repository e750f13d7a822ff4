"""A project laid out as the vendor's ``lsbatch init`` makes it runs unchanged.

The vendor's kit (PyPI ``lsbatch``) makes a folder holding its local runner
(``startup.py``), its stand-ins for the platform (``helper.py``, ``log.py``,
``MXException.py``), ``settings.json`` (the job's variables, uploaded by
``lsbatch save --settings``), ``event.json`` and ``src/main.py``. Only ``src/`` is
packed (``lsbatch pack``: ``shutil.make_archive`` of ``src/``), so the package holds no
``helper``: the platform's is the one job code imports, as the runner's folder's is
locally (it comes before ``src/`` on ``sys.path`` there).
"""

from __future__ import annotations

import json
import py_compile
import shutil
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    AccountFactory,
    create_job,
    invoke,
    lines_of,
    read_logs,
    upload_code,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

MAIN_PY = textwrap.dedent("""\
    import traceback

    from helper import LS
    from MXException import MXException, MXTooManyRequestsError


    # The vendor's template: main is the entry point; LS writes logs and reads variables.
    def main(event):
        try:
            LS.log.info('Lead sync started')
            LS.log.info('Lead sync started', {"Support Email": "support@example.com"})
            LS.log.info(LS.settings.region)
            LS.log.debug('Leads since', event['body']['since'])
            batch_size = int(LS.settings.BATCH_SIZE)
            LS.log.warn('Batch size', {"size": batch_size})
            assert issubclass(MXTooManyRequestsError, MXException)
            print('synced', 3 * batch_size, 'leads')
        except TypeError as err:
            LS.log.fatal(type(err).__name__, traceback.format_exc())
            raise
        except Exception as err:
            LS.log.error(type(err).__name__, traceback.format_exc())
            raise
    """)


def _lsbatch_project(root: Path) -> Path:
    """The folder ``lsbatch init`` leaves, after one local ``lsbatch run``."""
    project = root / "Nightly Lead Sync"
    src = project / "src"
    src.mkdir(parents=True)
    (src / "main.py").write_text(MAIN_PY)
    # The local run compiled main.py beside it.
    py_compile.compile(str(src / "main.py"), cfile=str(src / "__pycache__" / "main.pyc"))
    (project / "batch_details.json").write_text(json.dumps(
        {"Name": "Nightly Lead Sync", "Description": "Copies new leads every night."}))
    (project / "settings.json").write_text(json.dumps({"region": "eu-west-1",
                                                       "BATCH_SIZE": "200"}))
    (project / "event.json").write_text(json.dumps({"body": {"since": "2024-05-01"}}))
    # The kit's local stand-ins (here only placeholders): never part of the package.
    for name in ("startup.py", "helper.py", "log.py", "MXException.py"):
        (project / name).write_text("raise SystemExit('the local kit only')\n")
    return project


def _lsbatch_pack(project: Path) -> bytes:
    archive = shutil.make_archive(str(project / "deliverables" / "code"), "zip",
                                  str(project / "src"))
    return Path(archive).read_bytes()


def _records(logs: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(item["level"], item["message"], item["data"]) for item in logs
            if item["stream"] == "log" and not item["message"].startswith("batchyard:")]


def test_an_unmodified_lsbatch_project_packed_from_src_runs_with_its_settings(
        tmp_path: Path, make_account: AccountFactory) -> None:
    project = _lsbatch_project(tmp_path)
    package = _lsbatch_pack(project)
    with zipfile.ZipFile(project / "deliverables" / "code.zip") as packed:
        names = set(packed.namelist())
    assert "main.py" in names and "__pycache__/main.pyc" in names
    assert not {"helper.py", "MXException.py", "settings.json"} & names
    details = json.loads((project / "batch_details.json").read_text())
    settings = json.loads((project / "settings.json").read_text())
    event = json.loads((project / "event.json").read_text())
    owner = make_account().owner

    job_id = create_job(owner, details["Name"])
    uploaded = upload_code(owner, job_id, package)
    assert uploaded.status_code == 201, uploaded.text
    # lsbatch save --settings: each settings.json pair becomes one of the job's variables.
    variables = [{"key": key, "value": value, "secret": False} for key, value in settings.items()]
    for path, body in ((f"/api/v1/jobs/{job_id}/variables", {"variables": variables}),
                       (f"/api/v1/jobs/{job_id}/schedule", {"type": "none"})):
        assert owner.put(path, json=body).status_code == 200
    assert owner.post(f"/api/v1/jobs/{job_id}/publish").status_code == 200
    execution = wait_for(owner, invoke(owner, job_id, event["body"]))

    logs = read_logs(owner, execution["id"])
    assert execution["status"] == "succeeded", (execution, lines_of(logs, "stderr"))
    assert _records(logs)[:5] == [
        ("info", "Lead sync started", None),
        ("info", "Lead sync started", {"Support Email": "support@example.com"}),
        ("info", "eu-west-1", None),
        ("debug", "Leads since", "2024-05-01"),
        ("warn", "Batch size", {"size": 200}),
    ]
    assert "synced 600 leads" in lines_of(logs, "stdout")
