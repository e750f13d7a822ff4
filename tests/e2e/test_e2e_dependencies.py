"""requirements.txt end to end: installed by the real uv from the real index, cached by hash.

Tests that install skip (with the reason) when the package index cannot be reached.
"""

from __future__ import annotations

import functools
import textwrap
import urllib.request
from pathlib import Path

import pytest
from e2e_support import (
    AccountFactory,
    ServerProcess,
    create_job,
    deploy_job,
    invoke,
    lines_of,
    make_zip,
    read_logs,
    upload_code,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

INSTALL_WAIT = 120.0
SIX_JOB = textwrap.dedent("""\
    import os
    import six

    def main():
        print("six", six.__version__)
        try:
            open(os.path.join(os.path.dirname(six.__file__), "planted.py"), "w")
            print("WROTE into the environment")
        except OSError as exc:
            print("environment read-only:", type(exc).__name__)
    """)


@functools.cache
def pypi_unreachable() -> str | None:
    """Why the package index cannot be used from here, or None (asked once per session)."""
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/", timeout=10) as answer:
            answer.read(1)
    except OSError as exc:
        return f"PyPI is not reachable from this machine: {exc}"
    return None


@pytest.fixture
def needs_pypi() -> None:
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)


def environments(server: ServerProcess) -> dict[str, int]:
    """Each environment folder of the server, with its completion marker's mtime."""
    with server.client() as operator:
        sandbox = operator.get("/api/v1/health").json()["sandbox"]
    # In the runtime folder outside the data folder (bubblewrap, rlimits), else the data folder.
    root = Path(sandbox["runtime_dir"] or server.data_dir) / "envs"
    if not root.is_dir():
        return {}
    return {path.name: (path / ".batchyard-env.json").stat().st_mtime_ns
            for path in root.iterdir() if not path.name.startswith(".")}


def pip_lines(logs: list[dict[str, object]]) -> list[str]:
    return [str(line) for line in lines_of(logs, "log") if str(line).startswith("pip: ")]


def test_a_job_imports_its_requirement_and_later_runs_reuse_the_environment(
        server: ServerProcess, make_account: AccountFactory, needs_pypi: None) -> None:
    account = make_account()
    client = account.owner
    job_id = deploy_job(account, SIX_JOB, extra_files={"requirements.txt": "six==1.16.0\n"})
    first = wait_for(client, invoke(client, job_id), timeout=INSTALL_WAIT)
    logs = read_logs(client, first["id"])
    assert first["status"] == "succeeded", (first, logs)
    assert lines_of(logs, "stdout") == ["six 1.16.0", "environment read-only: OSError"]
    assert any("six==1.16.0" in line for line in pip_lines(logs)), logs
    assert any("batchyard: requirements: installed in" in line
               for line in lines_of(logs, "log")), logs
    built = environments(server)
    assert len(built) == 1

    second = wait_for(client, invoke(client, job_id), timeout=INSTALL_WAIT)
    logs = read_logs(client, second["id"])
    assert second["status"] == "succeeded", (second, logs)
    assert lines_of(logs, "stdout")[0] == "six 1.16.0"
    assert pip_lines(logs) == []
    assert any("batchyard: requirements: cached environment" in line
               for line in lines_of(logs, "log")), logs
    assert environments(server) == built  # not rebuilt: same folder, same marker

    # Another tenant's file asking for the same packages (other spelling, comments) shares it.
    other = make_account()
    other_job = deploy_job(other, SIX_JOB, extra_files={
        "requirements.txt": "# pinned\n  SIX == 1.16.0   # py2/3\n\n"})
    third = wait_for(other.owner, invoke(other.owner, other_job), timeout=INSTALL_WAIT)
    assert third["status"] == "succeeded", third
    assert pip_lines(read_logs(other.owner, third["id"])) == []
    assert environments(server) == built


def test_a_requirement_that_does_not_exist_fails_the_execution_without_retries(
        make_account: AccountFactory, needs_pypi: None) -> None:
    account = make_account()
    client = account.owner
    job_id = deploy_job(account, "def main():\n    print('never runs')\n",
                        settings={"retries": 1},
                        extra_files={"requirements.txt":
                                     "this-package-does-not-exist-batchyard==1.0\n"})
    execution = wait_for(client, invoke(client, job_id), timeout=INSTALL_WAIT)
    logs = read_logs(client, execution["id"])
    assert execution["status"] == "failed", (execution, logs)
    assert execution["reason"] == "dependency_install_failed"
    assert execution["message"].startswith("dependency_install_failed: error:"), execution
    assert "this-package-does-not-exist-batchyard" in execution["message"]
    (attempt,) = execution["attempts"]  # retries would only repeat the same install
    assert attempt["error"] == execution["message"]
    assert attempt["runtime_seconds"] == 0  # the install is not the job's run time
    assert any("this-package-does-not-exist-batchyard" in line for line in pip_lines(logs))
    assert lines_of(logs, "stdout") == []


def test_an_index_url_in_requirements_is_refused_at_upload(
        make_account: AccountFactory) -> None:
    client = make_account().owner
    job_id = create_job(client)
    response = upload_code(client, job_id, make_zip({
        "main.py": "def main():\n    pass\n",
        "requirements.txt": "six==1.16.0\n--index-url https://mirror.example/simple\n"}))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_code"
    assert error["message"].startswith(
        "requirements.txt line 2: option lines such as '--index-url' are not allowed"), error


def test_a_requirements_file_of_comments_only_runs_without_an_environment(
        server: ServerProcess, make_account: AccountFactory) -> None:
    account = make_account()
    before = environments(server)
    job_id = deploy_job(account, "def main():\n    print('ok')\n",
                        extra_files={"requirements.txt": "# nothing yet\n\n"})
    execution = wait_for(account.owner, invoke(account.owner, job_id))
    assert execution["status"] == "succeeded", execution
    assert environments(server) == before
